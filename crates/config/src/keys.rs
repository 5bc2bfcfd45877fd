//! The table of valid dotted keys and their types, used to check a merged `toml::Table`
//! *before* serde sees it: serde's own messages name neither the section nor a fix, so
//! unknown keys (with a "did you mean"), wrong types and `--set` arguments are checked here.
//!
//! The table must list exactly the fields of [`crate::RunConfig`]; a unit test serializes a
//! config with every `Option` set and compares the key sets.

use toml::{Table, Value};

use crate::ConfigError;

/// What a key's value must look like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// Non-negative integer no larger than the bound.
    UInt {
        max: u64,
    },
    /// Like `UInt`, but may be left out (`--set key=none` removes it).
    OptUInt,
    /// Any finite or infinite number; integers are accepted and widened.
    Float,
    OptFloat,
    Bool,
    Path,
    Paths,
    /// A string that may be left out (`--set key=none` removes it).
    OptString,
    /// A string (its form is checked by validation).
    Str,
    /// `[[data.sources]]`: an array of tables `{ dir = "...", weight = 0.5 }`.
    Sources,
    /// A string from a fixed list (serde `rename_all = "lowercase"` enums).
    Enum(&'static [&'static str]),
}

const U: Kind = Kind::UInt {
    max: i64::MAX as u64,
};

/// Every section, in the order they are written.
pub const SECTIONS: &[&str] = &[
    "model",
    "train",
    "optim",
    "data",
    "parallel",
    "checkpoint",
    "log",
];

/// Every valid `section.key` and its kind.
pub(crate) const FIELDS: &[(&str, Kind)] = &[
    ("model.arch", Kind::Enum(&["gpt2", "llama"])),
    ("model.n_layer", U),
    ("model.n_head", U),
    ("model.n_embd", U),
    ("model.block_size", U),
    ("model.vocab_size", Kind::OptUInt),
    ("model.bias", Kind::Bool),
    ("model.n_kv_head", U),
    ("model.head_dim", U),
    ("model.ffn_hidden", U),
    ("model.norm_eps", Kind::Float),
    ("model.rope_theta", Kind::Float),
    ("model.tie_embeddings", Kind::Bool),
    ("train.steps", U),
    ("train.batch_size", U),
    ("train.grad_accum", U),
    ("train.global_batch", Kind::OptUInt),
    ("train.seed", U),
    ("train.eval_interval", U),
    ("train.eval_batches", U),
    ("train.log_interval", U),
    ("train.max_bad_steps", U),
    ("train.device", Kind::Str),
    ("train.dtype", Kind::Enum(&["f32", "bf16"])),
    ("optim.lr", Kind::Float),
    ("optim.min_lr", Kind::Float),
    ("optim.warmup_steps", U),
    ("optim.decay_steps", Kind::OptUInt),
    ("optim.beta1", Kind::Float),
    ("optim.beta2", Kind::Float),
    ("optim.eps", Kind::Float),
    ("optim.weight_decay", Kind::Float),
    ("optim.grad_clip", Kind::Float),
    ("optim.decay_embeddings", Kind::Bool),
    ("data.dir", Kind::Path),
    ("data.inputs", Kind::Paths),
    ("data.tokenizer", Kind::Enum(&["gpt2", "char", "hf"])),
    ("data.tokenizer_file", Kind::OptString),
    ("data.val_fraction", Kind::Float),
    ("data.val_inputs", Kind::Paths),
    ("data.split", Kind::Enum(&["documents", "tail"])),
    ("data.text_field", Kind::Path),
    ("data.on_error", Kind::Enum(&["fail", "skip"])),
    ("data.shard_tokens", U),
    ("data.eod_token", Kind::OptString),
    ("data.sources", Kind::Sources),
    ("parallel.dp", U),
    ("parallel.tp", U),
    ("parallel.pp", U),
    // u8 in the struct; the stage is checked here so serde never sees an overflow.
    ("parallel.zero", Kind::UInt { max: 3 }),
    ("parallel.recompute", Kind::Enum(&["none", "full", "selective"])),
    ("parallel.sp", Kind::Bool),
    ("parallel.schedule", Kind::Enum(&["1f1b", "interleaved"])),
    ("parallel.virtual_stages", U),
    ("checkpoint.interval", U),
    ("checkpoint.keep_last", U),
    ("checkpoint.async", Kind::Bool),
    ("log.progress", Kind::Bool),
    ("log.peak_flops", Kind::OptFloat),
    ("log.spike_z", Kind::Float),
    ("log.spike_window", U),
];

/// All valid dotted keys (`"train.steps"`, ...), e.g. for CLI help and completion.
pub fn all() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(k, _)| *k)
}

fn kind_of(key: &str) -> Option<Kind> {
    FIELDS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind)
}

/// Checks every key and value type of a (partial or merged) config table.
pub(crate) fn check_table(table: &Table) -> Result<(), ConfigError> {
    for (section, body) in table {
        if !SECTIONS.contains(&section.as_str()) {
            return Err(unknown(section));
        }
        let Value::Table(fields) = body else {
            return Err(ConfigError::WrongType {
                key: section.clone(),
                expected: format!("a table ([{section}])"),
                found: describe(body),
            });
        };
        for (field, value) in fields {
            let key = format!("{section}.{field}");
            let kind = kind_of(&key).ok_or_else(|| unknown(&key))?;
            check_value(&key, kind, value)?;
        }
    }
    Ok(())
}

fn check_value(key: &str, kind: Kind, value: &Value) -> Result<(), ConfigError> {
    let wrong = |expected: &str| ConfigError::WrongType {
        key: key.to_string(),
        expected: expected.to_string(),
        found: describe(value),
    };
    match (kind, value) {
        (Kind::UInt { max }, Value::Integer(i)) => check_uint(key, *i, max),
        (Kind::OptUInt, Value::Integer(i)) => check_uint(key, *i, i64::MAX as u64),
        (Kind::UInt { .. } | Kind::OptUInt, _) => Err(wrong("a non-negative integer")),
        (Kind::Float | Kind::OptFloat, Value::Integer(_) | Value::Float(_)) => Ok(()),
        (Kind::Float | Kind::OptFloat, _) => Err(wrong("a number")),
        (Kind::Bool, Value::Boolean(_)) => Ok(()),
        (Kind::Bool, _) => Err(wrong("a boolean (true or false)")),
        (Kind::Path, Value::String(_)) => Ok(()),
        (Kind::Str, Value::String(_)) => Ok(()),
        (Kind::Str, _) => Err(wrong("a string")),
        (Kind::Path, _) => Err(wrong("a string (a path)")),
        (Kind::Paths, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_value(&format!("{key}[{i}]"), Kind::Path, item)?;
            }
            Ok(())
        }
        (Kind::Paths, _) => Err(wrong("an array of paths (strings)")),
        (Kind::OptString, Value::String(_)) => Ok(()),
        (Kind::OptString, _) => Err(wrong("a string")),
        (Kind::Sources, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let k = format!("{key}[{i}]");
                let Value::Table(t) = item else {
                    return Err(ConfigError::WrongType { key: k, expected: "a table { dir = \"...\", weight = 1.0 }".into(), found: describe(item) });
                };
                for (f, v) in t {
                    match f.as_str() {
                        "dir" => check_value(&format!("{k}.dir"), Kind::Path, v)?,
                        "weight" => check_value(&format!("{k}.weight"), Kind::Float, v)?,
                        other => {
                            return Err(ConfigError::InvalidValue {
                                key: format!("{k}.{other}"),
                                reason: "unknown key; a source has `dir` and `weight`".into(),
                            })
                        }
                    }
                }
                for needed in ["dir", "weight"] {
                    if !t.contains_key(needed) {
                        return Err(ConfigError::InvalidValue { key: format!("{k}.{needed}"), reason: "is missing".into() });
                    }
                }
            }
            Ok(())
        }
        (Kind::Sources, _) => Err(wrong("an array of tables, e.g. [{ dir = \"data/prepared/a\", weight = 0.7 }]")),
        (Kind::Enum(valid), Value::String(s)) if valid.contains(&s.as_str()) => Ok(()),
        (Kind::Enum(valid), Value::String(s)) => Err(ConfigError::InvalidValue {
            key: key.to_string(),
            reason: format!("expected one of {}, found {s:?}", quoted(valid)),
        }),
        (Kind::Enum(valid), _) => Err(wrong(&format!("one of {}", quoted(valid)))),
    }
}

fn check_uint(key: &str, value: i64, max: u64) -> Result<(), ConfigError> {
    let reason = match u64::try_from(value) {
        Ok(v) if v <= max => return Ok(()),
        Ok(_) => format!("must be between 0 and {max}, found {value}"),
        Err(_) => format!("must be >= 0, found {value}"),
    };
    Err(ConfigError::InvalidValue {
        key: key.to_string(),
        reason,
    })
}

/// Widens integers written for float keys (`optim.lr = 1`) so serde reads them as `f64`.
pub(crate) fn widen_floats(table: &mut Table) {
    for (section, body) in table.iter_mut() {
        let Value::Table(fields) = body else { continue };
        for (field, value) in fields.iter_mut() {
            let kind = kind_of(&format!("{section}.{field}"));
            if let (Some(Kind::Float | Kind::OptFloat), Value::Integer(i)) = (kind, &*value) {
                *value = Value::Float(*i as f64);
            }
            if let (Some(Kind::Sources), Value::Array(items)) = (kind, &mut *value) {
                for item in items {
                    if let Some(w) = item.get_mut("weight") {
                        if let Value::Integer(i) = w {
                            *w = Value::Float(*i as f64);
                        }
                    }
                }
            }
        }
    }
}

/// One parsed `--set` argument.
pub(crate) struct SetArg {
    pub section: String,
    pub field: String,
    /// `None`: remove the key (`--set model.vocab_size=none` for an `Option` key).
    pub value: Option<Value>,
}

/// Parses `section.key=value`. The value is read as a TOML value when it is one, else as a
/// string; string-typed keys always take the text as written (so `data.dir=2024` is a path).
pub(crate) fn parse_set(arg: &str) -> Result<SetArg, ConfigError> {
    let bad = |reason: &str| ConfigError::BadSet {
        arg: arg.to_string(),
        reason: reason.to_string(),
    };
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(bad("expected key=value, e.g. train.steps=100"));
    };
    let (key, raw) = (key.trim(), raw.trim());
    if key.is_empty() {
        return Err(bad(
            "missing key before `=`; expected key=value, e.g. train.steps=100",
        ));
    }
    if raw.is_empty() {
        return Err(bad("missing value after `=`"));
    }
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(
            "empty segment in key; expected section.key, e.g. optim.lr",
        ));
    }
    if parts.len() == 1 && SECTIONS.contains(&parts[0]) {
        return Err(bad(&format!(
            "`{key}` is a section; set one of its keys, e.g. {}",
            example_key(key)
        )));
    }
    let kind = kind_of(key).ok_or_else(|| unknown(key))?;
    let parsed = raw.parse::<Value>().ok();
    let value = match kind {
        Kind::OptUInt | Kind::OptFloat | Kind::OptString if raw == "none" => None,
        Kind::OptString => Some(Value::String(match parsed {
            Some(Value::String(s)) => s,
            _ => raw.to_string(),
        })),
        Kind::Path | Kind::Str | Kind::Enum(_) => match parsed {
            Some(Value::String(s)) => Some(Value::String(s)),
            _ => Some(Value::String(raw.to_string())),
        },
        Kind::Paths => match parsed {
            Some(Value::Array(a)) => Some(Value::Array(a)),
            Some(Value::String(s)) => Some(Value::Array(vec![Value::String(s)])),
            _ => Some(Value::Array(vec![Value::String(raw.to_string())])),
        },
        _ => Some(parsed.unwrap_or_else(|| Value::String(raw.to_string()))),
    };
    if let Some(v) = &value {
        check_value(key, kind, v)?;
    }
    let (section, field) = (parts[0].to_string(), parts[1].to_string());
    Ok(SetArg {
        section,
        field,
        value,
    })
}

fn example_key(section: &str) -> &'static str {
    all()
        .find(|k| k.split('.').next() == Some(section))
        .unwrap_or("train.steps")
}

/// The error for a key that is not in [`FIELDS`], with the best suggestion we can make.
pub(crate) fn unknown(key: &str) -> ConfigError {
    ConfigError::UnknownKey {
        key: key.to_string(),
        suggestion: suggest(key),
    }
}

/// Suggests a valid key for a mistyped one, in order of confidence: the same field name
/// in another section (`train.lr` -> `optim.lr`), the closest field of the same section,
/// then the closest key or section anywhere.
fn suggest(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let field_of = |k: &'static str| k.split('.').nth(1).unwrap_or(k);
    match parts.as_slice() {
        [one] => all()
            .find(|k| field_of(k) == *one)
            .map(str::to_string)
            .or_else(|| closest(one, SECTIONS.iter().copied()).map(str::to_string))
            .or_else(|| {
                closest(one, all().map(field_of))
                    .and_then(|f| all().find(|k| field_of(k) == f).map(str::to_string))
            }),
        [section, field] => {
            if let Some(k) = all().find(|k| field_of(k) == *field) {
                return Some(k.to_string());
            }
            let same = all().filter(|k| k.split('.').next() == Some(section));
            closest(key, same)
                .or_else(|| closest(key, all()))
                .map(str::to_string)
        }
        [a, b, ..] => {
            let prefix = format!("{a}.{b}");
            if kind_of(&prefix).is_some() {
                Some(prefix)
            } else {
                suggest(&prefix)
            }
        }
        [] => None,
    }
}

/// The candidate closest to `name` by optimal-string-alignment distance (Levenshtein plus
/// adjacent transpositions, Damerau 1964), if it is close enough to be a typo; failing
/// that, a candidate that `name` is a prefix of (`warmup` -> `warmup_steps`).
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    let limit = (name.chars().count() / 3).max(1);
    let best = candidates
        .iter()
        .map(|c| (osa_distance(name, c), *c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= limit => Some(c),
        _ if name.len() >= 3 => candidates
            .into_iter()
            .find(|c| c.starts_with(name) || c.ends_with(name)),
        _ => None,
    }
}

fn osa_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// A value as an error message shows it: its TOML type and (short) text.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => {
            let text = v.to_string();
            let short: String = text.chars().take(40).collect();
            format!(
                "array {short}{}",
                if short.len() < text.len() { "..." } else { "" }
            )
        }
        Value::Table(_) => "a table".to_string(),
    }
}

fn quoted(valid: &[&str]) -> String {
    valid
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_table_matches_the_structs() {
        let mut full = crate::RunConfig::default();
        full.model.vocab_size = Some(1);
        full.train.global_batch = Some(1);
        full.optim.decay_steps = Some(1);
        full.log.peak_flops = Some(1.0);
        full.data.tokenizer_file = Some("t.json".into());
        full.data.eod_token = Some("</s>".into());
        let table = Table::try_from(&full).unwrap();
        let mut written: Vec<String> = table
            .iter()
            .flat_map(|(s, b)| {
                b.as_table()
                    .unwrap()
                    .keys()
                    .map(move |f| format!("{s}.{f}"))
            })
            .collect();
        let mut listed: Vec<String> = all().map(str::to_string).collect();
        written.sort();
        listed.sort();
        assert_eq!(written, listed);
        let sections: Vec<&String> = table.keys().collect();
        assert_eq!(sections.len(), SECTIONS.len());
    }

    #[test]
    fn osa_counts_a_transposition_as_one_edit() {
        assert_eq!(osa_distance("stpes", "steps"), 1);
        assert_eq!(osa_distance("", "abc"), 3);
        assert_eq!(osa_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("train.stpes").as_deref(), Some("train.steps"));
        assert_eq!(suggest("train.lr").as_deref(), Some("optim.lr"));
        assert_eq!(suggest("trian").as_deref(), Some("train"));
        assert_eq!(suggest("steps").as_deref(), Some("train.steps"));
        assert_eq!(
            suggest("optim.warmup").as_deref(),
            Some("optim.warmup_steps")
        );
        assert_eq!(suggest("train.steps.x").as_deref(), Some("train.steps"));
        assert_eq!(suggest("model.zzzzzzzz"), None);
    }
}
