//! Atomic, checksummed, layout-independent checkpoints of named f32 tensors (model
//! parameters and optimizer moments).
//!
//! A checkpoint is a folder `run_dir/checkpoints/step-XXXXXXXX/` holding safetensors
//! shard files plus a `manifest.json`. A shard piece is either a flat element range
//! `[start, end)` of a global tensor in row-major order ([`TensorSlice`]), so ZeRO
//! shards that cut a tensor anywhere are stored as they are, or an N-d box of it, a
//! `(start, len)` per dimension ([`NdSlice`]), so tensor-parallel shards (a column
//! block of a matrix) are stored as they are too. Any layout loads any checkpoint by
//! reading the flat ranges ([`Checkpoint::read_range`]) or boxes
//! ([`Checkpoint::read_slice`]) it owns, whatever mix of pieces wrote them.
//!
//! Writing is two-phase: every rank calls [`begin`] (idempotent) and
//! [`Pending::write_file`] for its shards; one rank gathers the [`FileRecord`]s and
//! calls [`commit`], which checks that the pieces cover every element of every tensor
//! exactly once, then makes the checkpoint visible with an fsynced rename and an atomic
//! `latest` pointer. A crash or I/O error at any point leaves the previous checkpoint
//! loadable. [`open`] verifies every shard's size and SHA-256 before anything is read.
//!
//! On disk (format version 1, flat pieces only; version 2 adds N-d pieces and is
//! written only when a checkpoint has one, see [`Piece::slice`]):
//!
//! ```text
//! run_dir/checkpoints/
//!   latest                      "step-00000100\n", replaced atomically
//!   step-00000100/
//!     manifest.json             {"format": "hyperion-checkpoint", "format_version": 1,
//!                                "step": 100, "meta": {..caller's JSON..},
//!                                "tensors": [{"name": "w", "shape": [2, 3]}],
//!                                "files": [{"file": "rank-0.safetensors", "sha256": "..",
//!                                  "bytes": 168, "pieces": [{"name": "w", "global_shape": [2, 3],
//!                                  "start": 0, "end": 4, "key": "w[0:4]"}]}, ..]}
//!     rank-0.safetensors        F32 tensors; a whole tensor under its own name and
//!                               shape, a partial range 1-D under `name[start:end]`,
//!                               an N-d box with its own shape under `name[0:2,1:3]`
//!                               (manifest piece: `"slice": [[0, 2], [1, 2]]`)
//!   .tmp-step-00000200/         being written (or left by a crash); never loaded
//! ```
//!
//! For exchange with the Hugging Face ecosystem, [`export_safetensors`] writes chosen
//! tensors whole into one standalone safetensors file and [`read_safetensors`] reads
//! any safetensors file (F32/F64/F16/BF16) as f32 for import.
//!
//! ```
//! use checkpoint::{begin, commit, open, TensorSlice};
//! # fn main() -> Result<(), checkpoint::CheckpointError> {
//! let run = tempfile::tempdir().unwrap();
//! let w: Vec<f32> = (0..6).map(|i| i as f32).collect(); // (2, 3)
//! let shape = [2, 3];
//!
//! // Two "ranks" each own half of the flattened tensor, as ZeRO would cut it.
//! let pending = begin(run.path(), 100)?;
//! let a = pending.write_file("rank-0.safetensors", &[TensorSlice { name: "w", global_shape: &shape, start: 0, data: &w[..4] }])?;
//! let b = pending.write_file("rank-1.safetensors", &[TensorSlice { name: "w", global_shape: &shape, start: 4, data: &w[4..] }])?;
//! commit(pending, serde_json::json!({ "tokens_seen": 12800 }), vec![a, b], 3)?;
//!
//! let ckpt = open(run.path())?; // follows checkpoints/latest
//! assert_eq!(ckpt.step(), 100);
//! assert_eq!(ckpt.read("w")?, w);
//! let mut mid = [0f32; 3];
//! ckpt.read_range("w", 2, 5, &mut mid)?; // spans both shard files
//! assert_eq!(mid, [2.0, 3.0, 4.0]);
//! assert_eq!(ckpt.files()[0].bytes, 168); // the size quoted in the layout above
//! # Ok(()) }
//! ```
//!
//! Tensor-parallel shards are boxes; a checkpoint saved by tp = 3 column blocks reloads
//! as any other cut:
//!
//! ```
//! use checkpoint::{begin, commit, open, NdSlice};
//! # fn main() -> Result<(), checkpoint::CheckpointError> {
//! let run = tempfile::tempdir().unwrap();
//! let w: Vec<f32> = (0..6).map(|i| i as f32).collect(); // (2, 3): [[0, 1, 2], [3, 4, 5]]
//! let shape = [2, 3];
//! let pending = begin(run.path(), 1)?;
//! let records = (0..3)
//!     .map(|c| {
//!         let column = [w[c], w[3 + c]]; // the box, row-major within it
//!         let slice = [(0, 2), (c, 1)]; // rows 0..2, column c
//!         let piece = NdSlice { name: "w", global_shape: &shape, slice: &slice, data: &column };
//!         pending.write_file(&format!("tp-{c}.safetensors"), &[piece])
//!     })
//!     .collect::<Result<Vec<_>, _>>()?;
//! commit(pending, serde_json::Value::Null, records, 0)?;
//!
//! let ckpt = open(run.path())?;
//! assert_eq!(ckpt.files()[1].pieces[0].key, "w[0:2,1:2]");
//! assert_eq!(ckpt.read("w")?, w);
//! let mut right = [0f32; 4];
//! ckpt.read_slice("w", &[(0, 2), (1, 2)], &mut right)?; // tp = 2 style: columns 1..3
//! assert_eq!(right, [1.0, 2.0, 4.0, 5.0]);
//! let mut flat = [0f32; 3];
//! ckpt.read_range("w", 2, 5, &mut flat)?; // ZeRO style
//! assert_eq!(flat, [2.0, 3.0, 4.0]);
//! # Ok(()) }
//! ```

mod commit;
mod coverage;
mod dirs;
mod error;
mod fsutil;
mod gather;
mod geometry;
mod hf;
mod manifest;
mod read;
mod sink;
mod write;

#[cfg(test)]
mod fault_tests;

pub use commit::{clean_stale, commit, list_checkpoints, set_aside};
pub use error::CheckpointError;
pub use hf::{export_safetensors, read_safetensors, Exported, NamedTensor};
pub use manifest::{
    piece_key, slice_key, FileRecord, Manifest, Piece, TensorEntry, FORMAT_VERSION,
    MANIFEST_FILE, MIN_FORMAT_VERSION,
};
pub use read::{open, open_newest_valid, Checkpoint, Newest};
pub use write::{begin, NdSlice, Pending, ShardSlice, TensorSlice};
