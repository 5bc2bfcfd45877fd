//! Behaviour of the time model and the search on cases with known answers.

use planner::estimate::{estimate, Job};
use planner::hardware::{cluster, Machine};
use planner::layout::{Layout, LayoutSpec, Recompute};
use planner::models::model;
use planner::time::{allreduce_time, gather_time, Calibration};

fn job(model_name: &str, cluster_name: &str, gpus: u64, batch: u64) -> Job {
    let m = model(model_name).unwrap();
    let seq = m.seq as u64;
    Job {
        model: m,
        machine: Machine::from_cluster(cluster(cluster_name).unwrap()).unwrap(),
        gpus,
        global_batch: batch,
        seq,
        tokens: 300e9,
    }
}

fn layout(tp: u64, pp: u64, dp: u64, zero: u8, mb: u64, recompute: Recompute, v: u64) -> Layout {
    Layout {
        tp,
        pp,
        dp,
        zero,
        mb,
        recompute,
        interleave: v,
        sp: tp > 1,
        flash: false,
        fp8: false,
        tp_overlap: false,
        stack: Default::default(),
    }
}

#[test]
fn ring_and_tree_collective_costs() {
    // Ring all-reduce moves 2 (n-1)/n of the buffer through each link.
    let t = allreduce_time(1e9, 8, 100e9, 0.0);
    assert!((t - 2.0 * 7.0 / 8.0 * 1e9 / 100e9).abs() < 1e-12);
    // Tiny messages on many ranks: the tree's log2(n) latency wins over the ring's n.
    let small = allreduce_time(1e3, 4096, 25e9, 8e-6);
    assert!(
        (small - (2.0 * 1e3 / 25e9 + 2.0 * 12.0 * 8e-6)).abs() < 1e-12,
        "{small}"
    );
    assert_eq!(allreduce_time(1e9, 1, 1e9, 1e-6), 0.0);
    assert!((gather_time(1e9, 4, 1e9, 0.0) - 0.75).abs() < 1e-12);
}

/// The bubble is the other stages' time for one micro-batch, `v` chunks splitting it:
/// `(p-1)/(v m)` of the busy time for equal stages, less where the last stage's head
/// makes it the slowest; the head's cost (vocabulary) moves the busy time, not the bubble.
#[test]
fn pipeline_bubble_is_the_other_stages_time() {
    let j = job("gpt3-175b", "selene", 4480, 512);
    let cal = Calibration::default();
    for (v, m) in [(1u64, 64u64), (3, 64), (1, 128)] {
        let l = layout(8, 8, 512 / (m), 0, 1, Recompute::Selective, v);
        let e = estimate(&j, &l, &cal);
        assert_eq!(e.micro_batches, m);
        let per_micro =
            (e.step.total - e.step.bubble - e.step.pp_comm - e.step.dp_comm - e.step.optimizer)
                / m as f64;
        // 12 blocks per stage against one head: just under (p-1)/(v m).
        let fraction = e.step.bubble / (per_micro * m as f64);
        let equal = 7.0 / (v * m) as f64;
        assert!(fraction < equal && fraction > 0.97 * equal, "v={v} m={m}: {fraction} vs {equal}");
        let mut big_vocab = j.clone();
        big_vocab.model.vocab *= 4;
        let e4 = estimate(&big_vocab, &l, &cal);
        assert!((e4.step.bubble - e.step.bubble).abs() / e.step.bubble < 1e-12, "the head is not in the bubble");
        assert!(e4.step.total > e.step.total);
    }
}

#[test]
fn recompute_costs_time_and_saves_memory() {
    let j = job("gpt3-175b", "selene", 1024, 1536);
    let cal = Calibration::default();
    let e = |r| estimate(&j, &layout(8, 8, 16, 1, 1, r, 1), &cal);
    let (none, sel, full) = (
        e(Recompute::None),
        e(Recompute::Selective),
        e(Recompute::Full),
    );
    assert!(
        none.memory.activations > sel.memory.activations
            && sel.memory.activations > full.memory.activations
    );
    assert!(none.step.total < sel.step.total && sel.step.total < full.step.total);
    // Full recompute re-runs every block's forward: about a third of fwd+bwd.
    let extra = full.step.recompute / (full.step.compute - full.step.recompute);
    assert!(extra > 0.25 && extra < 0.36, "{extra}");
    // Model FLOPs don't count the recompute, Megatron's eq. 3 count does (~4/3).
    assert!((full.eq3_tflops_per_gpu / full.model_tflops_per_gpu - 4.0 / 3.0).abs() < 0.02);
}

#[test]
fn zero3_without_model_parallelism_collapses_at_scale_while_3d_holds() {
    // Narayanan et al. 2021 Table 2 / Fig. 10: at a fixed batch of 1536, ZeRO-3 with
    // no model parallelism drops from 144 to 44 TFLOP/s per GPU going from 384 to
    // 1536 A100s, while PTD-P (tp 8, pp 12) holds ~140-150.
    let cal = Calibration::default();
    let zero3 = |n: u64| {
        estimate(
            &job("gpt3-175b", "selene", n, 1536),
            &layout(1, 1, n, 3, 1536 / n, Recompute::Full, 1),
            &cal,
        )
        .eq3_tflops_per_gpu
    };
    let ptd = |n: u64| {
        estimate(
            &job("gpt3-175b", "selene", n, 1536),
            &layout(8, 12, n / 96, 0, 1, Recompute::Full, 1),
            &cal,
        )
        .eq3_tflops_per_gpu
    };
    let (z384, z1536) = (zero3(384), zero3(1536));
    let (p384, p1536) = (ptd(384), ptd(1536));
    assert!(z384 / z1536 > 2.5, "ZeRO-3 {z384} -> {z1536}");
    assert!(p384 / p1536 < 1.15, "PTD-P {p384} -> {p1536}");
    assert!(p1536 > 2.5 * z1536);
}

#[test]
fn search_prefers_tp_inside_a_node_and_explains_runners_up() {
    let j = job("gpt3-175b", "selene", 1024, 1536);
    let r = planner::search(&j, &LayoutSpec::default(), &Calibration::default(), 4).unwrap();
    let b = &r.best;
    // TP stays inside a node; 175B needs its states split further, by a pipeline or by
    // ZeRO-3 over the data-parallel ranks.
    assert!(
        b.fits && b.layout.tp <= 8 && (b.layout.pp > 1 || b.layout.zero == 3),
        "{}",
        b.layout_text
    );
    assert!(b.mfu_pct > 35.0 && b.mfu_pct < 65.0, "{}", b.mfu_pct);
    assert_eq!(r.runners_up.len(), 4);
    for ru in &r.runners_up {
        assert!(ru.estimate.tokens_per_s <= b.tokens_per_s);
        assert!(ru.why.contains("s/step"), "{}", ru.why);
    }
    // Forcing TP across nodes (tp=16 > 8 GPUs per node) is slower.
    let spec = LayoutSpec::parse("tp=16").unwrap();
    let r16 = planner::search(&j, &spec, &Calibration::default(), 0).unwrap();
    assert!(r16.best.tokens_per_s < 0.9 * b.tokens_per_s);
    // 175B cannot train on one 80 GB GPU.
    let one = job("gpt3-175b", "selene", 1, 8);
    let err = planner::search(&one, &LayoutSpec::default(), &Calibration::default(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no layout of gpt3-175b fits in 80 GB"),
        "{err}"
    );
}

#[test]
fn bigger_gemms_run_closer_to_peak() {
    // The GEMM efficiency model: same FLOPs, skinnier inner dimension -> slower.
    let mm = Machine::from_cluster(cluster("selene").unwrap()).unwrap();
    let cal = Calibration::default();
    let fat = planner::time::gemm_time(
        &mm,
        &cal,
        8192.0,
        8192.0,
        8192.0,
        planner::hardware::Dtype::Bf16,
    );
    let thin = planner::time::gemm_time(
        &mm,
        &cal,
        8192.0 * 16.0,
        8192.0,
        512.0,
        planner::hardware::Dtype::Bf16,
    );
    let flops = 2.0 * 8192f64.powi(3);
    assert!((flops / fat / 312e12 - 0.72 * 8192.0 / (8192.0 + cal.gemm_k0)).abs() < 1e-9);
    // The thin GEMM pays the inner-dimension overhead k0 / K at K = 512 (and the same
    // FLOPs otherwise).
    let want = (512.0 + cal.gemm_k0) / 512.0 / ((8192.0 + cal.gemm_k0) / 8192.0);
    assert!((thin / fat - want).abs() < 1e-9 && thin > 1.1 * fat, "{} vs {want}", thin / fat);
}

fn measured(rate: impl Fn(f64, f64, f64) -> f64) -> planner::hardware::Measured {
    let g = vec![64.0, 256.0, 1024.0, 4096.0];
    let mut r = Vec::new();
    for &m in &g {
        for &n in &g {
            for &k in &g {
                r.push(rate(m, n, k));
            }
        }
    }
    planner::hardware::Measured {
        gemm_m: g.clone(),
        gemm_n: g.clone(),
        gemm_k: g,
        gemm_rate: [r.clone(), r.clone(), r],
        attn_seq: vec![64.0, 1024.0],
        attn_fwd: vec![1e11, 2e11],
        attn_bwd: vec![1e11, 2e11],
        elementwise_bw: 1e10,
        elementwise_llama_bw: 1e10,
        xent_bw: 2e10,
        xent_tp_bw: 2e10,
        head_chunk_floats: (1u64 << 24) as f64,
        sync_overhead: 0.0,
    }
}

/// Measured GEMM rates: the grid values at grid points, log-space interpolation
/// between them, the edge values beyond.
#[test]
fn measured_gemm_rates_interpolate_in_log_space_and_clamp() {
    use planner::hardware::GemmOp;
    let ms = measured(|m, n, k| 1e9 * (m.log2() + 10.0 * n.log2() + 100.0 * k.log2()));
    assert_eq!(ms.gemm(GemmOp::Nn, 256.0, 64.0, 1024.0), 1e9 * (8.0 + 60.0 + 1000.0));
    // Half-way (in log2) between 256 and 1024 rows: the rate is linear in log2 m.
    assert!((ms.gemm(GemmOp::Tn, 512.0, 64.0, 1024.0) - 1e9 * (9.0 + 60.0 + 1000.0)).abs() < 1e-3);
    // Beyond the grid: the edge (k = 4096 for 50257, m = 64 for 8).
    assert_eq!(ms.gemm(GemmOp::Nt, 8.0, 64.0, 50257.0), ms.gemm(GemmOp::Nt, 64.0, 64.0, 4096.0));
    assert_eq!(ms.attention(32.0), (1e11, 1e11));
    assert!((ms.attention(256.0).0 - 1.5e11).abs() < 1.0);
}

/// On a measured machine the measured rates set the step: twice the GEMM rate takes
/// the GEMM share out, and the head is costed per chunk of rows.
#[test]
fn a_measured_machine_times_its_kernels_from_the_measurements() {
    let mut j = job("gpt2-mini", "selene", 1, 16);
    j.machine.gpu.peak_bf16 = j.machine.gpu.peak_fp32; // fp32, as on a CPU
    let l = layout(1, 1, 1, 0, 4, Recompute::None, 1);
    let cal = Calibration::default();
    let slow: &'static _ = Box::leak(Box::new(measured(|_, _, _| 1e11)));
    let fast: &'static _ = Box::leak(Box::new(measured(|_, _, _| 2e11)));
    j.machine.gpu.measured = Some(slow);
    let a = estimate(&j, &l, &cal).step;
    j.machine.gpu.measured = Some(fast);
    let b = estimate(&j, &l, &cal).step;
    assert!(b.compute < a.compute && b.compute > a.compute / 2.0, "{} {}", a.compute, b.compute);
    // The catalog's GEMM fraction no longer matters.
    j.machine.gpu.gemm_eff /= 2.0;
    assert_eq!(estimate(&j, &l, &cal).step.compute, b.compute);
    // Smaller head chunks: the same FLOPs at the rate of thinner GEMMs (here equal), so
    // the same time with a flat rate table.
    let mut chunked = fast.clone();
    chunked.head_chunk_floats = 50257.0 * 100.0;
    j.machine.gpu.measured = Some(Box::leak(Box::new(chunked)));
    assert!((estimate(&j, &l, &cal).step.compute - b.compute).abs() / b.compute < 1e-9);
}

#[test]
fn the_framework_changes_traffic_and_memory_as_documented() {
    use planner::layout::Stack;
    use planner::memory::memory;
    let cal = Calibration::default();
    let j = job("gpt3-175b", "selene", 1536, 1536);
    let with = |l: Layout, stack: Stack| estimate(&j, &Layout { stack, ..l }, &cal);
    // ZeRO-0 gradients reduced in fp32: twice the bytes, the same collective.
    let ddp = layout(8, 12, 16, 0, 1, Recompute::Full, 1);
    let plain = with(ddp, Stack { dp_exposed: true, ..Stack::default() });
    let fp32 = with(ddp, Stack { dp_exposed: true, grad_fp32: true, ..Stack::default() });
    let ratio = fp32.step.dp_comm / plain.step.dp_comm;
    assert!((ratio - 2.0).abs() < 0.05, "fp32 gradients move {ratio}x the bytes");
    // and hold them in an fp32 buffer.
    let (m16, m32) = (memory(&j.model, &ddp, 1536, 2048.0, 1.0), memory(&j.model, &Layout { stack: Stack { grad_fp32: true, ..Stack::default() }, ..ddp }, 1536, 2048.0, 1.0));
    assert!((m32.gradients / m16.gradients - 2.0).abs() < 1e-9);
    // Exposed reduction: none of it hidden; overlapped: part of it.
    let hidden = with(ddp, Stack::default());
    assert!(hidden.step.dp_comm < plain.step.dp_comm);
    // DeepSpeed's ZeRO-3 regathers for the recomputed forward: 4 transfers instead of 3,
    // and only under full recompute.
    let z3 = layout(1, 1, 1536, 3, 1, Recompute::Full, 1);
    let fsdp = with(z3, Stack::default());
    let ds = with(z3, Stack { zero3_regather: true, ..Stack::default() });
    let (a, b) = (fsdp.step.dp_comm + cal.zero3_overlap * fsdp.step.compute, ds.step.dp_comm + cal.zero3_overlap * ds.step.compute);
    assert!(((b / a) - 4.0 / 3.0).abs() < 0.02, "{b} / {a}");
    let z3_none = layout(1, 1, 1536, 3, 1, Recompute::None, 1);
    assert_eq!(with(z3_none, Stack::default()).step.total, with(z3_none, Stack { zero3_regather: true, ..Stack::default() }).step.total);
}

#[test]
fn flash_attention_2_on_hopper_runs_at_its_published_fraction_and_on_ampere_unchanged() {
    use planner::layout::Stack;
    let cal = Calibration::default();
    let l = Layout { flash: true, ..layout(1, 1, 8, 1, 2, Recompute::None, 1) };
    let fa2 = Layout { stack: Stack { fa2_attention: true, ..Stack::default() }, ..l };
    let step = |j: &Job, l: &Layout| estimate(j, l, &cal).step.compute;
    // H100: only the attention core slows, by 1 / 0.47 (FA2 35% vs FA3 75% of peak).
    let h = job("llama3-8b", "dgx-h100-superpod", 8, 16);
    assert_eq!(h.machine.gpu.fa2_attention_rel, 0.47);
    let (native, slow) = (step(&h, &l), step(&h, &fa2));
    let mut no_attn = h.clone();
    no_attn.seq = 16; // attention ~ s^2 vanishes next to the linears ~ s
    assert!(slow > native * 1.05, "{native} -> {slow}");
    assert!((step(&no_attn, &fa2) - step(&no_attn, &l)) / step(&no_attn, &l) < 0.01);
    // The extra time is the attention's at 1/0.47 - 1 more: longer sequences pay more.
    let mut long = h.clone();
    long.seq = 4 * h.seq;
    let extra = |j: &Job| (step(j, &fa2) - step(j, &l)) / step(j, &l);
    assert!(extra(&long) > extra(&h), "{} {}", extra(&h), extra(&long));
    // A100: FA2 is its own kernel.
    let a = job("llama3-8b", "selene", 8, 16);
    assert_eq!(step(&a, &l), step(&a, &fa2));
}

#[test]
fn fp8_keeps_linear_inputs_in_one_byte_and_llama_has_no_dropout_masks() {
    use planner::memory::block_activation_bytes;
    let gpt = model("gpt3-175b").unwrap();
    let (s, b, t) = (2048.0, 1.0, 8.0);
    let h = gpt.hidden as f64;
    let sbh = s * b * h;
    let bf16 = block_activation_bytes(&gpt, b, s, t, Recompute::Selective, true, true, false);
    let fp8 = block_activation_bytes(&gpt, b, s, t, Recompute::Selective, true, true, true);
    // Two normed inputs (h each) and the down-projection input (4h) lose a byte an
    // element; the attention output gains its 1-byte copy (h): 5 sbh / t fewer.
    assert!(((bf16 - fp8) / (sbh / t) - 5.0).abs() < 1e-9, "{}", (bf16 - fp8) / (sbh / t));
    let llama = model("llama3-70b").unwrap();
    let hl = llama.hidden as f64;
    let (q, kv, f) = (llama.q_width() as f64, llama.kv_width() as f64, llama.ffn as f64);
    let got = block_activation_bytes(&llama, b, s, 1.0, Recompute::Selective, false, true, false);
    let want = s * b * (8.0 * hl + 4.0 * q + 4.0 * kv + 6.0 * f);
    assert!((got / want - 1.0).abs() < 1e-12, "{got} vs {want}");
}
