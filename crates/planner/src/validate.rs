//! Validation against published training runs (`data/published_runs.csv` format).
//!
//! Each row is turned into a job on a machine and a layout constraint: what the
//! source states is fixed, what it does not is searched (the planner's own choice,
//! as the authors tuned theirs). The prediction is made on the row's own FLOP
//! convention: MFU (model FLOPs), Megatron's recompute-inclusive count, PaLM's
//! count, or job tokens/s.

use crate::error::PlanError;
use crate::estimate::{Estimate, Job};
use crate::flops::{iteration_flops, FlopConvention};
use crate::hardware::{self, Dtype, Machine};
use crate::layout::{LayoutSpec, Recompute, Stack};
use crate::models::{catalog, Family, ModelSpec};
use crate::search::search;
use crate::time::Calibration;
use serde::Serialize;
use std::collections::HashMap;

const GIB: f64 = (1u64 << 30) as f64;

/// One row's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub id: String,
    /// The row's `source` (one paper or repository): the unit of cross-validation.
    #[serde(skip)]
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// Predicted peak memory per GPU (GiB) where the row reports one (`peak_mem_gb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_mem_gib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_mem_gib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The estimate behind the prediction (not serialised).
    #[serde(skip)]
    pub detail: Option<Estimate>,
}

/// Summary over the rows used.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rows: usize,
    pub used: usize,
    pub median_abs_error_pct: f64,
    pub p90_abs_error_pct: f64,
}

/// A row by column name.
struct Row<'a> {
    cols: &'a HashMap<String, usize>,
    cells: &'a [String],
}

impl Row<'_> {
    fn get(&self, key: &str) -> &str {
        self.cols
            .get(key)
            .and_then(|&i| self.cells.get(i))
            .map(|s| s.trim())
            .unwrap_or("")
    }
    fn num(&self, key: &str) -> Option<f64> {
        self.get(key).parse::<f64>().ok()
    }
    fn int(&self, key: &str) -> Option<u64> {
        self.num(key)
            .filter(|x| *x >= 1.0 && x.fract() == 0.0)
            .map(|x| x as u64)
    }
}

const REQUIRED: [&str; 12] = [
    "id",
    "model_name",
    "layers",
    "hidden",
    "heads",
    "seq_len",
    "gpu",
    "num_gpus",
    "tflops_per_gpu",
    "mfu_or_hfu_pct",
    "which_metric",
    "global_batch",
];

/// Validate every row of CSV `text` (named `file` in errors).
pub fn validate(
    text: &str,
    file: &str,
    cal: &Calibration,
) -> Result<(Vec<RowResult>, Summary), PlanError> {
    let records = crate::csv::parse(text, file)?;
    let header = records.first().ok_or_else(|| PlanError::Csv {
        file: file.to_string(),
        line: 1,
        reason: "empty file".to_string(),
    })?;
    let cols: HashMap<String, usize> = header
        .iter()
        .enumerate()
        .map(|(i, c)| (c.trim().to_string(), i))
        .collect();
    for c in REQUIRED {
        if !cols.contains_key(c) {
            return Err(PlanError::MissingColumn {
                file: file.to_string(),
                column: c.to_string(),
            });
        }
    }
    if records.len() < 2 {
        return Err(PlanError::Csv { file: file.to_string(), line: 2, reason: "no data rows after the header".to_string() });
    }
    // Numeric columns: empty means "not published"; anything else must parse.
    const NUMERIC: [&str; 14] = [
        "layers", "hidden", "heads", "seq_len", "vocab", "num_gpus", "gpus_per_node", "tp", "pp", "dp",
        "micro_batch", "global_batch", "tflops_per_gpu", "mfu_or_hfu_pct",
    ];
    let mut out = Vec::new();
    for (i, cells) in records[1..].iter().enumerate() {
        let bad = |reason: String| PlanError::Csv { file: file.to_string(), line: i + 2, reason };
        if cells.len() < header.len() {
            return Err(bad(format!("{} fields, the header has {}", cells.len(), header.len())));
        }
        let row = Row { cols: &cols, cells };
        for c in NUMERIC {
            let v = row.get(c);
            if !v.is_empty() && v.parse::<f64>().is_err() {
                return Err(bad(format!("column {c}: `{v}` is not a number (leave it empty when not published)")));
            }
        }
        let id = row.get("id").to_string();
        let source = row.get("source").to_string();
        out.push(match predict_row(&row, cal) {
            Ok(r) => RowResult { id, source, ..r },
            Err(reason) => RowResult {
                id,
                source,
                metric: None,
                predicted: None,
                published: None,
                error_pct: None,
                layout: None,
                predicted_mem_gib: None,
                published_mem_gib: None,
                skipped: Some(reason),
                detail: None,
            },
        });
    }
    let mut errs: Vec<f64> = out
        .iter()
        .filter_map(|r| r.error_pct.map(f64::abs))
        .collect();
    errs.sort_by(f64::total_cmp);
    let summary = Summary {
        rows: out.len(),
        used: errs.len(),
        median_abs_error_pct: percentile(&errs, 0.5),
        p90_abs_error_pct: percentile(&errs, 0.9),
    };
    Ok((out, summary))
}

/// Percentile of sorted values, linear interpolation between closest ranks.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// The row's GPU: (catalog name, default GPUs per node, default network per node in
/// Gb/s, the node's link where it is not the catalog part's own), or why it has none.
/// Export variants (A800, H800) are the A100/H100 with NVLink cut to 400 GB/s; PCIe
/// cards talk over PCIe; GH200 is taken as an H200 (an H100 die with 96-144 GB HBM3/3e
/// at 4-4.9 TB/s, the H200's class).
fn row_gpu(text: &str) -> Result<(&'static str, u64, f64, Option<&'static str>), String> {
    let t = text.to_ascii_uppercase();
    // "40GB", "40 GB" or "40G", not part of a larger number.
    let size = |gb: &str| {
        t.match_indices(gb).any(|(i, _)| {
            (i == 0 || !t.as_bytes()[i - 1].is_ascii_digit()) && t[i + gb.len()..].trim_start().starts_with('G')
        })
    };
    let pcie = t.contains("PCIE");
    let pick = if t.contains("TPU") {
        return Err(format!("not a GPU: `{text}`"));
    } else if t.contains("H100") && size("96") && t.contains("500W") {
        ("h100-96gb-500w", 8, 3200.0, None)
    } else if t.contains("H100") && pcie {
        ("h100-pcie", 8, 3200.0, None)
    } else if t.contains("H100") {
        ("h100-sxm", 8, 3200.0, None)
    } else if t.contains("H800") {
        ("h100-sxm", 8, 3200.0, Some("nvlink4-h800"))
    } else if t.contains("MI250") {
        ("mi250x-gcd", 8, 800.0, None)
    } else if t.contains("MI300") {
        ("mi300x", 8, 3200.0, None)
    } else if t.contains("H200") {
        ("h200", 8, 3200.0, None)
    } else if t.contains("B200") {
        ("b200", 8, 3200.0, None)
    } else if t.contains("A100") || t.contains("A800") {
        let link = if pcie {
            Some("pcie4")
        } else if t.contains("A800") && !t.contains("A100") {
            // (A text naming both, "A100-class, could be A800", stays an A100.)
            Some("nvlink3-a800")
        } else {
            None
        };
        (if size("40") { "a100-40gb" } else { "a100-80gb" }, 8, 1600.0, link)
    } else if t.contains("V100") && t.contains("DGX-2") {
        ("v100-dgx2h", 16, 800.0, None)
    } else if t.contains("V100") {
        let link = if pcie { Some("pcie3") } else { None };
        (if size("16") { "v100-16gb" } else { "v100-32gb" }, 8, 400.0, link)
    } else {
        return Err(format!("GPU `{text}` not in the catalog"));
    };
    Ok(pick)
}

/// The catalog entry whose shape (layers, hidden, heads) a row's model has. Published
/// models come before the engine's Llama presets, which come after the GPT presets of
/// the same shape, so no published row lands on a preset.
pub fn catalog_match(layers: usize, hidden: usize, heads: usize, name: &str) -> Option<ModelSpec> {
    // Shapes are shared across families (Llama 2 7B, Llama 3 8B and GPT-3 6.7B are all
    // 32 x 4096 x 32): prefer the entry whose family and version the row's name says
    // (`llama3-8b` for "Llama 3.1 8B": its name before the size, `llama3`), then one of
    // the family the name says (Llama or not), then the first.
    let key = |s: &str| s.to_ascii_lowercase().chars().filter(char::is_ascii_alphanumeric).collect::<String>();
    let row = key(name);
    let shaped: Vec<ModelSpec> = catalog()
        .into_iter()
        .filter(|m| m.layers == layers && m.hidden == hidden && m.heads == heads)
        .collect();
    let named = |m: &&ModelSpec| {
        let family = m.name.rsplit_once('-').map_or(m.name.as_str(), |(f, _)| f);
        !family.is_empty() && row.contains(&key(family))
    };
    let llama = llama_like(name);
    shaped
        .iter()
        .find(named)
        .or_else(|| shaped.iter().find(|m| (m.family == Family::Llama) == llama))
        .or(shaped.first())
        .cloned()
}

/// The model's name says a Llama-architecture family (RMSNorm, SwiGLU, RoPE).
fn llama_like(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["llama", "mistral", "qwen", "internlm", "deepseek", "baichuan"].iter().any(|w| name.contains(w))
}

/// The model: architecture by shape match in the catalog (Llama: GQA + SwiGLU,
/// BLOOM: ALiBi), else GPT style; vocab and sequence from the row.
fn row_model(row: &Row) -> Result<ModelSpec, String> {
    let (l, h, a, s) = match (
        row.int("layers"),
        row.int("hidden"),
        row.int("heads"),
        row.int("seq_len"),
    ) {
        (Some(l), Some(h), Some(a), Some(s)) => (l as usize, h as usize, a as usize, s as usize),
        _ => return Err("model shape (layers, hidden, heads, seq_len) not published".to_string()),
    };
    // Unstated vocab: Megatron/DeepSpeed pad GPT-2's 50257 to 51200 (assumption).
    let v = row.int("vocab").unwrap_or(51200) as usize;
    Ok(model_for(row.get("model_name"), l, h, a, v, s))
}

/// The architecture of a row's model: the catalog entry of its shape and name, else
/// Llama's blocks for a Llama-family name, else GPT's.
fn model_for(name: &str, l: usize, h: usize, a: usize, v: usize, s: usize) -> ModelSpec {
    match catalog_match(l, h, a, name) {
        Some(m) => ModelSpec {
            name: name.to_string(),
            vocab: v,
            seq: s,
            ..m
        },
        // A Llama-architecture model not in the catalog: SwiGLU at Llama's 8/3 h rounded
        // up to 256, full multi-head attention (Touvron et al. 2023).
        None if llama_like(name) => {
            let ffn = (8 * h / 3).div_ceil(256) * 256;
            ModelSpec::llama(name, l, h, a, a, ffn, v, s, "validation row (Llama architecture)")
        }
        None => ModelSpec::gpt(name, l, h, a, v, s, "validation row"),
    }
}

fn predict_row(row: &Row, cal: &Calibration) -> Result<RowResult, String> {
    let (gpu_name, default_gpn, default_net, node_link) = row_gpu(row.get("gpu"))?;
    let model = row_model(row)?;
    let n = row.int("num_gpus").ok_or("num_gpus missing")?;
    let which = row.get("which_metric");
    let tflops = row.num("tflops_per_gpu");
    let pct = row.num("mfu_or_hfu_pct");
    let tokens = row.num("tokens_per_s");
    // Which figure to predict, on which FLOP convention.
    let (metric, published, conv) = if which.contains("TPS") {
        (
            "tokens_per_s",
            tokens.ok_or("tokens_per_s missing")?,
            FlopConvention::Model,
        )
    } else if let (true, Some(p)) = (which.starts_with("MFU"), pct) {
        let conv = if which.contains("PaLM") {
            FlopConvention::Palm
        } else {
            FlopConvention::Model
        };
        (
            if conv == FlopConvention::Palm {
                "mfu_pct_palm"
            } else {
                "mfu_pct"
            },
            p,
            conv,
        )
    } else if let Some(x) = tflops {
        // Model FLOPs when the row says MFU / model FLOPs or leaves the convention
        // open; otherwise the Megatron/DeepSpeed/BLOOM recompute-inclusive count.
        let upper = which.to_ascii_uppercase();
        if which.contains("not stated") || upper.starts_with("MFU") || upper.contains("MODEL FLOP")
        {
            ("tflops_per_gpu_model", x, FlopConvention::Model)
        } else {
            (
                "tflops_per_gpu_with_recompute",
                x,
                FlopConvention::WithRecompute,
            )
        }
    } else if let Some(p) = pct {
        // Only a percentage: of hardware FLOPs (recompute counted) when the row says
        // HFU / hardware, else of model FLOPs.
        let upper = which.to_ascii_uppercase();
        if upper.contains("HFU") || upper.contains("HARDWARE") {
            ("hfu_pct", p, FlopConvention::WithRecompute)
        } else {
            ("mfu_pct", p, FlopConvention::Model)
        }
    } else if let Some(x) = tokens {
        ("tokens_per_s", x, FlopConvention::Model)
    } else {
        return Err("no measured figure".to_string());
    };
    let batch = row
        .int("global_batch")
        .ok_or("global batch not published")?;

    // Degrees: what is given, the rest derived from the GPU count.
    let (tp, pp, dp) = (row.int("tp"), row.int("pp"), row.int("dp"));
    let known: u64 = [tp, pp, dp].iter().flatten().product();
    let missing = [tp, pp, dp].iter().filter(|x| x.is_none()).count();
    let fill = |x: Option<u64>| -> Result<u64, String> {
        Ok(match x {
            Some(v) => v,
            None if known == n => 1,
            None if missing == 1 && n % known == 0 => n / known,
            None => return Err("parallel layout not published".to_string()),
        })
    };
    if missing == 3 {
        return Err("parallel layout not published".to_string());
    }
    let (tp, pp, dp) = (fill(tp)?, fill(pp)?, fill(dp)?);
    if tp * pp * dp != n {
        return Err(format!("tp x pp x dp = {} != num_gpus {n}", tp * pp * dp));
    }

    let source = row.get("source");
    let year = source
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse::<u32>().ok())
        .find(|y| (2017..=2030).contains(y))
        .unwrap_or(2024);
    let notes = row.get("notes");
    // Context parallelism (sequence split across GPUs for attention) is not modelled.
    if let Some(cp) = notes
        .match_indices("CP ")
        .filter_map(|(i, _)| notes[i + 3..].split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .find(|&cp| cp > 1)
    {
        return Err(format!("context parallelism (CP {cp}) is not modelled"));
    }
    let zero_text = row.get("zero_stage").to_ascii_uppercase();
    let lead = zero_text.chars().next().and_then(|c| c.to_digit(10));
    let zero = if let Some(d) = lead {
        d.min(3) as u8
    } else if zero_text.contains("SHARD_GRAD_OP") {
        // PyTorch FSDP's SHARD_GRAD_OP keeps the parameters whole: ZeRO-2.
        2
    } else if zero_text.contains("FSDP") {
        3
    } else {
        0
    };
    let rc = row.get("recompute").to_ascii_lowercase();
    let recompute = if rc.contains("selective") {
        Some(Recompute::Selective)
    } else if rc.contains("full") || rc.contains("remat") || rc.contains("checkpointing") {
        Some(Recompute::Full)
    } else if rc == "no" || rc == "none" || rc.starts_with("none ") {
        Some(Recompute::None)
    } else {
        None
    };
    let sp = if rc.contains("no sequence parallel") {
        false
    } else if rc.contains("sequence parallel") {
        true
    } else {
        year >= 2023 && tp > 1
    };
    let il = row.get("interleave").to_ascii_lowercase();
    let interleave = if il.starts_with("no") || il.starts_with("n/a") || pp == 1 {
        Some(1)
    } else if let Some(v) = il
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse::<u64>().ok())
        .find(|&v| (2..=16).contains(&v))
    {
        Some(v)
    } else if il.starts_with("yes") {
        // Interleaved, count not given: assume the smallest interleaving that splits
        // the layers evenly (Megatron requires it), else 2 chunks.
        Some(
            (2..=8)
                .find(|v| model.layers as u64 % (pp * v) == 0)
                .unwrap_or(2),
        )
    } else {
        None
    };
    // torchtitan's "local batch" under PP is split into micro-batches; its default
    // count is the number of stages (torchtitan 2024 `pipeline_parallel_microbatches`).
    let mb = match row.int("micro_batch") {
        Some(local) if notes.contains("local batch") && pp > 1 && local % pp == 0 => {
            Some(local / pp)
        }
        other => other,
    };
    // A batch quoted in round tokens ("2M tokens") need not split over the replicas:
    // the run's batch was the nearest whole number of micro-batches per replica.
    let unit = dp * mb.unwrap_or(1);
    let (batch, batch_note) = if batch % unit == 0 {
        (batch, String::new())
    } else {
        let b = ((batch as f64 / unit as f64).round() as u64).max(1) * unit;
        (b, format!(" (global batch {batch} taken as {b}, a multiple of dp x mb)"))
    };
    // The framework, from what the row says of its source. Megatron-LM (its releases,
    // Megatron-Core rN, and Megatron-Bridge built on it) reduces bf16 gradients in fp32
    // (bf16 from 2023 on, or where the row says bf16 / FP8; the 2019-2021 papers trained
    // in fp16). NeMo 1.x (containers before 24.09) is not: its launcher configs use
    // apex's distributed Adam, which syncs gradients in the parameters' 16 bits
    // (NeMo-Framework-Launcher conf/training/gpt3/*.yaml, `distributed_fused_adam`).
    // DeepSpeed's ZeRO-3 (stage 3 not written as FSDP) gathers parameters again for a
    // recomputed forward.
    let text = format!("{source} {notes} {which}");
    // A `zero_stage` naming the "distributed optimizer" is Megatron-LM's own term for its
    // ZeRO-1 (`--use-distributed-optimizer`).
    let megatron = (["Megatron-LM", "Megatron-Bridge", "Megatron-Core r"].iter().any(|w| text.contains(w))
        || zero_text.contains("DISTRIBUTED OPTIMIZER"))
        && !text.contains("DeepSpeed");
    let bf16 = year >= 2023 || ["bf16", "BF16", "FP8"].iter().any(|w| text.contains(w));
    let stack = Stack {
        grad_fp32: megatron && bf16,
        zero3_regather: zero == 3 && !zero_text.contains("FSDP"),
        // Megatron-LM's `--overlap-grad-reduce` is opt-in, also under DeepSpeed's
        // pipeline engine (Megatron-DeepSpeed); NeMo's recipes turn it on
        // (NeMo-Framework-Launcher `overlap_grad_sync: True`).
        dp_exposed: (megatron || text.contains("Megatron"))
            && !["NeMo", "overlap-grad-reduce", "overlap_grad_reduce"].iter().any(|w| text.contains(w)),
        param_gather_overlap: ["overlap-param-gather", "overlap_param_gather"].iter().any(|w| text.contains(w)),
        // llm-foundry's `attn_impl: flash` is the flash-attn package (FA1, then FA2);
        // torchtitan calls PyTorch SDPA, whose default order put FA2 first and cuDNN
        // last from 2.5.1 on (pytorch/pytorch#138522, the order quoted in #138907)
        // until cuDNN 9.15 (torch 2.10+). Megatron/NeMo use Transformer Engine, which
        // prefers cuDNN attention on Hopper (NeMo docs, memory_optimizations.rst).
        // A row can also say `FlashAttention-2 used`.
        fa2_attention: (text.contains("llm-foundry")
            || (text.contains("torchtitan") && year <= 2025)
            || text.contains("FlashAttention-2 used"))
            && !["cuDNN attention", "FlashAttention-3", "FA3"].iter().any(|w| text.contains(w)),
    };
    let spec = LayoutSpec {
        stack: Some(stack),
        tp: Some(tp),
        pp: Some(pp),
        dp: Some(dp),
        zero: if row.get("zero_stage").is_empty() {
            None
        } else {
            Some(zero)
        },
        mb,
        recompute,
        interleave,
        sp: Some(sp),
        // FlashAttention (Dao et al. 2022) became the default in Megatron-Core and
        // PyTorch SDPA in 2023; earlier sources used unfused attention unless their
        // notes say `FlashAttention used`.
        flash: Some((year >= 2023 || notes.contains("FlashAttention used")) && !notes.contains("FlashAttention not used")),
        fp8: Some(notes.contains("+ Float8") || notes.contains("FP8 ")),
        tp_overlap: Some(notes.contains("tp-comm-overlap") || notes.contains("AsyncTP")),
        // Selective recompute and Megatron's distributed optimizer (ZeRO-1) appeared
        // in 2022 (Korthikanti et al.); earlier runs had full recompute or none.
        zero_choices: Some(if year >= 2022 && row.get("zero_stage").is_empty() {
            &[0, 1]
        } else {
            &[0]
        }),
        // Sources that used selective recompute say so: unstated means none or full.
        recompute_choices: Some(&[Recompute::None, Recompute::Full]),
    };

    let gpu = hardware::gpu(gpu_name).map_err(|e| e.to_string())?.clone();
    let intra = hardware::link(node_link.unwrap_or(gpu.link)).map_err(|e| e.to_string())?;
    let gpn = row.int("gpus_per_node").unwrap_or(default_gpn);
    let machine = Machine {
        intra_bw: row
            .num("intra_node_bw_GBps")
            .map(|x| x * 1e9 / 2.0)
            .unwrap_or(intra.bw_per_dir),
        intra_latency: intra.latency,
        node_net_bw: row
            .num("inter_node_bw_Gbps_per_node")
            .unwrap_or(default_net)
            * 1e9
            / 8.0,
        net_latency: 8e-6,
        gpus_per_node: gpn,
        gpu,
    };
    let seq = model.seq as u64;
    let mut job = Job {
        model,
        machine,
        gpus: n,
        global_batch: batch,
        seq,
        tokens: 0.0,
    };
    let mut note = "";
    let best: Estimate = match search(&job, &spec, cal, 0) {
        Ok(r) => r.best,
        Err(PlanError::NothingFits { best_gb, .. }) => {
            // Our memory model says nothing fits: the run must have used the most
            // frugal layout the source allows, so predict that one.
            job.machine.gpu.mem_bytes = best_gb * 1e9 * 1.0001;
            note = " (predicted not to fit)";
            search(&job, &spec, cal, 0).map_err(|e| e.to_string())?.best
        }
        Err(e) => return Err(e.to_string()),
    };
    let mem_gib = row.num("peak_mem_gb");
    let step = best.step.total;
    let flops = iteration_flops(&job.model, batch as f64, seq as f64, conv);
    let per_gpu = flops / step / n as f64;
    let predicted = match metric {
        "tokens_per_s" => best.tokens_per_s,
        "mfu_pct" | "mfu_pct_palm" | "hfu_pct" => 100.0 * per_gpu / job.machine.gpu.peak(Dtype::Bf16),
        _ => per_gpu / 1e12,
    };
    Ok(RowResult {
        source: String::new(),
        id: String::new(),
        metric: Some(metric.to_string()),
        predicted: Some(predicted),
        published: Some(published),
        error_pct: Some(100.0 * (predicted - published) / published),
        layout: Some(format!("{}{note}{batch_note}", best.layout_text)),
        predicted_mem_gib: mem_gib.map(|_| best.memory.total / GIB),
        published_mem_gib: mem_gib,
        skipped: None,
        detail: Some(best),
    })
}

#[cfg(test)]
mod tests {
    use super::{model_for, row_gpu};
    use crate::models::{Family, Mlp};

    #[test]
    fn a_llama_family_name_gets_llama_blocks_where_the_catalog_has_no_shape() {
        let m = model_for("Mistral-like 7B", 28, 3584, 28, 32000, 4096);
        assert_eq!((m.family, m.mlp, m.ffn, m.kv_heads), (Family::Llama, Mlp::SwiGlu, 9728, 28));
        let g = model_for("Some GPT 7B", 28, 3584, 28, 32000, 4096);
        assert_eq!((g.family, g.mlp, g.ffn), (Family::Gpt2, Mlp::Gelu, 4 * 3584));
        // LLaMA-65B's shape is not in the catalog: Llama 1's published FFN width.
        assert_eq!(model_for("LLaMA 65B", 80, 8192, 64, 32000, 2048).ffn, 22016);
        // A Llama-family name on a shared shape takes the Llama entry, not GPT-3 6.7B.
        assert_eq!(model_for("Mistral-like 7B", 32, 4096, 32, 32000, 4096).family, Family::Llama);
        // The catalog still wins where it has the shape and the name agrees.
        assert_eq!(model_for("Llama 3.1 8B", 32, 4096, 32, 128256, 8192).kv_heads, 8);
    }

    #[test]
    fn gpu_text_maps_to_the_part_its_memory_and_its_link() {
        let part = |t: &str| row_gpu(t).map(|(g, _, _, link)| (g, link));
        assert_eq!(part("A100 40 GB (PCIe)"), Ok(("a100-40gb", Some("pcie4"))));
        assert_eq!(part("A100-SXM4-40GB"), Ok(("a100-40gb", None)));
        assert_eq!(part("A100-80GB, 400G IB"), Ok(("a100-80gb", None)));
        assert_eq!(part("A800-SXM4-80GB"), Ok(("a100-80gb", Some("nvlink3-a800"))));
        assert_eq!(part("NVIDIA Ampere (A100-class; could be A800)"), Ok(("a100-80gb", None)));
        assert_eq!(part("H800 80GB"), Ok(("h100-sxm", Some("nvlink4-h800"))));
        assert_eq!(part("H100 PCIe 80GB"), Ok(("h100-pcie", None)));
        assert_eq!(part("H100 SXM (96GB HBM2e, 500W cap)"), Ok(("h100-96gb-500w", None)));
        assert_eq!(part("V100 16 GB"), Ok(("v100-16gb", None)));
        assert_eq!(part("V100-SXM3-32GB (DGX-2H)"), Ok(("v100-dgx2h", None)));
        assert!(part("TPU v4").unwrap_err().contains("not a GPU"));
        assert!(part("Gaudi2").unwrap_err().contains("`Gaudi2` not in the catalog"));
    }
}
