//! Print the validation table for a CSV (default: the shipped published runs).
//! `cargo run -p hyperion-planner --example validate [FILE.csv]`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/data/published_runs.csv").to_string());
    let text = std::fs::read_to_string(&path)?;
    let (rows, summary) = planner::validate::validate(&text, &path, &planner::Calibration::default())?;
    for r in &rows {
        match (&r.skipped, r.predicted, r.published, r.error_pct) {
            (Some(why), ..) => println!("{:<14} skipped: {why}", r.id),
            (None, Some(p), Some(q), Some(e)) => println!("{:<14} {:<30} pred {:>10.1} pub {:>10.1} err {:>+6.1}%  {}", r.id, r.metric.as_deref().unwrap_or(""), p, q, e, r.layout.as_deref().unwrap_or("")),
            _ => {}
        }
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
