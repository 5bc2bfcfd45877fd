//! Graceful stop on SIGINT / SIGTERM (Ctrl-C; Slurm's and Kubernetes' preemption
//! signal): the first signal raises [`STOP`], which the training loop reads after
//! every step (every rank finishes its step, all stop at the same one, a checkpoint is
//! written); a second signal ends the process at once with the usual 128 + signal code.

use std::sync::atomic::{AtomicBool, Ordering};

/// Raised by the first SIGINT/SIGTERM.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Exit code of a run that stopped on a signal after writing its checkpoint
/// (`EX_TEMPFAIL` of sysexits.h: try again later, here with `--resume`).
pub const EXIT_STOPPED: i32 = 75;

/// Returned by `train` when it stopped on a signal; `main` maps it to [`EXIT_STOPPED`].
#[derive(Debug)]
pub struct Stopped {
    pub step: u64,
    pub run_dir: std::path::PathBuf,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped on a signal after step {} with its checkpoint written; continue with: hyperion train --resume {}",
            self.step,
            self.run_dir.display()
        )
    }
}

impl std::error::Error for Stopped {}

extern "C" fn on_signal(sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
    let msg = b"\nstop requested: finishing this step and writing a checkpoint (signal again to exit at once, losing it)\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for its length.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Installs the graceful-stop handler for SIGINT and SIGTERM (call it once the MPI
/// runtime, if any, has installed its own handlers).
pub fn install() -> anyhow::Result<()> {
    on_stop_signals(on_signal)
}

/// Makes `handler` the handler of SIGINT and SIGTERM. It must only touch atomics and
/// call async-signal-safe functions.
pub fn on_stop_signals(handler: extern "C" fn(libc::c_int)) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
        // handler is an extern "C" fn restricted as documented above.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler as *const () as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 {
            anyhow::bail!("installing the handler of signal {sig}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
