//! Small durable-filesystem helpers: folder fsync, atomic pointer files and folder
//! replacement.
//!
//! POSIX only promises that a rename or a new directory entry survives a power loss
//! once the *parent directory* has been fsynced (see the ext4 `data=ordered` discussion
//! in Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014). Every step
//! of a commit therefore fsyncs the file, then the folder that names it.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{io_at, CheckpointError};

/// fsyncs a directory so that entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    let handle = File::open(dir).map_err(io_at(dir))?;
    handle.sync_all().map_err(io_at(dir))
}

/// Atomically replaces `dir/name` with a small text file holding `contents`:
/// write `name.tmp`, fsync it, rename over `name`, fsync `dir`. A crash leaves either
/// the old or the new pointer, never a torn one.
pub(crate) fn replace_pointer(
    dir: &Path,
    name: &str,
    contents: &str,
) -> Result<(), CheckpointError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let result = (|| {
        let mut sink = crate::sink::Sink::create(&tmp)?;
        sink.write(contents.as_bytes())?;
        sink.finish()?;
        fs::rename(&tmp, &target).map_err(io_at(&target))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: a leftover latest.tmp is harmless (never read) but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames the folder `from` to `to`. If `to` already exists (a step saved again after
/// resuming), the two are swapped atomically with `renameat2(RENAME_EXCHANGE)` so that
/// a checkpoint named `to` exists at every instant; the old contents end up at `from`
/// and are returned for deletion.
pub(crate) fn rename_dir(from: &Path, to: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    match fs::rename(from, to) {
        Ok(()) => Ok(None),
        Err(e) if to.is_dir() && is_not_empty(&e) => {
            exchange(from, to)?;
            Ok(Some(from.to_path_buf()))
        }
        Err(e) => Err(CheckpointError::io(to, e)),
    }
}

fn is_not_empty(e: &std::io::Error) -> bool {
    // ENOTEMPTY on Linux; some systems report EEXIST for a non-empty target.
    matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST))
        || e.kind() == ErrorKind::AlreadyExists
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn exchange(a: &Path, b: &Path) -> Result<(), CheckpointError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            CheckpointError::io(
                p,
                std::io::Error::new(ErrorKind::InvalidInput, "path contains NUL"),
            )
        })
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both pointers come from live, NUL-terminated CStrings that outlive the
    // call; AT_FDCWD makes the paths resolve like ordinary relative/absolute paths;
    // renameat2 does not retain the pointers.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE as _,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(CheckpointError::io(b, std::io::Error::last_os_error()))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn exchange(_a: &Path, b: &Path) -> Result<(), CheckpointError> {
    Err(CheckpointError::io(
        b,
        std::io::Error::new(
            ErrorKind::AlreadyExists,
            "checkpoint folder already exists and atomic exchange is Linux-only",
        ),
    ))
}

/// Moves `dir` out of sight (to a `.tmp-*` name, which loaders ignore and
/// `clean_stale` removes) and then deletes it, so a crash mid-delete never leaves a
/// half-deleted folder that still looks like a complete checkpoint.
pub(crate) fn remove_dir_safely(dir: &Path) -> Result<(), CheckpointError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hidden = if name.starts_with(".tmp-") {
        dir.to_path_buf()
    } else {
        let hidden = parent.join(format!(".tmp-delete-{name}"));
        fs::rename(dir, &hidden).map_err(io_at(dir))?;
        hidden
    };
    fs::remove_dir_all(&hidden).map_err(io_at(&hidden))
}
