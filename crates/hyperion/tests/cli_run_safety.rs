//! Runs that fail safe (issue 11): one writer per run directory (a second `train --out
//! RUN` or a `--resume RUN` while RUN is training fails naming the holder and touches
//! nothing; a killed run's lock is taken over), a run killed before its first checkpoint
//! restarts in place, and a token id beyond the vocabulary is refused before training.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyperion"))
}

fn args(data: &Path, out: &Path, steps: u64) -> Vec<String> {
    let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt");
    [
        "train".to_string(),
        "--preset".into(),
        "tiny".into(),
        "--out".into(),
        out.display().to_string(),
        "--set".into(),
        format!("data.dir=\"{}\"", data.display()),
        "--set".into(),
        format!("data.inputs=[\"{}\"]", c.display()),
        // One play: too few documents for a by-document split.
        "--set".into(),
        "data.split=tail".into(),
        "--set".into(),
        format!("train.steps={steps}"),
        "--set".into(),
        "checkpoint.interval=5".into(),
        "--set".into(),
        "train.eval_interval=0".into(),
        "--set".into(),
        "log.progress=false".into(),
        "--set".into(),
        "log.peak_flops=1e11".into(),
        "--sample-tokens".into(),
        "0".into(),
    ]
    .to_vec()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_long(data: &Path, run: &Path) -> Child {
    // Slow checkpoints keep the run alive long enough to be raced.
    let mut a = args(data, run, 100_000);
    a.extend(["--debug-checkpoint-pause-ms".into(), "200".into()]);
    bin().args(&a).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

#[test]
fn a_live_run_has_one_writer_and_a_dead_ones_lock_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    // Prepare the data first so the race is on the run directory alone.
    assert!(bin().args(args(&data, &tmp.path().join("warm"), 5)).output().unwrap().status.success());
    let mut a = spawn_long(&data, &run);
    wait_for("the first checkpoint", || run.join("checkpoints/latest").is_file());
    let holder = format!("PID {}", a.id());
    assert!(std::fs::read_to_string(run.join(".lock")).unwrap().contains(&holder));

    // A second fresh run into the same folder.
    let out = bin().args(args(&data, &run, 10)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("already") || err.contains("in use"), "{err}");
    // A resume of the live run: refused by the lock, naming the holder, before any clean-up.
    let out = bin().args(["train", "--resume", &run.display().to_string(), "--set", "log.progress=false", "--sample-tokens", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by") && err.contains(&holder), "{err}");
    assert!(a.try_wait().unwrap().is_none(), "the live run must keep running");

    // Killed: the kernel drops its lock, and a resume takes over.
    a.kill().unwrap();
    a.wait().unwrap();
    let out = bin()
        .args(["train", "--resume", &run.display().to_string(), "--set", "train.steps=20", "--set", "log.progress=false", "--sample-tokens", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("taking over the lock") && err.contains(&holder), "{err}");
}

#[test]
fn a_run_killed_before_its_first_checkpoint_restarts_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let mut a = args(&data, &run, 100_000);
    a.extend(["--set".into(), "checkpoint.interval=100000".into()]);
    let mut child = bin().args(&a).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the first logged step", || std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| !s.is_empty()).unwrap_or(false));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run.join("checkpoints/latest").exists());
    // A fresh train into it is still refused (it holds another run's files) ...
    let out = bin().args(args(&data, &run, 10)).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    // ... and --resume starts it again from step 0 with its saved config, saying so.
    let out = bin()
        .args(["train", "--resume", &run.display().to_string(), "--set", "train.steps=6", "--set", "log.progress=false", "--sample-tokens", "0"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("starting it again from step 0 with its saved config"), "{said}");
    assert!(run.join("checkpoints/step-00000006/manifest.json").is_file());
    // The killed attempt's metrics were dropped: steps 1..=6 once each.
    let steps: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<u64>>());
}

#[test]
fn a_token_beyond_the_vocabulary_is_refused_before_the_first_step() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    assert!(bin().args(args(&data, &tmp.path().join("warm"), 5)).output().unwrap().status.success());
    // Token 1000 (u16, little-endian) at token index 12345 of the first train shard.
    let path = data.join("train-000000.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * 12345..2 * 12345 + 2].copy_from_slice(&1000u16.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let t0 = Instant::now();
    let out = bin().args(args(&data, &run, 5)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("train-000000.bin") && err.contains("1000") && err.contains(&format!("{}", 2 * 12345)), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(!run.join("checkpoints").exists(), "nothing trained");
}
