//! Training on what `data prepare` makes, as a user runs it: a two-source
//! mixture (drawn-token shares and exact resume), and a Hugging Face
//! `tokenizer.json` travelling from the prepared data into checkpoints,
//! `generate` and `export`, with a different tokenizer refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;


mod common;
use common::{bin, root, run_err as err, run_ok as ok};

fn fixture(name: &str) -> PathBuf {
    root().join("crates/data/tests/fixtures/tokenizers").join(name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Prepares `plays` of the shipped corpus with `tokenizer` into `out`.
fn prepare(plays: &[&str], tokenizer: &Path, out: &Path) {
    let mut args = vec!["data".to_string(), "prepare".into(), "--tokenizer".into(), s(tokenizer), "--out".into(), s(out)];
    args.push("--input".into());
    args.extend(plays.iter().map(|p| s(&root().join("data/shakespeare").join(p))));
    args.extend(["--split".into(), "tail".into()]);
    ok(bin().args(&args));
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn train(run: &Path, sets: &[String], resume: bool) -> Output {
    let mut c = bin();
    if resume {
        c.args(["train", "--resume", &s(run)]);
    } else {
        c.args(["train", "--preset", "tiny", "--out", &s(run)]);
    }
    for set in sets {
        c.args(["--set", set]);
    }
    ok(&mut c)
}

#[test]
fn a_two_source_mixture_draws_tokens_by_weight_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = fixture("bpe-bytelevel");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    prepare(&["hamlet.txt", "macbeth.txt"], &tok, &a);
    prepare(&["sonnets.txt", "tempest.txt"], &tok, &b);
    let sources = format!("data.sources=[{{dir = \"{}\", weight = 0.7}}, {{dir = \"{}\", weight = 0.3}}]", s(&a), s(&b));
    let sets = |steps: u64| -> Vec<String> {
        vec![
            sources.clone(),
            format!("train.steps={steps}"),
            "checkpoint.interval=500".into(),
            "train.log_interval=100".into(),
            "train.eval_interval=500".into(),
            "optim.warmup_steps=10".into(),
            // The schedule of the whole run, also for the part that stops at 500.
            "optim.decay_steps=1000".into(),
        ]
    };
    let whole = tmp.path().join("whole");
    train(&whole, &sets(1000), false);
    let m = metrics(&whole);
    let last = m.last().unwrap();
    assert_eq!(last["step"], 1000);
    let drawn: Vec<f64> = last["sources"].as_array().unwrap().iter().map(|s| s["tokens"].as_f64().unwrap()).collect();
    let share = drawn[0] / (drawn[0] + drawn[1]);
    assert!((share - 0.7).abs() <= 0.007, "source a drew {share} of the tokens, want 0.7 within 1%");
    // tiny: batch 4, block 16 -> 1000 steps draw 64000 tokens in all.
    assert_eq!(drawn[0] + drawn[1], 1000.0 * 4.0 * 16.0);
    let epochs = last["sources"][0]["epochs"].as_f64().unwrap();
    assert!(epochs > 0.0 && epochs.is_finite());

    // Stop at 500, resume to 1000: the same losses and draws, the same weights.
    let split = tmp.path().join("split");
    train(&split, &sets(500), false);
    train(&split, &["train.steps=1000".to_string()], true);
    let n = metrics(&split);
    let by_step = |v: &[serde_json::Value], step: u64| v.iter().find(|r| r["step"] == step).cloned().unwrap();
    for step in [600, 900, 1000] {
        let (x, y) = (by_step(&m, step), by_step(&n, step));
        assert_eq!((&x["train_loss"], &x["sources"]), (&y["train_loss"], &y["sources"]), "step {step}");
    }
    let model = |run: &Path| fs::read(run.join("checkpoints/step-00001000/model-rank00000.safetensors")).unwrap();
    assert!(model(&whole) == model(&split), "resumed weights differ");
}

#[test]
fn a_tokenizer_json_travels_into_checkpoints_generate_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let llama_tok = fixture("bpe-llamalike");
    let data = tmp.path().join("data");
    prepare(&["hamlet.txt", "macbeth.txt"], &llama_tok, &data);
    let run = tmp.path().join("run");
    let base = vec![format!("data.dir=\"{}\"", s(&data)), "data.inputs=[]".to_string(), "train.steps=4".to_string()];
    train(&run, &base, false);
    // The data folder is not needed to sample: the tokenizer is in the checkpoint.
    fs::rename(&data, tmp.path().join("moved")).unwrap();
    let out = ok(bin().args(["generate", "--checkpoint", &s(&run), "--prompt", "To be", "--tokens", "8", "--seed", "1"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("To be"), "{text}");
    let export = tmp.path().join("export");
    ok(bin().args(["export", "--checkpoint", &s(&run), "--out", &s(&export)]));
    assert_eq!(fs::read(export.join("tokenizer.json")).unwrap(), fs::read(llama_tok.join("tokenizer.json")).unwrap());
    let config = fs::read_to_string(export.join("tokenizer_config.json")).unwrap();
    assert!(config.contains("LlamaTokenizerFast"), "{config}");
    let hf_config: serde_json::Value = serde_json::from_str(&fs::read_to_string(export.join("config.json")).unwrap()).unwrap();
    assert_eq!((hf_config["eos_token_id"].as_u64(), hf_config["bos_token_id"].as_u64()), (Some(2), Some(1)));
    fs::rename(tmp.path().join("moved"), &data).unwrap();

    // Data made with another tokenizer.json (same vocabulary size, other bytes):
    // refused on resume; and a model exported with one tokenizer refuses data of another.
    let edited = tmp.path().join("edited");
    fs::create_dir(&edited).unwrap();
    let mut json = fs::read_to_string(llama_tok.join("tokenizer.json")).unwrap();
    json.push('\n');
    fs::write(edited.join("tokenizer.json"), json).unwrap();
    let other = tmp.path().join("other");
    prepare(&["hamlet.txt", "macbeth.txt"], &edited, &other);
    let e = err(bin().args(["train", "--resume", &s(&run), "--set", &format!("data.dir=\"{}\"", s(&other)), "--set", "train.steps=6"]));
    assert!(e.contains("tokenized differently") && e.contains("sha256"), "{e}");
    // eval reads the run's data folder: never prepares one, refuses another tokenizer's.
    fs::rename(&data, tmp.path().join("kept")).unwrap();
    let e = err(bin().args(["eval", "--checkpoint", &s(&run)]));
    assert!(e.contains("does not prepare"), "{e}");
    assert!(!data.exists(), "eval prepared data");
    fs::rename(&other, &data).unwrap();
    let e = err(bin().args(["eval", "--checkpoint", &s(&run)]));
    assert!(e.contains("tokenized differently"), "{e}");
    fs::rename(&data, &other).unwrap();
    fs::rename(tmp.path().join("kept"), &data).unwrap();
    let out = ok(bin().args(["eval", "--checkpoint", &s(&run)]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("validation loss"));
    let e = err(bin().args([
        "train",
        "--preset",
        "tiny",
        "--init-from",
        &s(&export),
        "--out",
        &s(&tmp.path().join("ft")),
        "--set",
        &format!("data.dir=\"{}\"", s(&tmp.path().join("fresh"))),
        "--set",
        &format!("data.inputs=[\"{}\"]", s(&root().join("data/shakespeare/hamlet.txt"))),
        "--set",
        "data.tokenizer=\"hf\"",
        "--set",
        &format!("data.tokenizer_file=\"{}\"", s(&fixture("bpe-bytelevel"))),
    ]));
    assert!(e.contains("tokenizer") && e.contains("differ"), "{e}");
}
