//! Honest validation: leave-one-source-out cross-validation of the time model.
//!
//! The calibration constants in [`FITTED`] were chosen by looking at published runs, so
//! the error on those same runs measures fit, not prediction. Here, for every source
//! (one paper or repository), the constants are re-chosen on the other sources' rows
//! only ([`fit`]) and the source's rows predicted with them: nothing of a predicted row
//! was seen when its constants were chosen. Physical constants (datasheet peaks, link
//! rates, byte sizes) are not refitted.

use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::time::Calibration;
use crate::validate::{percentile, validate, RowResult, Summary};

/// A calibration constant chosen by looking at published runs: its search range and
/// what physics expects of it before any run is seen (`prior`, with an `offset` for
/// constants whose expectation is near zero; the reasons are in docs/planner.md,
/// "Which constants were chosen by looking at data").
#[derive(Debug, Clone, Copy)]
pub struct Fitted {
    pub name: &'static str,
    pub lo: f64,
    pub hi: f64,
    pub prior: f64,
    pub offset: f64,
}

const fn fitted(name: &'static str, lo: f64, hi: f64, prior: f64, offset: f64) -> Fitted {
    Fitted { name, lo, hi, prior, offset }
}

/// The fitted constants (the rest of the model is datasheet figures, formulas and the
/// schedule).
pub const FITTED: [Fitted; 11] = [
    fitted("gemm_k0", 0.0, 2048.0, 128.0, 32.0),
    fitted("flash_rel", 0.1, 1.0, 0.6, 0.0),
    fitted("elementwise_passes", 0.0, 32.0, 8.0, 0.0),
    fitted("fused_elementwise_passes", 0.0, 16.0, 4.0, 0.0),
    fitted("mem_eff", 0.3, 1.0, 0.8, 0.0),
    fitted("nvlink_eff", 0.3, 1.0, 0.8, 0.0),
    fitted("net_eff", 0.2, 1.0, 0.85, 0.0),
    fitted("dp_overlap", 0.0, 1.0, 0.8, 0.05),
    fitted("tp_overlap", 0.0, 1.0, 0.7, 0.05),
    fitted("zero3_overlap", 0.0, 1.0, 0.7, 0.05),
    fitted("step_overhead", 0.0, 5.0, 0.0, 0.1),
];

fn field<'a>(c: &'a mut Calibration, name: &str) -> &'a mut f64 {
    match name {
        "gemm_k0" => &mut c.gemm_k0,
        "flash_rel" => &mut c.flash_rel,
        "elementwise_passes" => &mut c.elementwise_passes,
        "fused_elementwise_passes" => &mut c.fused_elementwise_passes,
        "mem_eff" => &mut c.mem_eff,
        "nvlink_eff" => &mut c.nvlink_eff,
        "net_eff" => &mut c.net_eff,
        "dp_overlap" => &mut c.dp_overlap,
        "tp_overlap" => &mut c.tp_overlap,
        "zero3_overlap" => &mut c.zero3_overlap,
        "step_overhead" => &mut c.step_overhead,
        _ => unreachable!("FITTED names a Calibration field"),
    }
}

/// Mean absolute percentage error of the rows `keep` selects (NaN when none is usable).
fn loss(rows: &[RowResult], keep: &dyn Fn(&RowResult) -> bool) -> f64 {
    let errs: Vec<f64> = rows.iter().filter(|r| keep(r)).filter_map(|r| r.error_pct.map(f64::abs)).collect();
    if errs.is_empty() {
        f64::NAN
    } else {
        errs.iter().sum::<f64>() / errs.len() as f64
    }
}

/// The fit pays `PRIOR_WEIGHT` percentage points of mean error per squared log-ratio
/// `ln((c + offset) / (prior + offset))` of each fitted constant.
pub const PRIOR_WEIGHT: f64 = 1.0;

fn prior_penalty(c: &Calibration) -> f64 {
    let mut c = *c;
    FITTED.iter().map(|f| ((*field(&mut c, f.name) + f.offset) / (f.prior + f.offset)).ln().powi(2)).sum::<f64>() * PRIOR_WEIGHT
}

/// Re-chooses the [`FITTED`] constants, starting from `start`, to minimise the mean
/// absolute error on the rows `keep` selects plus the prior penalty: coordinate descent
/// over a grid of multiples of each constant (clamped to its range), two sweeps.
pub fn fit(text: &str, file: &str, start: &Calibration, keep: &dyn Fn(&RowResult) -> bool) -> Result<Calibration, PlanError> {
    let mut best = *start;
    let mut best_loss = loss(&validate(text, file, &best)?.0, keep) + prior_penalty(&best);
    for _ in 0..2 {
        for Fitted { name, lo, hi, .. } in FITTED {
            let now = *field(&mut best, name);
            let mut candidates: Vec<f64> = [0.25, 0.5, 0.7, 0.85, 1.15, 1.4, 2.0, 4.0].iter().map(|m| (now * m).clamp(lo, hi)).collect();
            candidates.extend([lo, hi, (lo + hi) / 2.0]);
            for v in candidates {
                let mut c = best;
                *field(&mut c, name) = v;
                let l = loss(&validate(text, file, &c)?.0, keep) + prior_penalty(&c);
                if l < best_loss {
                    (best, best_loss) = (c, l);
                }
            }
        }
    }
    Ok(best)
}

/// The spread of cross-validated relative errors `100 (predicted - published) /
/// published`: their 10th and 90th percentiles. A throughput predicted as `p` was, for
/// 80% of held-out runs, in `[p / (1 + q90), p / (1 + q10)]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub q10_error_pct: f64,
    pub q90_error_pct: f64,
    /// Held-out rows the percentiles come from.
    pub rows: usize,
}

/// The interval shipped with the planner: `Interval::from_rows` of
/// `plan validate crates/planner/data/published_runs.csv --cv` (a test keeps them equal).
const SHIPPED_INTERVAL: &str = include_str!("../data/prediction_interval.json");

impl Interval {
    pub fn from_rows(rows: &[RowResult]) -> Interval {
        let mut e: Vec<f64> = rows.iter().filter_map(|r| r.error_pct).collect();
        e.sort_by(f64::total_cmp);
        Interval { q10_error_pct: percentile(&e, 0.1), q90_error_pct: percentile(&e, 0.9), rows: e.len() }
    }

    pub fn shipped() -> Interval {
        serde_json::from_str(SHIPPED_INTERVAL).expect("the shipped prediction_interval.json parses")
    }

    /// The 80% range of a predicted throughput (tokens/s, TFLOP/s, MFU).
    pub fn throughput(&self, p: f64) -> (f64, f64) {
        (p / (1.0 + self.q90_error_pct / 100.0), p / (1.0 + self.q10_error_pct / 100.0))
    }

    /// The 80% range of a predicted duration (step time, days): the inverse.
    pub fn duration(&self, d: f64) -> (f64, f64) {
        (d * (1.0 + self.q10_error_pct / 100.0), d * (1.0 + self.q90_error_pct / 100.0))
    }

    fn contains(&self, error_pct: f64) -> bool {
        (self.q10_error_pct..=self.q90_error_pct).contains(&error_pct)
    }
}

/// In-sample and leave-one-source-out errors of the time model on a published-runs CSV.
#[derive(Debug, Clone, Serialize)]
pub struct CrossValidation {
    /// The shipped constants on every row (fit, not prediction).
    pub in_sample: Summary,
    /// Each source's rows predicted with constants fitted on the other sources.
    pub cross_validated: Summary,
    /// Sources (folds) with at least one usable row.
    pub sources: usize,
    /// The 80% interval of the held-out errors.
    pub interval: Interval,
    /// Share of held-out rows whose published value falls inside the 80% interval built
    /// without their source (nested: the interval is also held out), percent.
    pub coverage_pct: f64,
    /// The held-out prediction of every row.
    #[serde(skip)]
    pub rows: Vec<RowResult>,
}

fn summary(rows: &[RowResult]) -> Summary {
    let mut errs: Vec<f64> = rows.iter().filter_map(|r| r.error_pct.map(f64::abs)).collect();
    errs.sort_by(f64::total_cmp);
    Summary { rows: rows.len(), used: errs.len(), median_abs_error_pct: percentile(&errs, 0.5), p90_abs_error_pct: percentile(&errs, 0.9) }
}

/// Leave-one-source-out cross-validation (see the module docs).
pub fn cross_validate(text: &str, file: &str, cal: &Calibration) -> Result<CrossValidation, PlanError> {
    let (all, in_sample) = validate(text, file, cal)?;
    let mut sources: Vec<String> = all.iter().filter(|r| r.error_pct.is_some()).map(|r| r.source.clone()).collect();
    sources.sort();
    sources.dedup();
    let mut held_out: Vec<Option<RowResult>> = vec![None; all.len()];
    for s in &sources {
        let fitted = fit(text, file, cal, &|r: &RowResult| &r.source != s)?;
        let (rows, _) = validate(text, file, &fitted)?;
        for (i, r) in rows.into_iter().enumerate() {
            if &r.source == s {
                held_out[i] = Some(r);
            }
        }
    }
    // Rows of sources with no usable row keep their (skipped) in-sample result.
    let rows: Vec<RowResult> = held_out.into_iter().zip(all).map(|(h, a)| h.unwrap_or(a)).collect();
    let (mut inside, mut n) = (0usize, 0usize);
    for s in &sources {
        let others: Vec<RowResult> = rows.iter().filter(|r| &r.source != s).cloned().collect();
        let iv = Interval::from_rows(&others);
        for e in rows.iter().filter(|r| &r.source == s).filter_map(|r| r.error_pct) {
            n += 1;
            inside += usize::from(iv.contains(e));
        }
    }
    let coverage_pct = 100.0 * inside as f64 / n.max(1) as f64;
    Ok(CrossValidation { in_sample, cross_validated: summary(&rows), sources: sources.len(), interval: Interval::from_rows(&rows), coverage_pct, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prior_costs_nothing_at_the_priors_and_grows_with_the_log_ratio() {
        let mut at = Calibration::default();
        for f in FITTED {
            *field(&mut at, f.name) = f.prior;
        }
        assert_eq!(prior_penalty(&at), 0.0);
        // Doubling a constant with no offset costs PRIOR_WEIGHT ln(2)^2; halving the same.
        let mut twice = at;
        twice.mem_eff *= 2.0;
        let mut half = at;
        half.mem_eff /= 2.0;
        let want = PRIOR_WEIGHT * 2f64.ln().powi(2);
        assert!((prior_penalty(&twice) - want).abs() < 1e-12 && (prior_penalty(&half) - want).abs() < 1e-12);
    }
}
