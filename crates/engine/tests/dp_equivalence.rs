//! The main test of data parallelism: on a tiny seeded GPT, every (dp, ZeRO stage,
//! recompute) layout must reproduce the single-rank run with the same global batch:
//! the loss at each step and the final parameters, within relative 1e-5.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Rank, StepTimes, Trainer};

const STEPS: usize = 10;
const MICRO: usize = 2;

fn dataset(dir: &Path) -> data::Dataset {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt");
    data::prepare(&[corpus], data::TokenizerKind::Char, dir, 0.1, &mut |_, _| {}).expect("prepare");
    data::Dataset::open(dir).expect("open")
}

fn cfg(batch: usize, dp: usize, zero: u8, recompute: &str, accum: usize) -> config::ResolvedConfig {
    cfg_tp(batch, dp, 1, zero, recompute, accum, 2)
}

/// `tiny` with `heads` attention heads (it has 2), over dp x tp ranks.
fn cfg_tp(batch: usize, dp: usize, tp: usize, zero: u8, recompute: &str, accum: usize, heads: usize) -> config::ResolvedConfig {
    cfg_sp(batch, dp, tp, zero, recompute, accum, heads, false)
}

#[allow(clippy::too_many_arguments)]
fn cfg_sp(batch: usize, dp: usize, tp: usize, zero: u8, recompute: &str, accum: usize, heads: usize, sp: bool) -> config::ResolvedConfig {
    let sets: Vec<String> = [
        format!("parallel.sp={sp}"),
        format!("parallel.tp={tp}"),
        format!("model.n_head={heads}"),
        format!("train.batch_size={batch}"),
        format!("train.grad_accum={accum}"),
        format!("parallel.dp={dp}"),
        format!("parallel.zero={zero}"),
        format!("parallel.recompute=\"{recompute}\""),
        "train.steps=10".into(),
        "optim.warmup_steps=2".into(),
        "optim.grad_clip=0.5".into(), // clipping is active: the global norm must agree too
        "log.peak_flops=1e11".into(),
    ]
    .into();
    config::resolve(Some("tiny"), None, &sets).expect("config")
}

type Run = (Vec<f64>, Vec<Vec<f32>>);

fn train(t: &mut Trainer) -> Run {
    let mut times = StepTimes::default();
    let losses = (0..STEPS).map(|_| t.train_step(&mut times).expect("step").0).collect();
    (losses, t.full_params().expect("gather"))
}

fn single(dir: &Path, global: usize) -> Run {
    let mut t = Trainer::new(cfg(global, 1, 0, "none", 1), data::Dataset::open(dir).unwrap(), Path::new("")).unwrap();
    train(&mut t)
}

fn parallel(dir: &Path, dp: usize, zero: u8, recompute: &str, accum: usize) -> Run {
    let out = comm::run_local(dp, Duration::from_secs(60), |c| {
        let rank = Rank::new(&c)?;
        let data = data::Dataset::open(dir).map_err(engine::EngineError::from)?;
        let mut t = Trainer::with_rank(cfg(MICRO, dp, zero, recompute, accum), data, Path::new(""), rank)?;
        Ok::<_, engine::EngineError>(train(&mut t))
    })
    .expect("ranks");
    // Every rank agrees on the loss and on the gathered parameters.
    for o in &out[1..] {
        assert_eq!(o.0, out[0].0, "ranks disagree on the loss");
        assert_eq!(o.1, out[0].1, "ranks disagree on the parameters");
    }
    out.into_iter().next().unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

fn assert_matches(label: &str, got: &Run, want: &Run) {
    for (s, (a, b)) in got.0.iter().zip(&want.0).enumerate() {
        assert!(((a - b) / b).abs() < 1e-5, "{label}: loss at step {} is {a}, single rank {b}", s + 1);
    }
    for (i, (a, b)) in got.1.iter().zip(&want.1).enumerate() {
        let e = rel(a, b);
        assert!(e < 1e-5, "{label}: bucket {i} differs from single rank by relative {e:e}");
    }
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    dataset(&d);
    (t, d)
}

fn check_dp(dp: usize) {
    let (_t, dir) = tmp();
    let want = single(&dir, MICRO * dp);
    assert!(want.0[STEPS - 1] < want.0[0], "the reference run must learn: {:?}", want.0);
    for zero in 0..=3u8 {
        for recompute in ["none", "full", "selective"] {
            let got = parallel(&dir, dp, zero, recompute, 1);
            assert_matches(&format!("dp={dp} zero={zero} recompute={recompute}"), &got, &want);
        }
    }
}

/// One rank under every ZeRO stage (stage 1 once left its gradient outside the shard
/// the optimizer reads, so a single-rank `parallel.zero = 1` run did not learn).
#[test]
fn dp1_all_stages_match_single_rank() {
    check_dp(1);
}

#[test]
fn dp2_all_stages_match_single_rank() {
    check_dp(2);
}

#[test]
fn dp3_all_stages_match_single_rank() {
    check_dp(3);
}

#[test]
fn dp4_all_stages_match_single_rank() {
    check_dp(4);
}

#[test]
fn accumulation_across_ranks_matches_single_rank() {
    let (_t, dir) = tmp();
    let want = single(&dir, MICRO * 2 * 2);
    for zero in 0..=3u8 {
        let got = parallel(&dir, 2, zero, "none", 2);
        assert_matches(&format!("dp=2 accum=2 zero={zero}"), &got, &want);
    }
}

/// Communication counted, not guessed: one step moves exactly the bucket traffic of the
/// ZeRO paper's stages (Rajbhandari et al. 2020) on the background stream, every bucket
/// padded to a multiple of dp. With B buckets of padded sizes P_b (blocks: P_l), A
/// micro-batches per step:
///   stage 0: all-reduce of every gradient bucket once (sum P_b);
///   stage 1: reduce-scatter of every gradient bucket once, all-gather of the updated
///            parameters once;
///   stage 2: reduce-scatter after each micro-batch's backward (A x sum P_b), all-gather once;
///   stage 3: reduce-scatter as stage 2; parameters gathered before every use: each
///            bucket in the forward and the blocks again in the backward (A x (sum P_b + sum P_l)).
#[test]
fn one_step_moves_exactly_the_zero_stage_traffic() {
    let (_tmp, dir) = tmp();
    let (dp, accum) = (2, 2);
    for zero in 0..=3u8 {
        let out = comm::run_local(dp, Duration::from_secs(60), |c| {
            let rank = Rank::new(&c)?;
            let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
            let mut t = Trainer::with_rank(cfg(MICRO, dp, zero, "none", accum), data, Path::new(""), rank)?;
            t.rank.flight.reset_traffic();
            t.train_step(&mut StepTimes::default())?;
            let padded: Vec<u64> = t.shards.iter().map(|s| (s.padded(dp) * 4) as u64).collect();
            let blocks: u64 = padded[1..padded.len() - 1].iter().sum();
            Ok::<_, engine::EngineError>((t.rank.flight.traffic(), padded, blocks))
        })
        .expect("ranks");
        for (traffic, padded, blocks) in out {
            let (nb, all): (u64, u64) = (padded.len() as u64, padded.iter().sum());
            let a = accum as u64;
            let want: Vec<(&str, u64, u64)> = match zero {
                0 => vec![("all_reduce", nb, all)],
                1 => vec![("all_gather", nb, all), ("reduce_scatter", nb, all)],
                2 => vec![("all_gather", nb, all), ("reduce_scatter", a * nb, a * all)],
                _ => vec![("all_gather", a * (nb + nb - 2), a * (all + blocks)), ("reduce_scatter", a * nb, a * all)],
            };
            let got: Vec<(&str, u64, u64)> =
                traffic.iter().filter(|t| t.group == "dp.stream").map(|t| (t.op.as_str(), t.calls, t.bytes)).collect();
            assert_eq!(got, want, "ZeRO-{zero}: bucket traffic of one step (op, calls, bytes)");
        }
    }
}

/// Tensor parallelism composed with ZeRO data parallelism: tp 2 and 4 alone, and dp 2 x
/// tp 2 under every ZeRO stage, with and without sequence parallelism, give the
/// single-rank run's losses and parameters (each tp rank's parameters are its parts of
/// the single-rank model's).
#[test]
fn tp_and_dp_by_tp_match_single_rank() {
    let (_t, dir) = tmp();
    let layouts = [(1, 2, vec![0u8], false), (1, 4, vec![0], false), (2, 2, vec![0, 1, 2, 3], false), (1, 2, vec![0], true), (2, 2, vec![1, 3], true), (1, 4, vec![0], true)];
    for (dp, tp, zeros, sp) in layouts {
        let mut w = Trainer::new(cfg_tp(MICRO * dp, 1, 1, 0, "none", 1, 4), data::Dataset::open(&dir).unwrap(), Path::new("")).unwrap();
        let want = train(&mut w);
        for zero in zeros {
            for recompute in ["none", "full"] {
                let label = format!("dp={dp} tp={tp} sp={sp} zero={zero} recompute={recompute}");
                let out = comm::run_local(dp * tp, Duration::from_secs(60), |c| {
                    let rank = Rank::with_tp(&c, tp)?;
                    let tp_rank = rank.tp_rank;
                    let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
                    let mut t = Trainer::with_rank(cfg_sp(MICRO, dp, tp, zero, recompute, 1, 4, sp), data, Path::new(""), rank)?;
                    let run = train(&mut t);
                    // The single-rank model's parameters, cut to this rank's parts.
                    let whole = model::Gpt::new(t.global.clone());
                    let mut expected = t.gpt.zeros();
                    whole.layout.tp_extract(&want.1, &t.gpt.layout, &mut expected, tp, tp_rank);
                    Ok::<_, engine::EngineError>((run, expected))
                })
                .expect("ranks");
                for (r, (got, expected)) in out.iter().enumerate() {
                    assert_matches(&format!("{label} rank {r}"), got, &(want.0.clone(), expected.clone()));
                }
            }
        }
    }
}

/// Checkpoints of tensor-parallel layouts: every layout writes its parts as slices of
/// the whole tensors, and any other layout continues from them. 2 steps at dp 2 x tp 2
/// (ZeRO 1), then 1 step at tp 4 (ZeRO 0), then 1 at dp 2 x tp 2 (ZeRO 3), then 1 on a
/// single rank: every loss and the final parameters match the continuous single-rank run.
#[test]
fn tp_checkpoints_reshard_across_layouts() {
    let (tmpdir, dir) = tmp();
    let run = tmpdir.path().join("run");
    let steps = 5;
    let mut w = Trainer::new(cfg_tp(MICRO * 2, 1, 1, 0, "none", 1, 4), data::Dataset::open(&dir).unwrap(), Path::new("")).unwrap();
    let mut times = StepTimes::default();
    let want: Vec<f64> = (0..steps).map(|_| w.train_step(&mut times).unwrap().0).collect();
    let want_params = w.full_params().unwrap();
    let mut losses = Vec::new();
    // (dp, tp, zero, accumulation: the global batch stays MICRO * 2, steps)
    for (dp, tp, zero, accum, n) in [(2, 2, 1u8, 1, 2), (1, 4, 0, 2, 1), (2, 2, 3, 1, 1), (1, 1, 0, 2, 1)] {
        let out = comm::run_local(dp * tp, Duration::from_secs(60), |c| {
            let rank = Rank::with_tp(&c, tp)?;
            let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
            let mut t = Trainer::with_rank(cfg_tp(MICRO, dp, tp, zero, "none", accum, 4), data, &run, rank)?;
            if let Ok(ck) = engine::open_checkpoint(&run) {
                t.restore(&ck)?;
            }
            let mut times = StepTimes::default();
            let l: Vec<f64> = (0..n).map(|_| t.train_step(&mut times).map(|x| x.0)).collect::<Result<_, _>>()?;
            t.save_checkpoint(&mut engine::Quiet)?;
            Ok::<_, engine::EngineError>((l, if tp == 1 { Some(t.full_params()?) } else { None }))
        })
        .expect("ranks");
        losses.extend(out[0].0.clone());
        if let Some(p) = &out[0].1 {
            assert_matches("dp2tp2 -> tp4 -> dp2tp2 zero3 -> single", &(losses.clone(), p.clone()), &(want.clone(), want_params.clone()));
        }
    }
    assert_eq!(losses.len(), steps);
}

/// Tensor-parallel traffic counted, not guessed (Megatron-LM, Shoeybi et al. 2019):
/// per micro-batch of n = b*s rows of width h, each layer all-reduces b*s*h values 4
/// times (after attention and after the MLP in the forward, their conjugates in the
/// backward); the vocabulary-parallel embedding adds one, the head one for d x and three
/// of n values (row maxima, target logits, sums of exponentials). With full recompute
/// the forward's two per layer run again in the backward. The gradient norm gathers one
/// f64 per rank.
#[test]
fn one_step_moves_exactly_the_megatron_tp_traffic() {
    let (_tmp, dir) = tmp();
    let (tp, accum) = (2, 2);
    for recompute in ["none", "full"] {
        let out = comm::run_local(tp, Duration::from_secs(60), |c| {
            let rank = Rank::with_tp(&c, tp)?;
            let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
            let mut t = Trainer::with_rank(cfg_tp(MICRO, 1, tp, 0, recompute, accum, 4), data, Path::new(""), rank)?;
            t.rank.flight.reset_traffic();
            t.train_step(&mut StepTimes::default())?;
            let (n, h, layers) = ((MICRO * t.cfg.raw.model.block_size) as u64, t.global.hidden as u64, t.global.layers as u64);
            Ok::<_, engine::EngineError>((t.rank.flight.traffic(), n, h, layers))
        })
        .expect("ranks");
        for (traffic, n, h, layers) in out {
            let per_layer = if recompute == "full" { 6 } else { 4 };
            let a = accum as u64;
            let calls = a * (per_layer * layers + 1 + 1 + 3);
            let bytes = 4 * a * ((per_layer * layers + 2) * n * h + 3 * n);
            let got: Vec<(&str, u64, u64)> = traffic.iter().filter(|t| t.group == "tp").map(|t| (t.op.as_str(), t.calls, t.bytes)).collect();
            // Plus the gradient norm's partial sums: one f64 per tp rank, gathered once.
            let want = vec![("all_gather", 1, 8 * tp as u64), ("all_reduce", calls, bytes)];
            assert_eq!(got, want, "recompute={recompute}: tp traffic of one step (op, calls, bytes)");
        }
    }
}

/// With sequence parallelism the all-reduces of b*s*h become all-gathers and
/// reduce-scatters of b*s*h (Korthikanti et al. 2022): per layer and micro-batch, the
/// forward gathers each norm's output and scatters each row-parallel output (2 + 2),
/// the backward gathers the two incoming gradients and the two norm outputs again (4)
/// and scatters the two input gradients (2); the embedding scatters, the head gathers
/// its input and scatters d x, the embedding's backward gathers. What is left to
/// all-reduce is small: 3 x n for the cross-entropy and 4h per norm pair's weights.
#[test]
fn one_step_moves_exactly_the_sequence_parallel_traffic() {
    let (_tmp, dir) = tmp();
    let (tp, accum) = (2, 2);
    let out = comm::run_local(tp, Duration::from_secs(60), |c| {
        let rank = Rank::with_tp(&c, tp)?;
        let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
        let mut t = Trainer::with_rank(cfg_sp(MICRO, 1, tp, 0, "none", accum, 4, true), data, Path::new(""), rank)?;
        t.rank.flight.reset_traffic();
        t.train_step(&mut StepTimes::default())?;
        let (n, h, layers) = ((MICRO * t.cfg.raw.model.block_size) as u64, t.global.hidden as u64, t.global.layers as u64);
        Ok::<_, engine::EngineError>((t.rank.flight.traffic(), n, h, layers))
    })
    .expect("ranks");
    for (traffic, n, h, l) in out {
        let a = accum as u64;
        let (ag, rs) = (a * (6 * l + 2), a * (4 * l + 2));
        let ar_calls = a * (3 + l + 1);
        let ar_bytes = 4 * a * (3 * n + (l + 1) * 4 * h);
        let want = vec![
            // The gradient norm's partial sums add one gather of one f64 per rank.
            ("all_gather", ag + 1, 4 * ag * n * h + 8 * tp as u64),
            ("all_reduce", ar_calls, ar_bytes),
            ("reduce_scatter", rs, 4 * rs * n * h),
        ];
        let got: Vec<(&str, u64, u64)> = traffic.iter().filter(|t| t.group == "tp").map(|t| (t.op.as_str(), t.calls, t.bytes)).collect();
        assert_eq!(got, want, "sequence-parallel traffic of one step (op, calls, bytes)");
    }
}
