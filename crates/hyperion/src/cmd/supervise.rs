//! `train --max-restarts N`: this process becomes a supervisor. It runs the training as
//! a child process (the same command without `--max-restarts`) and, when the child
//! fails (a crash, a panicking rank, a killed process), starts `train --resume RUN_DIR`
//! with the same overrides, after a backoff that doubles from `--restart-backoff-ms`
//! (at most a minute), up to N times. Each failure and restart is a line of
//! `RUN_DIR/restarts.jsonl`. Resume is exact, so a run that restarted ends with the same
//! parameters as one that never failed.
//!
//! Not restarted: a graceful stop (exit 75: a person or the scheduler asked for it), a
//! numerics stop (exit 76: it would diverge again, deterministically), and a child
//! that failed before its run directory had a config (bad arguments or config).
//!
//! `--launcher "mpirun -np 4"` runs each attempt under that launcher (its words, then
//! this executable and the train arguments), so a job of MPI processes is supervised
//! from outside `mpirun`: a killed rank ends the `mpirun`, which is then restarted.
//!
//! Signals: the child runs in its own process group, so a terminal's Ctrl-C reaches the
//! supervisor only, which forwards each SIGINT/SIGTERM to the child (the first stops it
//! gracefully, a second at once) and restarts nothing after that.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::stop::EXIT_STOPPED;
use super::train::TrainArgs;

/// Exit code of a run stopped by the numerics guard (`EX_DATAERR + 11` is taken by
/// nothing standard; 76 sits next to [`EXIT_STOPPED`]).
pub const EXIT_DIVERGED: i32 = 76;

/// A run stopped by the numerics guard; `main` exits with [`EXIT_DIVERGED`].
#[derive(Debug)]
pub struct Diverged(pub String);

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diverged {}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_sig: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// The run directory the supervised command writes (as `train` chooses it).
fn run_dir_of(args: &TrainArgs) -> PathBuf {
    if let Some(r) = &args.resume {
        // A step folder continues the run that holds it.
        if r.join("manifest.json").is_file() {
            if let Some(run) = r.parent().and_then(Path::parent) {
                return run.to_path_buf();
            }
        }
        return r.clone();
    }
    args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(args.config.preset.clone().unwrap_or_else(|| "custom".into())))
}

/// The first attempt: this process's own arguments without `--max-restarts`.
fn first_args() -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--max-restarts" || s == "--restart-backoff-ms" || s == "--launcher" {
            it.next();
        } else if !["--max-restarts=", "--restart-backoff-ms=", "--launcher="].iter().any(|p| s.starts_with(p)) {
            out.push(a);
        }
    }
    out
}

/// A restart: `train --resume RUN_DIR` with the overrides of the first command (the
/// testing aids that inject failures are not repeated).
fn restart_args(args: &TrainArgs, run_dir: &Path) -> Vec<String> {
    let mut a = vec!["train".to_string(), "--resume".into(), run_dir.display().to_string()];
    for s in &args.config.sets {
        a.extend(["--set".into(), s.clone()]);
    }
    if let Some(w) = args.workers {
        a.extend(["--workers".into(), w.to_string()]);
    }
    a.extend(["--comm-timeout".into(), args.comm_timeout.to_string(), "--sample-tokens".into(), args.sample_tokens.to_string()]);
    if args.allow_oversubscribe {
        a.push("--allow-oversubscribe".into());
    }
    if args.debug_checkpoint_pause_ms > 0 {
        a.extend(["--debug-checkpoint-pause-ms".into(), args.debug_checkpoint_pause_ms.to_string()]);
    }
    a
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "an unknown status".into(),
    }
}

fn log(run_dir: &Path, entry: serde_json::Value) {
    use std::io::Write;
    let path = run_dir.join("restarts.jsonl");
    let written = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{entry}"));
    if let Err(e) = written {
        eprintln!("warning: could not log to {}: {e}", path.display());
    }
}

fn latest_step(run_dir: &Path) -> Option<u64> {
    checkpoint::list_checkpoints(run_dir).ok()?.last().map(|(s, _)| *s)
}

pub fn run(args: TrainArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding this executable to supervise")?;
    let run_dir = run_dir_of(&args);
    super::stop::on_stop_signals(count_signal)?;
    let limit = args.max_restarts;
    let launcher: Vec<String> = args.launcher.as_deref().unwrap_or_default().split_whitespace().map(String::from).collect();
    let mut forwarded = 0;
    let mut restarts = 0u32;
    let mut command: Vec<std::ffi::OsString> = first_args();
    loop {
        use std::os::unix::process::CommandExt;
        let started = Instant::now();
        let mut cmd = match launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd.args(&command).process_group(0).spawn().with_context(|| format!("starting the supervised run{}", if launcher.is_empty() { String::new() } else { format!(" with `{}`", launcher.join(" ")) }))?;
        let status = loop {
            let got = SIGNALS.load(Ordering::SeqCst);
            while forwarded < got {
                // SAFETY: kill(2) on our own, not yet reaped child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                forwarded += 1;
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if status.success() {
            return Ok(());
        }
        let code = status.code();
        let asked = SIGNALS.load(Ordering::SeqCst) > 0;
        let why_not = if asked {
            Some("a stop was asked for")
        } else if code == Some(EXIT_STOPPED) {
            Some("it stopped on a signal")
        } else if code == Some(EXIT_DIVERGED) {
            Some("it stopped on non-finite numbers, which a restart would meet again")
        } else if !run_dir.join("config.toml").is_file() {
            Some("it failed before the run started (see its error)")
        } else if restarts >= limit {
            Some("--max-restarts is used up")
        } else {
            None
        };
        let attempt = restarts + 1;
        let dir = run_dir.clone();
        let entry = move |action: &str| {
            serde_json::json!({
                "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "attempt": attempt,
                "status": describe(status),
                "ran_s": started.elapsed().as_secs_f64(),
                "checkpoint_step": latest_step(&dir),
                "action": action,
            })
        };
        if let Some(reason) = why_not {
            if run_dir.is_dir() {
                log(&run_dir, entry(&format!("not restarted: {reason}")));
            }
            eprintln!("supervisor: the run ended with {}; not restarting: {reason}", describe(status));
            if asked {
                // One forwarded signal stops the run gracefully (a launcher such as
                // mpirun reports its own code for that); two end it at once.
                std::process::exit(if forwarded >= 2 { 128 + libc::SIGTERM } else { EXIT_STOPPED });
            }
            match code {
                Some(c) => std::process::exit(c),
                None => anyhow::bail!("the supervised run ended with {}", describe(status)),
            }
        }
        restarts += 1;
        let backoff = Duration::from_millis(args.restart_backoff_ms.saturating_mul(1 << (restarts - 1).min(16))).min(Duration::from_secs(60));
        log(&run_dir, entry(&format!("restart {restarts} of {limit} in {:.1} s", backoff.as_secs_f64())));
        eprintln!(
            "supervisor: the run ended with {} (last checkpoint: {}); restart {restarts} of {limit} in {:.1} s, logged in {}",
            describe(status),
            latest_step(&run_dir).map_or("none".into(), |s| format!("step {s}")),
            backoff.as_secs_f64(),
            run_dir.join("restarts.jsonl").display()
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until && SIGNALS.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        if SIGNALS.load(Ordering::SeqCst) > 0 {
            eprintln!("supervisor: stop asked for during the backoff; not restarting");
            std::process::exit(EXIT_STOPPED);
        }
        command = restart_args(&args, &run_dir).into_iter().map(Into::into).collect();
    }
}
