//! Folder naming under `run_dir/checkpoints/`:
//!
//! ```text
//! checkpoints/
//!   latest                 text file: name of the newest committed folder
//!   step-00000100/         a committed checkpoint (manifest.json + shards)
//!   .tmp-step-00000200/    a checkpoint being written; never loaded
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io_at, CheckpointError};
use crate::manifest::MANIFEST_FILE;

pub(crate) const CHECKPOINTS_DIR: &str = "checkpoints";
pub(crate) const LATEST_FILE: &str = "latest";
pub(crate) const TMP_PREFIX: &str = ".tmp-";

pub(crate) fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINTS_DIR)
}

/// `step-00000100`; eight digits keep `ls` order equal to step order up to 10^8 steps,
/// and [`parse_step_dir`] accepts longer numbers beyond that.
pub(crate) fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

pub(crate) fn tmp_dir_name(step: u64) -> String {
    format!("{TMP_PREFIX}{}", step_dir_name(step))
}

/// The step of a committed folder name (`step-00000100` -> 100), `None` for anything
/// else, temporary folders included.
pub(crate) fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Complete checkpoints (a `step-*` folder holding a manifest) in `ckpt_dir`, sorted by
/// ascending step. A missing `ckpt_dir` is an empty list.
pub(crate) fn complete_steps(ckpt_dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let entries = match fs::read_dir(ckpt_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CheckpointError::io(ckpt_dir, e)),
    };
    let mut steps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at(ckpt_dir))?;
        let Some(step) = entry.file_name().to_str().and_then(parse_step_dir) else {
            continue;
        };
        let path = entry.path();
        if path.join(MANIFEST_FILE).is_file() {
            steps.push((step, path));
        }
    }
    steps.sort();
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tmp_is_not_a_step() {
        assert_eq!(step_dir_name(42), "step-00000042");
        assert_eq!(parse_step_dir("step-00000042"), Some(42));
        assert_eq!(parse_step_dir("step-123456789"), Some(123_456_789));
        assert_eq!(parse_step_dir(&tmp_dir_name(42)), None);
        assert_eq!(parse_step_dir("step-"), None);
        assert_eq!(parse_step_dir("step-12a"), None);
        assert_eq!(parse_step_dir("step-+12"), None);
    }
}
