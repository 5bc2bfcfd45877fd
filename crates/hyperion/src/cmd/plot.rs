//! `hyperion plot RUN_DIR`: training and validation loss against step, as a PNG.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::chart;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// The run directory (holds metrics.jsonl).
    pub run_dir: PathBuf,
    /// Output PNG. Default: RUN_DIR/loss.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: PlotArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.run_dir.join("loss.png"));
    plot_run(&args.run_dir, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Draws `RUN_DIR/metrics.jsonl` into `out`.
pub fn plot_run(run_dir: &Path, out: &Path) -> Result<()> {
    let path = run_dir.join("metrics.jsonl");
    if !path.is_file() {
        anyhow::bail!("{} not found: is {} a run directory?", path.display(), run_dir.display());
    }
    let recs = engine::metrics::read_records(&path)?;
    if recs.is_empty() {
        anyhow::bail!("{} holds no metrics yet", path.display());
    }
    let train: Vec<(f64, f64)> = recs.iter().map(|r| (r.step as f64, r.train_loss)).filter(|p| p.1.is_finite()).collect();
    let val: Vec<(f64, f64)> = recs.iter().filter_map(|r| r.val_loss.map(|v| (r.step as f64, v))).collect();
    let (x_max, mut y_min, mut y_max) = (
        train.iter().map(|p| p.0).fold(1.0, f64::max),
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(_, y) in train.iter().chain(&val) {
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    chart::register_font();
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(format!("loss: {}", run_dir.display()), ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))?;
        c.configure_mesh().x_desc("step").y_desc("loss (nats/token)").draw()?;
        c.draw_series(LineSeries::new(train.clone(), &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !val.is_empty() {
            c.draw_series(LineSeries::new(val.clone(), RED.stroke_width(2)))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            c.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        }
        c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("drawing {}", out.display()))
}
