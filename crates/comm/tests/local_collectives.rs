//! Every collective of the local backend x world sizes 1, 2, 3, 4, 7, 8 x lengths
//! 0, 1, primes and non-multiples of the world size, against serial references.
//! The local backend reduces in rank order, so results must be bitwise equal.

mod common;

use std::time::Duration;

use comm::{run_local, Communicator, ReduceOp};
use common::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn all_reduce_matches_reference() {
    for &p in &WORLD_SIZES {
        for &n in &LENGTHS {
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Avg] {
                let inputs: Vec<Vec<f32>> = (0..p).map(|r| data(r, n, 1)).collect();
                let want = ref_f32(&inputs, op);
                let got = run_local(p, T, |c| {
                    let mut x = data(c.rank(), n, 1);
                    c.all_reduce((&mut x).into(), op).map(|_| x)
                })
                .unwrap();
                for (r, g) in got.iter().enumerate() {
                    assert_eq!(g, &want, "all_reduce {op:?} p={p} n={n} rank {r}");
                }
            }
            let inputs: Vec<_> = (0..p).map(|r| data_bf16(r, n, 2)).collect();
            let want = ref_bf16(&inputs, ReduceOp::Sum);
            let got = run_local(p, T, |c| {
                let mut x = data_bf16(c.rank(), n, 2);
                c.all_reduce((&mut x).into(), ReduceOp::Sum).map(|_| x)
            })
            .unwrap();
            assert!(got.iter().all(|g| g == &want), "bf16 all_reduce p={p} n={n}");
        }
    }
}

#[test]
fn reduce_scatter_equal_and_uneven() {
    for &p in &WORLD_SIZES {
        for &n in &LENGTHS {
            // Equal blocks of n elements each.
            let inputs: Vec<Vec<f32>> = (0..p).map(|r| data(r, n * p, 3)).collect();
            let full = ref_f32(&inputs, ReduceOp::Sum);
            let got = run_local(p, T, |c| {
                let x = data(c.rank(), n * p, 3);
                let mut y = vec![0.0f32; n];
                c.reduce_scatter((&x).into(), (&mut y).into(), ReduceOp::Sum).map(|_| y)
            })
            .unwrap();
            for (r, g) in got.iter().enumerate() {
                assert_eq!(&g[..], &full[r * n..(r + 1) * n], "reduce_scatter p={p} n={n} rank {r}");
            }
            // Uneven: n elements in total, split as evenly as possible.
            let counts = even_counts(n, p);
            let inputs: Vec<_> = (0..p).map(|r| data_bf16(r, n, 4)).collect();
            let full = ref_bf16(&inputs, ReduceOp::Avg);
            let got = run_local(p, T, |c| {
                let x = data_bf16(c.rank(), n, 4);
                let mut y = vec![half::bf16::ZERO; counts[c.rank()]];
                c.reduce_scatter_v((&x).into(), (&mut y).into(), &counts, ReduceOp::Avg).map(|_| y)
            })
            .unwrap();
            for (r, g) in got.iter().enumerate() {
                let (off, cnt) = comm::even_block(n, p, r);
                assert_eq!(&g[..], &full[off..off + cnt], "reduce_scatter_v p={p} n={n} rank {r}");
            }
        }
    }
}

#[test]
fn all_gather_equal_and_uneven() {
    for &p in &WORLD_SIZES {
        for &n in &LENGTHS {
            let want: Vec<f32> = (0..p).flat_map(|r| data(r, n, 5)).collect();
            let got = run_local(p, T, |c| {
                let x = data(c.rank(), n, 5);
                let mut y = vec![0.0f32; n * p];
                c.all_gather((&x).into(), (&mut y).into()).map(|_| y)
            })
            .unwrap();
            assert!(got.iter().all(|g| g == &want), "all_gather p={p} n={n}");
            // Uneven counts, on bytes: rank r contributes n + r elements.
            let counts: Vec<usize> = (0..p).map(|r| n + r).collect();
            let want: Vec<u8> = (0..p).flat_map(|r| bytes(r, n + r)).collect();
            let got = run_local(p, T, |c| {
                let x = bytes(c.rank(), n + c.rank());
                let mut y = vec![0u8; want.len()];
                c.all_gather_v((&x).into(), (&mut y).into(), &counts).map(|_| y)
            })
            .unwrap();
            assert!(got.iter().all(|g| g == &want), "all_gather_v p={p} n={n}");
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for &p in &WORLD_SIZES {
        for &n in &LENGTHS {
            for root in [0, p - 1, p / 2] {
                let want = data(root, n, 6);
                let got = run_local(p, T, |c| {
                    let mut x = data(c.rank(), n, 6);
                    c.broadcast((&mut x).into(), root).map(|_| x)
                })
                .unwrap();
                assert!(got.iter().all(|g| g == &want), "broadcast p={p} n={n} root={root}");
            }
        }
    }
}

#[test]
fn send_recv_ring_and_barrier() {
    for &p in &WORLD_SIZES[1..] {
        for &n in &LENGTHS {
            // Sends are rendezvous (synchronous), so even ranks send first and odd ranks
            // receive first; with odd p the wrap-around pair still orders correctly.
            let got = run_local(p, T, |c| {
                let (r, p) = (c.rank(), c.size());
                let mine = data(r, n, 7);
                let mut from_left = vec![0.0f32; n];
                let (right, left) = ((r + 1) % p, (r + p - 1) % p);
                if r % 2 == 0 {
                    c.send((&mine).into(), right, 9)?;
                    c.recv((&mut from_left).into(), left, 9)?;
                } else {
                    c.recv((&mut from_left).into(), left, 9)?;
                    c.send((&mine).into(), right, 9)?;
                }
                c.barrier()?;
                Ok::<_, comm::CommError>(from_left)
            })
            .unwrap();
            for (r, g) in got.iter().enumerate() {
                assert_eq!(g, &data((r + p - 1) % p, n, 7), "ring p={p} n={n} rank {r}");
            }
        }
    }
}

#[test]
fn repeated_calls_reuse_buffers_and_stay_in_step() {
    // 200 alternating collectives on one world: exercises slot reuse and generations.
    let got = run_local(4, T, |c| {
        let mut x = vec![1.0f32; 37];
        let mut g = vec![0.0f32; 4 * 37];
        for _ in 0..100 {
            c.all_reduce((&mut x).into(), ReduceOp::Avg)?;
            c.all_gather((&x).into(), (&mut g).into())?;
        }
        Ok::<_, comm::CommError>((x, g))
    })
    .unwrap();
    assert!(got.iter().all(|(x, g)| x.iter().all(|&v| v == 1.0) && g.iter().all(|&v| v == 1.0)));
}
