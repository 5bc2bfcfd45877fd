//! manifest.json: what a checkpoint holds and where.
//!
//! The manifest is the only place that knows the global picture. Each shard file lists
//! its pieces as flat element ranges `[start, end)` of a global tensor in row-major
//! order, so a loader with any layout (ZeRO stage, dp/tp/pp degrees) finds the bytes it
//! needs by intersecting ranges, without knowing the layout that wrote them.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CheckpointError;

/// Format tag written in every manifest and shard header.
pub const FORMAT_NAME: &str = "hyperion-checkpoint";
/// Bumped on any incompatible change of the manifest or shard layout.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a checkpoint folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One contiguous flat range of a global tensor stored in one shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// Global tensor name (Hugging Face parameter name, or e.g. `adam.m.<name>`).
    pub name: String,
    /// Global tensor shape; the piece covers flat elements `[start, end)` of it.
    pub global_shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
    /// Key of this piece inside the safetensors file (see [`piece_key`]).
    pub key: String,
}

impl Piece {
    /// Number of f32 elements in the piece.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for an empty range (only written for tensors with zero elements).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One shard file of a checkpoint, as returned by `Pending::write_file` and recorded
/// in the manifest. Serde-able so ranks can ship their records to the committing rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// File name relative to the checkpoint folder.
    pub file: String,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
    pub pieces: Vec<Piece>,
}

/// A tensor's global name and shape, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The parsed manifest.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub step: u64,
    /// The caller's JSON: resolved config, RNG state, data position, tokens seen...
    pub meta: serde_json::Value,
    /// Every tensor, in order of first appearance across `files`.
    pub tensors: Vec<TensorEntry>,
    pub files: Vec<FileRecord>,
}

/// Number of elements of a shape; `None` on overflow (a corrupt or hostile shape).
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The key a piece gets inside its safetensors file. A whole tensor keeps its own name
/// and shape, so a single-file checkpoint is directly a Hugging Face-style state dict;
/// a partial piece is stored 1-D under `name[start:end]`, which keeps keys unique and
/// self-describing for standard readers that know nothing of the manifest.
pub fn piece_key(name: &str, global_shape: &[usize], start: usize, end: usize) -> String {
    if start == 0 && Some(end) == numel(global_shape) {
        name.to_string()
    } else {
        format!("{name}[{start}:{end}]")
    }
}

impl Manifest {
    /// Builds the manifest from the file records, checking that every tensor has one
    /// global shape and is covered exactly once (no gap, no overlap).
    pub(crate) fn build(
        step: u64,
        meta: serde_json::Value,
        files: Vec<FileRecord>,
    ) -> Result<Self, CheckpointError> {
        let mut order: Vec<TensorEntry> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut ranges: Vec<Vec<(usize, usize, &str)>> = Vec::new();
        for record in &files {
            for piece in &record.pieces {
                let slot = match index.get(piece.name.as_str()) {
                    Some(&i) => {
                        if order[i].shape != piece.global_shape {
                            return Err(CheckpointError::ShapeMismatch {
                                name: piece.name.clone(),
                                first: order[i].shape.clone(),
                                second: piece.global_shape.clone(),
                            });
                        }
                        i
                    }
                    None => {
                        index.insert(&piece.name, order.len());
                        order.push(TensorEntry {
                            name: piece.name.clone(),
                            shape: piece.global_shape.clone(),
                        });
                        ranges.push(Vec::new());
                        order.len() - 1
                    }
                };
                ranges[slot].push((piece.start, piece.end, &record.file));
            }
        }
        for (entry, pieces) in order.iter().zip(ranges.iter_mut()) {
            check_coverage(&entry.name, &entry.shape, pieces)?;
        }
        Ok(Manifest {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            step,
            meta,
            tensors: order,
            files,
        })
    }

    /// Parses and validates a manifest read from `path` (used in errors).
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let bad = |message: String| CheckpointError::BadManifest {
            path: path.to_path_buf(),
            message,
        };
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
        if manifest.format != FORMAT_NAME {
            return Err(bad(format!(
                "format is `{}`, expected `{FORMAT_NAME}`",
                manifest.format
            )));
        }
        if manifest.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        // Re-run the commit-time checks: a hand-edited manifest must not make reads
        // return uninitialised or doubly-defined elements.
        let rebuilt = Manifest::build(
            manifest.step,
            serde_json::Value::Null,
            manifest.files.clone(),
        )
        .map_err(|e| bad(e.to_string()))?;
        if rebuilt.tensors != manifest.tensors {
            return Err(bad(
                "`tensors` does not match the pieces listed under `files`".to_string(),
            ));
        }
        for record in &manifest.files {
            validate_file_name(&record.file).map_err(|e| bad(e.to_string()))?;
            // Keys encode the range; a piece whose key names another range would read
            // the wrong elements without any size mismatch to catch it.
            for p in &record.pieces {
                if p.key != piece_key(&p.name, &p.global_shape, p.start, p.end) {
                    return Err(bad(format!(
                        "piece `{}` [{}, {}) in {} has key `{}`, expected `{}`",
                        p.name,
                        p.start,
                        p.end,
                        record.file,
                        p.key,
                        piece_key(&p.name, &p.global_shape, p.start, p.end)
                    )));
                }
            }
        }
        Ok(manifest)
    }
}

/// Checks that `pieces` tile `[0, numel(shape))` exactly. Sorts `pieces` by start.
fn check_coverage(
    name: &str,
    shape: &[usize],
    pieces: &mut [(usize, usize, &str)],
) -> Result<(), CheckpointError> {
    let coverage = |detail: String| CheckpointError::Coverage {
        name: name.to_string(),
        detail,
    };
    let total = numel(shape).ok_or_else(|| coverage(format!("shape {shape:?} overflows usize")))?;
    pieces.sort_unstable();
    let mut covered = 0usize;
    for &(start, end, file) in pieces.iter() {
        if end < start || end > total {
            return Err(coverage(format!(
                "piece [{start}, {end}) in {file} is outside [0, {total})"
            )));
        }
        if start > covered {
            return Err(coverage(format!(
                "elements [{covered}, {start}) are in no file (gap before the piece in {file})"
            )));
        }
        if start < covered {
            return Err(coverage(format!(
                "piece [{start}, {end}) in {file} overlaps elements [{start}, {}) already saved",
                covered.min(end)
            )));
        }
        covered = end;
    }
    if covered != total {
        return Err(coverage(format!(
            "elements [{covered}, {total}) are in no file"
        )));
    }
    Ok(())
}

/// Shard file names are plain names inside the checkpoint folder: no separators, no
/// hidden files, and never the manifest itself.
pub(crate) fn validate_file_name(name: &str) -> Result<(), CheckpointError> {
    let invalid = |reason: &str| CheckpointError::InvalidFileName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(invalid("must be a plain file name without path separators"));
    }
    if name.starts_with('.') {
        return Err(invalid(
            "must not start with `.` (hidden and `..` names are reserved)",
        ));
    }
    if name == MANIFEST_FILE {
        return Err(invalid("reserved for the manifest"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(name: &str, shape: &[usize], start: usize, end: usize) -> Piece {
        Piece {
            name: name.into(),
            global_shape: shape.to_vec(),
            start,
            end,
            key: piece_key(name, shape, start, end),
        }
    }

    fn record(file: &str, pieces: Vec<Piece>) -> FileRecord {
        FileRecord {
            file: file.into(),
            sha256: String::new(),
            bytes: 0,
            pieces,
        }
    }

    #[test]
    fn keys_name_whole_tensors_plainly_and_ranges_explicitly() {
        assert_eq!(piece_key("wte.weight", &[4, 3], 0, 12), "wte.weight");
        assert_eq!(piece_key("wte.weight", &[4, 3], 5, 12), "wte.weight[5:12]");
        assert_eq!(piece_key("s", &[], 0, 1), "s");
    }

    #[test]
    fn coverage_accepts_exact_tiling_in_any_file_order() {
        let files = vec![
            record("b", vec![piece("w", &[2, 5], 7, 10)]),
            record("a", vec![piece("w", &[2, 5], 0, 3), piece("v", &[0], 0, 0)]),
            record("c", vec![piece("w", &[2, 5], 3, 7)]),
        ];
        let m = Manifest::build(3, serde_json::json!({}), files).unwrap();
        assert_eq!(m.tensors.len(), 2);
        assert_eq!(m.tensors[0].name, "w");
        assert_eq!(m.tensors[1].shape, vec![0]);
    }

    #[test]
    fn coverage_names_gap_overlap_and_tail() {
        let gap = vec![record(
            "a",
            vec![piece("w", &[10], 0, 3), piece("w", &[10], 4, 10)],
        )];
        let err = Manifest::build(0, serde_json::Value::Null, gap).unwrap_err();
        assert!(
            err.to_string().contains("elements [3, 4) are in no file"),
            "{err}"
        );

        let overlap = vec![
            record("a", vec![piece("w", &[10], 0, 6)]),
            record("b", vec![piece("w", &[10], 5, 10)]),
        ];
        let err = Manifest::build(0, serde_json::Value::Null, overlap).unwrap_err();
        assert!(matches!(&err, CheckpointError::Coverage { name, .. } if name == "w"));
        assert!(
            err.to_string().contains("overlaps elements [5, 6)"),
            "{err}"
        );

        let tail = vec![record("a", vec![piece("w", &[10], 0, 9)])];
        let err = Manifest::build(0, serde_json::Value::Null, tail).unwrap_err();
        assert!(
            err.to_string().contains("elements [9, 10) are in no file"),
            "{err}"
        );
    }

    #[test]
    fn shape_disagreement_is_an_error() {
        let files = vec![
            record("a", vec![piece("w", &[10], 0, 5)]),
            record("b", vec![piece("w", &[2, 5], 5, 10)]),
        ];
        let err = Manifest::build(0, serde_json::Value::Null, files).unwrap_err();
        assert!(matches!(err, CheckpointError::ShapeMismatch { .. }));
    }

    #[test]
    fn file_names_cannot_escape_the_folder() {
        for bad in ["", "../x", "a/b", ".hidden", "manifest.json"] {
            assert!(validate_file_name(bad).is_err(), "{bad}");
        }
        assert!(validate_file_name("rank-0003.safetensors").is_ok());
    }
}
