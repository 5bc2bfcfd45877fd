//! manifest.json: what a checkpoint holds and where.
//!
//! The manifest is the only place that knows the global picture. Each shard file lists
//! its pieces; a piece is either
//!
//! - **flat**: elements `[start, end)` of the global tensor in row-major order (what
//!   ZeRO writes: a tensor cut anywhere, even mid-row), stored 1-D under
//!   `name[start:end]`; or
//! - **N-d** (format version 2): a box of the tensor, a `(start, len)` pair per
//!   dimension in `slice` (what tensor parallelism writes: e.g. columns 256..512 of a
//!   (768, 1024) matrix is `"slice": [[0, 768], [256, 256]]`), stored with the box's
//!   own shape, row-major within the box, under `name[0:768,256:512]`. Its `start` and
//!   `end` are the flat span it touches (first element, last element + 1).
//!
//! A piece holding a whole tensor is always flat and keeps the tensor's name and shape.
//! Every tensor must be covered exactly once by its pieces, any mix of flat and N-d
//! ([`crate::coverage`]), so a loader with any layout (ZeRO stage, dp/tp/pp degrees)
//! finds the elements it needs by intersecting its request with the pieces, without
//! knowing the layout that wrote them.
//!
//! Version 1 manifests (flat pieces only) are still written whenever a checkpoint has
//! no N-d piece, byte for byte as before, so older builds keep loading them; version 2
//! is used only when some piece is N-d. This build reads both.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::coverage::check_coverage;
use crate::error::CheckpointError;
use crate::geometry::{self, volume};

/// Format tag written in every manifest and shard header.
pub const FORMAT_NAME: &str = "hyperion-checkpoint";
/// Newest format version this build writes and reads: 2 added N-d pieces
/// ([`Piece::slice`]). Bumped on any incompatible change of the manifest or shard layout.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build reads, and the version written for checkpoints
/// whose pieces are all flat (version 1 knows only flat pieces).
pub const MIN_FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a checkpoint folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One part of a global tensor stored in one shard file: a flat range, or an N-d box
/// when `slice` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// Global tensor name (Hugging Face parameter name, or e.g. `adam.m.<name>`).
    pub name: String,
    /// Global tensor shape.
    pub global_shape: Vec<usize>,
    /// A flat piece covers flat elements `[start, end)`; for an N-d piece these are the
    /// flat span of its box (first element, last element + 1), which it only partly
    /// fills.
    pub start: usize,
    pub end: usize,
    /// Key of this piece inside the safetensors file (see [`piece_key`], [`slice_key`]).
    pub key: String,
    /// For an N-d piece, `(start, len)` per dimension of the global shape; the data is
    /// that box, row-major within the box, stored with shape `[len, ...]`. Absent for
    /// flat pieces (and in every format version 1 manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<Vec<(usize, usize)>>,
}

impl Piece {
    /// Number of f32 elements in the piece.
    pub fn len(&self) -> usize {
        match &self.slice {
            Some(slice) => volume(slice),
            None => self.end - self.start,
        }
    }

    /// True for a piece without elements (only written for tensors with zero elements).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key this piece must have in its shard file, derived from its range or box.
    pub fn expected_key(&self) -> String {
        match &self.slice {
            Some(slice) => slice_key(&self.name, &self.global_shape, slice),
            None => piece_key(&self.name, &self.global_shape, self.start, self.end),
        }
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

/// The key of an N-d piece holding the box `slice` (`(start, len)` per dim):
/// `name[s0:e0,s1:e1,...]` with exclusive ends, e.g. `w[0:768,256:512]`; the plain name
/// for the whole tensor, like [`piece_key`].
pub fn slice_key(name: &str, global_shape: &[usize], slice: &[(usize, usize)]) -> String {
    if geometry::is_whole(global_shape, slice) {
        return name.to_string();
    }
    let dims: Vec<String> = slice
        .iter()
        .map(|&(s, l)| geometry::show_dim(s, l))
        .collect();
    format!("{name}[{}]", dims.join(","))
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
        let mut ranges: Vec<Vec<(&Piece, &str)>> = Vec::new();
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
                ranges[slot].push((piece, &record.file));
            }
        }
        for (entry, pieces) in order.iter().zip(&ranges) {
            check_coverage(&entry.name, &entry.shape, pieces)?;
        }
        Ok(Manifest {
            format: FORMAT_NAME.to_string(),
            format_version: format_version_for(files.iter().flat_map(|r| &r.pieces)),
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
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&manifest.format_version) {
            return Err(bad(format!(
                "format_version {} is not supported (this build reads {MIN_FORMAT_VERSION} to {FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        let needed = format_version_for(manifest.files.iter().flat_map(|r| &r.pieces));
        if manifest.format_version < needed {
            return Err(bad(format!(
                "format_version {} cannot hold N-d pieces (`slice`), which need version {needed}",
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
                if p.key != p.expected_key() {
                    return Err(bad(format!(
                        "piece `{}` [{}, {}) in {} has key `{}`, expected `{}`",
                        p.name,
                        p.start,
                        p.end,
                        record.file,
                        p.key,
                        p.expected_key()
                    )));
                }
                // Readers skip N-d pieces whose span misses a request, so it must be true.
                if let Some(slice) = &p.slice {
                    let span = geometry::span(&p.global_shape, slice);
                    if (p.start, p.end) != span {
                        return Err(bad(format!(
                            "N-d piece `{}` {} in {} records flat span [{}, {}), its slice spans [{}, {})",
                            p.name,
                            geometry::show(slice),
                            record.file,
                            p.start,
                            p.end,
                            span.0,
                            span.1
                        )));
                    }
                }
            }
        }
        Ok(manifest)
    }
}

/// The format version a set of pieces needs: 2 if any is N-d, else 1 (so checkpoints
/// without N-d pieces stay readable by builds that only know version 1).
pub(crate) fn format_version_for<'a>(mut pieces: impl Iterator<Item = &'a Piece>) -> u32 {
    if pieces.any(|p| p.slice.is_some()) {
        FORMAT_VERSION
    } else {
        MIN_FORMAT_VERSION
    }
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
            slice: None,
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
    fn nd_keys_list_every_dim_and_whole_boxes_keep_the_name() {
        assert_eq!(
            slice_key("w", &[768, 1024], &[(0, 768), (256, 256)]),
            "w[0:768,256:512]"
        );
        assert_eq!(slice_key("w", &[2, 3], &[(0, 2), (0, 3)]), "w");
        assert_eq!(slice_key("s", &[], &[]), "s");
    }

    /// A manifest exactly as the flat-only writer (format version 1) wrote it, before
    /// N-d pieces existed, parses unchanged; a rebuild from its files gives version 1
    /// and the same JSON, so flat checkpoints stay readable by version-1 builds.
    #[test]
    fn format_version_1_manifest_parses_and_round_trips() {
        let bytes = include_bytes!("../tests/fixtures/format-v1/step-00000007/manifest.json");
        let m = Manifest::parse(bytes, Path::new("manifest.json")).unwrap();
        assert_eq!(m.format_version, 1);
        assert!(m
            .files
            .iter()
            .flat_map(|f| &f.pieces)
            .all(|p| p.slice.is_none()));
        let rebuilt = Manifest::build(m.step, m.meta.clone(), m.files.clone()).unwrap();
        assert_eq!(rebuilt, m);
        assert_eq!(serde_json::to_vec_pretty(&rebuilt).unwrap(), bytes);
    }

    #[test]
    fn nd_pieces_need_version_2_and_a_true_span() {
        let shape = [4usize, 6];
        let cols = |c: usize| Piece {
            name: "w".into(),
            global_shape: shape.to_vec(),
            start: c,
            end: 18 + c + 3,
            key: slice_key("w", &shape, &[(0, 4), (c, 3)]),
            slice: Some(vec![(0, 4), (c, 3)]),
        };
        let m = Manifest::build(
            1,
            serde_json::Value::Null,
            vec![record("a", vec![cols(0)]), record("b", vec![cols(3)])],
        )
        .unwrap();
        assert_eq!(m.format_version, FORMAT_VERSION);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""slice":[[0,4],[3,3]]"#), "{json}");
        Manifest::parse(json.as_bytes(), Path::new("m")).unwrap();
        let v1 = json.replace(r#""format_version":2"#, r#""format_version":1"#);
        let err = Manifest::parse(v1.as_bytes(), Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("cannot hold N-d pieces"), "{err}");
        let span = json.replace(r#""start":3,"end":24"#, r#""start":3,"end":23"#);
        let err = Manifest::parse(span.as_bytes(), Path::new("m")).unwrap_err();
        assert!(
            err.to_string()
                .contains("records flat span [3, 23), its slice spans [3, 24)"),
            "{err}"
        );
        let key = json.replace("w[0:4,3:6]", "w[0:4,0:3]");
        assert!(Manifest::parse(key.as_bytes(), Path::new("m")).is_err());
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
