//! Mesh group computation (pure) and per-axis communicators; background collectives.

use std::sync::Arc;
use std::time::Duration;

use comm::{run_local, AsyncComm, Axis, Communicator, Mesh, MeshShape, OwnedBuf, ReduceOp};

#[test]
fn rank_order_is_tp_then_dp_then_pp() {
    let s = MeshShape::new(2, 2, 2, 8).unwrap();
    assert_eq!(s.groups(Axis::Tp), vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]);
    assert_eq!(s.groups(Axis::Dp), vec![vec![0, 2], vec![1, 3], vec![4, 6], vec![5, 7]]);
    assert_eq!(s.groups(Axis::Pp), vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
    assert_eq!(s.group_name(5, Axis::Dp), "dp[tp=1,pp=1]");
}

#[test]
fn coords_round_trip_and_groups_partition_the_world() {
    for (dp, tp, pp) in [(1, 1, 1), (3, 2, 1), (2, 1, 4), (1, 7, 1), (2, 3, 2)] {
        let s = MeshShape::new(dp, tp, pp, dp * tp * pp).unwrap();
        for r in 0..s.size() {
            assert_eq!(s.rank(s.coords(r)), r);
        }
        for axis in Axis::ALL {
            let mut seen: Vec<usize> = s.groups(axis).concat();
            seen.sort_unstable();
            assert_eq!(seen, (0..s.size()).collect::<Vec<_>>(), "{axis:?} {dp}x{tp}x{pp}");
            for r in 0..s.size() {
                let (_, members) = s.group(r, axis);
                // A rank's index in its group is its coordinate along the axis.
                assert_eq!(members[s.coords(r).get(axis)], r);
            }
        }
    }
}

#[test]
fn bad_degrees_are_rejected_with_the_product() {
    let e = MeshShape::new(2, 3, 1, 8).unwrap_err().to_string();
    assert!(e.contains("= 6") && e.contains("world size 8"), "{e}");
    assert!(MeshShape::new(0, 1, 1, 0).is_err());
}

#[test]
fn axis_communicators_reduce_within_their_groups() {
    let shape = MeshShape::new(2, 2, 2, 8).unwrap();
    let out = run_local(8, Duration::from_secs(20), |c| {
        let world: Arc<dyn Communicator> = Arc::from(c.split(0, c.rank(), "world2")?);
        let mesh = Mesh::new(world, 2, 2, 2)?;
        let mut sums = Vec::new();
        for axis in Axis::ALL {
            let g = mesh.axis(axis);
            assert_eq!(g.rank(), mesh.coords().get(axis));
            let mut x = [c.rank() as f32];
            g.all_reduce((&mut x[..]).into(), ReduceOp::Sum)?;
            sums.push(x[0]);
        }
        Ok::<_, comm::CommError>(sums)
    })
    .unwrap();
    for (r, sums) in out.iter().enumerate() {
        for (i, axis) in Axis::ALL.iter().enumerate() {
            let want: usize = shape.group(r, *axis).1.iter().sum();
            assert_eq!(sums[i], want as f32, "rank {r} {axis:?}");
        }
    }
}

#[test]
fn async_reduce_scatter_overlaps_and_matches_sync() {
    let out = run_local(3, Duration::from_secs(20), |c| {
        let stream: Arc<dyn Communicator> = Arc::from(c.split(0, c.rank(), "grads")?);
        let a = AsyncComm::new(stream);
        // Issue three buckets, compute in between, then wait in order.
        let handles: Vec<_> = (0..3)
            .map(|b| {
                let send = OwnedBuf::F32((0..30).map(|i| (i * (c.rank() + 1) + b) as f32).collect());
                a.reduce_scatter(send, OwnedBuf::F32(vec![0.0; 10]), ReduceOp::Sum)
            })
            .collect();
        // Meanwhile the foreground communicator is free for other collectives.
        c.barrier()?;
        let mut shards = Vec::new();
        for h in handles {
            let (_, recv) = h.wait()??;
            shards.push(recv);
        }
        Ok::<_, comm::CommError>(shards)
    })
    .unwrap();
    for (r, shards) in out.iter().enumerate() {
        for (b, s) in shards.iter().enumerate() {
            // sum over ranks q of i*(q+1)+b = 6i + 3b, for i in rank r's block.
            let want: Vec<f32> = (r * 10..r * 10 + 10).map(|i| (6 * i + 3 * b) as f32).collect();
            assert_eq!(s.as_f32().unwrap(), &want[..], "rank {r} bucket {b}");
        }
    }
}
