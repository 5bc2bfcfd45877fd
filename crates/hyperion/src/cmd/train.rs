//! `hyperion train`: resolve the config, prepare data on first use, train on one rank,
//! on `--workers N` threads, or on the ranks of `mpirun`, with a progress bar; then
//! report memory, plot the loss curves and print a sample.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use comm::Communicator;
use config::ResolvedConfig;
use engine::{MemoryReport, Observer, Quiet, Rank, RunInfo, StepMetrics, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{self, ConfigArgs};

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Run directory (checkpoints, metrics.jsonl, loss.png). Default: runs/<preset>.
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its newest checkpoint that verifies (its saved
    /// config; `--set` may override, e.g. `--set train.steps=4000`, or `--workers` to
    /// change dp). RUN_DIR/checkpoints/step-N continues that run from step N.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "preset", "config"])]
    pub resume: Option<PathBuf>,
    /// Start from the weights of a Hugging Face model folder (fine-tuning): its
    /// config.json sets the model section; names, shapes and settings are checked.
    #[arg(long, value_name = "HF_DIR", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Data-parallel ranks as threads of this process (sets parallel.dp); with
    /// parallel.tp = T and parallel.pp = P the process runs N x T x P rank threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds any rank waits in a collective before the run fails naming the rank.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub comm_timeout: u64,
    /// Characters/tokens of sample text printed at the end (0 = none).
    #[arg(long, default_value_t = 300)]
    pub sample_tokens: usize,
    /// Supervise the run: restart it from its last checkpoint when it fails (a crash,
    /// a killed or panicking rank), up to N times with a doubling backoff; each failure
    /// and restart is logged in RUN_DIR/restarts.jsonl.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_restarts: u32,
    /// Supervise a job started by this launcher, e.g. "mpirun -np 4" (its words, then
    /// this executable and the train arguments); restarts relaunch it.
    #[arg(long, value_name = "COMMAND")]
    pub launcher: Option<String>,
    /// The first restart's backoff in milliseconds (then doubling, at most a minute).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub restart_backoff_ms: u64,
    /// Start even when the memory this run will allocate (computed before allocating)
    /// exceeds the memory available on this machine.
    #[arg(long)]
    pub allow_oversubscribe: bool,
    /// Testing aid: the bytes of memory to consider available (instead of MemAvailable).
    #[arg(long, hide = true, value_name = "BYTES")]
    pub debug_mem_available: Option<u64>,
    /// Testing aid: pause this many milliseconds after each checkpoint file is written
    /// (makes a kill during a checkpoint write reproducible).
    #[arg(long, hide = true, default_value_t = 0)]
    pub debug_checkpoint_pause_ms: u64,
    /// Testing aid: make the gradient norm of these steps NaN (`5,6,7`), to exercise
    /// the numerics guard.
    #[arg(long, hide = true, value_name = "STEPS", value_delimiter = ',')]
    pub debug_nan_steps: Vec<u64>,
    /// Testing aid: make rank R stop calling collectives at step S (`R:S`): it sleeps.
    #[arg(long, hide = true, value_name = "R:S")]
    pub debug_hang: Option<String>,
    /// Testing aid: make rank R panic at step S (`R:S`), to exercise failure handling.
    #[arg(long, hide = true, value_name = "R:S")]
    pub debug_fail: Option<String>,
}

/// Set when a rank stopped on the numerics guard (the exit code tells a supervisor
/// not to restart it).
static DIVERGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What every rank needs to start.
struct Plan {
    cfg: ResolvedConfig,
    run_dir: PathBuf,
    resume: Option<Resume>,
    sample_tokens: usize,
    pause: Duration,
    fail_at: Option<(usize, u64)>,
    hang_at: Option<(usize, u64)>,
    nan_steps: Vec<u64>,
    /// `None` with --allow-oversubscribe; else the available bytes to check against
    /// (`Some(None)`: read MemAvailable).
    mem_check: Option<Option<u64>>,
    /// Whole parameter buckets to start from (`--init-from`).
    init: Option<Vec<Vec<f32>>>,
    /// A `--set data.*` was given: a resume may continue on other data on purpose.
    data_set: bool,
}

/// The checkpoint a `--resume` continues from, and the newer folders of the run to set
/// aside first (ones that failed to verify, or the continuation abandoned by resuming
/// from an older step).
struct Resume {
    from: PathBuf,
    aside: Vec<PathBuf>,
    label: &'static str,
    /// The checkpoint, opened (and verified) once for every rank of the process.
    ck: checkpoint::Checkpoint,
}

/// Where `--resume PATH` continues: PATH is a run directory (its newest checkpoint that
/// verifies; newer ones that do not are named and set aside) or a `step-N` folder of a
/// run's `checkpoints/` (that run, from step N; its newer checkpoints are set aside).
fn resume_target(path: &Path) -> Result<(PathBuf, Resume)> {
    let is_step_folder = path.join("manifest.json").is_file();
    if !is_step_folder {
        let found = checkpoint::open_newest_valid(path).with_context(|| format!("resuming {}", path.display()))?;
        for (dir, why) in &found.skipped {
            eprintln!("warning: skipping checkpoint {}: {why}", dir.display());
        }
        let from = found.checkpoint.dir().to_path_buf();
        let aside = found.skipped.into_iter().map(|(d, _)| d).collect();
        return Ok((path.to_path_buf(), Resume { from, aside, label: "corrupt", ck: found.checkpoint }));
    }
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let run_dir = match (abs.parent(), abs.parent().and_then(Path::parent)) {
        (Some(ck), Some(run)) if ck.file_name().is_some_and(|n| n == "checkpoints") && run.join("config.toml").is_file() => run.to_path_buf(),
        _ => anyhow::bail!(
            "{} is a checkpoint folder outside a run directory: --resume takes a run directory or one of its checkpoints/step-N folders",
            path.display()
        ),
    };
    let ck = engine::open_checkpoint(path).with_context(|| format!("resuming {}", path.display()))?;
    let newer: Vec<PathBuf> = checkpoint::list_checkpoints(&run_dir)?.into_iter().filter(|(s, _)| *s > ck.step()).map(|(_, d)| d).collect();
    if !newer.is_empty() {
        println!(
            "continuing {} from step {}: its {} newer checkpoint(s) will be renamed abandoned-step-* (kept, never loaded)",
            run_dir.display(),
            ck.step(),
            newer.len()
        );
    }
    let from = ck.dir().to_path_buf();
    Ok((run_dir, Resume { from, aside: newer, label: "abandoned", ck }))
}

/// What a rank hands back at the end.
struct Outcome {
    val: Option<f64>,
    step: u64,
    memory: MemoryReport,
    /// The step it stopped at on a signal (None: it ran to `train.steps`).
    stopped: Option<u64>,
    /// Rank 0 only: whole parameters and the tokenizer, for the sample.
    sample: Option<(model::Gpt, Vec<Vec<f32>>, data::Meta)>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mpi = mpi_launched();
    if args.max_restarts > 0 || args.launcher.is_some() {
        if mpi {
            anyhow::bail!("--max-restarts/--launcher supervise from outside mpirun (every rank would supervise itself): run `hyperion train --max-restarts N --launcher \"mpirun -np P\" ...` instead");
        }
        return super::supervise::run(args);
    }
    if mpi && args.workers.is_some() {
        anyhow::bail!("--workers starts threads; under mpirun the ranks come from MPI (drop --workers)");
    }
    let mut sets = args.config.sets.clone();
    if let Some(w) = args.workers {
        if w == 0 {
            anyhow::bail!("--workers must be at least 1");
        }
        sets.push(format!("parallel.dp={w}"));
    }
    let hf = match &args.init_from {
        Some(dir) => Some(super::hf::read_dir(dir).with_context(|| format!("--init-from {}", dir.display()))?),
        None => None,
    };
    let (cfg, run_dir, resume) = match &args.resume {
        Some(dir) if restart_from_scratch(dir) => {
            // Killed before its first checkpoint: the run starts again in place.
            let saved = std::fs::read_to_string(dir.join("config.toml")).with_context(|| format!("reading {}/config.toml", dir.display()))?;
            let cfg = config::resolve_saved(&saved, &sets).with_context(|| format!("the config saved in {}", dir.display()))?;
            println!("{} has no checkpoint (it stopped before its first one): starting it again from step 0 with its saved config", dir.display());
            (cfg, dir.clone(), None)
        }
        Some(dir) => {
            let (run_dir, resume) = resume_target(dir)?;
            let saved = engine::saved_config(&resume.ck)?;
            let mut cfg = config::resolve_saved(&saved, &sets)?;
            let before = config::ResolvedConfig::from_toml_str(&saved)?;
            let batch_keys = ["train.batch_size", "train.grad_accum", "train.global_batch"];
            let batch_set = sets.iter().any(|s| batch_keys.iter().any(|k| s.starts_with(k)));
            if cfg.global_batch != before.global_batch && !batch_set {
                // A new number of ranks keeps the run's global batch: accumulation absorbs it.
                let per_pass = cfg.raw.train.batch_size * cfg.raw.parallel.dp;
                if before.global_batch % per_pass != 0 {
                    anyhow::bail!(
                        "the run's global batch is {} sequences; {} ranks x micro-batch {} cannot make it up by accumulation: set train.batch_size or train.grad_accum",
                        before.global_batch,
                        cfg.raw.parallel.dp,
                        cfg.raw.train.batch_size
                    );
                }
                sets.push(format!("train.grad_accum={}", before.global_batch / per_pass));
                cfg = config::resolve_saved(&saved, &sets)?;
                println!(
                    "keeping the global batch of {} sequences: {} ranks x micro-batch {} x accumulation {}",
                    cfg.global_batch, cfg.raw.parallel.dp, cfg.raw.train.batch_size, cfg.raw.train.grad_accum
                );
            }
            (cfg, run_dir, Some(resume))
        }
        None => {
            let mut cfg = config::resolve(args.config.preset.as_deref(), args.config.config.as_deref(), &sets)?;
            if let Some(hf) = &hf {
                cfg = with_hf_model(cfg, &hf.spec)?;
            }
            let run_dir = args.out.clone().unwrap_or_else(|| {
                PathBuf::from("runs").join(cfg.preset.clone().unwrap_or_else(|| "custom".into()))
            });
            refuse_existing_run(&run_dir)?;
            (cfg, run_dir, None)
        }
    };
    let mut cfg = cfg;
    // Relative data paths (as written, or as saved by a run that predates this) mean
    // the current directory; saved absolute, they keep meaning it from anywhere.
    cfg.anchor_data_paths(&std::env::current_dir().context("reading the current directory")?);
    for note in &cfg.notes.0 {
        eprintln!("note: {note}");
    }
    let fail_at = args.debug_fail.as_deref().map(parse_fail).transpose()?;
    let init = match &hf {
        Some(hf) => {
            refuse_other_tokenizer(&hf.dir, &cfg.raw.data)?;
            let spec = cfg.clone().with_vocab_size(hf.spec.vocab)?.model_spec()?;
            let buckets = hf.buckets(&spec, &model::Layout::new(&spec))?;
            println!("initialising from {} ({} tensors, {} parameters)", hf.dir.display(), hf.tensors.len(), spec.num_params());
            Some(buckets)
        }
        None => None,
    };
    let plan = Plan {
        init,
        cfg,
        run_dir,
        resume,
        sample_tokens: args.sample_tokens,
        pause: Duration::from_millis(args.debug_checkpoint_pause_ms),
        fail_at,
        hang_at: args.debug_hang.as_deref().map(parse_fail).transpose()?,
        nan_steps: args.debug_nan_steps.clone(),
        mem_check: (!args.allow_oversubscribe).then_some(args.debug_mem_available),
        data_set: sets.iter().any(|s| s.trim_start().starts_with("data.")),
    };
    let timeout = Duration::from_secs(args.comm_timeout);
    if mpi {
        return run_mpi(plan, timeout);
    }
    let ranks = plan.cfg.world_size();
    let _lock = prepare_run_dir(&plan, true)?;
    check_memory(&plan, plan.cfg.raw.parallel.dp)?;
    super::stop::install()?;
    let outcomes = comm::run_local(ranks, timeout, |c| {
        let threads = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / ranks).max(1);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| anyhow::anyhow!("{e}"))?;
        pool.install(|| train_rank(&plan, &c))
    })
    .map_err(|e| {
        let msg = format!("training failed: {e}");
        if DIVERGED.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::Error::new(super::supervise::Diverged(msg))
        } else {
            anyhow::anyhow!(msg)
        }
    })?;
    report(&plan, &outcomes)?;
    stopped(&plan, &outcomes[0])
}

/// Once per process, when a rank of a multi-rank job fails: dumps the flight
/// recorders (this process's ranks) to `RUN_DIR/flight-rankNNNNN.jsonl` and prints the
/// diagnosis over every rank's records found there (under MPI the other processes
/// dump theirs as they fail; a second is given for that). A threaded job whose other
/// ranks do not end (one hung outside the communicator) is then ended after a grace.
fn flight_report(run_dir: &Path, ranks: usize) {
    flight_report_after(run_dir, ranks, Duration::from_secs(1));
}

/// [`flight_report`], giving the other processes `wait` to dump theirs. Under MPI only
/// the lowest rank that dumped prints the diagnosis.
fn flight_report_after(run_dir: &Path, ranks: usize, wait: Duration) {
    use comm::flight;
    static ONCE: std::sync::Once = std::sync::Once::new();
    let file = |r: usize| run_dir.join(format!("flight-rank{r:05}.jsonl"));
    let mpi = mpi_launched();
    let mine = flight::snapshot_all();
    let lowest_mine = mine.iter().filter_map(|recs| recs.first().map(|x| x.rank)).min();
    for recs in &mine {
        if let Some(r) = recs.first().map(|x| x.rank) {
            if let Err(e) = flight::dump(&file(r), recs) {
                eprintln!("warning: could not write {}: {e}", file(r).display());
            }
        }
    }
    ONCE.call_once(|| {
        let records = if mpi {
            std::thread::sleep(wait);
            if lowest_mine.is_some_and(|me| (0..me).any(|r| file(r).is_file())) {
                return; // a lower rank prints it
            }
            (0..ranks).filter_map(|r| flight::load(&file(r)).ok()).collect()
        } else {
            mine
        };
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        eprintln!(
            "flight recorder: the last collectives of each rank (all in {}/flight-rank*.jsonl):\n{}",
            run_dir.display(),
            flight::diagnose(&records, ranks, at)
        );
        if !mpi {
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(5));
                eprintln!("error: a rank is still running 5 s after the job failed (hung outside the communicator, see above); exiting");
                std::process::exit(1);
            });
        }
    });
}

/// Refuses, before anything is allocated, a run whose ranks in this process would
/// allocate more than the machine has available, naming the largest term and the keys
/// that drive it.
fn check_memory(plan: &Plan, ranks_here: usize) -> Result<()> {
    let Some(given) = plan.mem_check else { return Ok(()) };
    let Some(available) = given.or_else(engine::available_memory_bytes) else { return Ok(()) };
    let vocab = common::open_data(&plan.cfg, false)?.meta.vocab_size;
    let terms = engine::planned_rank_memory(&plan.cfg, vocab)?;
    let per_rank: f64 = terms.iter().map(|t| t.bytes).sum();
    let need = per_rank * ranks_here as f64;
    if need <= available as f64 {
        return Ok(());
    }
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let largest = terms.iter().max_by(|a, b| a.bytes.total_cmp(&b.bytes)).context("memory terms")?;
    let list: Vec<String> = terms.iter().map(|t| format!("{} {:.2} GiB", t.what, gib(t.bytes))).collect();
    anyhow::bail!(
        "this run would allocate about {:.2} GiB ({ranks_here} rank(s) in this process x {:.2} GiB: {}) but {:.2} GiB of memory is available; \
         the largest term is {} ({:.2} GiB per rank), driven by {}: make it smaller (or shard it with parallel.zero across more machines), \
         or pass --allow-oversubscribe to start anyway",
        gib(need),
        gib(per_rank),
        list.join(", "),
        gib(available as f64),
        largest.what,
        gib(largest.bytes),
        largest.keys
    )
}

/// The `Stopped` error (exit code 75) when the run stopped on a signal.
fn stopped(plan: &Plan, outcome: &Outcome) -> Result<()> {
    match outcome.stopped {
        Some(step) => Err(super::stop::Stopped { step, run_dir: plan.run_dir.clone() }.into()),
        None => Ok(()),
    }
}

/// A run directory that a `train` created (its `config.toml` is written before any step)
/// but that holds no committed checkpoint.
fn restart_from_scratch(dir: &Path) -> bool {
    dir.join("config.toml").is_file() && matches!(checkpoint::list_checkpoints(dir), Ok(v) if v.is_empty())
}

/// The run config with its `[model]` section taken from a Hugging Face model. Llama
/// keeps the run's `block_size` (RoPE has no table to match; at most the model's
/// `max_position_embeddings`); GPT-2 trains at its `n_positions`, the rows of `wpe`.
fn with_hf_model(cfg: ResolvedConfig, spec: &model::ModelSpec) -> Result<ResolvedConfig> {
    let mut raw = cfg.raw.clone();
    let block = raw.model.block_size;
    raw.model = config::presets::model_config(spec, false);
    if spec.family == model::spec::Family::Llama {
        if block > spec.seq {
            anyhow::bail!("model.block_size = {block} is longer than the model's max_position_embeddings = {}", spec.seq);
        }
        raw.model.block_size = block;
    }
    let mut out = ResolvedConfig::new(raw)?;
    out.preset = cfg.preset;
    Ok(out)
}

/// A Hugging Face folder that carries a `tokenizer.json` must have been
/// trained on ids of that same file: refuse data prepared with another one.
fn refuse_other_tokenizer(hf_dir: &Path, d: &config::DataConfig) -> Result<()> {
    let theirs = hf_dir.join(data::TOKENIZER_JSON);
    let ours = match (&d.tokenizer_file, d.tokenizer) {
        (Some(f), config::TokenizerKind::Hf) => data::tokenizer_file(f),
        _ => return Ok(()),
    };
    if !theirs.is_file() || !ours.is_file() {
        return Ok(());
    }
    let (a, b) = (std::fs::read(&theirs)?, std::fs::read(&ours)?);
    if a != b {
        anyhow::bail!(
            "{} and the data's tokenizer {} differ: the model's token ids would not mean the data's; prepare the data with the model's tokenizer.json",
            theirs.display(),
            ours.display()
        );
    }
    Ok(())
}

fn parse_fail(s: &str) -> Result<(usize, u64)> {
    let (r, st) = s.split_once(':').context("--debug-fail/--debug-hang take RANK:STEP")?;
    Ok((r.parse().context("the rank of RANK:STEP")?, st.parse().context("the step of RANK:STEP")?))
}

/// Creates the run directory, takes its lock (one writer per run), removes unfinished
/// checkpoint folders (only under the lock: they may be a live run's), and prepares the
/// data on first use (once, before any rank starts). The lock lives as long as the guard.
fn prepare_run_dir(plan: &Plan, root: bool) -> Result<Option<super::lock::RunLock>> {
    if !root {
        return Ok(None);
    }
    let run_dir = &plan.run_dir;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let lock = super::lock::RunLock::acquire(run_dir)?;
    for e in std::fs::read_dir(run_dir).with_context(|| format!("reading {}", run_dir.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("flight-rank") && name.ends_with(".jsonl") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let removed = checkpoint::clean_stale(run_dir)?;
    if removed > 0 {
        eprintln!("removed {removed} unfinished checkpoint folder(s) left by an interrupted write");
    }
    if let Some(r) = plan.resume.as_ref().filter(|r| !r.aside.is_empty()) {
        for moved in checkpoint::set_aside(run_dir, &r.aside, r.label, &r.from)? {
            eprintln!("set aside {}", moved.display());
        }
    }
    common::open_data(&plan.cfg, plan.cfg.raw.log.progress)?;
    println!("# resolved config\n{}", plan.cfg.to_toml());
    let cfg_path = run_dir.join("config.toml");
    std::fs::write(&cfg_path, plan.cfg.to_toml()).with_context(|| format!("writing {}", cfg_path.display()))?;
    Ok(Some(lock))
}

/// One rank's whole run (SPMD: every rank calls this with its communicator).
fn train_rank(plan: &Plan, world: &dyn Communicator) -> Result<Outcome> {
    let mut rank = Rank::for_config(world, &plan.cfg)?;
    if mpi_launched() {
        // One process per GPU: the launcher's node-local rank picks it.
        if let Some(local) = node_local_rank() {
            rank.gpu_index = local;
        }
    }
    let root = world.rank() == 0;
    engine::alloc::reset_thread_peak();
    // Prepared (once, by the root) in prepare_run_dir: this only opens it.
    let data = common::open_data(&plan.cfg, false)?;
    let data_meta = data.meta.clone();
    let mut trainer = if plan.resume.is_some() || plan.init.is_some() {
        Trainer::with_rank_uninit(plan.cfg.clone(), data, &plan.run_dir, rank)?
    } else {
        Trainer::with_rank(plan.cfg.clone(), data, &plan.run_dir, rank)?
    };
    trainer.stop = Some(&super::stop::STOP);
    trainer.poison_steps = plan.nan_steps.clone();
    if !plan.pause.is_zero() {
        let pause = plan.pause;
        trainer.async_file_hook = Some(std::sync::Arc::new(move |_: &Path| std::thread::sleep(pause)));
    }
    if let Some(init) = &plan.init {
        trainer.load_params(init)?;
    }
    if let Some(resume) = &plan.resume {
        let ck = &resume.ck;
        let saved = engine::saved_data_meta(ck)?;
        if let Some(why) = saved.tokenizer_differs(&data_meta) {
            anyhow::bail!(
                "{} was trained on data tokenized differently from {}: {why}; resume with the run's own data",
                plan.run_dir.display(),
                plan.cfg.raw.data.dir.display()
            );
        }
        if let Some(why) = saved.data_differs(&data_meta) {
            if plan.data_set {
                println!("note: continuing on other data than the checkpoint's ({why})");
            } else {
                anyhow::bail!(
                    "{} holds other tokens than the data {} was trained on ({why}); set data.dir (or data.sources) to continue on other data on purpose",
                    common::data_location(&plan.cfg.raw.data),
                    plan.run_dir.display()
                );
            }
        }
        trainer.restore(ck)?;
        if root {
            let layout = &ck.meta()["layout"];
            println!(
                "resumed {} at step {} ({} tokens seen; written by dp={} tp={} pp={} zero={}, now dp={} tp={} pp={} zero={})",
                ck.dir().display(),
                trainer.step,
                trainer.tokens_seen,
                layout["dp"],
                layout.get("tp").and_then(|v| v.as_u64()).unwrap_or(1),
                layout.get("pp").and_then(|v| v.as_u64()).unwrap_or(1),
                layout["zero"],
                trainer.rank.dp,
                trainer.rank.tp,
                trainer.rank.pp,
                trainer.cfg.raw.parallel.zero
            );
        }
    }
    if root && trainer.step >= trainer.cfg.raw.train.steps {
        println!(
            "the run is already at step {} (train.steps = {}): nothing to train; continue it with --set train.steps=N",
            trainer.step, trainer.cfg.raw.train.steps
        );
    }
    let mut bar = Bar::new(root && trainer.cfg.raw.log.progress);
    let mut quiet = FailAt { inner: Quiet, pause: plan.pause, fail: None, hang: plan.hang_at, rank: trainer.rank.world_rank() };
    let result = if root {
        let mut obs = FailAt { inner: &mut bar, pause: plan.pause, fail: plan.fail_at, hang: plan.hang_at, rank: 0 };
        trainer.run(&mut obs)
    } else {
        quiet.fail = plan.fail_at;
        trainer.run(&mut quiet)
    };
    if let Err(engine::EngineError::Diverged { .. }) = &result {
        DIVERGED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    if result.is_err() && trainer.rank.world.size() > 1 {
        flight_report(&plan.run_dir, trainer.rank.world.size());
    }
    let val = result?;
    bar.pb.finish_and_clear();
    // A stopped run leaves at once (a preempted job has seconds): no sample.
    let stopped = trainer.stopped_at;
    let want_sample = plan.sample_tokens > 0 && stopped.is_none();
    // Tensor-parallel ranks hold parts of the model: the root samples from the whole
    // model as the final checkpoint (written by every rank above) holds it.
    let params = if want_sample && trainer.rank.tp == 1 { Some(trainer.full_params()?) } else { None };
    let memory = trainer.memory();
    let sample = match (root && want_sample, params) {
        (true, p) => {
            let meta = trainer.data.as_ref().map(|d| d.meta.clone()).context("training data is open")?;
            let gpt = model::Gpt::new(trainer.global.clone());
            let p = match p {
                Some(p) => p,
                None => {
                    let mut whole = gpt.zeros();
                    engine::load_model(&gpt, &engine::open_checkpoint(&plan.run_dir)?, &mut whole)?;
                    whole
                }
            };
            Some((gpt, p, meta))
        }
        _ => None,
    };
    Ok(Outcome { val, step: trainer.step, memory, stopped, sample })
}

fn report(plan: &Plan, outcomes: &[Outcome]) -> Result<()> {
    let first = &outcomes[0];
    match first.val {
        _ if first.stopped.is_some() => println!("stopped: step {} (on a signal; checkpoint written)", first.step),
        Some(v) => println!("done: step {}, validation loss {v:.4} (perplexity {:.2})", first.step, v.exp()),
        None => println!("done: step {}", first.step),
    }
    print_memory(outcomes);
    let png = plan.run_dir.join("loss.png");
    match super::plot::plot_run(&plan.run_dir, &png) {
        Ok(()) => println!("loss curves: {}", png.display()),
        Err(e) => eprintln!("warning: could not plot loss curves: {e:#}"),
    }
    println!("checkpoint: {}", plan.run_dir.join("checkpoints").display());
    if let Some((gpt, params, meta)) = &first.sample {
        let tok = data::Tokenizer::from_meta(meta)?;
        let prompt = tok.encode("\n")?;
        let opts = engine::sample::SampleOptions { tokens: plan.sample_tokens, temperature: 0.8, top_k: 40, seed: 1 };
        let out = engine::sample::generate(gpt, params, &prompt, &opts);
        println!("--- sample (temperature 0.8, top-k 40) ---\n{}\n---", tok.decode(&out));
    }
    Ok(())
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn print_memory(outcomes: &[Outcome]) {
    println!("memory per rank (MiB): model state = params + grads + Adam moments; measured by the allocator where shown");
    println!("{:>4} {:>9} {:>9} {:>9} {:>11} {:>9} {:>12} {:>12} {:>11}", "rank", "params", "grads", "adam", "activations", "buffers", "model state", "ZeRO formula", "measured");
    for (r, o) in outcomes.iter().enumerate() {
        let m = &o.memory;
        let measured = m.measured.map(|x| format!("{:.2}", mib(x.model_state() as f64))).unwrap_or_else(|| "-".into());
        println!(
            "{r:>4} {:>9.2} {:>9.2} {:>9.2} {:>11.2} {:>9.2} {:>12.2} {:>12.2} {:>11}",
            mib(m.params as f64),
            mib(m.grads as f64),
            mib(m.optimizer as f64),
            mib(m.activations as f64),
            mib(m.buffers as f64),
            mib(m.model_state() as f64),
            mib(m.expected_model_state),
            measured
        );
    }
    for (r, o) in outcomes.iter().enumerate() {
        if let Some(d) = &o.memory.device {
            let what = &d.counted;
            println!(
                "rank {r} on {} ({}): device memory peak {:.2} MiB (now {:.2}); counted ({what}) {:.2} MiB",
                d.device,
                d.dtype,
                mib(d.peak as f64),
                mib(d.now as f64),
                mib(d.expected)
            );
        }
    }
    if let Some(rss) = engine::peak_rss_bytes() {
        let total: f64 = outcomes.iter().map(|o| o.memory.expected_total).sum();
        println!("peak RSS of the process {:.1} MiB; analytical total (model state + activations, all ranks) {:.1} MiB", mib(rss as f64), mib(total));
    }
}

/// A fresh run never writes over an existing one.
fn refuse_existing_run(run_dir: &Path) -> Result<()> {
    if let Ok(ck) = engine::open_checkpoint(run_dir) {
        return Err(engine::EngineError::RunExists { dir: run_dir.to_path_buf(), step: ck.step() }.into());
    }
    if run_dir.join("checkpoints").is_dir() || run_dir.join("metrics.jsonl").is_file() {
        anyhow::bail!(
            "run directory {} already holds files of another run; choose another --out, or pass --resume {}",
            run_dir.display(),
            run_dir.display()
        );
    }
    Ok(())
}

/// This process's rank among the processes of its machine, as MPI launchers and Slurm
/// export it.
fn node_local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.trim().parse().ok()))
}

/// Whether this process was started by an MPI launcher (read once, here at the edge).
fn mpi_launched() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].iter().any(|v| std::env::var_os(v).is_some())
}

#[cfg(feature = "mpi")]
fn run_mpi(mut plan: Plan, timeout: Duration) -> Result<()> {
    let world = comm::mpi::MpiComm::world(&comm::mpi::MpiOptions { timeout, ..Default::default() })?;
    let model_ranks = plan.cfg.raw.parallel.tp * plan.cfg.raw.parallel.pp;
    if plan.cfg.raw.parallel.dp == 1 && world.size() > model_ranks && world.size().is_multiple_of(model_ranks) {
        // Left at its default: the launcher decides.
        let mut raw = plan.cfg.raw.clone();
        raw.parallel.dp = world.size() / model_ranks;
        raw.train.global_batch = None;
        plan.cfg = config::ResolvedConfig::new(raw)?;
    }
    let plan = &plan;
    if world.size() != plan.cfg.world_size() {
        let p = &plan.cfg.raw.parallel;
        anyhow::bail!(
            "mpirun started {} ranks but parallel.dp x tp x pp = {} x {} x {} = {}: they must be equal",
            world.size(),
            p.dp,
            p.tp,
            p.pp,
            plan.cfg.world_size()
        );
    }
    let root = world.rank() == 0;
    let prepared = prepare_run_dir(plan, root);
    // Nobody starts before rank 0 has prepared the data (or failed to).
    let mut ok = [u8::from(prepared.is_ok())];
    world.broadcast((&mut ok[..]).into(), 0)?;
    let _lock = prepared?;
    if ok[0] == 0 {
        anyhow::bail!("rank 0 failed to prepare the run");
    }
    let local = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1);
    // The ranks of this machine share its memory; one that refuses ends the job.
    if let Err(e) = check_memory(plan, local) {
        world.abort(&format!("rank {}: {e:#}", world.rank()));
    }
    let threads = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / local.max(1)).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    // After MPI_Init, so that these handlers are the ones in place.
    super::stop::install()?;
    // A collective that times out aborts the job from the MPI watchdog: report first.
    let (run_dir, ranks) = (plan.run_dir.clone(), world.size());
    comm::flight::on_failure(move || flight_report(&run_dir, ranks));
    watch_blocked_stop(plan.run_dir.clone(), ranks);
    // A panicking rank must end the job: unwinding would reach MPI_Finalize, which
    // waits for the other ranks while they wait for it in a collective.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.install(|| train_rank(plan, &world))));
    let outcome = match outcome {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => world.abort(&format!("rank {}: {e:#}", world.rank())),
        Err(_) => world.abort(&format!("rank {} panicked (see the message above)", world.rank())),
    };
    if root {
        report(plan, std::slice::from_ref(&outcome))?;
    }
    stopped(plan, &outcome)
}

/// A stop signal that finds this rank blocked in a collective: the launcher's SIGTERM
/// after it lost a node or a rank (mpirun's follows within a second by SIGKILL), so the
/// stop cannot finish. The rank dumps its flight records at once and the diagnosis
/// names the ranks that left none: the lost ones.
#[cfg(feature = "mpi")]
fn watch_blocked_stop(run_dir: PathBuf, ranks: usize) {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        while !super::stop::STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let blocked = comm::flight::snapshot_all().iter().filter_map(|recs| recs.last()).find(|r| r.end.is_none() && now - r.start > 0.2).cloned();
        if let Some(r) = blocked {
            eprintln!(
                "rank {}: a stop was asked for while this rank has waited {:.1} s in collective #{} {} on '{}': a rank may be lost",
                r.rank,
                now - r.start,
                r.seq,
                r.op,
                r.group
            );
            flight_report_after(&run_dir, ranks, Duration::from_millis(300));
        }
    });
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_plan: Plan, _timeout: Duration) -> Result<()> {
    anyhow::bail!("started by an MPI launcher, but this hyperion was built without MPI: rebuild with `cargo build --release --features mpi`")
}

/// Wraps an observer: pauses after checkpoint files (testing aid) and panics at a chosen
/// step on a chosen rank (failure-handling tests).
struct FailAt<O> {
    inner: O,
    pause: Duration,
    fail: Option<(usize, u64)>,
    hang: Option<(usize, u64)>,
    rank: usize,
}

impl<O: Observer> Observer for FailAt<O> {
    fn started(&mut self, info: &RunInfo) {
        self.inner.started(info)
    }
    fn step(&mut self, m: &StepMetrics) {
        if self.fail == Some((self.rank, m.step)) {
            panic!("injected failure on rank {} at step {} (--debug-fail)", self.rank, m.step);
        }
        if self.hang == Some((self.rank, m.step)) {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        self.inner.step(m)
    }
    fn checkpoint_file(&mut self, path: &Path) {
        if !self.pause.is_zero() {
            std::thread::sleep(self.pause);
        }
        self.inner.checkpoint_file(path)
    }
    fn checkpoint(&mut self, dir: &Path, step: u64) {
        self.inner.checkpoint(dir, step)
    }
}

struct Bar {
    pb: ProgressBar,
}

impl Bar {
    fn new(show: bool) -> Bar {
        let pb = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
        pb.set_style(
            ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        Bar { pb }
    }
}

impl Observer for Bar {
    fn started(&mut self, info: &RunInfo) {
        self.pb.set_length(info.total_steps);
        self.pb.set_position(info.start_step);
        self.pb.reset_eta();
        let peak = if info.peak_measured { "measured" } else { "configured" };
        self.pb.println(format!(
            "model: {:.2}M parameters, {} tokens/step, {:.2} MFLOP/token; peak {:.1} GFLOP/s per rank ({peak})",
            info.params as f64 / 1e6,
            info.tokens_per_step,
            info.flops_per_token / 1e6,
            info.peak_flops / 1e9
        ));
    }

    fn step(&mut self, m: &StepMetrics) {
        self.pb.set_position(m.step);
        self.pb.set_message(format!(
            "loss {:.4} | {:.0} tok/s | MFU {:.1}% | lr {:.2e}",
            m.train_loss,
            m.tokens_per_s,
            100.0 * m.mfu,
            m.lr
        ));
        if let Some(v) = m.val_loss {
            self.pb.println(format!("step {:>6}: train loss {:.4}, val loss {:.4}", m.step, m.train_loss, v));
        }
        if !(m.train_loss.is_finite() && m.grad_norm.is_finite()) {
            self.pb.println(format!(
                "step {:>6}: loss {} / gradient norm {}: update skipped ({} skipped so far)",
                m.step, m.train_loss, m.grad_norm, m.skipped_steps
            ));
        }
        if let Some(z) = m.loss_spike_z {
            self.pb.println(format!("step {:>6}: loss spike: {:.4} is {z:.1} standard deviations above the recent mean", m.step, m.train_loss));
        }
    }

    fn checkpoint(&mut self, dir: &Path, step: u64) {
        self.pb.println(format!("step {step:>6}: checkpoint {}", dir.display()));
    }
}
