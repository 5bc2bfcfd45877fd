//! `hyperion plan`: memory, step time, MFU and the best layout of a model on a
//! cluster; `hyperion plan validate FILE.csv`: the model against published runs.
//! All logic lives in the `planner` crate; this module parses and prints.

use anyhow::{bail, Context};
use planner::estimate::{Estimate, Job};
use planner::hardware::{self, Machine};
use planner::layout::LayoutSpec;
use planner::search::SearchResult;
use planner::{models, Calibration};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PlanArgs {
    #[command(subcommand)]
    command: Option<PlanCommand>,
    /// Model name from the catalog (e.g. gpt3-175b, llama3-70b, gpt2).
    #[arg(long)]
    model: Option<String>,
    /// Cluster name from the catalog (e.g. azure-openai-2020, h100-10k), or a cluster
    /// file FILE.toml (written by hand or by `hyperion bench machine`).
    #[arg(long)]
    cluster: Option<String>,
    /// GPUs available (default: the whole cluster); a layout may use fewer.
    #[arg(long)]
    gpus: Option<u64>,
    /// Global batch in sequences (default: ~3.2M tokens, GPT-3's batch).
    #[arg(long)]
    global_batch: Option<u64>,
    /// Sequence length (default: the model's context).
    #[arg(long)]
    seq: Option<u64>,
    /// Tokens to train for: 300e9, 300B, 1.5T (default 300B).
    #[arg(long, default_value = "300B")]
    tokens: String,
    /// Fix some or all of the layout: tp=8,pp=16,dp=...,zero=1,mb=1,recompute=selective,v=2
    /// (also sp, flash, fp8, tp_overlap as 0/1, and fa2=1 for a stack whose fused attention
    /// is FlashAttention-2, slower on Hopper and later parts).
    #[arg(long)]
    layout: Option<String>,
    /// How many runners-up to show.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Write the chosen layout and sizes as a Hyperion training config (`hyperion train
    /// --config FILE.toml`); knobs the engine does not support yet are named in it.
    #[arg(long, value_name = "FILE.toml")]
    emit_config: Option<PathBuf>,
    /// Search only layouts the engine runs today: no fp8, no TP comm overlap, no fused
    /// attention (dp, tp, sp, pp with 1F1B or interleaving, ZeRO and recompute all run).
    #[arg(long)]
    runnable: bool,
    /// Write a PNG chart (see --chart).
    #[arg(long)]
    png: Option<PathBuf>,
    /// What --png draws: the per-GPU memory of the best layouts, or the best
    /// throughput and MFU against GPU count (one search per count).
    #[arg(long, value_enum, default_value_t = Chart::Memory)]
    chart: Chart,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Chart {
    Memory,
    Scaling,
}

#[derive(clap::Subcommand)]
enum PlanCommand {
    /// Predict each run of a published-runs CSV and report the errors.
    Validate {
        /// CSV in the format of crates/planner/data/published_runs.csv.
        file: PathBuf,
        /// One JSON object per row, then a summary object.
        #[arg(long)]
        json: bool,
        /// Also leave-one-source-out cross-validation: each source's rows predicted with
        /// the fitted constants re-chosen on the other sources only (the rows shown are
        /// then the held-out predictions).
        #[arg(long)]
        cv: bool,
    },
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    if let Some(PlanCommand::Validate { file, json, cv }) = &args.command {
        return validate(file, *json, *cv);
    }
    let (Some(model), Some(cluster)) = (&args.model, &args.cluster) else {
        bail!("`hyperion plan` needs --model NAME and --cluster NAME (or `hyperion plan validate FILE.csv`)");
    };
    let model = models::model(model)?;
    let (cluster, machine) = if cluster.ends_with(".toml") || std::path::Path::new(cluster).is_file() {
        planner::cluster_file::load(std::path::Path::new(cluster))?
    } else {
        let c = hardware::cluster(cluster)?;
        (c, Machine::from_cluster(c)?)
    };
    let seq = args.seq.unwrap_or(model.seq as u64);
    if seq == 0 {
        bail!("--seq must be positive");
    }
    let global_batch = args.global_batch.unwrap_or_else(|| default_batch(seq));
    let tokens =
        parse_count(&args.tokens).with_context(|| format!("--tokens `{}`", args.tokens))?;
    let gpus = args.gpus.unwrap_or(cluster.gpus);
    if gpus == 0 || gpus > cluster.gpus {
        bail!("--gpus {gpus}: {} has {} GPUs; give 1 to {}", cluster.name, cluster.gpus, cluster.gpus);
    }
    let job = Job {
        model,
        machine,
        gpus,
        global_batch,
        seq,
        tokens,
    };
    let mut spec = match &args.layout {
        Some(text) => LayoutSpec::parse(text)?,
        None => LayoutSpec::default(),
    };
    if args.runnable {
        restrict_to_runnable(&mut spec)?;
    }
    if let (Some(tp), Some(pp), Some(dp)) = (spec.tp, spec.pp, spec.dp) {
        if tp * pp * dp > gpus {
            return Err(planner::PlanError::DegreeMismatch {
                tp,
                pp,
                dp,
                product: tp * pp * dp,
                gpus,
            }
            .into());
        }
    }
    let started = std::time::Instant::now();
    let result = match planner::search(&job, &spec, &Calibration::default(), args.top) {
        Err(err @ planner::PlanError::NothingFits { best_gb, .. }) => {
            // Show where the memory goes in the most frugal layout, then fail.
            let mut roomy = job.clone();
            roomy.machine.gpu.mem_bytes = best_gb * 1e9 * 1.0001;
            if let Ok(r) = planner::search(&roomy, &spec, &Calibration::default(), 0) {
                println!(
                    "the layout needing the least memory ({:.1} GB per GPU):",
                    best_gb
                );
                print_estimate(&r.best);
            }
            return Err(err.into());
        }
        other => other?,
    };
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(path) = &args.emit_config {
        let text = emitted_config(&job, &result.best, &args)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            println!("training config for the best layout: {} (hyperion train --config {})", path.display(), path.display());
        }
    }
    if let Some(path) = &args.png {
        let drawn = match args.chart {
            Chart::Memory => {
                let mut bars = vec![&result.best];
                bars.extend(result.runners_up.iter().map(|r| &r.estimate));
                draw_memory_png(path, &bars, job.machine.gpu.mem_bytes)
            }
            Chart::Scaling => draw_scaling_png(path, &job, &spec),
        };
        drawn.with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let out = serde_json::json!({
            "model": job.model.name,
            "params": job.model.params(),
            "cluster": cluster.name,
            "gpu": job.machine.gpu.name,
            "gpus": gpus,
            "global_batch": global_batch,
            "seq": seq,
            "tokens": tokens,
            "assumptions": cluster.assumptions,
            "search_seconds": elapsed,
            "evaluated": result.evaluated,
            "fit": result.fit,
            "best": result.best,
            "best_interval": interval_json(&result.best),
            "runners_up": result.runners_up,
            "too_big": result.too_big,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_plan(&job, cluster, &result, elapsed);
    }
    Ok(())
}

/// `--runnable`: what the engine implements (issue 9 has landed dp, tp, sp, pp with
/// 1F1B and interleaved schedules, ZeRO and recompute; fp8, comm overlap and fused
/// attention are the planner's alone).
fn restrict_to_runnable(spec: &mut LayoutSpec) -> anyhow::Result<()> {
    let clash = |knob: &str, v: String| anyhow::anyhow!("--runnable: --layout fixes {knob} = {v}, which the engine does not run yet");
    for (knob, value) in [("fp8", &mut spec.fp8), ("tp_overlap", &mut spec.tp_overlap), ("flash", &mut spec.flash)] {
        if *value == Some(true) {
            return Err(clash(knob, "1".into()));
        }
        *value = Some(false);
    }
    Ok(())
}

/// The best layout as a training config: the model, the micro-batch and accumulation,
/// the steps for `--tokens`, the layout; the data section stays the default (set it).
fn emitted_config(job: &Job, e: &Estimate, args: &PlanArgs) -> anyhow::Result<String> {
    use planner::layout::Recompute;
    let l = &e.layout;
    let mut raw = config::RunConfig { model: config::presets::model_config(&job.model, true), ..Default::default() };
    raw.model.block_size = job.seq as usize;
    raw.train.batch_size = l.mb as usize;
    raw.train.grad_accum = e.micro_batches as usize;
    let per_step = (job.global_batch * job.seq) as f64;
    raw.train.steps = (job.tokens / per_step).ceil().max(1.0) as u64;
    let mut unsupported = Vec::new();
    if l.interleave > 1 && !e.micro_batches.is_multiple_of(l.pp) {
        unsupported.push(format!("{} micro-batches, not a multiple of pp = {} (the interleaved schedule needs one)", e.micro_batches, l.pp));
    }
    for (on, what) in [(l.fp8, "fp8 matmuls"), (l.tp_overlap, "TP communication overlap"), (l.flash, "fused (flash) attention")] {
        if on {
            unsupported.push(format!("{what} (assumed by the prediction; the engine runs without it)"));
        }
    }
    let body = config::ResolvedConfig::new(raw).context("the emitted config")?.to_toml();
    // The [parallel] section is written by hand: it may hold values the engine's config
    // refuses today (they are what the plan assumed).
    let mut out = String::new();
    let mut skipping = false;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if line.starts_with('[') {
            skipping = line.trim() == "[parallel]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    let cmd = format!(
        "hyperion plan --model {} --cluster {} --gpus {} --global-batch {} --seq {} --tokens {}{}",
        args.model.as_deref().unwrap_or(""),
        args.cluster.as_deref().unwrap_or(""),
        job.gpus,
        job.global_batch,
        job.seq,
        args.tokens,
        if args.runnable { " --runnable" } else { "" }
    );
    let mut head = format!(
        "# Hyperion training config emitted by `{cmd}`\n# layout {} on {} GPUs: predicted {:.3} s per step, MFU {:.1}%, {:.1} GB per GPU\n",
        e.layout_text,
        e.gpus_used,
        e.step.total,
        e.mfu_pct,
        e.memory.total / 1e9
    );
    if unsupported.is_empty() {
        head.push_str("# every knob below is supported by the engine\n");
    } else {
        head.push_str("# NOT YET SUPPORTED by the engine (train refuses or ignores these; `plan --runnable` avoids them):\n");
        for u in &unsupported {
            head.push_str(&format!("#   {u}\n"));
        }
    }
    head.push_str("# [data] is the default corpus: set data.dir / data.inputs for yours.\n\n");
    let recompute = if l.recompute == Recompute::None { "none" } else if l.recompute == Recompute::Full { "full" } else { "selective" };
    out.push_str(&format!(
        "\n[parallel]\ndp = {}\ntp = {}\npp = {}\nzero = {}\nrecompute = \"{recompute}\"\nsp = {}\n",
        l.dp, l.tp, l.pp, l.zero, l.sp
    ));
    if l.interleave > 1 {
        out.push_str(&format!("schedule = \"interleaved\"\nvirtual_stages = {}\n", l.interleave));
    }
    Ok(head + &out)
}

/// GPT-3's 3.2M-token batch, rounded down to a multiple of 64 sequences.
fn default_batch(seq: u64) -> u64 {
    let b = 3_200_000 / seq;
    if b >= 64 {
        b / 64 * 64
    } else {
        b.max(1)
    }
}

/// `300e9`, `300B`, `1.5T`, `2M`, `12345`.
fn parse_count(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('B') | Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    let x: f64 = num
        .parse()
        .context("expected a number such as 300e9 or 300B")?;
    if !(x > 0.0 && x.is_finite()) {
        bail!("must be positive");
    }
    Ok(x * mult)
}

/// 124M, 174.6B, 1.01T.
fn human(n: f64) -> String {
    match n {
        n if n >= 1e12 => format!("{:.2}T", n / 1e12),
        n if n >= 1e9 => format!("{:.1}B", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n => format!("{n:.0}"),
    }
}

fn gb(x: f64) -> f64 {
    x / 1e9
}

/// The 80% ranges of the best layout's throughput and duration, from the planner's
/// cross-validated errors (`planner::cv::Interval::shipped`).
fn interval_json(e: &Estimate) -> serde_json::Value {
    let iv = planner::cv::Interval::shipped();
    serde_json::json!({
        "coverage": 0.8,
        "from": "10th-90th percentile of leave-one-source-out errors on the shipped published runs",
        "q10_error_pct": iv.q10_error_pct,
        "q90_error_pct": iv.q90_error_pct,
        "mfu_pct": iv.throughput(e.mfu_pct),
        "tokens_per_s": iv.throughput(e.tokens_per_s),
        "step_seconds": iv.duration(e.step.total),
        "days": iv.duration(e.days),
    })
}

fn print_estimate(e: &Estimate) {
    let m = &e.memory;
    let s = &e.step;
    println!(
        "  layout        {}  ({} GPUs, {} micro-batches per step)",
        e.layout_text, e.gpus_used, e.micro_batches
    );
    println!(
        "  memory/GPU    {:.1} GB = weights {:.1} + grads {:.1} + optimizer {:.1} + activations {:.1} + buffers {:.1} + frag/context {:.1}  ({} stage, {} params/GPU)",
        gb(m.total),
        gb(m.weights),
        gb(m.gradients),
        gb(m.optimizer),
        gb(m.activations),
        gb(m.comm_buffers),
        gb(m.fragmentation_and_context),
        m.worst_stage,
        human(m.params_per_gpu)
    );
    println!(
        "  step          {:.3} s = compute {:.3} (recompute {:.3}) + TP comm {:.3} + PP sends {:.3} + bubble {:.3} + DP comm exposed {:.3} + optimizer {:.3}",
        s.total, s.compute, s.recompute, s.tp_comm, s.pp_comm, s.bubble, s.dp_comm, s.optimizer
    );
    println!(
        "  throughput    {:.1} model TFLOP/s per GPU ({:.1} counting recompute as Megatron eq. 3), MFU {:.1}%, {:.0} tokens/s, {:.2} days",
        e.model_tflops_per_gpu, e.eq3_tflops_per_gpu, e.mfu_pct, e.tokens_per_s, e.days
    );
    let iv = planner::cv::Interval::shipped();
    let ((m0, m1), (d0, d1)) = (iv.throughput(e.mfu_pct), iv.duration(e.days));
    println!(
        "  80% range     MFU {m0:.1}-{m1:.1}%, {d0:.2}-{d1:.2} days  (the spread of the planner's cross-validated errors on published runs)"
    );
}

fn print_plan(job: &Job, cluster: &hardware::Cluster, r: &SearchResult, elapsed: f64) {
    println!(
        "{} ({} params) on {} ({} x {}, {} per node), global batch {} x {} tokens, {:.3e} tokens",
        job.model.name,
        human(job.model.params()),
        cluster.name,
        job.gpus,
        job.machine.gpu.name,
        job.machine.gpus_per_node,
        job.global_batch,
        job.seq,
        job.tokens
    );
    println!("assumptions: {}", cluster.assumptions);
    println!(
        "searched {} layouts in {:.2} s, {} fit in {:.0} GB",
        r.evaluated,
        elapsed,
        r.fit,
        gb(job.machine.gpu.mem_bytes)
    );
    let b = &r.best.layout;
    if b.flash && !b.stack.fa2_attention && job.machine.gpu.fa2_attention_rel < 1.0 {
        println!(
            "attention: the part's own fused kernel (cuDNN, FlashAttention-3); a stack running FlashAttention-2 gets {:.2} of its rate: --layout fa2=1",
            job.machine.gpu.fa2_attention_rel
        );
    }
    println!("\nbest:");
    print_estimate(&r.best);
    if !r.runners_up.is_empty() {
        println!("\nrunners-up (best of each tp x pp x dp shape) and why they lost:");
        for (i, ru) in r.runners_up.iter().enumerate() {
            let e = &ru.estimate;
            println!(
                "  {}. {:<58} {:>6} GPUs  MFU {:>5.1}%  {:>8.0} tok/s  {:>6.1} days  {:>5.1} GB  lost on: {}",
                i + 2,
                e.layout_text,
                e.gpus_used,
                e.mfu_pct,
                e.tokens_per_s,
                e.days,
                gb(e.memory.total),
                ru.why
            );
        }
    }
    if !r.too_big.is_empty() {
        println!("\nfaster but do not fit:");
        for ru in &r.too_big {
            println!(
                "  {:<58} MFU {:>5.1}%  {}",
                ru.estimate.layout_text, ru.estimate.mfu_pct, ru.why
            );
        }
    }
}

fn validate(file: &PathBuf, json: bool, cv: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display().to_string();
    let (mut rows, summary) = planner::validate::validate(&text, &name, &Calibration::default())?;
    let cross = if cv {
        let c = planner::cv::cross_validate(&text, &name, &Calibration::default())?;
        rows = c.rows.clone();
        Some(c)
    } else {
        None
    };
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        // A struct keeps the documented key order (rows, used, median, p90).
        match &cross {
            None => println!("{{\"summary\":{}}}", serde_json::to_string(&summary)?),
            Some(c) => println!("{{\"summary\":{},\"cross_validation\":{}}}", serde_json::to_string(&summary)?, serde_json::to_string(c)?),
        }
        return Ok(());
    }
    println!(
        "{:<14} {:<30} {:>10} {:>10} {:>8}  layout (predicted where the source is silent)",
        "id", "metric", "predicted", "published", "error"
    );
    for r in rows.iter().filter(|r| r.skipped.is_none()) {
        println!(
            "{:<14} {:<30} {:>10.1} {:>10.1} {:>+7.1}%  {}",
            r.id,
            r.metric.as_deref().unwrap_or(""),
            r.predicted.unwrap_or(f64::NAN),
            r.published.unwrap_or(f64::NAN),
            r.error_pct.unwrap_or(f64::NAN),
            r.layout.as_deref().unwrap_or("")
        );
    }
    let mem: Vec<_> = rows
        .iter()
        .filter(|r| r.published_mem_gib.is_some())
        .collect();
    if !mem.is_empty() {
        println!("\npeak memory per GPU where published (GiB; not part of the error summary):");
        for r in mem {
            println!(
                "  {:<14} predicted {:>6.1}  published {:>6.1}",
                r.id,
                r.predicted_mem_gib.unwrap_or(f64::NAN),
                r.published_mem_gib.unwrap_or(f64::NAN)
            );
        }
    }
    if summary.used == 0 {
        println!("\nrows {}, used 0: no row could be predicted (see skipped)", summary.rows);
    } else {
        println!(
            "\nrows {}, used {}: median |error| {:.1}%, p90 |error| {:.1}%{}",
            summary.rows,
            summary.used,
            summary.median_abs_error_pct,
            summary.p90_abs_error_pct,
            if cross.is_some() { " in-sample (the shipped constants were chosen on these rows)" } else { "" }
        );
    }
    if let Some(c) = &cross {
        let cvs = &c.cross_validated;
        println!(
            "leave-one-source-out ({} sources; the rows above are held-out predictions): median |error| {:.1}%, p90 |error| {:.1}%  (in-sample: {:.1}% / {:.1}%)",
            c.sources, cvs.median_abs_error_pct, cvs.p90_abs_error_pct, summary.median_abs_error_pct, summary.p90_abs_error_pct
        );
        println!(
            "80% range of the error: {:+.1}% to {:+.1}%; held-out rows inside the range built without their source: {:.1}%",
            c.interval.q10_error_pct, c.interval.q90_error_pct, c.coverage_pct
        );
    }
    println!("skipped:");
    for r in rows.iter().filter(|r| r.skipped.is_some()) {
        println!("  {:<14} {}", r.id, r.skipped.as_deref().unwrap_or(""));
    }
    Ok(())
}

/// Reads one memory component of an estimate.
type Getter = fn(&Estimate) -> f64;

/// Stacked bars of the per-GPU memory of the best layouts against GPU memory.
fn draw_memory_png(
    path: &std::path::Path,
    bars: &[&Estimate],
    capacity: f64,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    crate::chart::register_font();
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = bars
        .iter()
        .map(|e| gb(e.memory.total))
        .fold(gb(capacity), f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "per-GPU memory of the best layouts (GB)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..bars.len() as f64, 0.0..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|x| format!("#{}", *x as usize + 1))
        .y_desc("GB")
        .draw()?;
    let parts: [(&str, RGBColor, Getter); 6] = [
        ("weights", RGBColor(31, 119, 180), |e| e.memory.weights),
        ("gradients", RGBColor(255, 127, 14), |e| e.memory.gradients),
        ("optimizer", RGBColor(44, 160, 44), |e| e.memory.optimizer),
        ("activations", RGBColor(214, 39, 40), |e| {
            e.memory.activations
        }),
        ("buffers", RGBColor(148, 103, 189), |e| {
            e.memory.comm_buffers
        }),
        ("frag+context", RGBColor(140, 140, 140), |e| {
            e.memory.fragmentation_and_context
        }),
    ];
    for (name, color, get) in parts {
        let rects: Vec<_> = bars
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let below: f64 = parts_below(e, name);
                let x = i as f64;
                Rectangle::new(
                    [(x + 0.15, gb(below)), (x + 0.85, gb(below + get(e)))],
                    color.filled(),
                )
            })
            .collect();
        chart
            .draw_series(rects)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, gb(capacity)), (bars.len() as f64, gb(capacity))],
            BLACK.stroke_width(2),
        ))?
        .label("GPU memory")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Best predicted tokens/s and MFU for GPU counts node, 2 x node, ... up to the job's.
fn draw_scaling_png(path: &std::path::Path, job: &Job, spec: &LayoutSpec) -> anyhow::Result<()> {
    use plotters::prelude::*;
    crate::chart::register_font();
    let mut counts = Vec::new();
    let mut n = job.machine.gpus_per_node.max(1);
    while n < job.gpus {
        counts.push(n);
        n *= 2;
    }
    counts.push(job.gpus);
    // (GPUs, tokens/s, MFU %) of the best layout that fits at each count.
    let points: Vec<(f64, f64, f64)> = counts
        .iter()
        .filter_map(|&n| {
            let j = Job {
                gpus: n,
                ..job.clone()
            };
            let r = planner::search(&j, spec, &Calibration::default(), 0).ok()?;
            Some((n as f64, r.best.tokens_per_s, r.best.mfu_pct))
        })
        .collect();
    if points.is_empty() {
        bail!("no GPU count up to {} fits {}", job.gpus, job.model.name);
    }
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let xmax = job.gpus as f64 * 1.2;
    let xmin = points[0].0 / 1.2;
    let tmax = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&top)
        .caption(
            format!("{}: best tokens/s vs GPUs", job.model.name),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..tmax)?;
    c.configure_mesh()
        .x_desc("GPUs")
        .y_desc("tokens/s")
        .draw()?;
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.0, p.1)),
        BLUE.stroke_width(2),
    ))?;
    c.draw_series(
        points
            .iter()
            .map(|p| Circle::new((p.0, p.1), 4, BLUE.filled())),
    )?;
    let mut c = ChartBuilder::on(&bottom)
        .caption("MFU of the best layout (%)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..100.0)?;
    c.configure_mesh().x_desc("GPUs").y_desc("MFU %").draw()?;
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.0, p.2)),
        RED.stroke_width(2),
    ))?;
    c.draw_series(
        points
            .iter()
            .map(|p| Circle::new((p.0, p.2), 4, RED.filled())),
    )?;
    root.present()?;
    Ok(())
}

/// Bytes of the components drawn below `name` in the stack.
fn parts_below(e: &Estimate, name: &str) -> f64 {
    let m = &e.memory;
    let order = [
        ("weights", m.weights),
        ("gradients", m.gradients),
        ("optimizer", m.optimizer),
        ("activations", m.activations),
        ("buffers", m.comm_buffers),
        ("frag+context", m.fragmentation_and_context),
    ];
    order
        .iter()
        .take_while(|(n, _)| *n != name)
        .map(|(_, v)| v)
        .sum()
}

