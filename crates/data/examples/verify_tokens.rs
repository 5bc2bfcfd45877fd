//! The cost of the token-id check run before training (`Dataset::verify_tokens`):
//! `cargo run --release -p hyperion-data --example verify_tokens -- DATA_DIR [ROUNDS]`.
//! Prints the token bytes checked, the median time over rounds and GB/s. The first
//! round reads from the page cache only if the files were read recently.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: verify_tokens DATA_DIR [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    let data = data::Dataset::open(std::path::Path::new(&dir)).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let bytes: u64 = std::fs::read_dir(&dir)
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut secs = Vec::new();
    for r in 0..rounds {
        let t0 = Instant::now();
        data.verify_tokens().expect("tokens are valid");
        let s = t0.elapsed().as_secs_f64();
        println!("round {}: {s:.3} s", r + 1);
        secs.push(s);
    }
    secs.sort_by(f64::total_cmp);
    let med = secs[secs.len() / 2];
    println!("{bytes} token bytes, median {med:.3} s over {rounds} rounds: {:.2} GB/s, {:.3} s per GB", bytes as f64 / med / 1e9, med / (bytes as f64 / 1e9));
}
