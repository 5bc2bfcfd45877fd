//! Layer precedence, derived numbers, the TOML round trip and the presets.

use std::path::PathBuf;

use config::{presets, resolve, Recompute, ResolvedConfig, RunConfig, TokenizerKind};

fn sets(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A config file in a fresh temp dir (kept alive by the returned guard).
fn write_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn defaults_equal_the_cpu_preset() {
    let cfg = resolve(None, None, &[]).unwrap();
    assert_eq!(cfg.raw, presets::get("shakespeare-char-cpu").unwrap());
    assert_eq!(cfg.raw, RunConfig::default());
    assert_eq!(cfg.preset, None);
    assert_eq!(
        (cfg.global_batch, cfg.decay_steps, cfg.tokens_per_step),
        (12, 2000, 12 * 64)
    );
    assert_eq!(cfg.world_size(), 1);
}

#[test]
fn precedence_defaults_preset_file_sets() {
    // Each layer sets train.steps; some keys are set by fewer layers, so each layer's
    // win is visible on its own key.
    let (_dir, path) = write_file(
        "[train]\nsteps = 300\nseed = 7\n[optim]\nlr = 2e-3\n[parallel]\nrecompute = \"full\"\n",
    );
    let cfg = resolve(
        Some("tiny"),
        Some(&path),
        &sets(&["train.steps=400", "optim.lr=5e-3", "train.steps=500"]),
    )
    .unwrap();
    assert_eq!(
        cfg.raw.train.steps, 500,
        "the later --set wins over the earlier and the file"
    );
    assert_eq!(cfg.raw.optim.lr, 5e-3, "--set wins over the file");
    assert_eq!(cfg.raw.train.seed, 7, "file wins over the preset");
    assert_eq!(cfg.raw.parallel.recompute, Recompute::Full);
    assert_eq!(
        cfg.raw.model.n_embd, 32,
        "preset wins over the defaults (128)"
    );
    assert_eq!(
        cfg.raw.train.eval_batches, 2,
        "preset value kept where nothing overrides it"
    );
    assert_eq!(
        cfg.raw.optim.beta2, 0.99,
        "default kept where the preset does not change it"
    );
    assert_eq!(cfg.preset.as_deref(), Some("tiny"));
    assert_eq!(
        cfg.decay_steps, 500,
        "decay_steps follows the final train.steps"
    );
}

#[test]
fn preset_options_are_not_inherited_from_defaults() {
    // gpt2 fixes vocab_size; dropping back to no preset must leave it None.
    assert_eq!(
        resolve(Some("gpt2"), None, &[])
            .unwrap()
            .raw
            .model
            .vocab_size,
        Some(50257)
    );
    assert_eq!(resolve(None, None, &[]).unwrap().raw.model.vocab_size, None);
    let cleared = resolve(Some("gpt2"), None, &sets(&["model.vocab_size=none"])).unwrap();
    assert_eq!(cleared.raw.model.vocab_size, None);
}

#[test]
fn set_values_are_typed_by_key() {
    let cfg = resolve(
        None,
        None,
        &sets(&[
            "data.tokenizer=char",
            "data.dir=2024",
            "data.inputs=corpus/a.txt",
            "optim.lr=1",
            "log.progress=false",
            "log.peak_flops=1.5e12",
            " optim.decay_steps = 1500 ",
            "parallel.recompute=\"full\"",
        ]),
    )
    .unwrap();
    assert_eq!(cfg.raw.data.tokenizer, TokenizerKind::Char);
    assert_eq!(
        cfg.raw.data.dir,
        PathBuf::from("2024"),
        "string keys take the text as written"
    );
    assert_eq!(
        cfg.raw.data.inputs,
        vec![PathBuf::from("corpus/a.txt")],
        "one path becomes a list"
    );
    assert_eq!(cfg.raw.optim.lr, 1.0, "integers widen to floats");
    assert!(!cfg.raw.log.progress);
    assert_eq!(cfg.raw.log.peak_flops, Some(1.5e12));
    assert_eq!(cfg.decay_steps, 1500);
    assert_eq!(cfg.raw.parallel.recompute, Recompute::Full);

    let list = resolve(None, None, &sets(&["data.inputs=[\"a\", \"b c\"]"])).unwrap();
    assert_eq!(
        list.raw.data.inputs,
        vec![PathBuf::from("a"), PathBuf::from("b c")]
    );
}

#[test]
fn batch_arithmetic() {
    let cfg = resolve(
        Some("gpt2-mini"),
        None,
        &sets(&[
            "train.grad_accum=4",
            "parallel.dp=2",
            "train.global_batch=64",
            "parallel.zero=2",
        ]),
    )
    .unwrap();
    assert_eq!(cfg.global_batch, 8 * 4 * 2);
    assert_eq!(cfg.tokens_per_step, 64 * 128);
    assert_eq!(cfg.world_size(), 2);
    assert_eq!(cfg.raw.parallel.zero, 2);
}

#[test]
fn toml_round_trip_of_resolved_configs() {
    for name in presets::names() {
        let cfg = resolve(
            Some(name),
            None,
            &sets(&["log.peak_flops=3.1e14", "optim.eps=1e-8"]),
        )
        .unwrap();
        let text = cfg.to_toml();
        let back = ResolvedConfig::from_toml_str(&text).unwrap();
        assert_eq!(back, cfg, "{name}:\n{text}");
        assert_eq!(back.to_toml(), text, "{name}: printing is stable");
    }
    let filled = resolve(None, None, &sets(&["train.global_batch=12"]))
        .unwrap()
        .with_vocab_size(65)
        .unwrap();
    let text = filled.to_toml();
    assert!(text.contains("vocab_size = 65"), "{text}");
    assert!(text.contains("global_batch = 12"), "{text}");
    assert_eq!(ResolvedConfig::from_toml_str(&text).unwrap(), filled);
}

#[test]
fn saved_toml_is_revalidated() {
    let cfg = resolve(None, None, &[]).unwrap();
    let broken = cfg.to_toml().replace("n_head = 4", "n_head = 3");
    let err = ResolvedConfig::from_toml_str(&broken).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model.n_embd: must be divisible by model.n_head (128 % 3 = 2)"
    );
}

#[test]
fn every_preset_validates_with_the_documented_shape() {
    let expect: &[(&str, [usize; 4], TokenizerKind)] = &[
        ("shakespeare-char", [6, 6, 384, 256], TokenizerKind::Char),
        ("shakespeare-char-cpu", [4, 4, 128, 64], TokenizerKind::Char),
        ("gpt2", [12, 12, 768, 1024], TokenizerKind::Gpt2),
        ("gpt2-medium", [24, 16, 1024, 1024], TokenizerKind::Gpt2),
        ("gpt2-large", [36, 20, 1280, 1024], TokenizerKind::Gpt2),
        ("gpt2-xl", [48, 25, 1600, 1024], TokenizerKind::Gpt2),
        ("gpt2-mini", [4, 4, 256, 128], TokenizerKind::Gpt2),
        ("tiny", [2, 2, 32, 16], TokenizerKind::Char),
        ("llama-char-cpu", [4, 4, 128, 64], TokenizerKind::Char),
        ("llama-mini", [4, 4, 256, 128], TokenizerKind::Gpt2),
        ("tinyllama-1.1b", [22, 32, 2048, 2048], TokenizerKind::Gpt2),
        ("llama3-8b", [32, 32, 4096, 8192], TokenizerKind::Gpt2),
        ("llama3-70b", [80, 64, 8192, 8192], TokenizerKind::Gpt2),
        ("llama3.1-405b", [126, 128, 16384, 8192], TokenizerKind::Gpt2),
    ];
    assert_eq!(presets::names().len(), expect.len());
    for (name, shape, tok) in expect {
        let cfg = ResolvedConfig::new(presets::get(name).unwrap()).unwrap();
        let m = &cfg.raw.model;
        assert_eq!(
            [m.n_layer, m.n_head, m.n_embd, m.block_size],
            *shape,
            "{name}"
        );
        assert_eq!(cfg.raw.data.tokenizer, *tok, "{name}");
        assert_eq!(
            m.vocab_size.is_some(),
            *tok == TokenizerKind::Gpt2,
            "{name}"
        );
        assert!(resolve(Some(name), None, &[]).is_ok(), "{name}");
    }
}

#[test]
fn vocab_size_is_filled_from_the_data() {
    let cfg = resolve(None, None, &[])
        .unwrap()
        .with_vocab_size(65)
        .unwrap();
    assert_eq!(cfg.raw.model.vocab_size, Some(65));
    let same = resolve(Some("gpt2"), None, &[])
        .unwrap()
        .with_vocab_size(50257)
        .unwrap();
    assert_eq!(same.raw.model.vocab_size, Some(50257));
}

#[test]
fn resume_from_a_saved_config_with_overrides() {
    let saved = resolve(Some("tiny"), None, &[])
        .unwrap()
        .with_vocab_size(65)
        .unwrap()
        .to_toml();
    let resumed =
        config::resolve_saved(&saved, &sets(&["train.steps=40", "checkpoint.keep_last=1"]))
            .unwrap();
    assert_eq!(resumed.raw.train.steps, 40);
    assert_eq!(
        resumed.decay_steps, 40,
        "decay follows steps when it was derived"
    );
    assert_eq!(resumed.raw.checkpoint.keep_last, 1);
    assert_eq!(
        resumed.raw.model.vocab_size,
        Some(65),
        "the filled vocabulary is kept"
    );
    assert_eq!(
        resumed.raw.model.n_embd, 32,
        "the saved shape, not the defaults"
    );
    assert_eq!(resumed.preset.as_deref(), Some("tiny"));
    let err = config::resolve_saved(&saved, &sets(&["model.n_embd=33"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model.n_embd: must be divisible by model.n_head (33 % 2 = 1)"
    );
}

#[test]
fn a_warm_up_longer_than_a_short_run_is_clamped_saying_so() {
    let cfg = resolve(Some("shakespeare-char-cpu"), None, &sets(&["train.steps=20"])).unwrap();
    assert_eq!(cfg.raw.optim.warmup_steps, 2);
    assert_eq!(cfg.notes.0.len(), 1);
    assert!(cfg.notes.0[0].contains("warming up for 2 steps"), "{:?}", cfg.notes);
    // The saved form holds the clamped value and reads back with no further note.
    let back = ResolvedConfig::from_toml_str(&cfg.to_toml()).unwrap();
    assert_eq!(back.raw.optim.warmup_steps, 2);
    assert!(back.notes.0.is_empty());
    // A run as long as the preset's warm-up, or an explicit decay, is left alone.
    let long = resolve(Some("shakespeare-char-cpu"), None, &sets(&["train.steps=100"])).unwrap();
    assert_eq!(long.raw.optim.warmup_steps, 100);
    assert!(long.notes.0.is_empty());
    assert!(resolve(Some("shakespeare-char-cpu"), None, &sets(&["train.steps=20", "optim.decay_steps=20"])).is_err());
}
