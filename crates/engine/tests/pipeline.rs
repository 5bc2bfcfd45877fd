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
            lay(2, 1, 2, 1, false, 1, "none"),
            lay(2, 1, 2, 1, false, 3, "full"),
            lay(1, 2, 2, 1, false, 0, "none"),
            lay(1, 2, 2, 1, true, 0, "none"),
            lay(2, 2, 2, 1, true, 1, "none"),
            lay(2, 2, 2, 2, false, 3, "full"),
        ],
    );
}

#[test]
fn gpt2_interleaved_pp4_matches_single_rank() {
    check(false, 8, 8, &[lay(1, 1, 4, 2, false, 0, "none"), lay(2, 1, 4, 1, false, 2, "none"), lay(1, 2, 4, 1, true, 0, "full")]);
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
            lay(1, 2, 2, 1, true, 1, "none"),
            lay(2, 2, 2, 1, false, 0, "full"),
        ],
    );
}
