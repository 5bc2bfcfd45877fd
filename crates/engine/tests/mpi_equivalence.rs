//! Data parallelism over MPI processes: run under `mpirun -np N` (scripts/test-mpi-train.sh).
//! Every (ZeRO stage, recompute) layout over the N processes must match the
//! single-rank run with the same global batch, which each process computes itself.
#![cfg(feature = "mpi")]

use std::path::Path;

use comm::mpi::{MpiComm, MpiOptions};
use comm::Communicator;
use engine::{Rank, StepTimes, Trainer};

const STEPS: usize = 10;
const MICRO: usize = 2;

fn cfg(batch: usize, dp: usize, zero: u8, recompute: &str) -> config::ResolvedConfig {
    let sets: Vec<String> = vec![
        format!("train.batch_size={batch}"),
        format!("parallel.dp={dp}"),
        format!("parallel.zero={zero}"),
        format!("parallel.recompute=\"{recompute}\""),
        "optim.grad_clip=0.5".into(),
        "log.peak_flops=1e11".into(),
    ];
    config::resolve(Some("tiny"), None, &sets).expect("config")
}

fn train(t: &mut Trainer) -> (Vec<f64>, Vec<Vec<f32>>) {
    let mut times = StepTimes::default();
    let losses = (0..STEPS).map(|_| t.train_step(&mut times).expect("step").0).collect();
    (losses, t.full_params().expect("gather"))
}

#[test]
#[ignore = "needs mpirun: run by scripts/test-mpi-train.sh"]
fn mpi_dp_matches_single_rank() {
    let world = MpiComm::world(&MpiOptions::default()).expect("MPI");
    let dp = world.size();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt");
    data::prepare(&[corpus], data::TokenizerKind::Char, &dir, 0.1, &mut |_, _| {}).unwrap();
    let single_rank = Rank::single().unwrap();
    let mut reference = Trainer::with_rank(cfg(MICRO * dp, 1, 0, "none"), data::Dataset::open(&dir).unwrap(), Path::new(""), single_rank).unwrap();
    let (want_loss, want_params) = train(&mut reference);
    for zero in 0..=3u8 {
        for recompute in ["none", "full"] {
            let rank = Rank::new(&world).unwrap();
            let mut t = Trainer::with_rank(cfg(MICRO, dp, zero, recompute), data::Dataset::open(&dir).unwrap(), Path::new(""), rank).unwrap();
            let (loss, params) = train(&mut t);
            for (s, (a, b)) in loss.iter().zip(&want_loss).enumerate() {
                assert!(((a - b) / b).abs() < 1e-5, "np={dp} zero={zero} recompute={recompute}: step {} loss {a} vs {b}", s + 1);
            }
            for (i, (a, b)) in params.iter().zip(&want_params).enumerate() {
                let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
                let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
                assert!(d <= 1e-5 * n, "np={dp} zero={zero} recompute={recompute}: bucket {i} relative {}", d / n);
            }
            if world.rank() == 0 {
                println!("MPI np={dp} zero={zero} recompute={recompute}: {STEPS} steps match the single-rank run");
            }
        }
    }
}
