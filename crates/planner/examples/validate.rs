//! Print the validation table for a CSV (default: the shipped published runs).
//! `cargo run -p hyperion-planner --example validate [FILE.csv]`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/published_runs.csv").to_string()
    });
    let text = std::fs::read_to_string(&path)?;
    // CAL="dp_overlap=0.5,net_eff=0.7" overrides calibration constants (exploration only).
    let mut cal = planner::Calibration::default();
    let mut v = serde_json::to_value(cal)?;
    for kv in std::env::var("CAL")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (k, x) = kv.split_once('=').ok_or("CAL wants k=v")?;
        v[k] = serde_json::json!(x.parse::<f64>()?);
    }
    cal = serde_json::from_value(v)?;
    // FIT=1 re-chooses the fitted constants on every usable row (what `--cv` does per
    // fold without the held-out source) and validates with them.
    if std::env::var("FIT").is_ok() {
        cal = planner::cv::fit(&text, &path, &cal, &|_| true)?;
        eprintln!("fitted on every row: {}", serde_json::to_string(&cal)?);
    }
    let (rows, summary) = planner::validate::validate(&text, &path, &cal)?;
    for r in &rows {
        match (&r.skipped, r.predicted, r.published, r.error_pct) {
            (Some(why), ..) => println!("{:<14} skipped: {why}", r.id),
            (None, Some(p), Some(q), Some(e)) => {
                println!(
                    "{:<14} {:<12.12} {:>9.1} {:>9.1} {:>+6.1}%  {}",
                    r.id,
                    r.metric.as_deref().unwrap_or(""),
                    p,
                    q,
                    e,
                    r.layout.as_deref().unwrap_or("")
                );
                if std::env::var("DETAIL").is_ok() {
                    if let Some(d) = &r.detail {
                        let st = &d.step;
                        println!("    total {:.3} compute {:.3} (rec {:.3}) tp {:.3} pp {:.3} bubble {:.3} dp {:.3} opt {:.3} mem {:.1} GB", st.total, st.compute, st.recompute, st.tp_comm, st.pp_comm, st.bubble, st.dp_comm, st.optimizer, d.memory.total / 1e9);
                    }
                }
            }
            _ => {}
        }
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
