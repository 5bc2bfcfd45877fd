//! Cluster files: `hyperion plan --cluster FILE.toml` for any machine not in the catalog,
//! written by hand or by `hyperion bench machine` (which measures this one).
//!
//! ```toml
//! [cluster]
//! name = "lab-h200"
//! gpus = 16
//! gpus_per_node = 8
//! network_gbit_per_node = 3200    # all NICs of a node, one direction (0: one node)
//! source = "our cluster's spec sheet"
//!
//! [gpu]                           # a catalog name ...
//! catalog = "h200"
//! # ... or the part's numbers:
//! # name = "my-gpu", peak_bf16_tflops = 989, peak_fp32_tflops = 67, peak_fp8_tflops = 1979,
//! # memory_gb = 141, memory_bw_gbs = 4800, gemm_eff = 0.66, flash = true
//! # fa2_attention_rel = 0.47     # optional: FlashAttention-2 vs the part's own kernel
//!
//! [intra]                         # the link inside a node: a catalog name, or
//! catalog = "nvlink4"             # bw_gbs (one direction per GPU) and latency_us
//!
//! [network]                       # optional: a catalog NIC, or latency_us
//! catalog = "ib-ndr"
//!
//! [measured]                      # optional (`hyperion bench machine` writes it):
//! gemm_m = [64, 256, 1024, 4096]  # kernel rates measured on one device, used
//! gemm_n = [64, 256, 1024, 4096]  # instead of the GEMM-shape, attention and
//! gemm_k = [64, 256, 1024, 4096]  # element-wise models (see `hardware::Measured`)
//! gemm_gflops = [...]             # m x n x k rates, m slowest, k fastest: C = A B,
//! gemm_nt_gflops = [...]          # C = A B^T (a linear layer's input gradient)
//! gemm_tn_gflops = [...]          # C = A^T B (its weight gradient)
//! attention_seq = [64, 256, 1024]
//! attention_fwd_gflops = [...]
//! attention_bwd_gflops = [...]
//! elementwise_gbs = 20.0
//! elementwise_llama_gbs = 18.0
//! xent_gbs = 30.0
//! xent_tp_gbs = 25.0              # its vocabulary-parallel form (tp > 1)
//! head_chunk_floats = 16777216    # the head's logits are computed this many at a time
//! sync_overhead = 0.05            # optional: time lost keeping ranks in step (fraction)
//! ```
//!
//! Every missing or mistyped field is named with its section. The file's strings live
//! for the rest of the process (a CLI reads one file).

use serde::Deserialize;

use crate::error::PlanError;
use crate::hardware::{gpu, link, Cluster, Gpu, Machine, Measured};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster: ClusterSec,
    gpu: Part,
    intra: Part,
    network: Option<Part>,
    measured: Option<MeasuredSec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasuredSec {
    gemm_m: Option<Vec<f64>>,
    gemm_n: Option<Vec<f64>>,
    gemm_k: Option<Vec<f64>>,
    gemm_gflops: Option<Vec<f64>>,
    gemm_nt_gflops: Option<Vec<f64>>,
    gemm_tn_gflops: Option<Vec<f64>>,
    attention_seq: Option<Vec<f64>>,
    attention_fwd_gflops: Option<Vec<f64>>,
    attention_bwd_gflops: Option<Vec<f64>>,
    elementwise_gbs: Option<f64>,
    elementwise_llama_gbs: Option<f64>,
    xent_gbs: Option<f64>,
    xent_tp_gbs: Option<f64>,
    head_chunk_floats: Option<f64>,
    sync_overhead: Option<f64>,
}

/// `v` as a positive finite number, or an error naming `[sec] key` (missing or not positive).
fn positive(err: &dyn Fn(String) -> PlanError, sec: &str, key: &str, v: Option<f64>) -> Result<f64, PlanError> {
    match v {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        Some(x) => Err(err(format!("[{sec}] {key} must be a positive number, found {x}"))),
        None => Err(err(format!("[{sec}] {key} is missing"))),
    }
}

/// The `[measured]` section, every list checked: grids ascending and positive, rate
/// lists as long as their grid, rates positive.
fn measured(sec: MeasuredSec, err: &dyn Fn(String) -> PlanError) -> Result<Measured, PlanError> {
    let list = |key: &str, v: Option<Vec<f64>>, len: Option<usize>| -> Result<Vec<f64>, PlanError> {
        let v = v.ok_or_else(|| err(format!("[measured] {key} is missing")))?;
        if v.is_empty() || v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(err(format!("[measured] {key} must be a non-empty list of positive numbers")));
        }
        if let Some(n) = len {
            if v.len() != n {
                return Err(err(format!("[measured] {key} has {} values, its grid needs {n}", v.len())));
            }
        }
        Ok(v)
    };
    let grid = |key: &str, v: Option<Vec<f64>>| -> Result<Vec<f64>, PlanError> {
        let v = list(key, v, None)?;
        if v.windows(2).any(|w| w[1] <= w[0]) {
            return Err(err(format!("[measured] {key} must be strictly ascending")));
        }
        Ok(v)
    };
    let rate = |key: &str, v: Option<f64>| Ok(positive(err, "measured", key, v)? * 1e9);
    let (gm, gn, gk) = (grid("gemm_m", sec.gemm_m)?, grid("gemm_n", sec.gemm_n)?, grid("gemm_k", sec.gemm_k)?);
    let cells = Some(gm.len() * gn.len() * gk.len());
    let gemm = [list("gemm_gflops", sec.gemm_gflops, cells)?, list("gemm_nt_gflops", sec.gemm_nt_gflops, cells)?, list("gemm_tn_gflops", sec.gemm_tn_gflops, cells)?];
    let seq = grid("attention_seq", sec.attention_seq)?;
    let fwd = list("attention_fwd_gflops", sec.attention_fwd_gflops, Some(seq.len()))?;
    let bwd = list("attention_bwd_gflops", sec.attention_bwd_gflops, Some(seq.len()))?;
    let giga = |v: Vec<f64>| v.into_iter().map(|x| x * 1e9).collect::<Vec<f64>>();
    Ok(Measured {
        gemm_m: gm,
        gemm_n: gn,
        gemm_k: gk,
        gemm_rate: gemm.map(giga),
        attn_seq: seq,
        attn_fwd: giga(fwd),
        attn_bwd: giga(bwd),
        elementwise_bw: rate("elementwise_gbs", sec.elementwise_gbs)?,
        elementwise_llama_bw: rate("elementwise_llama_gbs", sec.elementwise_llama_gbs)?,
        xent_bw: rate("xent_gbs", sec.xent_gbs)?,
        xent_tp_bw: rate("xent_tp_gbs", sec.xent_tp_gbs)?,
        head_chunk_floats: positive(err, "measured", "head_chunk_floats", sec.head_chunk_floats)?,
        sync_overhead: match sec.sync_overhead {
            Some(x) if x.is_finite() && x >= 0.0 => x,
            Some(x) => return Err(err(format!("[measured] sync_overhead must be a fraction >= 0, found {x}"))),
            None => 0.0,
        },
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSec {
    name: Option<String>,
    gpus: Option<u64>,
    gpus_per_node: Option<u64>,
    network_gbit_per_node: Option<f64>,
    source: Option<String>,
    assumptions: Option<String>,
}

/// A `[gpu]`, `[intra]` or `[network]` table: a catalog name or numbers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    catalog: Option<String>,
    name: Option<String>,
    peak_bf16_tflops: Option<f64>,
    peak_fp32_tflops: Option<f64>,
    peak_fp8_tflops: Option<f64>,
    memory_gb: Option<f64>,
    memory_bw_gbs: Option<f64>,
    gemm_eff: Option<f64>,
    flash: Option<bool>,
    fa2_attention_rel: Option<f64>,
    bw_gbs: Option<f64>,
    latency_us: Option<f64>,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Reads a cluster file into the cluster (for names and sizes) and its machine.
pub fn load(path: &std::path::Path) -> Result<(&'static Cluster, Machine), PlanError> {
    let file = path.display().to_string();
    let err = |reason: String| PlanError::ClusterFile { file: file.clone(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let f: File = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let need = |sec: &str, key: &str, v: Option<f64>| positive(&err, sec, key, v);
    let c = &f.cluster;
    let gpus = need("cluster", "gpus", c.gpus.map(|x| x as f64))? as u64;
    let per_node = need("cluster", "gpus_per_node", c.gpus_per_node.map(|x| x as f64))? as u64;
    let net = c.network_gbit_per_node.unwrap_or(0.0);
    if !(net.is_finite() && net >= 0.0) {
        return Err(err(format!("[cluster] network_gbit_per_node must be >= 0, found {net}")));
    }
    if gpus > per_node && net == 0.0 {
        return Err(err(format!("[cluster] {gpus} GPUs in nodes of {per_node} need network_gbit_per_node (the network between nodes)")));
    }
    let mut g: Gpu = match &f.gpu.catalog {
        Some(name) => gpu(name)?.clone(),
        None => {
            let p = &f.gpu;
            let t = 1e12;
            Gpu {
                name: leak(p.name.clone().ok_or_else(|| err("[gpu] needs `catalog = NAME` or a `name` with its numbers".into()))?),
                peak_bf16: need("gpu", "peak_bf16_tflops", p.peak_bf16_tflops)? * t,
                peak_fp32: need("gpu", "peak_fp32_tflops", p.peak_fp32_tflops)? * t,
                peak_fp8: p.peak_fp8_tflops.unwrap_or(0.0) * t,
                mem_bytes: need("gpu", "memory_gb", p.memory_gb)? * 1e9,
                mem_bw: need("gpu", "memory_bw_gbs", p.memory_bw_gbs)? * 1e9,
                gemm_eff: {
                    let e = need("gpu", "gemm_eff", p.gemm_eff)?;
                    if e > 1.0 {
                        return Err(err(format!("[gpu] gemm_eff is a fraction of the peak (0 to 1), found {e}")));
                    }
                    e
                },
                link: "file",
                flash: p.flash.unwrap_or(false),
                fa2_attention_rel: match p.fa2_attention_rel {
                    None => 1.0,
                    Some(r) if r > 0.0 && r <= 1.0 => r,
                    Some(r) => return Err(err(format!("[gpu] fa2_attention_rel is FlashAttention-2's rate relative to the part's own fused attention (above 0, at most 1), found {r}"))),
                },
                source: leak(format!("{file} [gpu]")),
                measured: None,
            }
        }
    };
    if let Some(sec) = f.measured {
        g.measured = Some(Box::leak(Box::new(measured(sec, &err)?)));
    }
    let (intra_bw, intra_latency) = match &f.intra.catalog {
        Some(name) => {
            let l = link(name)?;
            (l.bw_per_dir, l.latency)
        }
        None => (need("intra", "bw_gbs", f.intra.bw_gbs)? * 1e9, need("intra", "latency_us", f.intra.latency_us)? * 1e-6),
    };
    let net_latency = match &f.network {
        Some(Part { catalog: Some(name), .. }) => link(name)?.latency,
        Some(p) => need("network", "latency_us", p.latency_us)? * 1e-6,
        None => 5e-6,
    };
    let cluster = Cluster {
        name: leak(c.name.clone().unwrap_or_else(|| path.file_stem().map_or("cluster".into(), |s| s.to_string_lossy().into_owned()))),
        gpu: g.name,
        gpus,
        gpus_per_node: per_node,
        intra: "file",
        node_net_bw: net * 1e9 / 8.0,
        nic: "file",
        source: leak(c.source.clone().unwrap_or_else(|| file.clone())),
        assumptions: leak(c.assumptions.clone().unwrap_or_else(|| format!("as written in {file}"))),
    };
    let machine = Machine { gpu: g, gpus_per_node: per_node, intra_bw, intra_latency, node_net_bw: cluster.node_net_bw, net_latency };
    Ok((Box::leak(Box::new(cluster)), machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn a_file_with_catalog_parts_equals_the_catalog_cluster() {
        let (_d, p) = write("[cluster]\nname = \"x\"\ngpus = 10000\ngpus_per_node = 8\nnetwork_gbit_per_node = 400\n[gpu]\ncatalog = \"v100-32gb\"\n[intra]\ncatalog = \"nvlink2\"\n[network]\ncatalog = \"ib-edr\"\n");
        let (c, m) = load(&p).unwrap();
        let want = Machine::from_cluster(crate::hardware::cluster("azure-openai-2020").unwrap()).unwrap();
        assert_eq!((c.gpus, m.gpus_per_node, m.intra_bw, m.intra_latency, m.node_net_bw, m.net_latency), (10000, 8, want.intra_bw, want.intra_latency, want.node_net_bw, want.net_latency));
        assert_eq!(m.gpu.peak_bf16, want.gpu.peak_bf16);
    }

    #[test]
    fn a_written_gpu_and_every_missing_field_is_named() {
        let full = "[cluster]\ngpus = 2\ngpus_per_node = 2\n[gpu]\nname = \"cpu\"\npeak_bf16_tflops = 0.5\npeak_fp32_tflops = 0.5\nmemory_gb = 24\nmemory_bw_gbs = 12\ngemm_eff = 0.9\n[intra]\nbw_gbs = 8\nlatency_us = 2\n";
        let (_d, p) = write(full);
        let (c, m) = load(&p).unwrap();
        assert_eq!((c.name, c.gpu, m.gpu.peak_fp32, m.intra_bw, m.intra_latency), ("c", "cpu", 0.5e12, 8e9, 2e-6));
        for (drop, message) in [
            ("peak_fp32_tflops = 0.5\n", "[gpu] peak_fp32_tflops is missing"),
            ("latency_us = 2\n", "[intra] latency_us is missing"),
            ("gpus = 2\n", "[cluster] gpus is missing"),
        ] {
            let (_d, p) = write(&full.replace(drop, ""));
            let e = load(&p).unwrap_err().to_string();
            assert!(e.ends_with(message) && e.contains("c.toml"), "{e}");
        }
        let (_d, p) = write(&full.replace("gemm_eff = 0.9", "gemm_eff = 90"));
        assert!(load(&p).unwrap_err().to_string().contains("[gpu] gemm_eff is a fraction"));
        // FlashAttention-2's relative rate: 1 when not written, in (0, 1] when written.
        assert_eq!(m.gpu.fa2_attention_rel, 1.0);
        let (_d, p) = write(&full.replace("gemm_eff = 0.9", "gemm_eff = 0.9\nfa2_attention_rel = 0.5"));
        assert_eq!(load(&p).unwrap().1.gpu.fa2_attention_rel, 0.5);
        let (_d, p) = write(&full.replace("gemm_eff = 0.9", "gemm_eff = 0.9\nfa2_attention_rel = 2"));
        assert!(load(&p).unwrap_err().to_string().contains("[gpu] fa2_attention_rel"));
        let (_d, p) = write(&full.replace("gpus = 2\n", "gpus = 4\n"));
        assert!(load(&p).unwrap_err().to_string().contains("need network_gbit_per_node"));
        let (_d, p) = write(&full.replace("[gpu]\n", "[gpu]\nwat = 1\n"));
        assert!(load(&p).unwrap_err().to_string().contains("wat"), "unknown keys are named");
        let (_d, p) = write("[cluster]\ngpus = 1\ngpus_per_node = 1\n[gpu]\ncatalog = \"nope\"\n[intra]\ncatalog = \"nvlink4\"\n");
        assert!(load(&p).unwrap_err().to_string().contains("unknown gpu `nope`"));
    }
}
