//! Exhaustive layout search within the constraints of a [`LayoutSpec`].
//!
//! Enumerates (tp, pp, dp, ZeRO stage, micro-batch, recompute, interleave), keeps
//! the layouts that fit in memory, ranks them by predicted tokens/s and explains
//! why each runner-up lost.

use crate::error::PlanError;
use crate::estimate::{check_layout, estimate, Estimate, Job};
use crate::layout::{Layout, LayoutSpec, Recompute};
use crate::time::Calibration;
use serde::Serialize;

/// A runner-up and the reason it lost to the best layout.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerUp {
    pub estimate: Estimate,
    pub why: String,
}

/// Result of a search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub best: Estimate,
    /// The best layout of each other (tp, pp, dp) shape, fastest first.
    pub runners_up: Vec<RunnerUp>,
    /// The fastest layouts that would have won but do not fit in memory.
    pub too_big: Vec<RunnerUp>,
    pub evaluated: u64,
    pub fit: u64,
}

fn divisors(n: u64) -> Vec<u64> {
    (1..=n).filter(|d| n % d == 0).collect()
}

/// The candidate values of every axis.
fn candidates(job: &Job, spec: &LayoutSpec) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let m = &job.model;
    let tps: Vec<u64> = match spec.tp {
        Some(t) => vec![t],
        None => (0..=6)
            .map(|i| 1u64 << i)
            .filter(|&t| t <= job.machine.gpus_per_node && m.heads as u64 % t == 0)
            .collect(),
    };
    let pps: Vec<u64> = match spec.pp {
        Some(p) => vec![p],
        None => divisors(m.layers as u64)
            .into_iter()
            .filter(|&p| p <= job.gpus)
            .collect(),
    };
    let dps: Vec<u64> = match spec.dp {
        Some(d) => vec![d],
        None => divisors(job.global_batch)
            .into_iter()
            .filter(|&d| d <= job.gpus)
            .collect(),
    };
    (tps, pps, dps)
}

/// Name the step-time component that grew most against `best`.
fn why_lost(best: &Estimate, e: &Estimate) -> String {
    let (a, b) = (&best.step, &e.step);
    let parts = [
        (
            "compute",
            b.compute - b.recompute - (a.compute - a.recompute),
        ),
        ("recompute", b.recompute - a.recompute),
        ("tensor-parallel communication", b.tp_comm - a.tp_comm),
        ("pipeline bubble", b.bubble - a.bubble),
        ("pipeline sends", b.pp_comm - a.pp_comm),
        ("data-parallel communication", b.dp_comm - a.dp_comm),
        ("optimizer step", b.optimizer - a.optimizer),
    ];
    let (name, dt) =
        parts.iter().cloned().fold(
            ("compute", f64::MIN),
            |acc, x| if x.1 > acc.1 { x } else { acc },
        );
    let mut why = format!("{name} +{:.2} s/step", dt.max(0.0));
    if e.gpus_used < best.gpus_used {
        why.push_str(&format!(
            " (uses {} GPUs, best uses {})",
            e.gpus_used, best.gpus_used
        ));
    }
    why
}

/// Reject fixed degrees that can never work, naming the rule.
fn precheck(job: &Job, spec: &LayoutSpec) -> Result<(), PlanError> {
    let bad = |reason: String| Err(PlanError::InvalidLayout { reason });
    let (tp, pp, dp) = (
        spec.tp.unwrap_or(1),
        spec.pp.unwrap_or(1),
        spec.dp.unwrap_or(1),
    );
    if tp * pp * dp > job.gpus {
        return Err(PlanError::DegreeMismatch {
            tp,
            pp,
            dp,
            product: tp * pp * dp,
            gpus: job.gpus,
        });
    }
    if job.model.heads as u64 % tp != 0 {
        return bad(format!(
            "tp={tp} does not divide {} attention heads",
            job.model.heads
        ));
    }
    if pp > job.model.layers as u64 {
        return bad(format!("pp={pp} exceeds {} layers", job.model.layers));
    }
    if job.global_batch % (dp * spec.mb.unwrap_or(1)) != 0 {
        return bad(format!(
            "global batch {} is not a multiple of dp={dp} x mb={}",
            job.global_batch,
            spec.mb.unwrap_or(1)
        ));
    }
    Ok(())
}

/// Search all layouts allowed by `spec`; return the fastest that fits and up to
/// `keep` runners-up.
pub fn search(
    job: &Job,
    spec: &LayoutSpec,
    cal: &Calibration,
    keep: usize,
) -> Result<SearchResult, PlanError> {
    precheck(job, spec)?;
    let (tps, pps, dps) = candidates(job, spec);
    let zeros: Vec<u8> = spec
        .zero
        .map(|z| vec![z])
        .unwrap_or_else(|| spec.zero_choices.unwrap_or(&[0, 1, 2, 3]).to_vec());
    let recomputes: Vec<Recompute> = spec
        .recompute
        .map(|r| vec![r])
        .unwrap_or_else(|| spec.recompute_choices.unwrap_or(&Recompute::ALL).to_vec());
    let mut first_reason: Option<PlanError> = None;
    let mut all: Vec<Estimate> = Vec::new();
    let mut too_big: Vec<Estimate> = Vec::new();
    let mut smallest = f64::INFINITY;
    let (mut evaluated, mut fit) = (0u64, 0u64);
    let mem_cap = job.machine.gpu.mem_bytes;
    for &tp in &tps {
        for &pp in &pps {
            for &dp in &dps {
                if tp * pp * dp > job.gpus || job.global_batch % dp != 0 {
                    continue;
                }
                let per_dp = job.global_batch / dp;
                let mbs: Vec<u64> = match spec.mb {
                    Some(b) => vec![b],
                    None => divisors(per_dp).into_iter().filter(|&b| b <= 16).collect(),
                };
                // Best fitting estimate of this (tp, pp, dp) shape.
                let mut shape_best: Option<Estimate> = None;
                let mut shape_big: Option<Estimate> = None;
                for &mb in &mbs {
                    let micro = per_dp / mb;
                    let vs: Vec<u64> = match spec.interleave {
                        Some(v) => vec![v],
                        None if pp > 1 && micro % pp == 0 => (1..=8)
                            .filter(|v| *v == 1 || pp * v <= job.model.layers as u64)
                            .collect(),
                        None => vec![1],
                    };
                    for &v in &vs {
                        for &zero in &zeros {
                            for &recompute in &recomputes {
                                let l = Layout {
                                    tp,
                                    pp,
                                    dp,
                                    zero,
                                    mb,
                                    recompute,
                                    interleave: v,
                                    sp: spec.sp.unwrap_or(tp > 1),
                                    flash: spec.flash.unwrap_or(job.machine.gpu.flash),
                                    fp8: spec.fp8.unwrap_or(false),
                                    tp_overlap: spec.tp_overlap.unwrap_or(false),
                                    stack: spec.stack.unwrap_or_default(),
                                };
                                if let Err(e) = check_layout(job, &l) {
                                    first_reason.get_or_insert(e);
                                    continue;
                                }
                                evaluated += 1;
                                let e = estimate(job, &l, cal);
                                smallest = smallest.min(e.memory.total);
                                let slot = if e.memory.total <= mem_cap {
                                    fit += 1;
                                    &mut shape_best
                                } else {
                                    &mut shape_big
                                };
                                let better = match slot {
                                    Some(b) => e.tokens_per_s > b.tokens_per_s,
                                    None => true,
                                };
                                if better {
                                    *slot = Some(e);
                                }
                            }
                        }
                    }
                }
                all.extend(shape_best);
                too_big.extend(shape_big);
            }
        }
    }
    let by_speed = |a: &Estimate, b: &Estimate| b.tokens_per_s.total_cmp(&a.tokens_per_s);
    all.sort_by(by_speed);
    too_big.sort_by(by_speed);
    if evaluated == 0 {
        return Err(first_reason.unwrap_or(PlanError::InvalidLayout {
            reason: "no layout satisfies the constraints".to_string(),
        }));
    }
    let mut it = all.into_iter();
    let best = it.next().ok_or_else(|| PlanError::NothingFits {
        model: job.model.name.clone(),
        gpus: job.gpus,
        mem_gb: mem_cap / 1e9,
        best_gb: if smallest.is_finite() {
            smallest / 1e9
        } else {
            0.0
        },
    })?;
    let runners_up = it
        .take(keep)
        .map(|e| RunnerUp {
            why: why_lost(&best, &e),
            estimate: e,
        })
        .collect();
    let too_big = too_big
        .into_iter()
        .filter(|e| e.tokens_per_s > best.tokens_per_s)
        .take(3)
        .map(|e| RunnerUp {
            why: format!(
                "memory: needs {:.1} GB > {:.0} GB per GPU",
                e.memory.total / 1e9,
                mem_cap / 1e9
            ),
            estimate: e,
        })
        .collect();
    Ok(SearchResult {
        best,
        runners_up,
        too_big,
        evaluated,
        fit,
    })
}
