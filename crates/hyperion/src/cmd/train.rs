//! `hyperion train`: resolve the config, prepare data on first use, train with a progress
//! bar, checkpoint, plot the loss curves and print a sample.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use engine::{Observer, RunInfo, StepMetrics, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{self, ConfigArgs};

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Run directory (checkpoints, metrics.jsonl, loss.png). Default: runs/<preset>.
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its latest checkpoint (its saved config; `--set` may override).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "preset", "config"])]
    pub resume: Option<PathBuf>,
    /// Characters/tokens of sample text printed at the end (0 = none).
    #[arg(long, default_value_t = 300)]
    pub sample_tokens: usize,
    /// Testing aid: pause this many milliseconds after each checkpoint file is written
    /// (makes a kill during a checkpoint write reproducible).
    #[arg(long, hide = true, default_value_t = 0)]
    pub debug_checkpoint_pause_ms: u64,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (cfg, run_dir, resume_from) = match &args.resume {
        Some(dir) => {
            let ck = engine::open_checkpoint(dir).with_context(|| format!("resuming {}", dir.display()))?;
            let cfg = config::resolve_saved(&engine::saved_config(&ck)?, &args.config.sets)?;
            (cfg, dir.clone(), Some(ck))
        }
        None => {
            let cfg = args.config.resolve()?;
            let run_dir = args.out.clone().unwrap_or_else(|| {
                PathBuf::from("runs").join(cfg.preset.clone().unwrap_or_else(|| "custom".into()))
            });
            refuse_existing_run(&run_dir)?;
            (cfg, run_dir, None)
        }
    };
    if cfg.raw.parallel.dp > 1 {
        anyhow::bail!("parallel.dp = {}: data-parallel training is not available yet; use parallel.dp = 1", cfg.raw.parallel.dp);
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let removed = checkpoint::clean_stale(&run_dir)?;
    if removed > 0 {
        eprintln!("removed {removed} unfinished checkpoint folder(s) left by an interrupted write");
    }
    let data = common::open_data(&cfg, cfg.raw.log.progress)?;
    let mut trainer = Trainer::new(cfg, data, &run_dir)?;
    println!("# resolved config\n{}", trainer.cfg.to_toml());
    if let Some(ck) = &resume_from {
        trainer.restore(ck)?;
        println!("resumed {} at step {} ({} tokens seen)", ck.dir().display(), trainer.step, trainer.tokens_seen);
    }
    let cfg_path = run_dir.join("config.toml");
    std::fs::write(&cfg_path, trainer.cfg.to_toml()).with_context(|| format!("writing {}", cfg_path.display()))?;

    let mut bar = Bar::new(trainer.cfg.raw.log.progress, args.debug_checkpoint_pause_ms);
    let val = trainer.run(&mut bar)?;
    bar.pb.finish_and_clear();
    let step = trainer.step;
    match val {
        Some(v) => println!("done: step {step}, validation loss {v:.4} (perplexity {:.2})", v.exp()),
        None => println!("done: step {step}"),
    }
    if let Some(rss) = engine::peak_rss_bytes() {
        let m = trainer.memory();
        println!(
            "memory: peak RSS {:.1} MiB; params {:.1} + grads {:.1} + Adam {:.1} + activations {:.1} = {:.1} MiB (formula {:.1} MiB)",
            mib(rss as usize), mib(m.params), mib(m.grads), mib(m.optimizer), mib(m.activations), mib(m.total()), m.expected_total / 1048576.0
        );
    }
    let png = run_dir.join("loss.png");
    match super::plot::plot_run(&run_dir, &png) {
        Ok(()) => println!("loss curves: {}", png.display()),
        Err(e) => eprintln!("warning: could not plot loss curves: {e:#}"),
    }
    println!("checkpoint: {}", run_dir.join("checkpoints").display());
    if args.sample_tokens > 0 {
        let meta = &trainer.data.as_ref().expect("training data is open").meta;
        let tok = data::Tokenizer::from_meta(meta)?;
        let prompt = tok.encode("\n")?;
        let opts = engine::sample::SampleOptions { tokens: args.sample_tokens, temperature: 0.8, top_k: 40, seed: 1 };
        let out = engine::sample::generate(&trainer.gpt, &trainer.params, &prompt, &opts);
        println!("--- sample (temperature 0.8, top-k 40) ---\n{}\n---", tok.decode(&out));
    }
    Ok(())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
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

struct Bar {
    pb: ProgressBar,
    pause: Duration,
}

impl Bar {
    fn new(show: bool, pause_ms: u64) -> Bar {
        let pb = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
        pb.set_style(
            ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        Bar { pb, pause: Duration::from_millis(pause_ms) }
    }
}

impl Observer for Bar {
    fn started(&mut self, info: &RunInfo) {
        self.pb.set_length(info.total_steps);
        self.pb.set_position(info.start_step);
        self.pb.reset_eta();
        let peak = if info.peak_measured { "measured" } else { "configured" };
        self.pb.println(format!(
            "model: {:.2}M parameters, {} tokens/step, {:.2} MFLOP/token; peak {:.1} GFLOP/s ({peak})",
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
    }

    fn checkpoint_file(&mut self, _path: &Path) {
        if !self.pause.is_zero() {
            std::thread::sleep(self.pause);
        }
    }

    fn checkpoint(&mut self, dir: &Path, step: u64) {
        self.pb.println(format!("step {step:>6}: checkpoint {}", dir.display()));
    }
}
