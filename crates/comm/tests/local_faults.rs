//! Failure handling of the local backend: errors, panics, timeouts and mismatches turn
//! into errors on every rank, naming the culprit, well within the timeout.

use std::time::{Duration, Instant};

use comm::{run_local, CommError, Communicator, LocalWorld, ReduceOp};

#[test]
fn a_rank_error_fails_the_others_fast_and_names_it() {
    let t0 = Instant::now();
    let err = run_local(4, Duration::from_secs(30), |c| {
        if c.rank() == 2 {
            return Err("loss is NaN".to_string());
        }
        let mut x = vec![1.0f32; 1000];
        // The others block in all_reduce waiting for rank 2, then must fail.
        c.all_reduce((&mut x).into(), ReduceOp::Sum).map_err(|e| e.to_string())?;
        Ok(())
    })
    .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    match err {
        CommError::RankFailed { rank, cause } => {
            assert_eq!(rank, 2);
            assert!(cause.contains("loss is NaN"), "{cause}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn a_panicking_rank_poisons_the_world() {
    let comms = LocalWorld::new(3, Duration::from_secs(30)).unwrap();
    let t0 = Instant::now();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                if c.rank() == 1 {
                    panic!("boom in rank 1");
                }
                let mut x = vec![0.0f32; 10];
                c.all_reduce((&mut x).into(), ReduceOp::Max)
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    assert!(outs[1].is_err(), "rank 1 panicked");
    for r in [0, 2] {
        let e = outs[r].as_ref().unwrap().as_ref().unwrap_err();
        match e {
            CommError::PeerFailed { rank, op, group, failed_rank, cause, .. } => {
                assert_eq!((*rank, *op, group.as_str(), *failed_rank), (r, "all_reduce", "world", 1));
                assert!(cause.contains("panicked"), "{cause}");
            }
            other => panic!("rank {r}: unexpected {other}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn run_local_reports_the_panic_message() {
    let err = run_local(2, Duration::from_secs(30), |c| {
        if c.rank() == 0 {
            panic!("rank zero exploded");
        }
        c.barrier()
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("rank 0") && msg.contains("rank zero exploded"), "{msg}");
}

#[test]
fn a_missing_rank_times_out_with_its_name() {
    let timeout = Duration::from_millis(300);
    let comms = LocalWorld::new(3, timeout).unwrap();
    let t0 = Instant::now();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                if c.rank() == 0 {
                    // Late: arrives after the others have given up.
                    std::thread::sleep(Duration::from_millis(900));
                }
                let mut x = vec![1.0f32; 7];
                c.all_reduce((&mut x).into(), ReduceOp::Sum)
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut timeouts = 0;
    for (r, o) in outs.iter().enumerate() {
        match o.as_ref().unwrap_err() {
            CommError::Timeout { missing, waited, op, .. } => {
                assert_eq!(missing, &vec![0], "rank {r}");
                assert_eq!(*op, "all_reduce");
                assert!(*waited >= timeout);
                timeouts += 1;
            }
            CommError::PeerFailed { cause, .. } => assert!(cause.contains("timed out"), "{cause}"),
            other => panic!("rank {r}: unexpected {other}"),
        }
    }
    assert!(timeouts >= 1);
    assert!(matches!(outs[0], Err(CommError::PeerFailed { .. })), "the late rank learns of the failure");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_dropped_communicator_fails_waiting_peers() {
    let mut comms = LocalWorld::new(2, Duration::from_secs(30)).unwrap();
    let c1 = comms.pop().unwrap();
    let h = std::thread::spawn(move || c1.barrier());
    std::thread::sleep(Duration::from_millis(50));
    drop(comms); // rank 0 leaves without calling barrier
    let e = h.join().unwrap().unwrap_err();
    assert!(matches!(e, CommError::PeerFailed { failed_rank: 0, .. }), "{e}");
}

#[test]
fn mismatched_lengths_and_ops_are_reported_on_every_rank() {
    let outs = run_local(3, Duration::from_secs(10), |c| {
        let mut x = vec![0.0f32; if c.rank() == 1 { 5 } else { 4 }];
        Ok::<_, String>(c.all_reduce((&mut x).into(), ReduceOp::Sum).unwrap_err().to_string())
    })
    .unwrap();
    for m in &outs {
        assert!(m.contains("mismatch") && m.contains("len=4") && m.contains("len=5"), "{m}");
    }
    let outs = run_local(2, Duration::from_secs(10), |c| {
        let mut x = vec![0.0f32; 4];
        let e = if c.rank() == 0 {
            c.all_reduce((&mut x).into(), ReduceOp::Sum)
        } else {
            c.broadcast((&mut x).into(), 0)
        };
        Ok::<_, String>(e.unwrap_err().to_string())
    })
    .unwrap();
    assert!(outs.iter().all(|m| m.contains("all_reduce") && m.contains("broadcast")), "{outs:?}");
}

#[test]
fn a_bad_argument_on_one_rank_fails_all() {
    let outs = run_local(2, Duration::from_secs(10), |c| {
        let send = vec![0.0f32; 8];
        let mut recv = vec![0.0f32; if c.rank() == 0 { 3 } else { 4 }];
        Ok::<_, String>(c.reduce_scatter((&send).into(), (&mut recv).into(), ReduceOp::Sum).unwrap_err())
    })
    .unwrap();
    assert!(matches!(outs[0], CommError::InvalidArgument { rank: 0, .. }), "{}", outs[0]);
    assert!(matches!(outs[1], CommError::PeerFailed { failed_rank: 0, .. }), "{}", outs[1]);
    let e = run_local(1, Duration::from_secs(1), |c| c.all_reduce((&mut vec![0u8; 3]).into(), ReduceOp::Sum)).unwrap_err();
    assert!(e.to_string().contains("not bytes"), "{e}");
}

#[test]
fn a_recv_without_a_sender_times_out_naming_the_source() {
    let outs = run_local(2, Duration::from_millis(200), |c| {
        if c.rank() == 1 {
            let mut x = vec![0.0f32; 3];
            return Ok::<_, String>(Some(c.recv((&mut x).into(), 0, 5).unwrap_err()));
        }
        // Rank 0 never sends, and stays alive past rank 1's timeout.
        std::thread::sleep(Duration::from_millis(500));
        Ok(None)
    })
    .unwrap();
    match &outs[1] {
        Some(CommError::Timeout { op: "recv", missing, .. }) => assert_eq!(missing, &vec![0]),
        other => panic!("unexpected {other:?}"),
    }
    assert!(outs[0].is_none());
}

#[test]
fn async_operations_report_peer_failures() {
    use comm::{AsyncComm, OwnedBuf};
    use std::sync::Arc;
    let outs = run_local(2, Duration::from_secs(20), |c| {
        let stream: Arc<dyn Communicator> = Arc::from(c.split(0, c.rank(), "async").map_err(|e| e.to_string())?);
        if c.rank() == 0 {
            c.abort("rank 0 gave up");
            return Ok::<_, String>(None);
        }
        let a = AsyncComm::new(stream);
        let h = a.all_reduce(OwnedBuf::F32(vec![1.0; 8]), ReduceOp::Sum);
        Ok(Some(h.wait().map_err(|e| e.to_string())?.unwrap_err()))
    })
    .unwrap();
    match &outs[1] {
        Some(CommError::PeerFailed { failed_rank: 0, cause, group, .. }) => {
            assert_eq!(group, "async");
            assert!(cause.contains("rank 0 gave up"), "{cause}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_recv_from_a_departed_rank_fails_fast() {
    let mut comms = LocalWorld::new(2, Duration::from_secs(30)).unwrap();
    let c1 = comms.pop().unwrap();
    let t0 = Instant::now();
    let h = std::thread::spawn(move || {
        let mut x = [0u8; 4];
        c1.recv((&mut x[..]).into(), 0, 1)
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(comms);
    let e = h.join().unwrap().unwrap_err();
    assert!(matches!(e, CommError::PeerFailed { failed_rank: 0, op: "recv", .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}
