//! The validator: how rows map to metrics, skips, and the summary statistics.

use planner::validate::{catalog_match, percentile, validate};
use planner::Calibration;

const HEADER: &str = "id,source,model_name,layers,hidden,heads,seq_len,vocab,gpu,num_gpus,gpus_per_node,intra_node_bw_GBps,inter_node_bw_Gbps_per_node,tp,pp,dp,zero_stage,micro_batch,global_batch,recompute,interleave,tflops_per_gpu,mfu_or_hfu_pct,which_metric,tokens_per_s,notes";

#[test]
fn rows_pick_their_metric_and_skips_say_why() {
    let csv = format!(
        "{HEADER}\n\
         a,Paper 2022,GPT 175B,96,12288,96,2048,51200,A100-SXM4-80GB,64,8,,1600,8,8,1,,1,64,selective + sequence parallel,\"yes, 3 interleaving stages\",160.4,51.4,MFU (paper),,\n\
         b,Paper 2021,GPT 175B,96,12288,96,2048,51200,A100-SXM4-80GB,384,8,,1600,8,12,4,,1,1536,,not stated,153,49,\"% of 312, eq.3 incl. recompute\",,\n\
         c,torchtitan benchmarks 2024,Llama 3.1 8B,32,4096,32,8192,128256,\"H100 SXM (96GB HBM2e, 500W cap)\",8,8,,3200,1,1,8,FSDP (8),2,16,selective,,,,TPS/GPU,46096,\n\
         d,Paper 2022,X,,,,2048,,TPU v4,6144,,,,,,,,,2048,,,,46.2,MFU,,\n\
         e,Paper 2022,X,96,12288,96,2048,,V100,10000,,,,,,,,,,,,24.6,21.3,MFU,,\n"
    );
    let (rows, s) = validate(&csv, "t.csv", &Calibration::default()).unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0].metric.as_deref(), Some("mfu_pct"));
    assert!(rows[0].layout.as_deref().unwrap().contains("v=3"));
    assert_eq!(
        rows[1].metric.as_deref(),
        Some("tflops_per_gpu_with_recompute")
    );
    // 2021: no selective recompute on offer.
    assert!(!rows[1].layout.as_deref().unwrap().contains("selective"));
    assert_eq!(rows[2].metric.as_deref(), Some("tokens_per_s"));
    assert!(rows[2].layout.as_deref().unwrap().contains("zero=3"));
    assert!(rows[3].skipped.as_deref().unwrap().contains("not a GPU"));
    assert!(rows[4]
        .skipped
        .as_deref()
        .unwrap()
        .contains("not published"));
    assert_eq!((s.rows, s.used), (5, 3));
    for r in &rows[..3] {
        let e = r.error_pct.unwrap();
        assert!(e.abs() < 30.0, "{}: {e}", r.id);
    }
}

#[test]
fn a_percentage_alone_is_mfu_or_hfu_as_the_row_says() {
    let row = |id: &str, which: &str| {
        format!("{id},Paper 2022,GPT 175B,96,12288,96,2048,51200,A100-SXM4-80GB,1024,8,,1600,8,8,16,,1,1024,full,,,50,{which},,\n")
    };
    let csv = format!("{HEADER}\n{}{}", row("m", "Model FLOPs utilization"), row("h", "HFU (hardware FLOPs, recompute counted)"));
    let (rows, _) = validate(&csv, "t.csv", &Calibration::default()).unwrap();
    assert_eq!(rows[0].metric.as_deref(), Some("mfu_pct"));
    assert_eq!(rows[1].metric.as_deref(), Some("hfu_pct"));
    // The same run: full recompute adds a forward, 4/3 of the model FLOPs.
    let (m, h) = (rows[0].predicted.unwrap(), rows[1].predicted.unwrap());
    assert!((h / m - 4.0 / 3.0).abs() < 0.02, "{m} {h}");
}

#[test]
fn missing_columns_and_percentiles() {
    let e = validate("id,layers\n1,2\n", "x.csv", &Calibration::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.csv: missing column `model_name`"), "{e}");
    let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0];
    assert_eq!(percentile(&v, 0.5), 6.0);
    assert!((percentile(&v, 0.9) - 10.0).abs() < 1e-12);
    assert!(percentile(&[], 0.5).is_nan());
}

#[test]
fn shipped_rows_match_published_shapes_not_engine_presets() {
    // The catalog also holds the engine's presets (tiny, shakespeare-char*, gpt2-mini,
    // llama-char-cpu, llama-mini, tinyllama-1.1b); a validation row is matched by
    // (layers, hidden, heads) and must land on a published model or on plain GPT.
    const PRESETS: [&str; 7] = [
        "tiny",
        "shakespeare-char",
        "shakespeare-char-cpu",
        "gpt2-mini",
        "llama-char-cpu",
        "llama-mini",
        "tinyllama-1.1b",
    ];
    let text = include_str!("../data/published_runs.csv");
    let recs = planner::csv::parse(text, "published_runs.csv").unwrap();
    let col = |k: &str| recs[0].iter().position(|c| c.trim() == k).unwrap();
    let (l, h, a, name) = (col("layers"), col("hidden"), col("heads"), col("model_name"));
    let mut matched = Vec::new();
    for r in &recs[1..] {
        let int = |i: usize| r[i].trim().parse::<usize>().ok();
        if let (Some(l), Some(h), Some(a)) = (int(l), int(h), int(a)) {
            if let Some(m) = catalog_match(l, h, a, &r[name]) {
                assert!(
                    !m.source.starts_with("hyperion preset") && !PRESETS.contains(&m.name.as_str()),
                    "{}: {}",
                    r[0],
                    m.name
                );
                matched.push((r[0].trim().to_string(), m.name));
            }
        }
    }
    let of = |id: &str| {
        matched
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, n)| n.as_str())
    };
    assert_eq!(of("N21-T1-10"), Some("megatron-1t"));
    assert_eq!(of("BLOOM-176B"), Some("bloom-176b"));
    assert_eq!(of("LLMC-124M"), Some("gpt2"));
    assert_eq!(of("TT24-T4-a"), Some("llama3-70b"));
    assert_eq!(of("TT24-T5-a"), Some("llama3.1-405b"));
    // Llama 3.1 8B shares (32, 4096, 32) with gpt3-6.7b and llama2-7b: the row's name
    // picks the family and version; a name of neither family takes the GPT entry.
    assert_eq!(of("TT24-T1-a"), Some("llama3-8b"));
    assert_eq!(of("TT25-H200-32"), Some("llama3-8b"));
    assert_eq!(of("NEMO2407-05"), Some("llama2-7b"));
    assert_eq!(of("LF-H100L-05"), Some("gpt3-6.7b")); // MPT-7b: a GPT block
    assert_eq!(of("MTNLG-1"), Some("mt-nlg-530b"));
    // 104 with gpt3-1.3b modelled as 16 heads of 128 (a 24 x 2048 x 16 row matches it;
    // same GPT block either way, so its prediction is unchanged).
    assert_eq!(matched.len(), 104);
}

#[test]
fn the_attention_kernel_follows_the_rows_stack() {
    // One H100 row read as four sources: llm-foundry and 2024 torchtitan ran
    // FlashAttention-2, Megatron-LM (Transformer Engine) cuDNN's Hopper kernel; a
    // row may also say so itself.
    let row = |id: &str, source: &str, gpu: &str, notes: &str| {
        format!("{id},{source},MPT-7b,32,4096,32,8192,50368,{gpu},8,8,,3200,1,1,8,FSDP (FULL_SHARD),2,16,none,,,40,MFU,,{notes}\n")
    };
    let csv = format!(
        "{HEADER}\n{}{}{}{}{}{}",
        row("lf", "MosaicML 2023 llm-foundry", "H100 80GB", ""),
        row("tt", "pytorch/torchtitan 2024", "H100 80GB", ""),
        row("mlm", "NVIDIA 2024 Megatron-LM", "H100 80GB", ""),
        row("said", "Lab 2024", "H100 80GB", "FlashAttention-2 used"),
        row("lf-a100", "MosaicML 2023 llm-foundry", "A100-SXM4-80GB", ""),
        row("mlm-a100", "NVIDIA 2024 Megatron-LM", "A100-SXM4-80GB", ""),
    );
    let (rows, _) = validate(&csv, "t.csv", &Calibration::default()).unwrap();
    let fa2 = |i: usize| rows[i].detail.as_ref().unwrap().layout.stack.fa2_attention;
    assert_eq!((0..6).map(fa2).collect::<Vec<_>>(), [true, true, false, true, true, false]);
    let p = |i: usize| rows[i].predicted.unwrap();
    // On Hopper FA2 costs time; on Ampere it is the part's own kernel.
    assert!(p(0) < p(2) * 0.97, "{} vs {}", p(0), p(2));
    assert_eq!(p(4), p(5));
}
