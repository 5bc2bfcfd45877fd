//! One writer per run directory: an OS advisory lock (`flock`) on `RUN_DIR/.lock`, held
//! for the whole run by the process that writes checkpoints (rank 0).
//!
//! The kernel drops a `flock` when its holder exits, however it exits, so a lock left by
//! a killed run is never an obstacle: the file's text (PID, host, start time) only serves
//! to name a live holder in the error, or a dead one when its lock is taken over.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Held for as long as it lives; dropping it (or the process ending) releases the lock.
pub struct RunLock {
    file: File,
}

pub const LOCK_FILE: &str = ".lock";

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `len` bytes; gethostname writes at most that many
    // and we read up to the first NUL (or the whole buffer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl RunLock {
    /// Takes the lock of `run_dir` (which must exist) or fails naming its holder.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the run lock {}", path.display()))?;
        // SAFETY: `file` is an open descriptor for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim().to_string();
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = if previous.is_empty() { "another process (it has not written its name yet)".to_string() } else { previous };
                bail!(
                    "run directory {} is in use by {holder}: one process writes a run at a time; wait for it to end, stop it, or choose another --out",
                    run_dir.display()
                );
            }
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        if !previous.is_empty() {
            eprintln!("taking over the lock of {} from {previous}, which is no longer running", run_dir.display());
        }
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let me = format!("PID {} on host {} (started at unix time {started})\n", std::process::id(), hostname());
        file.set_len(0).and_then(|_| file.seek(SeekFrom::Start(0))).and_then(|_| file.write_all(me.as_bytes())).and_then(|_| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(RunLock { file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // The holder's name goes with the lock: a finished run leaves an empty file.
        let _ = self.file.set_len(0);
    }
}
