//! Every error variant, with the exact message a user sees.

use std::path::Path;

use config::{presets, resolve, ConfigError, ResolvedConfig};

fn err_of_sets(items: &[&str]) -> ConfigError {
    let sets: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    resolve(None, None, &sets).unwrap_err()
}

fn err_of_file(text: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, text).unwrap();
    resolve(None, Some(&path), &[]).unwrap_err()
}

#[test]
fn unknown_key_names_the_dotted_key_and_suggests() {
    let err = err_of_file("[train]\nstpes = 10\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, suggestion: Some(s) } if key == "train.stpes" && s == "train.steps")
    );
    assert_eq!(
        err.to_string(),
        "unknown config key `train.stpes`; did you mean `train.steps`?"
    );
    // The same field in the wrong section.
    assert_eq!(
        err_of_sets(&["train.lr=1e-3"]).to_string(),
        "unknown config key `train.lr`; did you mean `optim.lr`?"
    );
    // A top-level key that belongs to a section.
    assert_eq!(
        err_of_file("steps = 3\n").to_string(),
        "unknown config key `steps`; did you mean `train.steps`?"
    );
    // Nothing close: no suggestion.
    let err = err_of_sets(&["model.qqqqqqqq=1"]);
    assert!(matches!(
        &err,
        ConfigError::UnknownKey {
            suggestion: None,
            ..
        }
    ));
    assert_eq!(err.to_string(), "unknown config key `model.qqqqqqqq`");
}

#[test]
fn unknown_section_suggests_the_closest_section() {
    let err = err_of_file("[trian]\nsteps = 10\n");
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, suggestion: Some(s) } if key == "trian" && s == "train")
    );
    assert_eq!(
        err.to_string(),
        "unknown config key `trian`; did you mean `train`?"
    );
}

#[test]
fn wrong_type_names_key_expected_and_found() {
    let err = err_of_sets(&["train.steps=abc"]);
    assert!(matches!(&err, ConfigError::WrongType { key, .. } if key == "train.steps"));
    assert_eq!(
        err.to_string(),
        "train.steps: expected a non-negative integer, found string \"abc\""
    );
    assert_eq!(
        err_of_file("[optim]\nlr = \"fast\"\n").to_string(),
        "optim.lr: expected a number, found string \"fast\""
    );
    assert_eq!(
        err_of_sets(&["train.steps=1.5"]).to_string(),
        "train.steps: expected a non-negative integer, found float 1.5"
    );
    assert_eq!(
        err_of_sets(&["log.progress=1"]).to_string(),
        "log.progress: expected a boolean (true or false), found integer 1"
    );
    assert_eq!(
        err_of_file("train = 5\n").to_string(),
        "train: expected a table ([train]), found integer 5"
    );
    assert_eq!(
        err_of_file("[data]\ninputs = [\"a\", 3]\n").to_string(),
        "data.inputs[1]: expected a string (a path), found integer 3"
    );
    assert_eq!(
        err_of_file("[parallel]\nrecompute = true\n").to_string(),
        "parallel.recompute: expected one of \"none\", \"full\", \"selective\", found boolean true"
    );
}

#[test]
fn invalid_values_name_their_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["data.tokenizer=bpe"], "data.tokenizer: expected one of \"gpt2\", \"char\", \"hf\", found \"bpe\""),
        (&["data.tokenizer=hf"], "data.tokenizer_file: must name a tokenizer.json (or a folder holding one) when data.tokenizer = \"hf\""),
        (&["data.tokenizer_file=t.json"], "data.tokenizer_file: is only read with data.tokenizer = \"hf\""),
        (&["data.split=halves"], "data.split: expected one of \"documents\", \"tail\", found \"halves\""),
        (&["data.shard_tokens=0"], "data.shard_tokens: must be at least 1, found 0"),
        (&["data.sources=[{dir = \"a\", weight = 0}]"], "data.sources[0].weight: must be a positive number, found 0"),
        (&["data.sources=[{dir = \"a\"}]"], "data.sources[0].weight: is missing"),
        (&["data.sources=[{dir = \"a\", weight = 1, w = 2}]"], "data.sources[0].w: unknown key; a source has `dir` and `weight`"),
        (&["model.n_head=0"], "model.n_head: must be at least 1, found 0"),
        (&["model.n_head=5"], "model.n_embd: must be divisible by model.n_head (128 % 5 = 3)"),
        (&["train.batch_size=-2"], "train.batch_size: must be >= 0, found -2"),
        (&["parallel.zero=4"], "parallel.zero: must be between 0 and 3, found 4"),
        (&["parallel.tp=0"], "parallel.tp: must be at least 1, found 0"),
        (&["parallel.pp=0"], "parallel.pp: must be at least 1, found 0"),
        (&["train.device=gpu"], "train.device: expected \"cpu\", \"cuda\", \"cuda:N\" (N a device number) or the emulated \"cuda-emu\" / \"cuda-emu:N\", found \"gpu\""),
        (&["train.device=cuda:x"], "train.device: expected \"cpu\", \"cuda\", \"cuda:N\" (N a device number) or the emulated \"cuda-emu\" / \"cuda-emu:N\", found \"cuda:x\""),
        (&["train.dtype=\"bf16\""], "train.dtype: \"bf16\" is the GPU path's precision (train.device = \"cuda\" or \"cuda-emu\"); train.device = \"cpu\" computes in f32"),
        (&["train.dtype=\"fp16\""], "train.dtype: expected one of \"f32\", \"bf16\", found \"fp16\""),
        (&["parallel.virtual_stages=2"], "parallel.virtual_stages: 2 chunks per pipeline rank need parallel.schedule = \"interleaved\" (the schedule is \"1f1b\")"),
        (&["parallel.schedule=\"interleaved\""], "parallel.schedule: \"interleaved\" needs parallel.pp >= 2 and parallel.virtual_stages >= 2 (found pp = 1, virtual_stages = 1)"),
        (&["parallel.schedule=\"gpipe\""], "parallel.schedule: expected one of \"1f1b\", \"interleaved\", found \"gpipe\""),
        (
            &["parallel.schedule=\"interleaved\"", "parallel.pp=4", "parallel.virtual_stages=2", "train.grad_accum=6"],
            "train.grad_accum: the interleaved schedule runs micro-batches in groups of parallel.pp = 4: the 6 micro-batches of a step (train.grad_accum) must be a multiple of it",
        ),
        (&["parallel.dp=0"], "parallel.dp: must be at least 1, found 0"),
        (&["optim.min_lr=1e-2"], "optim.lr: must be finite and >= optim.min_lr (0.01), found 0.001"),
        (&["optim.min_lr=-1"], "optim.min_lr: must be a finite number >= 0, found -1"),
        (&["optim.beta2=1"], "optim.beta2: must be in [0, 1), found 1"),
        (&["optim.eps=0"], "optim.eps: must be a finite number > 0, found 0"),
        (&["optim.warmup_steps=3000", "optim.decay_steps=1500"], "optim.warmup_steps: must be <= optim.decay_steps (1500; defaults to train.steps), found 3000"),
        (&["data.val_fraction=1"], "data.val_fraction: must be in (0, 1), found 1"),
        (&["checkpoint.keep_last=0"], "checkpoint.keep_last: must be at least 1, found 0"),
        (&["train.eval_batches=0"], "train.eval_batches: must be at least 1 when train.eval_interval > 0 (0 = never evaluate)"),
        (&["log.peak_flops=0"], "log.peak_flops: must be a finite number > 0, found 0"),
        (&["data.dir=\"\""], "data.dir: must not be empty"),
        (&["optim.weight_decay=inf"], "optim.weight_decay: must be a finite number >= 0, found inf"),
        (&["optim.beta1=nan"], "optim.beta1: must be in [0, 1), found NaN"),
    ];
    for (sets, message) in cases {
        let err = err_of_sets(sets);
        assert!(
            matches!(err, ConfigError::InvalidValue { .. }),
            "{sets:?}: {err:?}"
        );
        assert_eq!(err.to_string(), *message, "{sets:?}");
    }
    // Evaluation off: eval_batches may then be 0.
    assert!(resolve(
        None,
        None,
        &[
            "train.eval_interval=0".into(),
            "train.eval_batches=0".into()
        ]
    )
    .is_ok());
}

#[test]
fn batch_mismatch_names_the_three_numbers() {
    let err = err_of_sets(&[
        "train.batch_size=8",
        "train.grad_accum=2",
        "parallel.dp=2",
        "train.global_batch=64",
    ]);
    assert!(matches!(
        err,
        ConfigError::BatchMismatch {
            global_batch: 64,
            batch_size: 8,
            grad_accum: 2,
            dp: 2
        }
    ));
    assert_eq!(
        err.to_string(),
        "train.global_batch = 64 but train.batch_size (8) x train.grad_accum (2) x parallel.dp (2) = 32; \
         change one of them or remove train.global_batch"
    );
}

#[test]
fn bad_set_syntax() {
    let cases: &[(&str, &str)] = &[
        (
            "train.steps",
            "bad --set `train.steps`: expected key=value, e.g. train.steps=100",
        ),
        (
            "=5",
            "bad --set `=5`: missing key before `=`; expected key=value, e.g. train.steps=100",
        ),
        (
            "train.steps=",
            "bad --set `train.steps=`: missing value after `=`",
        ),
        (
            "train..steps=1",
            "bad --set `train..steps=1`: empty segment in key; expected section.key, e.g. optim.lr",
        ),
        (
            "train=5",
            "bad --set `train=5`: `train` is a section; set one of its keys, e.g. train.steps",
        ),
    ];
    for (arg, message) in cases {
        let err = err_of_sets(&[arg]);
        assert!(
            matches!(&err, ConfigError::BadSet { arg: a, .. } if a == arg),
            "{err:?}"
        );
        assert_eq!(err.to_string(), *message);
    }
    // Too many segments is an unknown key, pointing at the real one.
    assert_eq!(
        err_of_sets(&["train.steps.max=1"]).to_string(),
        "unknown config key `train.steps.max`; did you mean `train.steps`?"
    );
}

#[test]
fn unknown_preset_lists_the_valid_ones() {
    let err = resolve(Some("gpt-2"), None, &[]).unwrap_err();
    let ConfigError::UnknownPreset { name, valid } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(name, "gpt-2");
    assert_eq!(valid.len(), presets::names().len());
    assert_eq!(
        err.to_string(),
        format!(
            "unknown preset `gpt-2`; did you mean `gpt2`? (valid presets: {})",
            presets::names().join(", ")
        )
    );
}

#[test]
fn vocab_mismatch_names_both_numbers() {
    let cfg = resolve(Some("gpt2"), None, &[]).unwrap();
    let err = cfg.with_vocab_size(65).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::VocabMismatch {
            model: 50257,
            data: 65
        }
    ));
    assert_eq!(
        err.to_string(),
        "model.vocab_size = 50257 but the prepared data's meta.json has a vocabulary of 65 tokens; \
         remove model.vocab_size to take it from the data"
    );
}

#[test]
fn io_and_parse_errors_name_the_file() {
    let missing = Path::new("/nonexistent/hyperion/run.toml");
    let err = resolve(None, Some(missing), &[]).unwrap_err();
    assert!(matches!(&err, ConfigError::Io { path, .. } if path == missing));
    assert!(
        err.to_string()
            .starts_with("cannot read config file /nonexistent/hyperion/run.toml: "),
        "{err}"
    );

    let err = err_of_file("[train]\nsteps = = 3\n");
    let ConfigError::Parse { path, message } = &err else {
        panic!("{err:?}")
    };
    assert!(path.ends_with("run.toml"));
    assert!(message.contains("line 2"), "{message}");
    assert!(
        err.to_string().contains("run.toml: invalid TOML: "),
        "{err}"
    );

    let err = ResolvedConfig::from_toml_str("[model\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("<saved config>: invalid TOML: "),
        "{err}"
    );
}
