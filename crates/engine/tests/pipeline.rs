//! The main test of pipeline parallelism (with tensor, sequence and ZeRO data
//! parallelism): on tiny GPT-2 and Llama models, factorisations of 2, 4 and 8 ranks
//! into dp x tp x pp, 1F1B and interleaved, recompute none and full, ZeRO 0-3 on the
//! dp axis, must reproduce the single-rank run with the same global batch: the loss at
//! every step and the final parameters, within relative 1e-5.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Rank, StepTimes, Trainer};

const STEPS: usize = 10;
const MICRO: usize = 2;

#[derive(Clone, Copy, Debug)]
struct Layout {
    dp: usize,
    tp: usize,
    pp: usize,
    v: usize,
    sp: bool,
    zero: u8,
    recompute: &'static str,
}

impl Layout {
    fn ranks(&self) -> usize {
        self.dp * self.tp * self.pp
    }
}

fn dataset(dir: &Path) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt");
    data::prepare(&[corpus], data::TokenizerKind::Char, dir, 0.1, &mut |_, _| {}).expect("prepare");
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    dataset(&d);
    (t, d)
}

/// `tiny` with `layers` blocks and 4 heads (GPT-2), or the same as Llama blocks (2
/// key/value heads, untied head), over `l`, with `accum` micro-batches of MICRO per step.
fn cfg(llama: bool, layers: usize, l: Layout, batch: usize, accum: usize) -> config::ResolvedConfig {
    let mut sets: Vec<String> = vec![
        format!("model.n_layer={layers}"),
        "model.n_head=4".into(),
        format!("parallel.dp={}", l.dp),
        format!("parallel.tp={}", l.tp),
        format!("parallel.pp={}", l.pp),
        format!("parallel.sp={}", l.sp),
        format!("parallel.zero={}", l.zero),
        format!("parallel.recompute=\"{}\"", l.recompute),
        format!("train.batch_size={batch}"),
        format!("train.grad_accum={accum}"),
        "train.steps=10".into(),
        "optim.warmup_steps=2".into(),
        "optim.grad_clip=0.5".into(), // clipping is active: the global norm must agree too
        "log.peak_flops=1e11".into(),
    ];
    if l.v > 1 {
        sets.push("parallel.schedule=\"interleaved\"".into());
        sets.push(format!("parallel.virtual_stages={}", l.v));
    }
    if llama {
        sets.extend(["model.arch=\"llama\"".into(), "model.n_kv_head=2".into(), "model.tie_embeddings=false".into(), "model.bias=false".into()]);
    }
    config::resolve(Some("tiny"), None, &sets).expect("config")
}

type Run = (Vec<f64>, Vec<Vec<f32>>);

fn train(t: &mut Trainer, steps: usize) -> engine::Result<Run> {
    let mut times = StepTimes::default();
    let losses = (0..steps).map(|_| t.train_step(&mut times).map(|x| x.0)).collect::<engine::Result<_>>()?;
    Ok((losses, t.full_params()?))
}

fn single(dir: &Path, llama: bool, layers: usize, global_micro: usize, accum: usize) -> Run {
    let l = Layout { dp: 1, tp: 1, pp: 1, v: 1, sp: false, zero: 0, recompute: "none" };
    let mut t = Trainer::new(cfg(llama, layers, l, global_micro, accum), data::Dataset::open(dir).unwrap(), Path::new("")).unwrap();
    train(&mut t, STEPS).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

fn assert_matches(label: &str, got: &Run, want: &Run) {
    assert_eq!(got.0.len(), want.0.len(), "{label}: steps");
    for (s, (a, b)) in got.0.iter().zip(&want.0).enumerate() {
        assert!(((a - b) / b).abs() < 1e-5, "{label}: loss at step {} is {a}, single rank {b}", s + 1);
    }
    assert_eq!(got.1.len(), want.1.len(), "{label}: buckets");
    for (i, (a, b)) in got.1.iter().zip(&want.1).enumerate() {
        let e = rel(a, b);
        assert!(e < 1e-5, "{label}: bucket {i} differs from single rank by relative {e:e}");
    }
}

/// Runs `l` on thread ranks; returns every rank's run and the reference cut to its
/// tensor-parallel part.
fn parallel(dir: &Path, llama: bool, layers: usize, l: Layout, accum: usize, want: &Run) -> Vec<(Run, Vec<Vec<f32>>)> {
    comm::run_local(l.ranks(), Duration::from_secs(120), |c| {
        let rank = Rank::with_mesh(&c, l.tp, l.pp, l.v > 1)?;
        let tp_rank = rank.tp_rank;
        let data = data::Dataset::open(dir).map_err(engine::EngineError::from)?;
        let mut t = Trainer::with_rank(cfg(llama, layers, l, MICRO, accum), data, Path::new(""), rank)?;
        let run = train(&mut t, STEPS)?;
        let whole = model::Gpt::new(t.global.clone());
        let mut expected = t.gpt.zeros();
        whole.layout.tp_extract(&want.1, &t.gpt.layout, &mut expected, l.tp, tp_rank);
        Ok::<_, engine::EngineError>((run, expected))
    })
    .expect("ranks")
}

fn check(llama: bool, layers: usize, accum: usize, layouts: &[Layout]) {
    let (_t, dir) = tmp();
    let mut refs: std::collections::HashMap<usize, Run> = Default::default();
    for l in layouts {
        let want = refs.entry(l.dp).or_insert_with(|| single(&dir, llama, layers, MICRO * l.dp, accum)).clone();
        assert!(want.0[STEPS - 1] < want.0[0], "the reference run must learn: {:?}", want.0);
        let label = format!("{} L={layers} m={accum} {l:?}", if llama { "llama" } else { "gpt2" });
        for (r, (got, expected)) in parallel(&dir, llama, layers, *l, accum, &want).iter().enumerate() {
            assert_matches(&format!("{label} rank {r}"), got, &(want.0.clone(), expected.clone()));
        }
    }
}

const fn lay(dp: usize, tp: usize, pp: usize, v: usize, sp: bool, zero: u8, recompute: &'static str) -> Layout {
    Layout { dp, tp, pp, v, sp, zero, recompute }
}

#[test]
fn gpt2_pipelines_match_single_rank() {
    check(
        false,
        4,
        4,
        &[
            lay(1, 1, 2, 1, false, 0, "none"),
            lay(1, 1, 2, 1, false, 0, "full"),
            lay(1, 1, 4, 1, false, 0, "none"),
            lay(1, 1, 2, 2, false, 0, "none"),
            lay(2, 1, 2, 1, false, 1, "selective"),
            lay(2, 1, 2, 1, false, 3, "full"),
            lay(1, 2, 2, 1, false, 0, "none"),
            lay(1, 2, 2, 1, true, 0, "none"),
            lay(2, 2, 2, 1, true, 1, "none"),
            lay(2, 2, 2, 2, false, 3, "full"),
        ],
    );
}

#[test]
fn gpt2_deeper_pipelines_of_8_ranks_match_single_rank() {
    check(
        false,
        8,
        8,
        &[
            lay(1, 1, 4, 2, false, 0, "selective"),
            lay(2, 1, 4, 1, false, 2, "none"),
            lay(1, 2, 4, 1, true, 0, "full"),
            lay(1, 1, 8, 1, false, 0, "none"),
            lay(4, 1, 2, 2, false, 3, "none"),
            lay(1, 4, 2, 1, true, 1, "none"),
        ],
    );
}

#[test]
fn llama_pipelines_match_single_rank() {
    check(
        true,
        4,
        4,
        &[
            lay(1, 1, 2, 1, false, 0, "none"),
            lay(1, 1, 4, 1, false, 0, "full"),
            lay(1, 1, 2, 2, false, 0, "none"),
            lay(2, 1, 2, 1, false, 3, "none"),
            lay(1, 2, 2, 1, true, 1, "selective"),
            lay(2, 2, 2, 1, false, 0, "full"),
        ],
    );
}

/// The reshard chain: 2 steps at dp2 x tp2 x pp2 (ZeRO 1, sequence parallel), then 2
/// at tp4 x pp2, then 2 at pp4 (interleaved, 2 chunks per rank, ZeRO 3, full
/// recompute), then 2 on one rank, each continuing from the previous layout's
/// checkpoint: every loss and the final parameters match the continuous single-rank run.
#[test]
fn pipeline_checkpoints_reshard_across_layouts() {
    let (tmpdir, dir) = tmp();
    let run = tmpdir.path().join("run");
    let (layers, global) = (8, 8);
    let want = {
        let l = lay(1, 1, 1, 1, false, 0, "none");
        let mut t = Trainer::new(cfg(false, layers, l, global, 1), data::Dataset::open(&dir).unwrap(), Path::new("")).unwrap();
        train(&mut t, 8).unwrap()
    };
    let mut losses = Vec::new();
    // (layout, micro-batch size, accumulation: the global batch stays 8)
    let chain = [(lay(2, 2, 2, 1, true, 1, "none"), 1, 4), (lay(1, 4, 2, 1, false, 0, "none"), 2, 4), (lay(1, 1, 4, 2, false, 3, "full"), 2, 4), (lay(1, 1, 1, 1, false, 0, "none"), 4, 2)];
    for (l, batch, accum) in chain {
        let out = comm::run_local(l.ranks(), Duration::from_secs(120), |c| {
            let rank = Rank::with_mesh(&c, l.tp, l.pp, l.v > 1)?;
            let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
            let mut t = Trainer::with_rank(cfg(false, layers, l, batch, accum), data, &run, rank)?;
            if let Ok(ck) = engine::open_checkpoint(&run) {
                t.restore(&ck)?;
            }
            let (l, p) = train(&mut t, 2)?;
            t.save_checkpoint(&mut engine::Quiet)?;
            Ok::<_, engine::EngineError>((l, p, t.rank.tp))
        })
        .expect("ranks");
        losses.extend(out[0].0.clone());
        if out[0].2 == 1 {
            let label = format!("chain up to {l:?}");
            let n = losses.len();
            assert_matches(&label, &(losses.clone(), out[0].1.clone()), &(want.0[..n].to_vec(), if n == 8 { want.1.clone() } else { out[0].1.clone() }));
        }
    }
    assert_eq!(losses.len(), 8);
    assert_matches("dp2tp2pp2 -> tp4pp2 -> pp4 v2 -> single", &(losses, Vec::new()), &(want.0, Vec::new()));
}

/// Pipeline traffic counted, not guessed: per micro-batch and per chunk boundary, one
/// activation forward and one gradient backward of b*s*h / tp values each (with tp > 1
/// a stage sends its tp rank's rows, gathered over tp on receipt; with sequence
/// parallelism the rows are the rank's anyway). The pipeline group gathers one f64 per
/// stage twice (the loss and the gradient norm), and the two ends sum the tied
/// embedding's gradient once.
#[test]
fn one_step_moves_exactly_the_pipeline_traffic() {
    let (_tmp, dir) = tmp();
    let m = 4;
    for l in [lay(1, 2, 2, 1, false, 0, "none"), lay(1, 2, 2, 1, true, 0, "none"), lay(1, 1, 4, 2, false, 0, "none"), lay(2, 1, 2, 1, false, 1, "none")] {
        let out = comm::run_local(l.ranks(), Duration::from_secs(60), |c| {
            let rank = Rank::with_mesh(&c, l.tp, l.pp, l.v > 1)?;
            let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
            let mut t = Trainer::with_rank(cfg(false, 8, l, MICRO, m), data, Path::new(""), rank)?;
            t.rank.flight.reset_traffic();
            t.train_step(&mut StepTimes::default())?;
            let (n, h) = ((MICRO * t.cfg.raw.model.block_size) as u64, t.global.hidden as u64);
            let embed = t.gpt.layout.buckets[0].numel as u64;
            Ok::<_, engine::EngineError>((t.rank.flight.traffic(), t.rank.pp_rank, n, h, embed))
        })
        .expect("ranks");
        let chunks = l.pp * l.v;
        let mut total = 0;
        for (traffic, p, n, h, embed) in out {
            let msg = 4 * n * h / l.tp as u64;
            // This stage's chunks that send an activation on (all but the last chunk) and
            // a gradient back (all but the first).
            let fwd = (0..l.v).filter(|k| k * l.pp + p + 1 < chunks).count() as u64;
            let bwd = (0..l.v).filter(|k| k * l.pp + p > 0).count() as u64;
            let sum = |op: &str, prefix: &str| -> (u64, u64) {
                traffic.iter().filter(|t| t.op == op && t.group.starts_with(prefix)).fold((0, 0), |a, t| (a.0 + t.calls, a.1 + t.bytes))
            };
            let label = format!("{l:?} stage {p}");
            assert_eq!(sum("send", "pp.act"), (m as u64 * fwd, m as u64 * fwd * msg), "{label}: activations sent");
            assert_eq!(sum("send", "pp.grad"), (m as u64 * bwd, m as u64 * bwd * msg), "{label}: gradients sent");
            assert_eq!(sum("recv", "pp.act"), (m as u64 * bwd, m as u64 * bwd * msg), "{label}: activations received");
            assert_eq!(sum("recv", "pp.grad"), (m as u64 * fwd, m as u64 * fwd * msg), "{label}: gradients received");
            let group: Vec<(&str, u64, u64)> = traffic.iter().filter(|t| t.group == "pp").map(|t| (t.op.as_str(), t.calls, t.bytes)).collect();
            assert_eq!(group, vec![("all_gather", 2, 2 * 8 * l.pp as u64)], "{label}: pipeline group");
            let ends: Vec<(&str, u64, u64)> = traffic.iter().filter(|t| t.group == "pp.ends").map(|t| (t.op.as_str(), t.calls, t.bytes)).collect();
            let end = p == 0 || p + 1 == l.pp;
            let shard = if l.zero == 0 { embed } else { embed.div_ceil(l.dp as u64) };
            assert_eq!(ends, if end { vec![("all_reduce", 1, 4 * shard)] } else { vec![] }, "{label}: tied embedding");
            total += sum("send", "pp.").0;
        }
        // Per pipeline (one per tp x dp index): 2 messages per boundary per micro-batch.
        let msgs = 2 * (chunks as u64 - 1) * m as u64 * (l.tp * l.dp) as u64;
        assert_eq!(total, msgs, "{l:?}: messages of the whole job");
    }
}

/// A stage holds at most the schedule's number of micro-batches' activations: under
/// 1F1B stage p of 4 keeps 4 - p sets whatever the number of micro-batches; the
/// interleaved schedule, per chunk, the most of that chunk its simulation holds at once.
#[test]
fn a_stage_holds_the_schedules_number_of_micro_batches() {
    let (_tmp, dir) = tmp();
    for (l, m) in [(lay(1, 1, 4, 1, false, 0, "none"), 8), (lay(1, 1, 4, 1, false, 0, "none"), 2), (lay(1, 1, 4, 2, false, 0, "none"), 8)] {
        let out = comm::run_local(l.ranks(), Duration::from_secs(60), |c| {
            let rank = Rank::with_mesh(&c, l.tp, l.pp, l.v > 1)?;
            let p = rank.pp_rank;
            let data = data::Dataset::open(&dir).map_err(engine::EngineError::from)?;
            let mut t = Trainer::with_rank(cfg(false, 8, l, MICRO, m), data, Path::new(""), rank)?;
            t.train_step(&mut StepTimes::default())?;
            t.train_step(&mut StepTimes::default())?;
            Ok::<_, engine::EngineError>((p, t.pipeline_activation_sets().expect("a pipeline")))
        })
        .expect("ranks");
        let schedule = if l.v > 1 { config::PipeSchedule::Interleaved } else { config::PipeSchedule::OneFOneB };
        let sim = engine::pipe::simulate(schedule, l.pp, l.v, m, 1.0, 2.0).unwrap();
        for (p, sets) in out {
            assert_eq!(sets, sim.max_in_flight_chunk[p], "{l:?} m={m} stage {p}");
            if l.v == 1 {
                assert_eq!(sets, vec![(l.pp - p).min(m)], "{l:?} m={m} stage {p}");
            }
        }
    }
}
