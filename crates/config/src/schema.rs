//! The raw run configuration, one typed struct per TOML section, as written by the user.
//!
//! Every section is `#[serde(deny_unknown_fields, default)]`, so a file only names what it
//! changes. `Default` for [`RunConfig`] equals the `shakespeare-char-cpu` preset (a run
//! that trains in minutes on a laptop CPU), see [`crate::presets`].
//!
//! `Option` fields that are `None` are left out of the TOML: `None` means "derive it"
//! (from the data, from `train.steps`, ...), and TOML has no null.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole run configuration as written (file + preset + `--set`), before derivation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub optim: OptimConfig,
    pub data: DataConfig,
    pub parallel: ParallelConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
}

/// Model architecture family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// GPT-2 (Radford et al. 2019): LayerNorm, GELU-tanh MLP, learned positions.
    Gpt2,
    /// Llama (Touvron et al. 2023): RMSNorm, SwiGLU MLP, rotary positions, GQA.
    Llama,
}

/// `[model]`: the transformer's shape. Names follow GPT-2 / nanoGPT (`n_embd`, ...).
/// It resolves into one `model::ModelSpec` ([`crate::ResolvedConfig::model_spec`]);
/// a `0` in the derived fields means "the family's default".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Context length T (tokens per sequence).
    pub block_size: usize,
    /// `None` = take it from the prepared data's `meta.json`
    /// (see [`crate::ResolvedConfig::with_vocab_size`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Biases in linear layers and layer norms (GPT-2: true; nanoGPT's small runs and
    /// Llama: false).
    pub bias: bool,
    /// Key/value heads for grouped-query attention (Ainslie et al. 2023); must divide
    /// `n_head`. 0 = `n_head` (multi-head attention).
    pub n_kv_head: usize,
    /// Width of one attention head. 0 = `n_embd / n_head`.
    pub head_dim: usize,
    /// Feed-forward width. 0 = `4 n_embd` (gpt2) or Meta's Llama rule
    /// `256 * ceil((2 * 4 n_embd / 3) / 256)` (llama; 11008 for 4096).
    pub ffn_hidden: usize,
    /// Epsilon of LayerNorm / RMSNorm.
    pub norm_eps: f64,
    /// Rotary base theta (llama; Su et al. 2021). Ignored by gpt2's learned positions.
    pub rope_theta: f64,
    /// The output head shares the token embedding (GPT-2 always; Llama 3.2 1B/3B).
    pub tie_embeddings: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Gpt2,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            block_size: 64,
            vocab_size: None,
            bias: false,
            n_kv_head: 0,
            head_dim: 0,
            ffn_hidden: 0,
            norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_embeddings: true,
        }
    }
}

/// `[train]`: the loop and its batch arithmetic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps to run.
    pub steps: u64,
    /// Micro-batch per rank, in sequences.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
    /// If set, must equal `batch_size * grad_accum * parallel.dp` (a guard for the user's
    /// intent when changing `dp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<usize>,
    pub seed: u64,
    /// Steps between evaluations; 0 = never.
    pub eval_interval: u64,
    /// Validation batches averaged per evaluation.
    pub eval_batches: usize,
    /// Steps between log lines.
    pub log_interval: u64,
    /// Numerics guard: a step whose loss or gradient norm is not finite is skipped (its
    /// update is not applied; counted and logged). After this many such steps in a row
    /// the run stops with an error, its last checkpoint (written before the trouble, or
    /// during it, when no update had been applied) left as the state to resume from.
    pub max_bad_steps: u64,
    /// Where a rank computes: "cpu", or "cuda" / "cuda:N", or the emulated "cuda-emu" /
    /// "cuda-emu:N" (the GPU code path on the host, for tests); a build with `--features cuda`.
    pub device: String,
    /// Storage precision on a GPU: "f32", or "bf16" (activations, the weights the
    /// model reads and gradients in bf16; fp32 master weights, Adam moments, loss and
    /// softmax/norm statistics; checkpoints hold the fp32 masters). The CPU is f32.
    pub dtype: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 12,
            grad_accum: 1,
            global_batch: None,
            seed: 1337,
            eval_interval: 250,
            eval_batches: 20,
            log_interval: 10,
            max_bad_steps: 3,
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }
}

/// `[optim]`: AdamW (Loshchilov & Hutter 2019) with linear warmup and cosine decay to
/// `min_lr` over `decay_steps` (nanoGPT's `get_lr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    /// `None` = `train.steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_steps: Option<u64>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 = off.
    pub grad_clip: f64,
    /// Also decay `wte`/`wpe`. Biases and norm gains are never decayed.
    pub decay_embeddings: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            decay_steps: None,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            decay_embeddings: false,
        }
    }
}

/// Which tokenizer turns raw text into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// GPT-2's byte-level BPE (50257 tokens).
    Gpt2,
    /// One token per distinct character of the corpus.
    Char,
    /// A Hugging Face `tokenizer.json` (`data.tokenizer_file`).
    Hf,
}

/// How validation documents are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Every round(1/val_fraction)-th document.
    Documents,
    /// The last val_fraction of every document's tokens.
    Tail,
}

/// What a malformed input record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Fail,
    Skip,
}

/// One prepared dataset of a mixture (`[[data.sources]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(serialize_with = "ser_path")]
    pub dir: PathBuf,
    pub weight: f64,
}

/// `[data]`: where the tokens come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Prepared data folder (token files + `meta.json`).
    #[serde(serialize_with = "ser_path")]
    pub dir: PathBuf,
    /// Raw text files or folders to prepare into `dir` when `dir` has no `meta.json`.
    #[serde(serialize_with = "ser_paths")]
    pub inputs: Vec<PathBuf>,
    pub tokenizer: TokenizerKind,
    /// The `tokenizer.json` (or a folder holding one) when `tokenizer = "hf"`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_path")]
    pub tokenizer_file: Option<PathBuf>,
    /// Fraction of the documents held out for validation.
    pub val_fraction: f64,
    /// Separate validation inputs (then all of `inputs` trains).
    #[serde(serialize_with = "ser_paths")]
    pub val_inputs: Vec<PathBuf>,
    pub split: SplitMode,
    /// JSONL field / Parquet column holding the text.
    pub text_field: String,
    pub on_error: OnError,
    /// Tokens per shard file.
    pub shard_tokens: u64,
    /// End-of-document token of an hf tokenizer (`"none"`: no separator;
    /// unset: from its tokenizer_config.json or the usual names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eod_token: Option<String>,
    /// A weighted mixture of prepared folders; when given, it replaces `dir`.
    pub sources: Vec<SourceConfig>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/prepared/shakespeare-char"),
            inputs: vec![PathBuf::from("data/shakespeare")],
            tokenizer: TokenizerKind::Char,
            tokenizer_file: None,
            val_fraction: 0.1,
            val_inputs: Vec::new(),
            split: SplitMode::Documents,
            text_field: "text".into(),
            on_error: OnError::Fail,
            shard_tokens: 100_000_000,
            eod_token: None,
            sources: Vec::new(),
        }
    }
}

/// Activation recomputation policy (Chen et al. 2016, "Training Deep Nets with Sublinear
/// Memory Cost").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every activation.
    None,
    /// Keep only each block's input; recompute the block during backward.
    Full,
    /// Keep everything but the attention core's softmax statistics (O(T^2) per head);
    /// recompute those from q, k, v during backward (Korthikanti et al. 2022).
    Selective,
}

/// The pipeline schedule (with `parallel.pp > 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipeSchedule {
    /// One forward, one backward (PipeDream-Flush, Narayanan et al. 2021): a stage keeps
    /// at most `pp - stage` micro-batches' activations.
    #[serde(rename = "1f1b")]
    OneFOneB,
    /// Interleaved 1F1B (Narayanan et al. 2021): each rank holds `virtual_stages` chunks
    /// of layers, so the bubble shrinks by that factor.
    #[serde(rename = "interleaved")]
    Interleaved,
}

/// `[parallel]`: the layout. Degrees multiply to the world size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    /// ZeRO stage 0..=3 (Rajbhandari et al. 2020): 1 shards optimizer state, 2 also
    /// gradients, 3 also parameters.
    pub zero: u8,
    pub recompute: Recompute,
    /// Sequence parallelism with tensor parallelism (Korthikanti et al. 2022): norms and
    /// residual adds on 1/tp of the rows each; no effect when tp = 1.
    pub sp: bool,
    /// Pipeline schedule; a step carries `train.grad_accum` micro-batches.
    pub schedule: PipeSchedule,
    /// Chunks of layers per pipeline rank (interleaved schedule; 1 otherwise).
    pub virtual_stages: usize,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            dp: 1,
            tp: 1,
            pp: 1,
            zero: 0,
            recompute: Recompute::None,
            sp: false,
            schedule: PipeSchedule::OneFOneB,
            virtual_stages: 1,
        }
    }
}

/// `[checkpoint]`: when to save and how many to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Steps between checkpoints; 0 = only at the end.
    pub interval: u64,
    /// Checkpoints kept on disk (older ones are deleted); at least 1.
    pub keep_last: usize,
    /// Write checkpoints in the background: the state is copied in memory and written
    /// by a thread while training goes on (at most one write in flight).
    #[serde(rename = "async")]
    pub async_write: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: 500,
            keep_last: 3,
            async_write: false,
        }
    }
}

/// `[log]`: what is printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub progress: bool,
    /// Machine peak FLOP/s used for MFU; `None` = measure it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_flops: Option<f64>,
    /// A training loss more than `spike_z` standard deviations above the mean of the
    /// previous `spike_window` steps is logged as a spike; 0 = off.
    pub spike_z: f64,
    pub spike_window: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            progress: true,
            peak_flops: None,
            spike_z: 6.0,
            spike_window: 100,
        }
    }
}

/// Paths are written lossily: every path that came in through TOML or `--set` is UTF-8
/// already, so this only matters for configs built in code, and keeps `to_toml` infallible.
fn ser_path<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn ser_opt_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

fn ser_paths<S: serde::Serializer>(ps: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| p.to_string_lossy()))
}
