//! Standalone safetensors files, the exchange format of the Hugging Face Hub.
//!
//! Export writes chosen tensors of a checkpoint whole, with their global shapes, into
//! one file that `transformers`' `from_pretrained` and `safetensors.torch.load_file`
//! read (`__metadata__ = {"format": "pt"}`, which `transformers` checks). Since this
//! project's parameter names and shapes equal Hugging Face's (GPT-2 `Conv1D` layout),
//! export is a selection and an optional rename, never a transpose.
//!
//! Import reads every tensor of any safetensors file as f32 (F32, F64, F16 and BF16
//! are converted); [`NamedTensor::as_slice`] then feeds [`crate::Pending::write_file`].

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{io_at, CheckpointError};
use crate::fsutil;
use crate::manifest::numel;
use crate::read::{read_header, Checkpoint, Header};
use crate::sink::Sink;
use crate::write::{safetensors_header, TensorSlice};

/// A whole tensor read from a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// Flat row-major elements, converted to f32.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// The whole tensor as a slice for [`crate::Pending::write_file`].
    pub fn as_slice(&self) -> TensorSlice<'_> {
        TensorSlice {
            name: &self.name,
            global_shape: &self.shape,
            start: 0,
            data: &self.data,
        }
    }
}

/// What [`export_safetensors`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub bytes: u64,
    /// Exported tensor names, in file order.
    pub tensors: Vec<String>,
}

/// Writes the tensors of `ckpt` selected by `rename` (checkpoint name -> exported name,
/// `None` to leave a tensor out, e.g. optimizer moments) whole into the single
/// safetensors file `path`. The file appears atomically (hidden temporary, fsync,
/// rename, fsync of the folder); on error nothing is left at `path`.
pub fn export_safetensors(
    ckpt: &Checkpoint,
    path: &Path,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<Exported, CheckpointError> {
    let mut chosen = Vec::new(); // (checkpoint name, exported name, numel)
    let mut infos = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = 0usize;
    for name in ckpt.tensor_names() {
        let Some(out_name) = rename(&name) else {
            continue;
        };
        if out_name.is_empty() || out_name == "__metadata__" || !seen.insert(out_name.clone()) {
            return Err(CheckpointError::InvalidSlice {
                file: path.display().to_string(),
                name: out_name,
                detail: format!("exported name for `{name}` is empty, reserved, or used twice"),
            });
        }
        let shape = ckpt
            .global_shape(&name)
            .map(<[usize]>::to_vec)
            .unwrap_or_default();
        let n = numel(&shape).unwrap_or(0);
        infos.push((out_name.clone(), shape, (offset, offset + 4 * n)));
        offset += 4 * n;
        chosen.push((name, out_name, n));
    }
    let header = safetensors_header(&[("format", "pt".to_string())], &infos);

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| CheckpointError::InvalidFileName {
            name: path.display().to_string(),
            reason: "export path has no file name".into(),
        })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{file_name}.tmp"));
    let result = (|| {
        let mut sink = Sink::create(&tmp)?;
        sink.write(&header)?;
        // Stream each tensor through a bounded buffer: an export never needs more
        // memory than one chunk, whatever the model size.
        const CHUNK: usize = 1 << 20;
        let mut values = Vec::new();
        for (name, _, n) in &chosen {
            let mut start = 0;
            while start < *n {
                let end = (start + CHUNK).min(*n);
                values.resize(end - start, 0f32);
                ckpt.read_range(name, start, end, &mut values)?;
                sink.write_f32(&values)?;
                start = end;
            }
        }
        let (sha256, bytes) = sink.finish()?;
        fs::rename(&tmp, path).map_err(io_at(path))?;
        fsutil::sync_dir(&parent)?;
        Ok((sha256, bytes))
    })();
    match result {
        Ok((sha256, bytes)) => Ok(Exported {
            path: path.to_path_buf(),
            sha256,
            bytes,
            tensors: chosen.into_iter().map(|(_, out, _)| out).collect(),
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads every tensor of the safetensors file `path`, in file order, converting F32,
/// F64, F16 and BF16 to f32 (other dtypes are an error naming the tensor).
pub fn read_safetensors(path: &Path) -> Result<Vec<NamedTensor>, CheckpointError> {
    let bad = |message: String| CheckpointError::BadShard {
        file: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(io_at(path))?;
    let size = file.metadata().map_err(io_at(path))?.len();
    let Header { metadata, data_start, data_end } = read_header(&file, path, size)?;
    let tensors = metadata.tensors();
    if data_start + data_end > size {
        return Err(CheckpointError::Truncated {
            file: path.to_path_buf(),
            expected_bytes: data_start + data_end,
            actual_bytes: size,
        });
    }
    let mut out = Vec::with_capacity(tensors.len());
    let mut raw = Vec::new();
    for name in metadata.offset_keys() {
        let Some(info) = tensors.get(&name) else {
            continue;
        };
        let (begin, end) = info.data_offsets;
        raw.resize(end - begin, 0);
        file.read_exact_at(&mut raw, data_start + begin as u64)
            .map_err(io_at(path))?;
        let data = to_f32(info.dtype, &raw).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` has dtype {:?}; only F32, F64, F16, BF16 convert to f32",
                info.dtype
            ))
        })?;
        out.push(NamedTensor {
            name,
            shape: info.shape.clone(),
            data,
        });
    }
    Ok(out)
}

/// Little-endian bytes of `dtype` to f32; `None` for dtypes that are not floats.
fn to_f32(dtype: Dtype, raw: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}
