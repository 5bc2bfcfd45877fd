//! End-to-end tests of `hyperion train`, `generate`, `eval`, `bench train` and `plot` as a
//! user runs them: exact resume after SIGKILL (during training and during a checkpoint
//! write), refusal of corrupted checkpoints, and the error messages for bad input.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, run_err, run_ok};

fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare");
    vec![root.join("sonnets.txt").display().to_string(), root.join("macbeth.txt").display().to_string()]
}

/// Args for a small, fast, fully deterministic run of the `tiny` preset.
fn tiny_args(data_dir: &Path, steps: u64, interval: u64) -> Vec<String> {
    let inputs = corpus().iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(",");
    [
        "--preset", "tiny",
        "--set", &format!("data.dir=\"{}\"", data_dir.display()),
        "--set", &format!("data.inputs=[{inputs}]"),
        // A few plays: too few documents for a by-document split.
        "--set", "data.split=tail",
        "--set", &format!("train.steps={steps}"),
        "--set", &format!("checkpoint.interval={interval}"),
        "--set", "train.eval_interval=0",
        "--set", "log.progress=false",
        "--set", "log.peak_flops=1e11",
        "--sample-tokens", "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// sha256 of each file of the latest checkpoint, from its manifest, plus its step.
fn latest_digest(run: &Path) -> (u64, Vec<(String, String)>) {
    let dir = run.join("checkpoints");
    let name = std::fs::read_to_string(dir.join("latest")).expect("latest pointer");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(name.trim()).join("manifest.json")).unwrap()).unwrap();
    let step = manifest["step"].as_u64().unwrap();
    let files = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["file"].as_str().unwrap().to_string(), f["sha256"].as_str().unwrap().to_string()))
        .collect();
    (step, files)
}

fn wait_until(child: &mut Child, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process ended ({status}) before {what}");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn last_logged_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    Setup { _tmp: tmp, root, data }
}

// Long enough that the kill below always lands mid-run, even on a fast machine.
const STEPS: u64 = 2000;
const INTERVAL: u64 = 100;

fn reference_run(s: &Setup) -> (u64, Vec<(String, String)>) {
    let run = s.root.join("reference");
    run_ok(bin().arg("train").args(tiny_args(&s.data, STEPS, INTERVAL)).arg("--out").arg(&run));
    latest_digest(&run)
}

#[test]
fn sigkill_during_training_then_resume_is_bitwise_identical() {
    let s = setup();
    let reference = reference_run(&s);
    assert_eq!(reference.0, STEPS);
    let run = s.root.join("killed");
    let mut child = bin()
        .arg("train")
        .args(tiny_args(&s.data, STEPS, INTERVAL))
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(&mut child, "step 250", || last_logged_step(&run) >= 250);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = last_logged_step(&run);
    assert!(killed_at < STEPS, "the run finished before it was killed (step {killed_at})");
    run_ok(bin().arg("train").arg("--resume").arg(&run).args(["--sample-tokens", "0", "--set", "log.progress=false"]));
    assert_eq!(latest_digest(&run), reference, "resumed run differs from the uninterrupted one");
    // metrics.jsonl reads as one run: each step at most once.
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "metrics steps not increasing: {steps:?}");
}

#[test]
fn sigkill_during_checkpoint_write_then_resume_is_bitwise_identical() {
    let s = setup();
    let reference = reference_run(&s);
    let run = s.root.join("killed");
    let ckdir = run.join("checkpoints");
    let mut child = bin()
        .arg("train")
        .args(tiny_args(&s.data, STEPS, INTERVAL))
        .arg("--out")
        .arg(&run)
        .args(["--debug-checkpoint-pause-ms", "400"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the second checkpoint's first file to be on disk, uncommitted.
    wait_until(&mut child, "a half-written checkpoint", || {
        ckdir.join(".tmp-step-00000200").join("model-rank00000.safetensors").is_file()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!ckdir.join("step-00000200").exists(), "checkpoint 200 must not be committed");
    // The previous checkpoint is intact and loadable.
    let out = run_ok(bin().args(["eval", "--checkpoint"]).arg(&run).args(["--batches", "1"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(step 100)"));
    run_ok(bin().arg("train").arg("--resume").arg(&run).args(["--sample-tokens", "0", "--set", "log.progress=false"]));
    assert_eq!(latest_digest(&run), reference, "resumed run differs from the uninterrupted one");
    assert!(!ckdir.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tmp")));
}

fn pre_commit_files(s: &Setup) -> PathBuf {
    let run = s.root.join("run");
    run_ok(bin().arg("train").args(tiny_args(&s.data, 20, 10)).arg("--out").arg(&run));
    run
}

#[test]
fn truncated_or_altered_checkpoint_is_refused_with_the_file_named() {
    let s = setup();
    let run = pre_commit_files(&s);
    let model = run.join("checkpoints/step-00000020/model-rank00000.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&model, &bytes).unwrap();
    let err = run_err(bin().args(["generate", "--checkpoint"]).arg(&run));
    assert!(err.contains("model-rank00000.safetensors") && err.to_lowercase().contains("sha256"), "{err}");
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    // A resume names the truncated file and continues from the previous checkpoint.
    let out = run_ok(bin().arg("train").arg("--resume").arg(&run).args(["--sample-tokens", "0"]));
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(err.contains("skipping checkpoint") && err.contains("model-rank00000.safetensors"), "{err}");
    assert!(stdout.contains("at step 10 "), "{stdout}");
}

#[test]
fn generate_is_reproducible_and_eval_reports_perplexity() {
    let s = setup();
    let run = pre_commit_files(&s);
    let gen = |seed: &str| {
        let out = run_ok(bin().args(["generate", "--checkpoint"]).arg(&run).args(["--prompt", "ROMEO:", "--tokens", "40", "--seed", seed]));
        String::from_utf8(out.stdout).unwrap()
    };
    let a = gen("7");
    assert_eq!(a, gen("7"), "same seed, same text");
    assert_ne!(a, gen("8"), "another seed, other text");
    assert!(a.starts_with("ROMEO:"));
    assert_eq!(a.strip_suffix('\n').unwrap().chars().count(), "ROMEO:".len() + 40);
    let out = run_ok(bin().args(["eval", "--json", "--checkpoint"]).arg(run.join("checkpoints/step-00000010")));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (loss, ppl) = (v["val_loss"].as_f64().unwrap(), v["perplexity"].as_f64().unwrap());
    assert_eq!(v["step"].as_u64(), Some(10));
    assert!(loss > 0.5 && loss < 6.0, "{loss}");
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl);
    // metrics.jsonl holds the required keys, and the loss plot is a PNG.
    let line = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    for key in ["step", "train_loss", "lr", "tokens_per_s", "mfu"] {
        assert!(first.get(key).is_some(), "metrics.jsonl lacks {key}: {first}");
    }
    let png = std::fs::read(run.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn a_fresh_run_never_overwrites_an_existing_one() {
    let s = setup();
    let run = pre_commit_files(&s);
    let before = latest_digest(&run);
    let err = run_err(bin().arg("train").args(tiny_args(&s.data, 20, 10)).arg("--out").arg(&run));
    assert!(err.contains("--resume") && err.contains("step 20"), "{err}");
    assert_eq!(latest_digest(&run), before);
}

#[test]
fn bad_input_errors_name_what_is_wrong() {
    let s = setup();
    let out = s.root.join("r");
    let err = run_err(bin().args(["train", "--preset", "tiny", "--set", "train.stpes=3", "--out"]).arg(&out));
    assert!(err.contains("train.stpes") && err.contains("train.steps"), "{err}");
    let err = run_err(bin().args(["train", "--preset", "tiny", "--set", "train.steps=abc", "--out"]).arg(&out));
    assert!(err.contains("train.steps"), "{err}");
    let err = run_err(bin().args(["train", "--preset", "nope"]));
    assert!(err.contains("nope") && err.contains("shakespeare-char"), "{err}");
    let missing = s.root.join("no-such-data");
    let err = run_err(
        bin().args(["train", "--preset", "tiny", "--set"]).arg(format!("data.dir=\"{}\"", missing.display())).args(["--set", "data.inputs=[]", "--out"]).arg(&out),
    );
    assert!(err.contains("no-such-data") && err.contains("data prepare"), "{err}");
    // Vocabulary mismatch between the data and an explicit model.vocab_size.
    let err = run_err(bin().arg("train").args(tiny_args(&s.data, 5, 5)).args(["--set", "model.vocab_size=7", "--out"]).arg(&out));
    assert!(err.contains('7') && err.to_lowercase().contains("vocab"), "{err}");
    let err = run_err(bin().args(["train", "--resume"]).arg(s.root.join("nothing-here")));
    assert!(err.contains("nothing-here"), "{err}");
    let err = run_err(bin().args(["generate", "--temperature=-1", "--checkpoint"]).arg(&out));
    assert!(err.contains("temperature"), "{err}");
}

#[test]
fn bench_train_json_has_the_documented_keys() {
    let out = run_ok(bin().args(["bench", "train", "--preset", "tiny", "--steps", "3", "--warmup", "1", "--json", "--set", "log.peak_flops=1e11"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["tokens_per_s", "step_ms", "forward_ms", "backward_ms", "optimizer_ms", "mfu"] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("missing {key}: {v}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    let (step, parts) = (v["step_ms"].as_f64().unwrap(), ["forward_ms", "backward_ms", "optimizer_ms"].iter().map(|k| v[k].as_f64().unwrap()).sum::<f64>());
    assert!(parts <= step * 1.5, "phases {parts} ms vs step {step} ms");
}

/// A full disk during a checkpoint write: the run fails naming the file, and the
/// previous checkpoint stays intact and loadable. Needs root to mount a small tmpfs;
/// says SKIP otherwise.
#[test]
fn full_disk_during_checkpoint_keeps_the_previous_one() {
    let s = setup();
    let mnt = s.root.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=900k", "tmpfs"]).arg(&mnt).status();
    if !matches!(mounted, Ok(st) if st.success()) {
        eprintln!("SKIP full_disk_during_checkpoint_keeps_the_previous_one: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let run = mnt.join("run");
    // Each checkpoint of the tiny model is ~340 kB (model + two moments); the third
    // cannot fit in 900 kB while the older two are kept.
    let out = bin()
        .arg("train")
        .args(tiny_args(&s.data, 40, 10))
        .args(["--set", "checkpoint.keep_last=5", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run must fail on a full disk");
    assert!(err.contains("No space left") && err.contains(".safetensors"), "{err}");
    let ck = checkpoint::open(&run).expect("the previous checkpoint still loads");
    assert!(ck.step() >= 10 && ck.step() < 40, "latest is step {}", ck.step());
    let out = run_ok(bin().args(["eval", "--json", "--batches", "1", "--checkpoint"]).arg(&run));
    assert!(String::from_utf8_lossy(&out.stdout).contains("val_loss"));
    assert!(!run.join("checkpoints").read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tmp")),
        "the failed temporary folder is removed");
}

/// `train.device = "cuda"` where no GPU can be used (a build without `--features cuda`,
/// or no device) fails before training with an error that says why; a malformed device
/// names the forms it accepts.
#[test]
fn a_gpu_that_cannot_be_used_is_named() {
    let t = tempfile::tempdir().unwrap();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_hyperion"))
        .args(["train", "--preset", "tiny", "--sample-tokens", "0", "--set", "log.progress=false", "--set", "data.split=tail", "--set", "train.device=cuda", "--set"])
        .arg(format!("data.dir=\"{}\"", t.path().join("d").display()))
        .arg("--set")
        .arg(format!("data.inputs=[\"{}\"]", corpus.display()))
        .arg("--out")
        .arg(t.path().join("r"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("train.device = \"cuda") && (err.contains("--features cuda") || err.contains("CUDA") || err.contains("libnvrtc")), "{err}");
    assert!(!t.path().join("r/metrics.jsonl").exists(), "nothing trained");
    let out = Command::new(env!("CARGO_BIN_EXE_hyperion")).args(["train", "--preset", "tiny", "--set", "train.device=gpu0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.device: expected \"cpu\", \"cuda\", \"cuda:N\""), "{err}");
}
