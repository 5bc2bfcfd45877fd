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

#[test]
fn pipeline_bubble_is_p_minus_1_over_v_m() {
    let j = job("gpt3-175b", "selene", 4480, 512);
    let cal = Calibration::default();
    for (v, m) in [(1u64, 64u64), (3, 64), (1, 128)] {
        let l = layout(8, 8, 512 / (m), 0, 1, Recompute::Selective, v);
        let e = estimate(&j, &l, &cal);
        assert_eq!(e.micro_batches, m);
        let per_micro =
            (e.step.total - e.step.bubble - e.step.pp_comm - e.step.dp_comm - e.step.optimizer)
                / m as f64;
        let want = 7.0 / v as f64 * per_micro;
        assert!(
            (e.step.bubble - want).abs() / want < 1e-9,
            "v={v} m={m}: {} vs {want}",
            e.step.bubble
        );
        // As a fraction of the busy time: (p-1)/(v m).
        assert!((e.step.bubble / (per_micro * m as f64) - 7.0 / (v * m) as f64).abs() < 1e-9);
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
    assert!(
        b.fits && b.layout.tp <= 8 && b.layout.pp > 1,
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
    assert!(thin > 1.3 * fat);
}
