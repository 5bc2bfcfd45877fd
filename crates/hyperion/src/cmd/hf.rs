//! Hugging Face folders out (`hyperion export`) and in (`hyperion train --init-from`).
//!
//! A folder holds `config.json` (see `model::hf`), `model.safetensors` (or shards
//! `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json` above
//! `--max-shard-size`, as the Hub writes them), `generation_config.json` and, when the
//! tokenizer has a Hugging Face form, its files. Tensor names are the layout's own.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use model::spec::{Family, ModelSpec};
use model::{Layout, TensorKind};
use serde_json::json;

use super::common;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint) or one checkpoint folder.
    #[arg(long, value_name = "RUN_OR_CKPT")]
    pub checkpoint: PathBuf,
    /// The folder to write (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Largest safetensors file in bytes before the weights are sharded (Hub default 5 GB).
    #[arg(long, default_value_t = 5_000_000_000)]
    pub max_shard_size: u64,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let m = common::load_checkpoint(&a.checkpoint)?;
    if a.out.exists() && std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty: choose a new --out folder", a.out.display());
    }
    // GPT-2 in `transformers` always has biases: a bias-free model is exported with zeros.
    let hf_spec = match m.gpt.spec.family {
        Family::Gpt2 => ModelSpec { bias: true, ..m.gpt.spec.clone() },
        Family::Llama => m.gpt.spec.clone(),
    };
    let hf_layout = Layout::new(&hf_spec);
    let mut tensors = Vec::new();
    for (_, t) in hf_layout.tensors() {
        let data: Cow<[f32]> = match m.gpt.layout.find(&t.name) {
            Some((b, ours)) => Cow::Borrowed(&m.params[b][ours.range()]),
            None if t.kind == TensorKind::Bias => Cow::Owned(vec![0.0; t.numel()]),
            None => bail!("internal: {} has no tensor {}", m.gpt.spec.name, t.name),
        };
        tensors.push((t.name.clone(), t.shape.clone(), data));
    }
    let (bos, eos) = data::special_ids(&m.meta);
    let tok_files = data::hf_tokenizer_files_with_max_length(&m.meta, hf_spec.seq)?;
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = a.out.file_name().map(|n| n.to_string_lossy().into_owned()).context("--out has no folder name")?;
    let tmp = parent.join(format!(".{name}.tmp-export"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> Result<Vec<String>> {
        let files = write_weights(&tmp, &tensors, a.max_shard_size)?;
        write_json(&tmp.join("config.json"), &model::hf::to_config(&hf_spec, bos, eos))?;
        write_json(&tmp.join("generation_config.json"), &model::hf::to_generation_config(bos, eos))?;
        for (f, bytes) in &tok_files {
            std::fs::write(tmp.join(f), bytes).with_context(|| format!("writing {f}"))?;
        }
        Ok(files)
    })();
    let files = match written {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if a.out.exists() {
        std::fs::remove_dir(&a.out).with_context(|| format!("replacing the empty folder {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out).with_context(|| format!("moving the export into {}", a.out.display()))?;
    println!(
        "exported step {} of {} ({} {}, {} parameters) to {}: {} weight file(s), config.json, generation_config.json{}",
        m.step,
        m.dir.display(),
        hf_class(&hf_spec),
        m.gpt.spec.name,
        hf_layout.num_params(),
        a.out.display(),
        files.len(),
        if tok_files.is_empty() {
            format!("; the {} tokenizer has no Hugging Face form, so no tokenizer files", m.meta.tokenizer.as_str())
        } else {
            format!(", tokenizer ({})", tok_files.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(", "))
        }
    );
    Ok(())
}

/// The `transformers` class a family exports as.
fn hf_class(spec: &ModelSpec) -> &'static str {
    match spec.family {
        Family::Gpt2 => "GPT2LMHeadModel",
        Family::Llama => "LlamaForCausalLM",
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A tensor to export: name, shape, elements (borrowed from the checkpoint, or zeros).
type Named<'a> = (String, Vec<usize>, Cow<'a, [f32]>);

/// Writes the tensors into one file or shards of at most `max` bytes (a tensor larger
/// than `max` gets a shard of its own). Returns the file names.
fn write_weights(dir: &Path, tensors: &[Named], max: u64) -> Result<Vec<String>> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, (_, _, d)) in tensors.iter().enumerate() {
        let bytes = 4 * d.len() as u64;
        if size > 0 && size + bytes > max {
            groups.push(Vec::new());
            size = 0;
        }
        groups.last_mut().expect("one group").push(i);
        size += bytes;
    }
    let n = groups.len();
    let mut names = Vec::new();
    let mut weight_map = BTreeMap::new();
    let total: u64 = tensors.iter().map(|t| 4 * t.2.len() as u64).sum();
    for (g, idx) in groups.iter().enumerate() {
        let file = if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{:05}.safetensors", g + 1, n) };
        let bytes: Vec<Vec<u8>> = idx.iter().map(|&i| tensors[i].2.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = idx
            .iter()
            .zip(&bytes)
            .map(|(&i, b)| Ok((tensors[i].0.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, tensors[i].1.clone(), b)?)))
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &dir.join(&file)).with_context(|| format!("writing {file}"))?;
        for &i in idx {
            weight_map.insert(tensors[i].0.clone(), file.clone());
        }
        names.push(file);
    }
    if n > 1 {
        write_json(&dir.join("model.safetensors.index.json"), &json!({ "metadata": { "total_size": total }, "weight_map": weight_map }))?;
    }
    Ok(names)
}

/// A Hugging Face folder read for `--init-from`: its spec and every tensor as f32.
pub struct HfModel {
    pub spec: ModelSpec,
    pub tensors: BTreeMap<String, checkpoint::NamedTensor>,
    pub dir: PathBuf,
}

pub fn read_dir(dir: &Path) -> Result<HfModel> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {} (a Hugging Face model folder needs one)", cfg_path.display()))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))?;
    let spec = model::hf::from_config(&cfg).map_err(|e| anyhow::anyhow!("{}: {e}", cfg_path.display()))?;
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.is_file() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?).with_context(|| format!("parsing {}", index.display()))?;
        let map = v["weight_map"].as_object().with_context(|| format!("{}: no weight_map", index.display()))?;
        let mut f: Vec<String> = map.values().filter_map(|x| x.as_str().map(str::to_string)).collect();
        f.sort();
        f.dedup();
        f.into_iter().map(|f| dir.join(f)).collect()
    } else if dir.join("model.safetensors").is_file() {
        vec![dir.join("model.safetensors")]
    } else {
        bail!("{} has neither model.safetensors nor model.safetensors.index.json", dir.display());
    };
    let mut tensors = BTreeMap::new();
    for f in files {
        for t in checkpoint::read_safetensors(&f).with_context(|| format!("reading {}", f.display()))? {
            let name = model::hf::canonical_name(&spec, &t.name);
            tensors.insert(name, t);
        }
    }
    Ok(HfModel { spec, tensors, dir: dir.to_path_buf() })
}

impl HfModel {
    /// The tensors as whole buckets of `layout`, checking every name and shape: the
    /// first missing, unexpected or mis-shaped tensor is an error that names it.
    pub fn buckets(&self, spec: &ModelSpec, layout: &Layout) -> Result<Vec<Vec<f32>>> {
        let mut out: Vec<Vec<f32>> = layout.buckets.iter().map(|b| vec![0.0; b.numel]).collect();
        for (b, t) in layout.tensors() {
            let Some(src) = self.tensors.get(&t.name) else {
                bail!("{}: tensor `{}` (shape {:?}) is missing", self.dir.display(), t.name, t.shape);
            };
            if src.shape != t.shape {
                bail!("{}: tensor `{}` has shape {:?}, the model needs {:?}", self.dir.display(), t.name, src.shape, t.shape);
            }
            out[b][t.range()].copy_from_slice(&src.data);
        }
        for name in self.tensors.keys() {
            if layout.find(name).is_none() && !model::hf::ignorable(spec, name) {
                bail!("{}: unexpected tensor `{name}` (not a parameter of this {:?} model)", self.dir.display(), spec.family);
            }
        }
        Ok(out)
    }
}
