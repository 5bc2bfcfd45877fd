//! Size parsing and bandwidth formulas of `comm::bench`.

use comm::bench::{iters_for, parse_size, parse_sizes, BenchOp};

#[test]
fn sizes_parse_binary_units_and_ranges() {
    assert_eq!(parse_size("512").unwrap(), 512);
    assert_eq!(parse_size("64K").unwrap(), 64 << 10);
    assert_eq!(parse_size("64m").unwrap(), 64 << 20);
    assert_eq!(parse_size("1G").unwrap(), 1 << 30);
    assert_eq!(parse_sizes("1K..8K").unwrap(), vec![1024, 2048, 4096, 8192]);
    assert_eq!(parse_sizes("64M").unwrap(), vec![64 << 20]);
    for bad in ["", "12Q", "x1K", "8K..1K", "0..1K"] {
        assert!(parse_sizes(bad).is_err(), "{bad}");
    }
    let e = parse_size("12Q").unwrap_err().to_string();
    assert!(e.contains("12Q") && e.contains("unit"), "{e}");
}

#[test]
fn bus_factors_and_traffic_follow_the_formulas() {
    assert_eq!(BenchOp::AllReduce.bus_factor(4), 1.5);
    assert_eq!(BenchOp::ReduceScatter.bus_factor(2), 0.5);
    assert_eq!(BenchOp::Broadcast.bus_factor(8), 1.0);
    // all-reduce, p = 2, 1000 bytes: each rank reads 1500, writes 1000.
    assert_eq!(BenchOp::AllReduce.local_traffic(1000, 2), (3000.0, 2000.0));
    assert_eq!(BenchOp::ReduceScatter.local_traffic(1000, 4), (4000.0, 1000.0));
    assert_eq!(iters_for(1 << 30), 5);
    assert_eq!(iters_for(1), 1000);
}

#[test]
fn memcpy_bandwidth_is_positive_and_finite() {
    let bw = comm::bench::memcpy_bandwidth(2, 1 << 20);
    assert!(bw.is_finite() && bw > 1e8, "{bw}");
}
