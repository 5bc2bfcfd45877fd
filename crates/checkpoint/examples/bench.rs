//! Save/load throughput of a checkpoint of one large tensor split into 4 shards.
//!
//! ```text
//! cargo run --release -p hyperion-checkpoint --example bench -- [MiB=256] [DIR=system temp]
//! ```
//! Prints MB/s for: write_file (convert + hash + write + fsync), commit, open (size +
//! SHA-256 of every shard), read (whole tensor) and read_range (64 random 1 MiB ranges).

use std::time::Instant;

use checkpoint::{begin, commit, open, TensorSlice};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let base = match args.get(2) {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let n = mib * (1 << 20) / 4;
    let data: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
    let shape = [n];
    let mb = (n * 4) as f64 / 1e6;

    let t = Instant::now();
    let pending = begin(base.path(), 1)?;
    let per = n.div_ceil(4);
    let mut records = Vec::new();
    for (rank, chunk) in data.chunks(per).enumerate() {
        let slice = TensorSlice {
            name: "w",
            global_shape: &shape,
            start: rank * per,
            data: chunk,
        };
        records.push(pending.write_file(&format!("rank-{rank}.safetensors"), &[slice])?);
    }
    let write_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    commit(pending, serde_json::json!({}), records, 1)?;
    let commit_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let ckpt = open(base.path())?;
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = ckpt.read("w")?;
    let read_s = t.elapsed().as_secs_f64();
    assert!(back
        .iter()
        .zip(&data)
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    let range = (1 << 20) / 4;
    let mut out = vec![0f32; range];
    let t = Instant::now();
    let mut x = 12345u64;
    for _ in 0..64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = (x >> 33) as usize % (n - range);
        ckpt.read_range("w", start, start + range, &mut out)?;
    }
    let range_s = t.elapsed().as_secs_f64();

    println!(
        "checkpoint of {mb:.0} MB in 4 shards under {}",
        base.path().display()
    );
    println!("write_file x4 : {write_s:7.3} s  {:8.0} MB/s", mb / write_s);
    println!("commit        : {commit_s:7.3} s");
    println!("open (verify) : {open_s:7.3} s  {:8.0} MB/s", mb / open_s);
    println!("read whole    : {read_s:7.3} s  {:8.0} MB/s", mb / read_s);
    println!(
        "read_range    : {range_s:7.3} s  {:8.0} MB/s (64 x 1 MiB)",
        64.0 * 1.048576 / range_s
    );
    Ok(())
}
