//! Runs that fail safe (issue 11): one writer per run directory (a second `train --out
//! RUN` or a `--resume RUN` while RUN is training fails naming the holder and touches
//! nothing; a killed run's lock is taken over), a run killed before its first checkpoint
//! restarts in place, and a token id beyond the vocabulary is refused before training.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::model_tensors;

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

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the PID of a child we own and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Steps recorded in `metrics.jsonl` so far.
fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0)
}

/// The model and Adam state of every rank file of a checkpoint, by file name.
fn checkpoint_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn sigterm_stops_every_rank_after_one_step_with_a_checkpoint_and_the_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run, reference) = (tmp.path().join("data"), tmp.path().join("run"), tmp.path().join("ref"));
    let steps = 200;
    let with = |out: &Path| {
        let mut a = args(&data, out, steps);
        // Two thread ranks under ZeRO-2; no periodic checkpoint, logged every step.
        a.extend(["--workers", "2", "--set", "parallel.zero=2", "--set", "checkpoint.interval=0", "--set", "train.log_interval=1"].map(String::from));
        a
    };
    let out = bin().args(with(&reference)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let child = bin().args(with(&run)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("a few steps", || logged_steps(&run) >= 3);
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(75), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("stop requested"), "{stderr}");
    assert!(stderr.contains(&format!("hyperion train --resume {}", run.display())), "{stderr}");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let stopped: u64 = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!((3..steps).contains(&stopped), "stopped at {stopped}");
    assert!(stderr.contains(&format!("after step {stopped} ")), "{stderr}");
    // Both ranks wrote their shard of the same step.
    let dir = run.join("checkpoints").join(latest.trim());
    assert!(dir.join("model-rank00000.safetensors").is_file() && dir.join("model-rank00001.safetensors").is_file());
    assert_eq!(logged_steps(&run) as u64, stopped, "metrics end at the stopped step");

    // Resumed to the end, the run is bitwise the uninterrupted one.
    let out = bin()
        .args(["train", "--resume", &run.display().to_string(), "--workers", "2", "--set", "log.progress=false", "--sample-tokens", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("at step {stopped} ")), "{stdout}");
    let last = format!("checkpoints/step-{steps:08}");
    assert_eq!(checkpoint_files(&run.join(&last)), checkpoint_files(&reference.join(&last)));
}

#[test]
fn a_second_signal_exits_at_once_without_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let mut a = args(&data, &run, 100_000);
    // A step long enough that both signals land inside it, and, should the first stop
    // be quicker than the second signal (a loaded machine), a stop checkpoint whose
    // files take 2 s each: the second signal still lands before it is committed.
    a.extend(
        ["--set", "checkpoint.interval=0", "--set", "train.log_interval=1", "--set", "train.batch_size=512", "--debug-checkpoint-pause-ms", "2000"]
            .map(String::from),
    );
    let child = bin().args(&a).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("the first step", || logged_steps(&run) >= 1);
    signal(&child, libc::SIGINT);
    // Apart, so that the kernel delivers two signals, not one pending signal.
    std::thread::sleep(Duration::from_millis(50));
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGINT), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!run.join("checkpoints/latest").exists(), "no checkpoint is written after the second signal");
}


#[test]
fn resume_skips_a_corrupt_checkpoint_naming_it_and_a_step_folder_continues_its_own_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let mut a = args(&data, &run, 10);
    a.extend(["--set", "checkpoint.keep_last=10"].map(String::from));
    let out = bin().args(&a).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Flip one byte inside the newest checkpoint's model shard.
    let shard = run.join("checkpoints/step-00000010/model-rank00000.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();

    let resume = |target: &Path, steps: u64| {
        bin()
            .args(["train", "--resume", &target.display().to_string(), "--set", &format!("train.steps={steps}")])
            .args(["--set", "log.progress=false", "--sample-tokens", "0"])
            .output()
            .unwrap()
    };
    let out = resume(&run, 15);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping checkpoint") && stderr.contains("step-00000010") && stderr.contains("sha256"), "{stderr}");
    assert!(stdout.contains("at step 5 "), "{stdout}");
    // Kept for inspection, out of the way; the run went on past it.
    assert!(run.join("checkpoints/corrupt-step-00000010/model-rank00000.safetensors").is_file());
    assert_eq!(latest_step(&run), 15);
    assert!(run.join("checkpoints/step-00000010/manifest.json").is_file(), "step 10 written again");

    // Resuming one step folder continues that run, in its run directory.
    let out = resume(&run.join("checkpoints/step-00000005"), 12);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("continuing") && stdout.contains("at step 5 "), "{stdout}");
    assert_eq!(latest_step(&run), 12);
    for old in ["abandoned-step-00000010", "abandoned-step-00000015"] {
        assert!(run.join("checkpoints").join(old).join("manifest.json").is_file(), "{old} kept");
    }
    let inside = run.join("checkpoints/step-00000005");
    assert!(!inside.join("checkpoints").exists() && !inside.join("metrics.jsonl").exists(), "no run nested in a checkpoint");

    // A checkpoint folder outside any run is refused, naming what --resume takes.
    let loose = tmp.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    for f in std::fs::read_dir(&inside).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), loose.join(f.file_name())).unwrap();
    }
    let out = resume(&loose, 20);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("outside a run directory"), "{stderr}");
}

#[test]
fn a_run_larger_than_memory_is_refused_before_allocating_naming_the_largest_term() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    // ~480 GB of model state: refused at once, not after minutes of allocating.
    let mut a = args(&data, &run, 10);
    a.extend(["--set", "model.n_embd=100000"].map(String::from));
    let t0 = Instant::now();
    let out = bin().args(&a).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the largest term is Adam moments") && err.contains("model.n_embd") && err.contains("--allow-oversubscribe"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "refused only after {:?}", t0.elapsed());
    assert!(!run.join("checkpoints").exists());

    // The same check against a small machine (100 kB available), then overridden.
    let mut a = args(&data, &run, 2);
    a.extend(["--debug-mem-available", "100000"].map(String::from));
    let err = String::from_utf8_lossy(&bin().args(&a).output().unwrap().stderr).into_owned();
    assert!(err.contains("GiB of memory is available") && err.contains("largest term is"), "{err}");
    a.push("--allow-oversubscribe".into());
    let out = bin().args(&a).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run.join("checkpoints/step-00000002/manifest.json").is_file());
}


#[test]
fn non_finite_steps_are_skipped_and_too_many_in_a_row_stop_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let with = |out: &Path, steps: u64, nan: &str| {
        let mut a = args(&data, out, steps);
        a.extend(["--workers", "2", "--set", "parallel.zero=2", "--set", "checkpoint.interval=2", "--set", "checkpoint.keep_last=20"].map(String::from));
        a.extend(["--set".into(), "train.log_interval=100".into(), "--debug-nan-steps".into(), nan.into()]);
        a
    };
    // Two bad steps (5, 6): skipped, the run goes on; nothing moved during them.
    let out = bin().args(with(&run, 10, "5,6")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ck = |s: u64| run.join(format!("checkpoints/step-{s:08}"));
    assert_eq!(model_tensors(&ck(4)), model_tensors(&ck(6)), "skipped updates leave the model as it was");
    assert_ne!(model_tensors(&ck(6)), model_tensors(&ck(8)), "and training goes on after them");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let row = |s: u64| rows.iter().find(|r| r["step"] == s).unwrap_or_else(|| panic!("step {s} logged: {metrics}"));
    assert!(row(5)["grad_norm"].is_null() && row(5)["skipped_steps"] == 1, "{metrics}");
    assert_eq!(row(6)["skipped_steps"], 2);
    assert_eq!(row(10)["skipped_steps"], 2);
    // The log reads back (a resume truncates it through the reader).
    let out = bin().args(["train", "--resume", &run.display().to_string(), "--workers", "2", "--set", "train.steps=11"]).args(["--set", "log.progress=false", "--sample-tokens", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Three in a row (the default train.max_bad_steps): the run stops, naming them and
    // the checkpoint to resume from, which holds the state from before them.
    let bad = tmp.path().join("bad");
    let out = bin().args(with(&bad, 20, "5,6,7")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("steps 5 to 7: 3 steps in a row") && err.contains("step-00000006") && err.contains("optim.lr"), "{err}");
    assert_eq!(latest_step(&bad), 6);
    assert_eq!(model_tensors(&bad.join("checkpoints/step-00000004")), model_tensors(&bad.join("checkpoints/step-00000006")));
}

/// The child process of `pid` (the supervised run).
fn child_of(pid: u32) -> u32 {
    let out = Command::new("pgrep").args(["-P", &pid.to_string()]).output().expect("pgrep (procps) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().unwrap_or_else(|| panic!("no child of {pid}")).trim().parse().unwrap()
}

fn latest_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("checkpoints/latest")).map_or(0, |s| s.trim().trim_start_matches("step-").parse().unwrap_or(0))
}

#[test]
fn chaos_a_supervised_run_survives_a_panic_a_sigkill_and_a_sigterm_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run, reference) = (tmp.path().join("data"), tmp.path().join("run"), tmp.path().join("ref"));
    let steps = 300;
    let with = |out: &Path| {
        let mut a = args(&data, out, steps);
        a.extend(["--workers", "2", "--set", "parallel.zero=2", "--set", "checkpoint.interval=20", "--set", "train.batch_size=16"].map(String::from));
        a
    };
    let out = bin().args(with(&reference)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Kill 1: rank 1 panics at step 37 (the supervisor restarts from step 20).
    let mut a = with(&run);
    a.extend(["--max-restarts", "5", "--restart-backoff-ms", "100", "--debug-fail", "1:37"].map(String::from));
    let supervisor = bin().args(&a).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Kill 2: SIGKILL of the training process once it is past step 60.
    wait_for("step 60", || latest_step(&run) >= 60);
    let victim = child_of(supervisor.id());
    // SAFETY: kill(2) on a PID that pgrep just listed as our grandchild.
    assert_eq!(unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) }, 0);
    // Kill 3: SIGTERM of the supervised job past step 140 (a preemption): it stops
    // gracefully and the supervisor, asked to stop, does not restart it.
    wait_for("step 140 after a restart", || latest_step(&run) >= 140 && child_of(supervisor.id()) != victim);
    signal(&supervisor, libc::SIGTERM);
    let out = supervisor.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("restart 1 of 5") && err.contains("restart 2 of 5") && err.contains("killed by signal 9"), "{err}");
    let log = std::fs::read_to_string(run.join("restarts.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "two restarts and the final stop: {log}");
    assert!(log.lines().last().unwrap().contains("not restarted"), "{log}");
    let stopped = latest_step(&run);
    assert!(stopped < steps, "the job was stopped before the end ({stopped})");

    // The requeued job (as a scheduler would start it again) finishes the run.
    let out = bin()
        .args(["train", "--resume", &run.display().to_string(), "--workers", "2", "--max-restarts", "5"])
        .args(["--set", "log.progress=false", "--sample-tokens", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = format!("checkpoints/step-{steps:08}");
    assert_eq!(checkpoint_files(&run.join(&last)), checkpoint_files(&reference.join(&last)), "bitwise the uninterrupted run");
}

#[test]
fn a_supervisor_does_not_restart_a_run_that_cannot_start_or_that_diverged() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let mut a = args(&data, &run, 10);
    a.extend(["--max-restarts", "3", "--restart-backoff-ms", "10", "--set", "model.n_head=5"].map(String::from));
    let out = bin().args(&a).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("model.n_head") && err.contains("not restarting: it failed before the run started"), "{err}");

    let mut a = args(&data, &run, 10);
    a.extend(["--max-restarts", "3", "--restart-backoff-ms", "10", "--debug-nan-steps", "3,4,5"].map(String::from));
    let out = bin().args(&a).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{err}");
    assert!(err.contains("3 steps in a row") && err.contains("not restarting: it stopped on non-finite numbers"), "{err}");
}

#[test]
fn a_rank_that_stops_calling_collectives_is_named_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let mut a = args(&data, &run, 50);
    a.extend(["--workers", "2", "--set", "parallel.zero=2", "--comm-timeout", "2", "--debug-hang", "1:5"].map(String::from));
    let t0 = Instant::now();
    let out = bin().args(&a).output().unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The timeout (2 s) plus the grace for the hung thread (5 s), not a hang.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(err.contains("flight recorder"), "{err}");
    assert!(err.contains("rank 1: BEHIND: its last collective is #"), "{err}");
    assert!(err.contains("rank 0: failed in #") && err.contains("timed out after 2"), "{err}");
    for r in 0..2 {
        let recs = std::fs::read_to_string(run.join(format!("flight-rank0000{r}.jsonl"))).unwrap();
        assert!(recs.lines().count() > 5 && recs.contains("\"group\":\"dp\""), "{recs}");
    }
}

#[test]
fn async_checkpoints_are_bitwise_the_sync_ones_and_a_kill_mid_write_keeps_the_previous() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let with = |out: &Path, asynchronous: bool| {
        let mut a = args(&data, out, 30);
        a.extend(["--workers", "2", "--set", "parallel.zero=1", "--set", "checkpoint.interval=5", "--set", "checkpoint.keep_last=10"].map(String::from));
        a.extend(["--set".into(), format!("checkpoint.async={asynchronous}")]);
        a
    };
    let (sync, asy) = (tmp.path().join("sync"), tmp.path().join("async"));
    for (dir, flag) in [(&sync, false), (&asy, true)] {
        let out = bin().args(with(dir, flag)).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for step in [5, 15, 30] {
        let d = format!("checkpoints/step-{step:08}");
        assert_eq!(checkpoint_files(&sync.join(&d)), checkpoint_files(&asy.join(&d)), "step {step}");
    }

    // Killed while a background write is in flight (slowed by a pause after each file).
    let run = tmp.path().join("killed");
    let mut a = with(&run, true);
    a.extend(["--debug-checkpoint-pause-ms", "400"].map(String::from));
    let mut child = bin().args(&a).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let writing = || {
        latest_step(&run) >= 5
            && std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
    };
    wait_for("a background write in flight after the first commit", writing);
    child.kill().unwrap();
    child.wait().unwrap();
    let committed = latest_step(&run);
    let out = bin()
        .args(["train", "--resume", &run.display().to_string(), "--workers", "2", "--set", "log.progress=false", "--sample-tokens", "0"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("at step {committed} ")), "{stdout}");
    let d = "checkpoints/step-00000030";
    assert_eq!(checkpoint_files(&sync.join(d)), checkpoint_files(&run.join(d)), "resumed bitwise");
}

/// Finding 4: a run's data paths were relative to the directory it started in, so
/// `eval` and `--resume` from elsewhere read (or prepared) that directory's `data/`.
/// Here the other directory holds a corpus of the same characters and token count
/// (the lines reversed): same tokenizer, other tokens.
#[test]
fn eval_and_resume_from_another_directory_read_the_runs_own_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt")).unwrap();
    std::fs::write(a.join("corpus.txt"), &text).unwrap();
    let reversed: Vec<&str> = text.lines().rev().collect();
    let reversed = reversed.join("\n") + if text.ends_with('\n') { "\n" } else { "" };
    assert_eq!(reversed.len(), text.len());
    std::fs::write(b.join("corpus.txt"), reversed).unwrap();
    let sets = ["data.dir=\"data\"", "data.inputs=[\"corpus.txt\"]", "data.split=\"tail\"", "checkpoint.interval=2", "train.eval_interval=0", "log.progress=false"];
    let train = |cwd: &Path, extra: &[&str]| {
        let mut c = bin();
        c.current_dir(cwd).args(["train", "--sample-tokens", "0"]);
        for s in sets {
            c.args(["--set", s]);
        }
        c.args(extra);
        c
    };
    let mut first = train(&a, &["--preset", "tiny", "--out", "run", "--set", "train.steps=4"]);
    common::run_ok(&mut first);
    // b prepares its own data/ (same vocabulary, other tokens).
    common::run_ok(&mut train(&b, &["--preset", "tiny", "--out", "run", "--set", "train.steps=1"]));
    let saved = std::fs::read_to_string(a.join("run/config.toml")).unwrap();
    assert!(saved.contains(&format!("\"{}\"", a.join("data").display())), "data.dir not recorded absolute:\n{saved}");

    let eval = |cwd: &Path, extra: &[&str]| {
        let out = common::run_ok(bin().current_dir(cwd).args(["eval", "--checkpoint"]).arg(a.join("run")).arg("--json").args(extra));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["val_loss"].as_f64().unwrap()
    };
    let here = eval(&a, &[]);
    assert_eq!(eval(&b, &[]), here, "eval from another directory read other data");
    // On purpose, another folder of the same tokenizer: evaluated, with another loss.
    assert_ne!(eval(&b, &["--data", "data"]), here);

    // --resume from b continues on a's data: bitwise the resume from a.
    let copy = a.join("copy");
    std::fs::create_dir_all(copy.join("checkpoints")).unwrap();
    for f in ["config.toml", "metrics.jsonl"] {
        std::fs::copy(a.join("run").join(f), copy.join(f)).unwrap();
    }
    copy_dir(&a.join("run/checkpoints/step-00000004"), &copy.join("checkpoints/step-00000004"));
    std::fs::write(copy.join("checkpoints/latest"), std::fs::read(a.join("run/checkpoints/latest")).unwrap()).unwrap();
    let resume = |cwd: &Path, run: &Path| {
        common::run_ok(bin().current_dir(cwd).args(["train", "--sample-tokens", "0", "--set", "train.steps=6", "--resume"]).arg(run));
    };
    resume(&b, &a.join("run"));
    resume(&a, &copy);
    assert_eq!(model_tensors(&a.join("run")), model_tensors(&copy));

    // The run's data folder replaced by other tokens of the same tokenizer: both refuse,
    // naming the folder and the first differing shard.
    std::fs::rename(a.join("data"), a.join("data.kept")).unwrap();
    copy_dir(&b.join("data"), &a.join("data"));
    let e = common::run_err(bin().current_dir(&b).args(["eval", "--checkpoint"]).arg(a.join("run")));
    assert!(e.contains("holds other tokens") && e.contains("sha256") && e.contains(&a.join("data").display().to_string()), "{e}");
    let e = common::run_err(bin().current_dir(&b).args(["train", "--set", "train.steps=8", "--resume"]).arg(a.join("run")));
    assert!(e.contains("holds other tokens") && e.contains("data.dir"), "{e}");
    assert_eq!(latest_step(&a.join("run")), 6, "a refused resume wrote a checkpoint");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
