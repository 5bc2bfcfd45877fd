//! Hugging Face folders out and in, as a user runs them: `hyperion export` of a trained
//! GPT-2 and Llama, `hyperion train --init-from` of the export (every tensor must come
//! back bitwise), clear errors for broken folders, and — when `transformers` and `torch`
//! are importable — `scripts/check_hf_export.py` loading the export in `transformers`
//! and comparing its logits with Hyperion's (max abs difference 1e-4).

use std::path::Path;
use std::process::Command;

mod common;
use common::{bin, root, run_err, run_ok};

/// A few-step run of the `tiny` preset (char tokenizer on two plays), GPT-2 or Llama.
fn train_args(data: &Path, out: &Path, llama: bool, steps: u64, lr: f64) -> Vec<String> {
    let c = root().join("data/shakespeare");
    let inputs = format!("[\"{}\",\"{}\"]", c.join("sonnets.txt").display(), c.join("macbeth.txt").display());
    let mut a: Vec<String> = [
        "train",
        "--preset",
        "tiny",
        "--out",
        &out.display().to_string(),
        "--set",
        &format!("data.dir=\"{}\"", data.display()),
        "--set",
        &format!("data.inputs={inputs}"),
        // Two plays: too few documents for a by-document split.
        "--set",
        "data.split=tail",
        "--set",
        &format!("train.steps={steps}"),
        "--set",
        "train.eval_interval=0",
        "--set",
        "log.progress=false",
        "--set",
        "log.peak_flops=1e11",
        "--set",
        &format!("optim.lr={lr}"),
        "--set",
        &format!("optim.min_lr={lr}"),
        "--set",
        "optim.warmup_steps=0",
        "--sample-tokens",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if llama {
        for s in ["model.arch=\"llama\"", "model.n_kv_head=1", "model.tie_embeddings=false", "model.ffn_hidden=40", "model.bias=false"] {
            a.extend(["--set".to_string(), s.to_string()]);
        }
    }
    a
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Hyperion's logits for fixed tokens, written as the reference the Python check reads.
fn write_reference(run: &Path, path: &Path) {
    let ck = engine::open_checkpoint(run).unwrap();
    let cfg = config::ResolvedConfig::from_toml_str(&engine::saved_config(&ck).unwrap()).unwrap();
    let m = model::Gpt::new(engine::model_spec(&cfg).unwrap());
    let mut params = m.zeros();
    engine::load_model(&m, &ck, &mut params).unwrap();
    let (b, t, v) = (2, m.spec.seq, m.spec.vocab);
    let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % v) as u32).collect();
    let mut acts = model::Activations::new(&m.spec, b, t, false);
    m.forward_hidden(&params, &mut acts, &tokens);
    let mut logits = vec![0.0f32; b * t * v];
    for s in 0..b {
        for p in 0..t {
            let r = (s * t + p) * v;
            m.head_logits(&params[0], &params[m.layout.head()], &mut acts, s, p, &mut logits[r..r + v]);
        }
    }
    let tok: Vec<u8> = tokens.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect();
    let lg: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        ("tokens".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![b, t], &tok).unwrap()),
        ("logits".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![b, t, v], &lg).unwrap()),
    ];
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// `Some(python)` when torch and transformers import; otherwise says why it skips.
fn python_with_transformers() -> Option<String> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&py).args(["-c", "import torch, transformers, safetensors"]).output() {
        Ok(o) if o.status.success() => Some(py),
        _ => {
            eprintln!("SKIPPED the transformers check: `{py} -c 'import torch, transformers, safetensors'` failed (pip install torch transformers safetensors to run it)");
            None
        }
    }
}

fn round_trip(llama: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    run_ok(bin().args(train_args(&data, &run, llama, 3, 1e-3)));
    // Sharded on purpose (the tiny model is ~100 kB): index + several files.
    let export = tmp.path().join("export");
    let out = run_ok(bin().args(["export", "--checkpoint", &run.display().to_string(), "--out", &export.display().to_string(), "--max-shard-size", "40000"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(if llama { "LlamaForCausalLM" } else { "GPT2LMHeadModel" }), "{said}");
    let names = files(&export);
    assert!(names.contains(&"config.json".into()) && names.contains(&"generation_config.json".into()), "{names:?}");
    assert!(names.contains(&"model.safetensors.index.json".into()), "{names:?}");
    let shards: Vec<&String> = names.iter().filter(|n| n.starts_with("model-") && n.ends_with(".safetensors")).collect();
    assert!(shards.len() >= 2, "{names:?}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], if llama { "llama" } else { "gpt2" });
    // Exporting into a non-empty folder is refused and leaves it alone.
    let e = run_err(bin().args(["export", "--checkpoint", &run.display().to_string(), "--out", &export.display().to_string()]));
    assert!(e.contains("not empty"), "{e}");

    // Import: a fine-tuning run from the export with lr = 0 keeps the weights exactly, so
    // its export must be byte-identical to the first one.
    let run2 = tmp.path().join("run2");
    let mut a = train_args(&data, &run2, llama, 1, 0.0);
    a.extend(["--init-from".into(), export.display().to_string()]);
    let out = run_ok(bin().args(&a));
    assert!(String::from_utf8_lossy(&out.stdout).contains("initialising from"));
    let export2 = tmp.path().join("export2");
    run_ok(bin().args(["export", "--checkpoint", &run2.display().to_string(), "--out", &export2.display().to_string(), "--max-shard-size", "40000"]));
    for n in &names {
        if n.ends_with(".safetensors") || n == "model.safetensors.index.json" {
            assert_eq!(std::fs::read(export.join(n)).unwrap(), std::fs::read(export2.join(n)).unwrap(), "{n} differs after export -> import -> export");
        }
    }

    if let Some(py) = python_with_transformers() {
        let reference = tmp.path().join("ref.safetensors");
        write_reference(&run, &reference);
        let script = root().join("scripts/check_hf_export.py");
        let out = Command::new(py).arg(&script).arg(&export).arg(&reference).args(["--atol", "1e-4"]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("{text}");
        assert!(out.status.success(), "transformers disagrees with the export:\n{text}");
    }
}

#[test]
fn gpt2_export_import_is_bitwise_and_loads_in_transformers() {
    round_trip(false);
}

#[test]
fn llama_export_import_is_bitwise_and_loads_in_transformers() {
    round_trip(true);
}

#[test]
fn gpt2_tokenizer_travels_with_the_export() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut a = train_args(&tmp.path().join("data"), &run, false, 1, 1e-3);
    a.extend(["--set".into(), "data.tokenizer=\"gpt2\"".into(), "--set".into(), "model.vocab_size=50257".into()]);
    run_ok(bin().args(&a));
    let export = tmp.path().join("export");
    run_ok(bin().args(["export", "--checkpoint", &run.display().to_string(), "--out", &export.display().to_string()]));
    let names = files(&export);
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json", "model.safetensors"] {
        assert!(names.contains(&f.to_string()), "{f} missing: {names:?}");
    }
    let vocab: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export.join("vocab.json")).unwrap()).unwrap();
    assert_eq!(vocab.as_object().unwrap().len(), 50257);
    assert_eq!(vocab["<|endoftext|>"], 50256);
    let merges = std::fs::read_to_string(export.join("merges.txt")).unwrap();
    assert_eq!(merges.lines().count(), 1 + 50000, "header + GPT-2's 50000 merges");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export.join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["bos_token_id"].as_u64(), cfg["eos_token_id"].as_u64()), (Some(50256), Some(50256)));
    if let Some(py) = python_with_transformers() {
        let reference = tmp.path().join("ref.safetensors");
        write_reference(&run, &reference);
        let out = Command::new(py).arg(root().join("scripts/check_hf_export.py")).arg(&export).arg(&reference).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("round trip ok"), "{text}");
    }
}

#[test]
fn broken_hf_folders_are_refused_with_the_tensor_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    run_ok(bin().args(train_args(&data, &run, true, 1, 1e-3)));
    let export = tmp.path().join("export");
    run_ok(bin().args(["export", "--checkpoint", &run.display().to_string(), "--out", &export.display().to_string()]));
    let try_init = |dir: &Path, name: &str| {
        let mut a = train_args(&data, &tmp.path().join(name), true, 1, 1e-3);
        a.extend(["--init-from".into(), dir.display().to_string()]);
        run_err(bin().args(&a))
    };
    // An unsupported config setting is named.
    let bad = tmp.path().join("scaled");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(export.join("model.safetensors"), bad.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export.join("config.json")).unwrap()).unwrap();
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let e = try_init(&bad, "r1");
    assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
    // A config that disagrees with the weights: the mis-shaped tensor is named.
    cfg["rope_scaling"] = serde_json::Value::Null;
    cfg["intermediate_size"] = serde_json::json!(48);
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let e = try_init(&bad, "r2");
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[40, 32]") && e.contains("[48, 32]"), "{e}");
    // A missing weights file.
    std::fs::remove_file(bad.join("model.safetensors")).unwrap();
    let e = try_init(&bad, "r3");
    assert!(e.contains("model.safetensors"), "{e}");
    // bf16 weights are accepted (converted to f32).
    let st = std::fs::read(export.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&st).unwrap();
    let bf: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let b: Vec<u8> = v.data().chunks_exact(4).flat_map(|c| ((f32::from_le_bytes(c.try_into().unwrap()).to_bits() >> 16) as u16).to_le_bytes()).collect();
            (n, v.shape().to_vec(), b)
        })
        .collect();
    let bfdir = tmp.path().join("bf16");
    std::fs::create_dir(&bfdir).unwrap();
    std::fs::copy(export.join("config.json"), bfdir.join("config.json")).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        bf.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &bfdir.join("model.safetensors")).unwrap();
    let mut a = train_args(&data, &tmp.path().join("r4"), true, 1, 1e-3);
    a.extend(["--init-from".into(), bfdir.display().to_string()]);
    run_ok(bin().args(&a));
    // An extra tensor is unexpected.
    let mut extra: Vec<(String, safetensors::tensor::TensorView)> =
        bf.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap())).collect();
    let junk = vec![0u8; 8];
    extra.push(("model.layers.0.self_attn.extra.weight".into(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &junk).unwrap()));
    safetensors::serialize_to_file(extra, None, &bfdir.join("model.safetensors")).unwrap();
    let e = try_init(&bfdir, "r5");
    assert!(e.contains("unexpected tensor `model.layers.0.self_attn.extra.weight`"), "{e}");
}
