//! `hyperion plan` and `hyperion plan validate`: flags, JSON shape, errors.

use std::process::{Command, Output};

fn hyperion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperion"))
        .args(args)
        .output()
        .expect("the hyperion binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const RUNS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../planner/data/published_runs.csv"
);

#[test]
fn plan_json_for_gpt3_on_azure_2020() {
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt3-175b",
        "--cluster",
        "azure-openai-2020",
        "--tokens",
        "300B",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["gpus"], 10000);
    assert_eq!(v["global_batch"], 1536);
    assert_eq!(v["tokens"], 300e9);
    let best = &v["best"];
    assert_eq!(best["fits"], true);
    let l = &best["layout"];
    let used = l["tp"].as_u64().unwrap() * l["pp"].as_u64().unwrap() * l["dp"].as_u64().unwrap();
    assert!(used <= 10000 && used == best["gpus_used"].as_u64().unwrap());
    assert!(best["memory"]["total"].as_f64().unwrap() <= 32e9);
    let mfu = best["mfu_pct"].as_f64().unwrap();
    assert!(mfu > 20.0 && mfu < 60.0, "MFU {mfu}");
    // days = tokens / (tokens/s) / 86400.
    let days = best["days"].as_f64().unwrap();
    let tps = best["tokens_per_s"].as_f64().unwrap();
    assert!((days - 300e9 / tps / 86400.0).abs() < 1e-6 * days);
    let ru = v["runners_up"].as_array().unwrap();
    assert_eq!(ru.len(), 5);
    for r in ru {
        assert!(r["estimate"]["tokens_per_s"].as_f64().unwrap() <= tps);
        assert!(!r["why"].as_str().unwrap().is_empty());
    }
}

#[test]
fn plan_text_and_fixed_layout() {
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt3-175b",
        "--cluster",
        "selene",
        "--gpus",
        "1024",
        "--layout",
        "tp=8,pp=8,recompute=selective",
        "--top",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "best:",
        "tp=8,pp=8,",
        "recompute=selective",
        "memory/GPU",
        "MFU",
        "days",
        "runners-up",
        "lost on:",
    ] {
        assert!(out.contains(want), "missing `{want}` in\n{out}");
    }
}

#[test]
fn plan_errors_name_the_problem() {
    let o = hyperion(&["plan", "--model", "gpt-9", "--cluster", "selene"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("unknown model `gpt-9`") && e.contains("llama3-405b") && e.contains("gpt3-175b"),
        "{e}"
    );
    let o = hyperion(&["plan", "--model", "gpt2", "--cluster", "moon"]);
    assert!(
        stderr(&o).contains("unknown cluster `moon`") && stderr(&o).contains("azure-openai-2020")
    );
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt2",
        "--cluster",
        "selene",
        "--layout",
        "tp=8,zero=5",
    ]);
    assert!(
        stderr(&o).contains("bad layout") && stderr(&o).contains("zero"),
        "{}",
        stderr(&o)
    );
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt2",
        "--cluster",
        "selene",
        "--layout",
        "tp=5",
    ]);
    assert!(
        stderr(&o).contains("tp=5 does not divide 12 attention heads"),
        "{}",
        stderr(&o)
    );
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt2",
        "--cluster",
        "selene",
        "--tokens",
        "lots",
    ]);
    assert!(stderr(&o).contains("--tokens `lots`"), "{}", stderr(&o));
    let o = hyperion(&["plan"]);
    assert!(!o.status.success() && stderr(&o).contains("--model"));
}

#[test]
fn validate_shipped_runs_json() {
    let o = hyperion(&["plan", "validate", RUNS, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, rows) = lines.split_last().unwrap();
    let s = &summary["summary"];
    assert_eq!(s["rows"].as_u64().unwrap() as usize, rows.len());
    let used = rows.iter().filter(|r| r.get("error_pct").is_some()).count();
    assert_eq!(s["used"].as_u64().unwrap() as usize, used);
    assert!(used >= 50, "{used}");
    // The summary is the rows' median and 90th percentile.
    let mut errs: Vec<f64> = rows.iter().filter_map(|r| r.get("error_pct")).map(|e| e.as_f64().unwrap().abs()).collect();
    errs.sort_by(f64::total_cmp);
    let pct = |q: f64| planner::validate::percentile(&errs, q);
    assert!((s["median_abs_error_pct"].as_f64().unwrap() - pct(0.5)).abs() < 1e-9);
    assert!((s["p90_abs_error_pct"].as_f64().unwrap() - pct(0.9)).abs() < 1e-9);
    // The first planner issue's bar was in-sample on the 65 runs it was set on (median
    // <= 5%, p90 <= 15%, constants chosen on those rows). The constants are now chosen
    // on all 125 usable rows with a physical prior (`FIT=1 cargo run -p hyperion-planner
    // --example validate`) and judged held out (crates/planner/tests/cross_validation.rs);
    // on the first 65 rows their fit is looser (3.9% / 18.0% measured).
    let mut first: Vec<f64> = rows[..65].iter().filter_map(|r| r.get("error_pct")).map(|e| e.as_f64().unwrap().abs()).collect();
    first.sort_by(f64::total_cmp);
    let (median, p90) = (planner::validate::percentile(&first, 0.5), planner::validate::percentile(&first, 0.9));
    assert!(first.len() >= 50 && median <= 5.0 && p90 <= 20.0, "median {median} p90 {p90} over {}", first.len());
    for r in rows {
        assert!(r["id"].is_string());
        if let Some(e) = r.get("error_pct") {
            let (p, q) = (
                r["predicted"].as_f64().unwrap(),
                r["published"].as_f64().unwrap(),
            );
            assert!((e.as_f64().unwrap() - 100.0 * (p - q) / q).abs() < 1e-9);
            assert!(r["metric"].is_string());
        } else {
            assert!(r["skipped"].is_string(), "{r}");
        }
    }
    let skipped: Vec<&str> = rows.iter().filter_map(|r| r["skipped"].as_str()).collect();
    assert!(skipped.iter().any(|s| s.contains("not a GPU")));
}

#[test]
fn validate_text_and_bad_files() {
    let o = hyperion(&["plan", "validate", RUNS]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("median |error|")
            && out.contains("p90 |error|")
            && out.contains("skipped:")
            && out.contains("K22-T5-02a")
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id,model_name\nx,y\n").unwrap();
    let o = hyperion(&["plan", "validate", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bad.csv: missing column `layers`"),
        "{}",
        stderr(&o)
    );
    let o = hyperion(&[
        "plan",
        "validate",
        dir.path().join("none.csv").to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("none.csv"));
}

#[test]
fn png_memory_chart() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("mem.png");
    let o = hyperion(&[
        "plan",
        "--model",
        "llama3-70b",
        "--cluster",
        "dgx-h100-superpod",
        "--png",
        png.to_str().unwrap(),
        "--top",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 5_000);
}

#[test]
fn seq_batch_and_gpus_flags_reach_the_plan() {
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt2",
        "--cluster",
        "dgx-a100-superpod",
        "--gpus",
        "16",
        "--seq",
        "512",
        "--global-batch",
        "256",
        "--tokens",
        "1e9",
        "--json",
        "--top",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (
            v["gpus"].as_u64(),
            v["seq"].as_u64(),
            v["global_batch"].as_u64()
        ),
        (Some(16), Some(512), Some(256))
    );
    let best = &v["best"];
    assert!(best["gpus_used"].as_u64().unwrap() <= 16);
    // tokens/s x step time = batch x seq.
    let step = best["step"]["total"].as_f64().unwrap();
    assert!((best["tokens_per_s"].as_f64().unwrap() * step - 256.0 * 512.0).abs() < 1e-6);
    // A 124M model needs no model parallelism on 80 GB GPUs.
    assert_eq!(
        (best["layout"]["tp"].as_u64(), best["layout"]["pp"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn png_scaling_chart() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("scale.png");
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt3-6.7b",
        "--cluster",
        "dgx-a100-superpod",
        "--gpus",
        "256",
        "--png",
        png.to_str().unwrap(),
        "--chart",
        "scaling",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt2",
        "--cluster",
        "selene",
        "--png",
        png.to_str().unwrap(),
        "--chart",
        "pie",
    ]);
    assert!(!o.status.success() && stderr(&o).contains("pie"));
}

#[test]
fn too_big_shows_the_most_frugal_breakdown_and_fails() {
    let o = hyperion(&[
        "plan",
        "--model",
        "gpt3-175b",
        "--cluster",
        "selene",
        "--gpus",
        "8",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no layout of gpt3-175b fits in 80 GB per GPU on 8 GPUs"),
        "{}",
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(
        out.contains("least memory") && out.contains("optimizer"),
        "{out}"
    );
}

#[test]
fn more_gpus_than_the_cluster_holds_is_an_error() {
    let o = hyperion(&["plan", "--model", "gpt3-175b", "--cluster", "azure-openai-2020", "--gpus", "20000"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--gpus 20000") && err.contains("10000"), "{err}");
    let o = hyperion(&["plan", "--model", "gpt3-175b", "--cluster", "azure-openai-2020", "--gpus", "0"]);
    assert!(!o.status.success(), "{}", stdout(&o));
}

#[test]
fn a_zero_communicator_timeout_is_refused() {
    let o = hyperion(&["train", "--preset", "tiny", "--comm-timeout", "0", "--out", "/nonexistent/never-created"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--comm-timeout") && err.contains("0"), "{err}");
}

#[test]
fn validate_refuses_malformed_csv_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../planner/data/published_runs.csv")).unwrap();
    let mut lines = shipped.lines();
    let header = lines.next().unwrap();
    let first = lines.next().unwrap();
    let write = |name: &str, text: String| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // Header only: an error, not "NaN%".
    let o = hyperion(&["plan", "validate", &write("h.csv", format!("{header}\n"))]);
    assert!(!o.status.success() && stderr(&o).contains("no data rows"), "{}{}", stdout(&o), stderr(&o));
    // layers = abc: named as malformed, not as "not published".
    let cols: Vec<&str> = header.split(',').collect();
    let li = cols.iter().position(|c| *c == "layers").unwrap();
    let mut cells: Vec<String> = vec![String::new(); cols.len()];
    cells[0] = "X1".into();
    cells[li] = "abc".into();
    let o = hyperion(&["plan", "validate", &write("abc.csv", format!("{header}\n{first}\n{}\n", cells.join(",")))]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("line 3") && err.contains("layers") && err.contains("`abc`"), "{err}");
    // A short row.
    let o = hyperion(&["plan", "validate", &write("short.csv", format!("{header}\nX2,source,only three\n"))]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("line 2") && err.contains("3 fields"), "{err}");
}

#[test]
fn validate_cross_validated_reports_both_figures() {
    let o = hyperion(&["plan", "validate", RUNS, "--cv", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let (inn, cv) = (&last["summary"], &last["cross_validation"]["cross_validated"]);
    assert_eq!(inn["used"], cv["used"], "every usable row is predicted held out");
    let (a, b) = (inn["median_abs_error_pct"].as_f64().unwrap(), cv["median_abs_error_pct"].as_f64().unwrap());
    assert!(b >= a && b < 50.0, "in-sample {a}%, cross-validated {b}%");
    assert!(last["cross_validation"]["sources"].as_u64().unwrap() >= 5);
    let text = stdout(&hyperion(&["plan", "validate", RUNS, "--cv"]));
    assert!(text.contains("leave-one-source-out") && text.contains("in-sample"), "{text}");
}

#[test]
fn plan_json_carries_the_80_percent_range() {
    let o = hyperion(&["plan", "--model", "gpt3-175b", "--cluster", "azure-openai-2020", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let (days, iv) = (v["best"]["days"].as_f64().unwrap(), &v["best_interval"]);
    let (lo, hi) = (iv["days"][0].as_f64().unwrap(), iv["days"][1].as_f64().unwrap());
    assert!(lo < days && days < hi, "{lo} < {days} < {hi}");
    let mfu = v["best"]["mfu_pct"].as_f64().unwrap();
    assert!(iv["mfu_pct"][0].as_f64().unwrap() < mfu && mfu < iv["mfu_pct"][1].as_f64().unwrap());
    let text = stdout(&hyperion(&["plan", "--model", "gpt3-175b", "--cluster", "azure-openai-2020"]));
    assert!(text.contains("80% range"), "{text}");
}

/// Plans that run: `--emit-config` writes the chosen layout and sizes as a training
/// config; with `--runnable` it trains as emitted (also a pipeline layout); what the
/// engine does not run (fp8, comm overlap, fused attention) `--runnable` refuses.
#[test]
fn an_emitted_config_trains_and_unsupported_knobs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("plan.toml");
    let c = cfg.to_str().unwrap();
    let o = hyperion(&[
        "plan", "--model", "shakespeare-char-cpu", "--cluster", "dgx-a100-superpod", "--gpus", "2", "--runnable", "--global-batch", "8",
        "--tokens", "5120", "--emit-config", c,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("every knob below is supported") && text.contains("steps = 10"), "{text}");
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/shakespeare/sonnets.txt");
    let run = tmp.path().join("run");
    let o = hyperion(&[
        "train", "--config", c, "--out", run.to_str().unwrap(), "--sample-tokens", "0",
        "--set", &format!("data.dir=\"{}\"", tmp.path().join("data").display()),
        "--set", &format!("data.inputs=[\"{corpus}\"]"), "--set", "data.split=\"tail\"", "--set", "log.progress=false",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"].as_u64(), Some(10), "{metrics}");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("dp = 2") && saved.contains("batch_size = 4"), "trained with the planned layout:\n{saved}");

    // A pipeline layout trains as planned too.
    let pp = tmp.path().join("pp.toml");
    let o = hyperion(&[
        "plan", "--model", "shakespeare-char-cpu", "--cluster", "dgx-a100-superpod", "--gpus", "2", "--runnable", "--global-batch", "8",
        "--tokens", "5120", "--layout", "pp=2", "--emit-config", pp.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = tmp.path().join("pp-run");
    let o = hyperion(&[
        "train", "--config", pp.to_str().unwrap(), "--out", run.to_str().unwrap(), "--sample-tokens", "0",
        "--set", &format!("data.dir=\"{}\"", tmp.path().join("data").display()),
        "--set", &format!("data.inputs=[\"{corpus}\"]"), "--set", "data.split=\"tail\"", "--set", "log.progress=false",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let emitted = std::fs::read_to_string(&pp).unwrap();
    let accum = emitted.lines().find(|l| l.trim_start().starts_with("grad_accum")).expect("the plan emits grad_accum").trim().to_string();
    assert!(saved.contains("pp = 2") && saved.contains(&accum), "trained with the planned pipeline ({accum}):\n{saved}");

    // GPT-3 on the 2020 machine: 16 stages of 6 interleaved chunks, all runnable knobs.
    let big = tmp.path().join("gpt3.toml");
    let o = hyperion(&["plan", "--model", "gpt3-175b", "--cluster", "azure-openai-2020", "--emit-config", big.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&big).unwrap();
    assert!(text.contains("pp = 16") && text.contains("schedule = \"interleaved\"") && text.contains("virtual_stages = 6"), "{text}");
    // What the engine does not run (fp8 here) is refused with --runnable, and named in
    // an emitted config otherwise.
    let o = hyperion(&["plan", "--model", "gpt3-175b", "--cluster", "azure-openai-2020", "--runnable", "--layout", "fp8=1"]);
    assert!(!o.status.success() && stderr(&o).contains("--runnable"), "{}", stderr(&o));
    let o = hyperion(&["plan", "--model", "gpt3-175b", "--cluster", "azure-openai-2020", "--layout", "fp8=1", "--emit-config", big.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&big).unwrap();
    assert!(text.contains("NOT YET SUPPORTED") && text.contains("fp8 matmuls"), "{text}");
}

/// `hyperion bench machine` measures this machine and writes a cluster file that `plan
/// --cluster FILE.toml` reads; a user-written file with a missing field is refused,
/// naming the field and the file.
#[test]
fn a_measured_machine_is_a_cluster_file_the_planner_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("machine.toml");
    let o = hyperion(&["bench", "machine", "--quick", "--json", "--out", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(m["gemm"].as_array().unwrap().len(), 27, "{m}");
    assert_eq!(m["gemm_tn_flops_per_s"].as_array().unwrap().len(), 27, "{m}");
    assert!(m["attention"].as_array().unwrap().iter().all(|a| a["fwd_flops_per_s"].as_f64().unwrap() > 1e8), "{m}");
    assert!(m["peak_flops"].as_f64().unwrap() > 1e9 && m["memory_bw_bytes_per_s"].as_f64().unwrap() > 1e8, "{m}");
    let o = hyperion(&["plan", "--model", "shakespeare-char", "--cluster", file.to_str().unwrap(), "--global-batch", "16", "--tokens", "1M", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(p["cluster"].as_str(), Some("this-machine"), "{p}");
    let text = std::fs::read_to_string(&file).unwrap().replace("memory_bw_gbs", "memory_bandwidth");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let o = hyperion(&["plan", "--model", "shakespeare-char", "--cluster", bad.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("bad.toml") && e.contains("memory_bandwidth"), "{e}");
    // The measured kernel rates are checked too: a missing list is named, a short one counted.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("[measured]") && text.contains("head_chunk_floats"), "{text}");
    let nt = text.lines().find(|l| l.starts_with("gemm_nt_gflops")).unwrap().to_string();
    std::fs::write(&bad, text.replace(&nt, "")).unwrap();
    let e = stderr(&hyperion(&["plan", "--model", "shakespeare-char", "--cluster", bad.to_str().unwrap()]));
    assert!(e.contains("[measured] gemm_nt_gflops is missing"), "{e}");
    std::fs::write(&bad, text.replace(&nt, "gemm_nt_gflops = [1.0, 2.0]")).unwrap();
    let e = stderr(&hyperion(&["plan", "--model", "shakespeare-char", "--cluster", bad.to_str().unwrap()]));
    assert!(e.contains("gemm_nt_gflops has 2 values, its grid needs 27"), "{e}");
}
