//! Leave-one-source-out cross-validation is honest: a source's held-out predictions do
//! not depend on that source's published figures (they were not used to choose the
//! constants that predict them), while they do feed the constants of the other folds.

use planner::time::Calibration;

const SHIPPED: &str = include_str!("../data/published_runs.csv");

fn to_csv(records: &[Vec<String>]) -> String {
    records.iter().map(|r| r.iter().map(|c| format!("\"{}\"", c.replace('"', "\"\""))).collect::<Vec<_>>().join(",") + "\n").collect()
}

#[test]
fn held_out_predictions_ignore_their_own_source() {
    let records = planner::csv::parse(SHIPPED, "published_runs.csv").unwrap();
    let col = |name: &str| records[0].iter().position(|c| c == name).unwrap();
    let (source, tflops, mfu) = (col("source"), col("tflops_per_gpu"), col("mfu_or_hfu_pct"));
    // The source with the most rows, its published throughput made 30% higher.
    let top = records[1..].iter().map(|r| r[source].clone()).max_by_key(|s| records.iter().filter(|r| &r[source] == s).count()).unwrap();
    let mut edited = records.clone();
    for r in edited[1..].iter_mut().filter(|r| r[source] == top) {
        for c in [tflops, mfu] {
            if let Ok(v) = r[c].parse::<f64>() {
                r[c] = format!("{}", v * 1.3);
            }
        }
    }
    let cal = Calibration::default();
    let a = planner::cv::cross_validate(&to_csv(&records), "a.csv", &cal).unwrap();
    let b = planner::cv::cross_validate(&to_csv(&edited), "b.csv", &cal).unwrap();
    assert!(a.sources >= 5, "{} sources", a.sources);
    let mut others_moved = false;
    for (x, y) in a.rows.iter().zip(&b.rows) {
        if x.source == top {
            assert_eq!(x.predicted, y.predicted, "{}: a held-out prediction used its own source's figures", x.id);
            assert_ne!(x.error_pct, y.error_pct, "{}: the edit must change the published figure", x.id);
        } else if x.predicted != y.predicted {
            others_moved = true;
        }
    }
    assert!(others_moved, "the edited source fed no other fold's constants: the fit does not look at the data");
    // Cross-validated error is not better than the in-sample fit it is meant to check.
    assert!(a.cross_validated.median_abs_error_pct >= a.in_sample.median_abs_error_pct);
}

/// The interval `plan` prints is the shipped set's cross-validated error spread (kept in
/// data/prediction_interval.json; regenerate it from `plan validate ... --cv --json` when
/// the published runs or the model change), and it covers 75-85% of held-out rows when
/// it is itself built without their source.
#[test]
fn the_shipped_interval_is_the_cross_validated_one_and_covers_80_percent() {
    let cv = planner::cv::cross_validate(SHIPPED, "published_runs.csv", &Calibration::default()).unwrap();
    let shipped = planner::cv::Interval::shipped();
    assert!((shipped.q10_error_pct - cv.interval.q10_error_pct).abs() < 1e-3, "{shipped:?} vs {:?}", cv.interval);
    assert!((shipped.q90_error_pct - cv.interval.q90_error_pct).abs() < 1e-3, "{shipped:?} vs {:?}", cv.interval);
    assert_eq!(shipped.rows, cv.interval.rows);
    assert!((75.0..=85.0).contains(&cv.coverage_pct), "nested coverage {:.1}%", cv.coverage_pct);
    // Issue 13's bar for predicting sources never seen: median <= 8%, p90 <= 20% held
    // out (7.7% / 16.5% measured at the shipped constants).
    let held = &cv.cross_validated;
    assert!(held.used >= 120, "{} rows used", held.used);
    assert!(held.median_abs_error_pct <= 8.0 && held.p90_abs_error_pct <= 20.0, "held out {:.1}% / {:.1}%", held.median_abs_error_pct, held.p90_abs_error_pct);
    let (lo, hi) = shipped.duration(10.0);
    assert!(lo <= 10.0 && 10.0 <= hi && lo < hi);
}
