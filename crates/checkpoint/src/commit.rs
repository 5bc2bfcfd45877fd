//! Making a written checkpoint visible, atomically, and housekeeping around it.
//!
//! The commit protocol (each arrow is a crash point; at every one of them the previous
//! checkpoint and `latest` are intact):
//!
//! ```text
//! shards fsynced (write_file) -> manifest.json written + fsynced -> tmp folder fsynced
//!   -> rename .tmp-step-N to step-N -> checkpoints/ fsynced
//!   -> latest.tmp written + fsynced -> rename to latest -> checkpoints/ fsynced
//!   -> prune old step-* folders (each hidden by a rename before deletion)
//! ```

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::dirs::{checkpoints_dir, complete_steps, step_dir_name, LATEST_FILE, TMP_PREFIX};
use crate::error::{io_at, CheckpointError};
use crate::fsutil;
use crate::manifest::{validate_file_name, FileRecord, Manifest, MANIFEST_FILE};
use crate::sink::Sink;
use crate::write::Pending;

/// Commits the checkpoint: writes manifest.json (format version, step, the caller's
/// `meta`, every tensor's global shape, every file record), fsyncs it and the folder,
/// renames the folder to `step-XXXXXXXX`, fsyncs `checkpoints/`, replaces `latest`
/// atomically, then deletes all but the newest `keep_last` checkpoints (`0` keeps
/// all; the one just written is always kept). Returns the committed folder.
///
/// `files` are the records from every rank's `write_file`. Before anything becomes
/// visible, every tensor must be covered exactly once by the pieces, and every file
/// must be present with its recorded size. On an error before the rename the temporary
/// folder is removed; after the rename, `latest` still names the previous checkpoint.
pub fn commit(
    pending: Pending,
    meta: serde_json::Value,
    files: Vec<FileRecord>,
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    let tmp_dir = pending.path().to_path_buf();
    let committed = match seal(&pending, meta, files) {
        Ok(()) => publish(&pending),
        Err(e) => Err(e),
    };
    let step_dir = match committed {
        Ok(dir) => dir,
        Err(e) => {
            if tmp_dir.exists() {
                let _ = fs::remove_dir_all(&tmp_dir);
            }
            return Err(e);
        }
    };
    let ckpt_dir = checkpoints_dir(pending.run_dir());
    fsutil::replace_pointer(
        &ckpt_dir,
        LATEST_FILE,
        &format!("{}\n", step_dir_name(pending.step())),
    )?;
    prune(&ckpt_dir, &step_dir, keep_last);
    Ok(step_dir)
}

/// Checks the records and writes the manifest inside the temporary folder.
fn seal(
    pending: &Pending,
    meta: serde_json::Value,
    files: Vec<FileRecord>,
) -> Result<(), CheckpointError> {
    let tmp_dir = pending.path();
    let mut names = HashSet::new();
    for record in &files {
        validate_file_name(&record.file)?;
        if !names.insert(record.file.as_str()) {
            return Err(CheckpointError::DuplicateFile {
                file: record.file.clone(),
            });
        }
        let path = tmp_dir.join(&record.file);
        let actual = fs::metadata(&path).map_err(io_at(&path))?.len();
        if actual != record.bytes {
            return Err(CheckpointError::Truncated {
                file: path,
                expected_bytes: record.bytes,
                actual_bytes: actual,
            });
        }
    }
    // Files a crashed earlier attempt at this step left behind would otherwise sit in
    // the committed folder unlisted.
    for entry in fs::read_dir(tmp_dir).map_err(io_at(tmp_dir))? {
        let entry = entry.map_err(io_at(tmp_dir))?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| names.contains(n)) {
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_at(&path))?;
        }
    }

    let manifest = Manifest::build(pending.step(), meta, files)?;
    let manifest_path = tmp_dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::BadManifest {
        path: manifest_path.clone(),
        message: format!("meta does not serialise: {e}"),
    })?;
    let mut sink = Sink::create(&manifest_path)?;
    sink.write(&json)?;
    sink.finish()?;
    fsutil::sync_dir(tmp_dir)
}

/// Renames the sealed folder into place and makes the rename durable.
fn publish(pending: &Pending) -> Result<PathBuf, CheckpointError> {
    let ckpt_dir = checkpoints_dir(pending.run_dir());
    let step_dir = ckpt_dir.join(step_dir_name(pending.step()));
    let replaced = fsutil::rename_dir(pending.path(), &step_dir)?;
    fsutil::sync_dir(&ckpt_dir)?;
    if let Some(old) = replaced {
        // The previous contents of step-N now sit under the .tmp name; the new ones
        // are live, so the old can go.
        let _ = fs::remove_dir_all(old);
    }
    Ok(step_dir)
}

/// Deletes all complete checkpoints but `keep` (always kept) and the newest others, up
/// to `keep_last` in total. Failures are logged, not returned: the commit itself has
/// succeeded, and a leftover old checkpoint only costs disk.
fn prune(ckpt_dir: &Path, keep: &Path, keep_last: usize) {
    if keep_last == 0 {
        return;
    }
    let steps = match complete_steps(ckpt_dir) {
        Ok(steps) => steps,
        Err(e) => {
            tracing::warn!("not pruning old checkpoints: {e}");
            return;
        }
    };
    let others = steps.iter().rev().filter(|(_, p)| p != keep);
    for (_, old) in others.skip(keep_last - 1) {
        if let Err(e) = fsutil::remove_dir_safely(old) {
            tracing::warn!("could not delete old checkpoint: {e}");
        }
    }
}

/// Removes stale `.tmp-*` folders (and a stale `latest.tmp`) that a crash left under
/// `run_dir/checkpoints/`; returns how many folders were removed. Call it at the start
/// of a run, before any rank calls [`crate::begin`]: it would delete a checkpoint that
/// is being written.
pub fn clean_stale(run_dir: &Path) -> Result<usize, CheckpointError> {
    let ckpt_dir = checkpoints_dir(run_dir);
    let entries = match fs::read_dir(&ckpt_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(CheckpointError::io(&ckpt_dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_at(&ckpt_dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with(TMP_PREFIX) && path.is_dir() {
            fs::remove_dir_all(&path).map_err(io_at(&path))?;
            removed += 1;
        } else if name == format!("{LATEST_FILE}.tmp") {
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
    }
    Ok(removed)
}

/// Moves the committed checkpoint folders `dirs` of `run_dir` out of the run's view,
/// renaming `step-N` to `<label>-step-N` in the same folder (nothing is deleted; with a
/// numeric suffix if that name is taken), then points `latest` at `current` (a step
/// folder of this run). For a resume that continues from an older checkpoint: newer
/// ones that fail to verify, or that belong to the abandoned continuation, must neither
/// be loaded nor count as "newer" when old checkpoints are pruned. Returns the new paths.
/// Call it under the run's lock.
pub fn set_aside(run_dir: &Path, dirs: &[PathBuf], label: &str, current: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let ckpt_dir = checkpoints_dir(run_dir);
    let mut moved = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if dir.parent() != Some(ckpt_dir.as_path()) || crate::dirs::parse_step_dir(name).is_none() {
            return Err(CheckpointError::NotFound {
                path: dir.clone(),
                hint: format!("not a step folder of {}", ckpt_dir.display()),
            });
        }
        let mut to = ckpt_dir.join(format!("{label}-{name}"));
        let mut n = 1;
        while to.exists() {
            to = ckpt_dir.join(format!("{label}-{name}.{n}"));
            n += 1;
        }
        fs::rename(dir, &to).map_err(io_at(dir))?;
        moved.push(to);
    }
    fsutil::sync_dir(&ckpt_dir)?;
    let current = current.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    fsutil::replace_pointer(&ckpt_dir, LATEST_FILE, &format!("{current}\n"))?;
    Ok(moved)
}

/// Complete checkpoints of a run (folders `step-*` with a manifest), oldest first, as
/// `(step, folder)`. Checksums are not verified; use [`crate::open`] for that.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    complete_steps(&checkpoints_dir(run_dir))
}
