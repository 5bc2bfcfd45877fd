//! Data-parallel runs through the CLI: sharded checkpoints that load into another
//! layout (4 ranks ZeRO-3 -> 2 ranks ZeRO-1 -> 1 rank), and a failing rank that ends the
//! job with an error naming it, leaving a loadable checkpoint to resume from with a
//! different number of ranks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::model_tensors;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyperion"))
}

fn base(data: &Path, steps: u64) -> Vec<String> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt");
    [
        "train".to_string(),
        "--preset".into(),
        "tiny".into(),
        "--set".into(),
        format!("data.dir=\"{}\"", data.display()),
        "--set".into(),
        format!("data.inputs=[\"{}\"]", corpus.display()),
        // One play: too few documents for a by-document split.
        "--set".into(),
        "data.split=tail".into(),
        "--set".into(),
        format!("train.steps={steps}"),
        "--set".into(),
        "checkpoint.interval=10".into(),
        // A fixed schedule: extending train.steps on resume must not reshape the LR curve.
        "--set".into(),
        "optim.decay_steps=40".into(),
        "--set".into(),
        "log.progress=false".into(),
        "--set".into(),
        "log.peak_flops=1e11".into(),
        "--sample-tokens".into(),
        "0".into(),
    ]
    .to_vec()
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn resume(run: &Path, extra: &[&str]) -> Output {
    ok(bin().arg("train").arg("--resume").arg(run).args(["--sample-tokens", "0", "--set", "log.progress=false"]).args(extra))
}


fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("data");
    (t, d)
}

#[test]
fn checkpoints_move_between_layouts() {
    let (t, data) = setup();
    let x = t.path().join("x");
    ok(bin().args(base(&data, 20)).args(["--workers", "4", "--set", "parallel.zero=3", "--out"]).arg(&x));
    let manifest = std::fs::read_to_string(x.join("checkpoints/step-00000020/manifest.json")).unwrap();
    assert!(manifest.contains("model-rank00003.safetensors"), "each rank writes its own shard");
    // Sampling and evaluation read a sharded checkpoint whole.
    let out = ok(bin().args(["generate", "--tokens", "12", "--prompt", "O", "--checkpoint"]).arg(&x));
    assert_eq!(String::from_utf8_lossy(&out.stdout).strip_suffix('\n').unwrap().chars().count(), 13);
    ok(bin().args(["eval", "--batches", "1", "--checkpoint"]).arg(&x));
    // By default eval reads what training evaluated at the end (eval_batches global
    // batches of validation sequences), whatever the layout that trained the run.
    let out = ok(bin().args(["eval", "--json", "--checkpoint"]).arg(&x));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cfg = config::ResolvedConfig::from_toml_str(&std::fs::read_to_string(x.join("config.toml")).unwrap()).unwrap();
    let want_tokens = cfg.raw.train.eval_batches * cfg.global_batch * cfg.raw.model.block_size;
    assert_eq!(v["tokens"].as_u64(), Some(want_tokens as u64));
    let metrics = std::fs::read_to_string(x.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let (trained, evaluated) = (last["val_loss"].as_f64().unwrap(), v["val_loss"].as_f64().unwrap());
    assert!((trained - evaluated).abs() < 1e-5 * trained, "training's val loss {trained}, eval's {evaluated}");
    let out = bin().args(["eval", "--batches", "0", "--checkpoint"]).arg(&x).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--batches"));
    let y = t.path().join("y");
    copy_dir(&x, &y);
    // Original layout all the way to step 40.
    resume(&x, &["--set", "train.steps=40"]);
    // 4 x ZeRO-3 -> 2 x ZeRO-1 (to 30) -> 1 rank (to 40).
    let out = resume(&y, &["--workers", "2", "--set", "parallel.zero=1", "--set", "train.steps=30"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("written by dp=4 tp=1 pp=1 zero=3, now dp=2 tp=1 pp=1 zero=1"), "{text}");
    resume(&y, &["--workers", "1", "--set", "parallel.zero=0", "--set", "train.steps=40"]);
    let (a, b) = (model_tensors(&x), model_tensors(&y));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff: f64 = va.iter().zip(vb).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = va.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        assert!(diff <= 1e-5 * norm.max(1e-12), "{na}: relative difference {}", diff / norm);
    }
}

#[test]
fn a_failed_rank_ends_the_job_naming_it_and_the_run_resumes_on_other_ranks() {
    let (t, data) = setup();
    let run = t.path().join("run");
    let start = Instant::now();
    let out = bin()
        .args(base(&data, 40))
        .args(["--workers", "3", "--set", "parallel.zero=2", "--comm-timeout", "20", "--debug-fail", "2:15", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rank 2") && err.contains("step 15"), "{err}");
    assert!(start.elapsed().as_secs() < 20, "the job must end well within the timeout, took {:?}", start.elapsed());
    // The checkpoint of step 10 survived and is loadable; resume on 2 ranks to the end.
    assert_eq!(checkpoint::open(&run).unwrap().step(), 10);
    resume(&run, &["--workers", "2", "--set", "train.batch_size=6"]);
    assert_eq!(checkpoint::open(&run).unwrap().step(), 40);
}

#[test]
fn workers_must_agree_with_the_config() {
    let (t, data) = setup();
    let out = bin().args(base(&data, 5)).args(["--workers", "0", "--out"]).arg(t.path().join("r")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workers"));
    let out = bin()
        .args(base(&data, 5))
        .args(["--set", "train.global_batch=5", "--workers", "2", "--out"])
        .arg(t.path().join("r2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // global = micro x accumulation x dp: the error names the three numbers.
    assert!(err.contains("global_batch") && err.contains('4') && err.contains('2'), "{err}");
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
        .collect()
}

/// Tensor parallelism from the command line (issue 9): `--workers 2 --set parallel.tp=2`
/// runs 4 rank threads; the reshard chain dp2 x tp2 (ZeRO 1) -> tp 4 -> 1 rank matches
/// the continuous single-rank run at every step; eval and export read a tp checkpoint.
#[test]
fn tensor_parallel_runs_reshard_and_match_the_single_rank_run() {
    let (t, data) = setup();
    let four_heads = ["--set", "model.n_head=4", "--set", "train.batch_size=2", "--set", "train.grad_accum=2"];
    let single = t.path().join("single");
    ok(bin().args(base(&data, 30)).args(four_heads).arg("--out").arg(&single));
    let x = t.path().join("x");
    ok(bin().args(base(&data, 10)).args(four_heads).args(["--workers", "2", "--set", "parallel.tp=2", "--set", "parallel.zero=1", "--set", "train.grad_accum=1", "--out"]).arg(&x));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(x.join("checkpoints/step-00000010/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["meta"]["layout"]["tp"].as_u64(), Some(2), "{manifest}");
    assert_eq!(manifest["files"].as_array().unwrap().len(), 8, "4 ranks write a model and an optimizer file each");
    // eval reads the tp checkpoint whole: training's final validation loss.
    let out = ok(bin().args(["eval", "--json", "--checkpoint"]).arg(&x));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let metrics = std::fs::read_to_string(x.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let (trained, evaluated) = (last["val_loss"].as_f64().unwrap(), v["val_loss"].as_f64().unwrap());
    assert!((trained - evaluated).abs() < 1e-5 * trained, "training's val loss {trained}, eval's {evaluated}");
    let out = resume(&x, &["--workers", "1", "--set", "parallel.tp=4", "--set", "parallel.zero=0", "--set", "train.steps=20"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("written by dp=2 tp=2 pp=1 zero=1, now dp=1 tp=4 pp=1 zero=0"), "{text}");
    resume(&x, &["--workers", "1", "--set", "parallel.tp=1", "--set", "train.steps=30"]);
    let (a, b) = (losses(&x), losses(&single));
    assert_eq!(a.len(), 30);
    for (s, (p, q)) in a.iter().zip(&b).enumerate() {
        assert!(((p - q) / q).abs() < 1e-5, "step {}: loss {p} after resharding, {q} on one rank", s + 1);
    }
    // The whole model within 1e-5 after 30 steps; each tensor within 1e-3 (Adam
    // magnifies the summation-order noise of near-zero gradients, e.g. of biases).
    let (a, b) = (model_tensors(&x), model_tensors(&single));
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for ((na, va), (_, vb)) in a.iter().zip(&b) {
        let d: f64 = va.iter().zip(vb).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>();
        let n: f64 = vb.iter().map(|p| (*p as f64).powi(2)).sum::<f64>();
        assert!(d.sqrt() <= 1e-3 * n.sqrt().max(1e-12), "{na}: relative difference {}", (d / n).sqrt());
        (diff, norm) = (diff + d, norm + n);
    }
    assert!((diff / norm).sqrt() <= 1e-5, "whole model: relative difference {}", (diff / norm).sqrt());
    // The end-of-run sample of a tp run comes from the whole model: the same text as
    // `generate` from its checkpoint.
    let z = t.path().join("z");
    let mut args = base(&data, 4);
    let n = args.iter().position(|a| a == "--sample-tokens").unwrap();
    args[n + 1] = "30".into();
    let out = ok(bin().args(args).args(four_heads).args(["--set", "parallel.tp=2", "--out"]).arg(&z));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let sample = text.split("---\n").nth(1).expect("a sample section").to_string();
    let out = ok(bin().args(["generate", "--tokens", "30", "--prompt", "\n", "--seed", "1", "--temperature", "0.8", "--top-k", "40", "--checkpoint"]).arg(&z));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), format!("\n{}", sample.trim_end()).trim_end(), "{text}");
    // A degree that does not divide the heads fails before training, naming it.
    let out = bin().args(base(&data, 2)).args(["--set", "parallel.tp=3", "--out"]).arg(t.path().join("bad")).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("parallel.tp = 3 must divide"), "{e}");
}

/// `--init-from` a Hugging Face folder under tensor parallelism: each rank keeps its
/// parts of the whole model's weights; the run equals the same fine-tuning on one rank.
#[test]
fn init_from_a_hugging_face_folder_under_tensor_parallelism() {
    let (t, data) = setup();
    let four_heads = ["--set", "model.n_head=4"];
    let x = t.path().join("x");
    ok(bin().args(base(&data, 3)).args(four_heads).arg("--out").arg(&x));
    let hf = t.path().join("hf");
    ok(bin().args(["export", "--checkpoint"]).arg(&x).arg("--out").arg(&hf));
    let run = |tp: &str, out: &Path| {
        let o = ok(bin().args(base(&data, 3)).arg("--init-from").arg(&hf).args(["--set", &format!("parallel.tp={tp}"), "--set", "train.log_interval=1", "--out"]).arg(out));
        assert!(String::from_utf8_lossy(&o.stdout).contains("initialising from"), "no initialisation from the folder");
        losses(out)
    };
    let (a, b) = (run("1", &t.path().join("one")), run("2", &t.path().join("two")));
    assert_eq!(a.len(), 3);
    for (p, q) in a.iter().zip(&b) {
        assert!(((p - q) / p).abs() < 1e-5, "tp 2 {q} vs 1 rank {p}");
    }
}

/// Pipeline parallelism from the command line (issue 9): `--workers 1 --set
/// parallel.pp=2 --set parallel.tp=2` runs 4 rank threads (1F1B over 4 micro-batches),
/// the interleaved schedule runs 2 chunks per stage; both match the single-rank run;
/// eval, generate and export read a pipeline checkpoint (the tied embedding is written
/// once); the end-of-run sample is the whole model's; a failed rank ends the job naming
/// it and the run resumes on one rank.
#[test]
fn pipeline_parallel_runs_match_the_single_rank_run_and_their_checkpoints_serve_every_command() {
    let (t, data) = setup();
    let shape = ["--set", "model.n_head=4", "--set", "model.n_layer=4", "--set", "train.batch_size=2", "--set", "train.grad_accum=4"];
    let single = t.path().join("single");
    ok(bin().args(base(&data, 10)).args(shape).arg("--out").arg(&single));
    let pp = t.path().join("pp");
    let mut args = base(&data, 10);
    let n = args.iter().position(|a| a == "--sample-tokens").unwrap();
    args[n + 1] = "30".into();
    let out = ok(bin().args(&args).args(shape).args(["--workers", "1", "--set", "parallel.pp=2", "--set", "parallel.tp=2", "--out"]).arg(&pp));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let il = t.path().join("il");
    let interleaved = ["--set", "parallel.pp=2", "--set", "parallel.schedule=\"interleaved\"", "--set", "parallel.virtual_stages=2"];
    ok(bin().args(base(&data, 10)).args(shape).args(interleaved).arg("--out").arg(&il));
    for run in [&pp, &il] {
        let (a, b) = (losses(run), losses(&single));
        assert_eq!(a.len(), 10);
        for (s, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(((p - q) / q).abs() < 1e-5, "{}: step {}: loss {p}, {q} on one rank", run.display(), s + 1);
        }
    }
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(pp.join("checkpoints/step-00000010/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["meta"]["layout"]["pp"].as_u64(), Some(2), "{manifest}");
    // Every tensor once: the pipeline checkpoint holds the single-rank run's tensors.
    let (a, b) = (model_tensors(&pp), model_tensors(&single));
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    let out = ok(bin().args(["eval", "--json", "--checkpoint"]).arg(&pp));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let metrics = std::fs::read_to_string(pp.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let (trained, evaluated) = (last["val_loss"].as_f64().unwrap(), v["val_loss"].as_f64().unwrap());
    assert!((trained - evaluated).abs() < 1e-5 * trained, "training's val loss {trained} (through the pipeline), eval's {evaluated}");
    // The sample printed at the end is generate's from the checkpoint.
    let sample = text.split("---\n").nth(1).expect("a sample section").to_string();
    let out = ok(bin().args(["generate", "--tokens", "30", "--prompt", "\n", "--seed", "1", "--temperature", "0.8", "--top-k", "40", "--checkpoint"]).arg(&pp));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), format!("\n{}", sample.trim_end()).trim_end(), "{text}");
    ok(bin().args(["export", "--checkpoint"]).arg(&pp).arg("--out").arg(t.path().join("hf")));
    assert!(t.path().join("hf/model.safetensors").exists());
    // A rank failing mid-run ends the job, naming it; the run resumes on one rank.
    let f = t.path().join("f");
    let start = Instant::now();
    let out = bin()
        .args(base(&data, 20))
        .args(shape)
        .args(["--set", "parallel.pp=2", "--set", "parallel.tp=2", "--comm-timeout", "20", "--debug-fail", "3:12", "--out"])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rank 3") && err.contains("step 12"), "{err}");
    assert!(err.contains("pp.act[0->1]#0"), "the diagnosis names the pipeline links: {err}");
    assert!(start.elapsed().as_secs() < 20, "the job must end well within the timeout, took {:?}", start.elapsed());
    assert_eq!(checkpoint::open(&f).unwrap().step(), 10);
    let out = resume(&f, &["--set", "parallel.pp=1", "--set", "parallel.tp=1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("written by dp=1 tp=2 pp=2 zero=0, now dp=1 tp=1 pp=1 zero=0"));
    assert_eq!(checkpoint::open(&f).unwrap().step(), 20);
    // A layer count the chunks do not fit is refused before training, naming both.
    let out = bin().args(base(&data, 2)).args(["--set", "parallel.pp=4", "--out"]).arg(t.path().join("bad")).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("4 pipeline chunks") && e.contains("model.n_layer"), "{e}");
}
