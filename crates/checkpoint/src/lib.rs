//! Atomic, checksummed, layout-independent checkpoints of named f32 tensors (model
//! parameters and optimizer moments).
//!
//! A checkpoint is a folder `run_dir/checkpoints/step-XXXXXXXX/` holding safetensors
//! shard files plus a `manifest.json`. Every shard piece is a flat element range
//! `[start, end)` of a global tensor in row-major order, so ZeRO shards that cut a
//! tensor anywhere are stored as they are, and any layout loads any checkpoint by
//! reading the ranges it owns ([`Checkpoint::read_range`]).
//!
//! Writing is two-phase: every rank calls [`begin`] (idempotent) and
//! [`Pending::write_file`] for its shards; one rank gathers the [`FileRecord`]s and
//! calls [`commit`], which checks that the pieces tile every tensor exactly once, then
//! makes the checkpoint visible with an fsynced rename and an atomic `latest` pointer.
//! A crash or I/O error at any point leaves the previous checkpoint loadable.
//! [`open`] verifies every shard's size and SHA-256 before anything is read.
//!
//! On disk (format version 1):
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
//!                               shape, a partial range 1-D under `name[start:end]`
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

mod commit;
mod dirs;
mod error;
mod fsutil;
mod hf;
mod manifest;
mod read;
mod sink;
mod write;

#[cfg(test)]
mod fault_tests;

pub use commit::{clean_stale, commit, list_checkpoints};
pub use error::CheckpointError;
pub use hf::{export_safetensors, read_safetensors, Exported, NamedTensor};
pub use manifest::{
    piece_key, FileRecord, Manifest, Piece, TensorEntry, FORMAT_VERSION, MANIFEST_FILE,
};
pub use read::{open, Checkpoint};
pub use write::{begin, Pending, TensorSlice};
