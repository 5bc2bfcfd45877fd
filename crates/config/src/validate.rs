//! Semantic checks on a well-typed [`RunConfig`]: sizes, ranges and cross-key rules.
//! Each failure names the dotted key it is about.

use crate::{ConfigError, RunConfig};

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be at least 1, found 0"));
    }
    Ok(())
}

/// `v` finite, above `lo` (strictly when `lo_open`) and, if given, below `hi` (strictly
/// when its flag is set); the reason shows the interval in math notation.
fn in_range(
    key: &str,
    v: f64,
    lo: f64,
    lo_open: bool,
    hi: Option<(f64, bool)>,
) -> Result<(), ConfigError> {
    let above = if lo_open { v > lo } else { v >= lo };
    let below = match hi {
        Some((h, true)) => v < h,
        Some((h, false)) => v <= h,
        None => true,
    };
    if v.is_finite() && above && below {
        return Ok(());
    }
    let reason = match hi {
        Some((h, open)) => {
            let (l, r) = (
                if lo_open { "(" } else { "[" },
                if open { ")" } else { "]" },
            );
            format!("must be in {l}{lo}, {h}{r}, found {v}")
        }
        None => format!(
            "must be a finite number {} {lo}, found {v}",
            if lo_open { ">" } else { ">=" }
        ),
    };
    Err(invalid(key, reason))
}

/// Checks everything that does not depend on the data. Returns the first problem.
pub(crate) fn validate(c: &RunConfig) -> Result<(), ConfigError> {
    let m = &c.model;
    for (key, v) in [
        ("model.n_layer", m.n_layer),
        ("model.n_head", m.n_head),
        ("model.n_embd", m.n_embd),
        ("model.block_size", m.block_size),
    ] {
        positive(key, v as u64)?;
    }
    if let Some(v) = m.vocab_size {
        positive("model.vocab_size", v as u64)?;
    }
    // Multi-head attention splits the width into n_head heads of n_embd / n_head dims
    // (Vaswani et al. 2017, sec. 3.2.2), unless head_dim is given.
    if m.head_dim == 0 && !m.n_embd.is_multiple_of(m.n_head) {
        return Err(invalid(
            "model.n_embd",
            format!(
                "must be divisible by model.n_head ({} % {} = {})",
                m.n_embd,
                m.n_head,
                m.n_embd % m.n_head
            ),
        ));
    }

    if m.n_kv_head != 0 && !m.n_head.is_multiple_of(m.n_kv_head) {
        return Err(invalid(
            "model.n_kv_head",
            format!("must divide model.n_head ({} % {} = {})", m.n_head, m.n_kv_head, m.n_head % m.n_kv_head),
        ));
    }
    if !(m.norm_eps > 0.0 && m.norm_eps < 1.0) {
        return Err(invalid("model.norm_eps", format!("must be in (0, 1), found {}", m.norm_eps)));
    }
    if m.arch == crate::Arch::Llama {
        if !(m.rope_theta > 1.0 && m.rope_theta.is_finite()) {
            return Err(invalid("model.rope_theta", format!("must be a finite number above 1, found {}", m.rope_theta)));
        }
        let hd = if m.head_dim == 0 { m.n_embd / m.n_head } else { m.head_dim };
        if hd % 2 != 0 {
            return Err(invalid("model.head_dim", format!("rotary embeddings need an even head width, found {hd}")));
        }
    } else if !m.tie_embeddings {
        return Err(invalid("model.tie_embeddings", "gpt2 ties its output head to the token embedding; use arch = \"llama\" for an untied head"));
    }

    let t = &c.train;
    positive("train.steps", t.steps)?;
    positive("train.batch_size", t.batch_size as u64)?;
    positive("train.grad_accum", t.grad_accum as u64)?;
    positive("train.log_interval", t.log_interval)?;
    if t.eval_interval > 0 && t.eval_batches == 0 {
        return Err(invalid(
            "train.eval_batches",
            "must be at least 1 when train.eval_interval > 0 (0 = never evaluate)",
        ));
    }

    let gpu = crate::device_ordinal(&t.device).map_err(|why| invalid("train.device", why))?.is_some();
    match t.dtype.as_str() {
        "f32" => {}
        "bf16" if gpu => {}
        "bf16" => {
            return Err(invalid(
                "train.dtype",
                format!("\"bf16\" is the GPU path's precision (train.device = \"cuda\" or \"cuda-emu\"); train.device = \"{}\" computes in f32", t.device),
            ))
        }
        other => return Err(invalid("train.dtype", format!("expected \"f32\" or \"bf16\", found \"{other}\""))),
    }

    let p = &c.parallel;
    positive("parallel.dp", p.dp as u64)?;
    positive("parallel.tp", p.tp as u64)?;
    positive("parallel.pp", p.pp as u64)?;
    positive("parallel.virtual_stages", p.virtual_stages as u64)?;
    match p.schedule {
        crate::PipeSchedule::OneFOneB if p.virtual_stages > 1 => {
            return Err(invalid(
                "parallel.virtual_stages",
                format!(
                    "{} chunks per pipeline rank need parallel.schedule = \"interleaved\" (the schedule is \"1f1b\")",
                    p.virtual_stages
                ),
            ));
        }
        crate::PipeSchedule::Interleaved if p.virtual_stages < 2 || p.pp < 2 => {
            return Err(invalid(
                "parallel.schedule",
                format!(
                    "\"interleaved\" needs parallel.pp >= 2 and parallel.virtual_stages >= 2 (found pp = {}, virtual_stages = {})",
                    p.pp, p.virtual_stages
                ),
            ));
        }
        crate::PipeSchedule::Interleaved if !t.grad_accum.is_multiple_of(p.pp) => {
            return Err(invalid(
                "train.grad_accum",
                format!(
                    "the interleaved schedule runs micro-batches in groups of parallel.pp = {}: the {} micro-batches of a step (train.grad_accum) must be a multiple of it",
                    p.pp, t.grad_accum
                ),
            ));
        }
        _ => {}
    }
    if p.zero > 3 {
        return Err(invalid(
            "parallel.zero",
            format!("must be a ZeRO stage 0, 1, 2 or 3, found {}", p.zero),
        ));
    }
    if p.dp
        .checked_mul(p.tp)
        .and_then(|x| x.checked_mul(p.pp))
        .is_none()
    {
        return Err(invalid("parallel.dp", "dp x tp x pp overflows"));
    }
    let product = t
        .batch_size
        .checked_mul(t.grad_accum)
        .and_then(|x| x.checked_mul(p.dp));
    match (t.global_batch, product) {
        (Some(g), Some(prod)) if g == prod => {}
        (Some(g), _) => {
            return Err(ConfigError::BatchMismatch {
                global_batch: g,
                batch_size: t.batch_size,
                grad_accum: t.grad_accum,
                dp: p.dp,
            })
        }
        (None, Some(prod)) => {
            if prod.checked_mul(m.block_size).is_none() {
                return Err(invalid(
                    "train.batch_size",
                    "batch_size x grad_accum x dp x block_size overflows",
                ));
            }
        }
        (None, None) => {
            return Err(invalid(
                "train.batch_size",
                "batch_size x grad_accum x dp overflows",
            ))
        }
    }

    let o = &c.optim;
    in_range("optim.min_lr", o.min_lr, 0.0, false, None)?;
    if !(o.lr.is_finite() && o.lr >= o.min_lr) {
        return Err(invalid(
            "optim.lr",
            format!(
                "must be finite and >= optim.min_lr ({}), found {}",
                o.min_lr, o.lr
            ),
        ));
    }
    let decay_steps = o.decay_steps.unwrap_or(t.steps);
    positive("optim.decay_steps", decay_steps)?;
    // nanoGPT's schedule warms up linearly, then decays by cosine from warmup to
    // decay_steps; a warmup longer than the decay leaves no decay phase.
    if o.warmup_steps > decay_steps {
        return Err(invalid(
            "optim.warmup_steps",
            format!(
                "must be <= optim.decay_steps ({decay_steps}; defaults to train.steps), found {}",
                o.warmup_steps
            ),
        ));
    }
    in_range("optim.beta1", o.beta1, 0.0, false, Some((1.0, true)))?;
    in_range("optim.beta2", o.beta2, 0.0, false, Some((1.0, true)))?;
    in_range("optim.eps", o.eps, 0.0, true, None)?;
    in_range("optim.weight_decay", o.weight_decay, 0.0, false, None)?;
    in_range("optim.grad_clip", o.grad_clip, 0.0, false, None)?;

    let d = &c.data;
    if d.dir.as_os_str().is_empty() {
        return Err(invalid("data.dir", "must not be empty"));
    }
    if let Some(i) = d.inputs.iter().position(|p| p.as_os_str().is_empty()) {
        return Err(invalid(&format!("data.inputs[{i}]"), "must not be empty"));
    }
    match (d.tokenizer, &d.tokenizer_file) {
        (crate::TokenizerKind::Hf, None) => {
            return Err(invalid("data.tokenizer_file", "must name a tokenizer.json (or a folder holding one) when data.tokenizer = \"hf\""))
        }
        (crate::TokenizerKind::Gpt2 | crate::TokenizerKind::Char, Some(_)) => {
            return Err(invalid("data.tokenizer_file", "is only read with data.tokenizer = \"hf\""))
        }
        _ => {}
    }
    if d.text_field.is_empty() {
        return Err(invalid("data.text_field", "must not be empty"));
    }
    positive("data.shard_tokens", d.shard_tokens)?;
    for (i, s) in d.sources.iter().enumerate() {
        if s.dir.as_os_str().is_empty() {
            return Err(invalid(&format!("data.sources[{i}].dir"), "must not be empty"));
        }
        if !(s.weight.is_finite() && s.weight > 0.0) {
            return Err(invalid(&format!("data.sources[{i}].weight"), format!("must be a positive number, found {}", s.weight)));
        }
    }
    in_range(
        "data.val_fraction",
        d.val_fraction,
        0.0,
        true,
        Some((1.0, true)),
    )?;

    if c.checkpoint.keep_last == 0 {
        return Err(invalid(
            "checkpoint.keep_last",
            "must be at least 1, found 0",
        ));
    }
    if let Some(f) = c.log.peak_flops {
        in_range("log.peak_flops", f, 0.0, true, None)?;
    }
    in_range("log.spike_z", c.log.spike_z, 0.0, false, None)?;
    if c.log.spike_z > 0.0 && c.log.spike_window < 2 {
        return Err(invalid("log.spike_window", format!("must be at least 2 when log.spike_z > 0, found {}", c.log.spike_window)));
    }
    Ok(())
}
