//! Hardware catalogs: GPUs, links and clusters, each entry with its source.
//!
//! Conventions: FLOP/s are dense (no 2:4 sparsity); link bandwidths are the vendor's
//! bidirectional per-GPU figure for NVLink/PCIe and the line rate for NICs, and the
//! time model uses one direction (half the bidirectional figure) for collectives.

use crate::error::PlanError;
use serde::Serialize;

/// Numeric precisions the time model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Fp32,
    Bf16,
    Fp8,
}

/// One accelerator model.
#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub name: &'static str,
    /// Dense tensor-core peak, FLOP/s, for bf16/fp16.
    pub peak_bf16: f64,
    /// Dense fp8 peak (0 when the part has none).
    pub peak_fp8: f64,
    /// fp32 peak without tensor cores (CUDA cores / SIMD).
    pub peak_fp32: f64,
    /// Memory capacity in bytes (what the vendor sells, 1 GB = 1e9 B).
    pub mem_bytes: f64,
    /// Memory bandwidth in bytes/s.
    pub mem_bw: f64,
    /// Fraction of `peak` that large, well-shaped GEMMs reach with the vendor BLAS.
    /// Calibration constant with a physical meaning; sources in docs/planner.md.
    pub gemm_eff: f64,
    /// Default intra-node link of the reference server.
    pub link: &'static str,
    /// FlashAttention kernels exist for it (Ampere and later; Dao et al. 2022/2023).
    pub flash: bool,
    /// Rate of FlashAttention-2 (written for Ampere's `mma` instructions) relative to
    /// the part's own fused attention (cuDNN, FlashAttention-3): 1 up to Ampere; on
    /// Hopper FA2 reaches 35% of peak where FA3 reaches 75% (Shah et al. 2024,
    /// arXiv:2407.08608, abstract), 0.47; Blackwell is assumed the same (no published
    /// figure). Used for stacks that run FA2 (`Stack::fa2_attention`).
    pub fa2_attention_rel: f64,
    pub source: &'static str,
    /// Rates measured on the part itself (`hyperion bench machine`); where present
    /// they replace the modelled efficiencies (cluster files only, never the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<&'static Measured>,
}

/// Kernel rates measured on one device (one engine rank and its cores) by
/// `hyperion bench machine`: what the time model otherwise derives from the peak, the
/// GEMM shape model and the memory bandwidth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// GEMM rate (FLOP/s) on the grid `gemm_m x gemm_n x gemm_k`, `m` slowest, `k`
    /// fastest, for each [`GemmOp`] (indexed by it); interpolated in log space,
    /// clamped at the edges.
    pub gemm_m: Vec<f64>,
    pub gemm_n: Vec<f64>,
    pub gemm_k: Vec<f64>,
    pub gemm_rate: [Vec<f64>; 3],
    /// Attention core (scores, causal softmax, weighted values) per sequence length
    /// `attn_seq`, FLOP/s counted as `4 s^2 d` per sequence and head forward and twice
    /// that backward (the full square, whatever the kernel skips).
    pub attn_seq: Vec<f64>,
    pub attn_fwd: Vec<f64>,
    pub attn_bwd: Vec<f64>,
    /// A block's element-wise kernels forward + backward (norms, activation, residual
    /// adds; RoPE too in the Llama form), in bytes of the block's stored activations
    /// (`block_activation_bytes`, selective form) per second: GPT blocks (LayerNorm,
    /// GELU) and Llama blocks (RMSNorm, SwiGLU, RoPE).
    pub elementwise_bw: f64,
    pub elementwise_llama_bw: f64,
    /// Softmax cross-entropy forward + backward, in `16 x rows x vocab` bytes per second
    /// (the time model's four fp32 passes over the logits).
    pub xent_bw: f64,
    /// The same for the vocabulary-parallel form (tensor parallelism), in the same bytes.
    pub xent_tp_bw: f64,
    /// The engine computes the head over at most this many logits at a time (rows
    /// `floats / vocab`, at least 64): its GEMMs are costed per chunk.
    pub head_chunk_floats: f64,
    /// Time lost keeping ranks in step (waiting for the rank slowed down this time), as
    /// a fraction of the compute between synchronisations: tensor parallelism pays it
    /// on everything it computes.
    pub sync_overhead: f64,
}

/// Operand layouts of a linear layer's three GEMMs, `C (m x n) = A (m x k) B (k x n)`:
/// forward `y = x W`, input gradient `dx = dy W^T` (B transposed) and weight gradient
/// `dW = x^T dy` (A transposed). Memory order changes the packing cost, so each is
/// measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmOp {
    Nn = 0,
    Nt = 1,
    Tn = 2,
}

impl Measured {
    /// The GEMM rate for `(m, n, k)` in layout `op`: trilinear interpolation of the rate
    /// in `log2` of each dimension between the measured grid points, clamped to the grid.
    pub fn gemm(&self, op: GemmOp, m: f64, n: f64, k: f64) -> f64 {
        let rate = &self.gemm_rate[op as usize];
        let (nn, nk) = (self.gemm_n.len(), self.gemm_k.len());
        let (im, fm) = bracket(&self.gemm_m, m);
        let (in_, fnn) = bracket(&self.gemm_n, n);
        let (ik, fk) = bracket(&self.gemm_k, k);
        let at = |a: usize, b: usize, c: usize| rate[(a * nn + b) * nk + c];
        let mut r = 0.0;
        for (a, wa) in [(im, 1.0 - fm), (im + 1, fm)] {
            for (b, wb) in [(in_, 1.0 - fnn), (in_ + 1, fnn)] {
                for (c, wc) in [(ik, 1.0 - fk), (ik + 1, fk)] {
                    let w = wa * wb * wc;
                    if w > 0.0 {
                        r += w * at(a, b, c);
                    }
                }
            }
        }
        r
    }

    /// Attention-core rate (forward, backward) at sequence length `s`, interpolated in
    /// `log2 s`, clamped.
    pub fn attention(&self, s: f64) -> (f64, f64) {
        let (i, f) = bracket(&self.attn_seq, s);
        let lerp = |v: &[f64]| if f > 0.0 { v[i] * (1.0 - f) + v[i + 1] * f } else { v[i] };
        (lerp(&self.attn_fwd), lerp(&self.attn_bwd))
    }
}

/// `(i, f)`: `x` lies at fraction `f` of the way (in `log2`) from `grid[i]` to
/// `grid[i + 1]`; `f = 0` at and beyond the ends. `grid` is ascending and non-empty.
fn bracket(grid: &[f64], x: f64) -> (usize, f64) {
    let last = grid.len() - 1;
    if x <= grid[0] {
        return (0, 0.0);
    }
    if x >= grid[last] {
        return (last, 0.0);
    }
    let i = grid.iter().rposition(|&g| g <= x).unwrap_or(0).min(last - 1);
    let f = (x / grid[i]).log2() / (grid[i + 1] / grid[i]).log2();
    (i, f)
}

impl Gpu {
    /// Peak FLOP/s for a dtype.
    pub fn peak(&self, dtype: Dtype) -> f64 {
        match dtype {
            Dtype::Fp32 => self.peak_fp32,
            Dtype::Bf16 => self.peak_bf16,
            Dtype::Fp8 if self.peak_fp8 > 0.0 => self.peak_fp8,
            Dtype::Fp8 => self.peak_bf16,
        }
    }
}

const T: f64 = 1e12;
const GB: f64 = 1e9;

/// The GPU catalog. Peaks from the vendors' datasheets (dense, no sparsity).
pub const GPUS: &[Gpu] = &[
    Gpu { name: "v100-16gb", peak_bf16: 125.0 * T, peak_fp8: 0.0, peak_fp32: 15.7 * T, mem_bytes: 16.0 * GB, mem_bw: 900.0 * GB, gemm_eff: 0.72, link: "nvlink2", flash: false, fa2_attention_rel: 1.0, source: "NVIDIA Tesla V100 datasheet (SXM2): 125 TF fp16 tensor, 900 GB/s HBM2", measured: None },
    Gpu { name: "v100-32gb", peak_bf16: 125.0 * T, peak_fp8: 0.0, peak_fp32: 15.7 * T, mem_bytes: 32.0 * GB, mem_bw: 900.0 * GB, gemm_eff: 0.72, link: "nvlink2", flash: false, fa2_attention_rel: 1.0, source: "NVIDIA Tesla V100 datasheet (SXM2 32 GB)", measured: None },
    Gpu { name: "v100-dgx2h", peak_bf16: 130.0 * T, peak_fp8: 0.0, peak_fp32: 16.4 * T, mem_bytes: 32.0 * GB, mem_bw: 981.0 * GB, gemm_eff: 0.72, link: "nvswitch2", flash: false, fa2_attention_rel: 1.0, source: "DGX-2H V100 SXM3 450 W, ~130 TF (Megatron-LM 2019 §5)", measured: None },
    Gpu { name: "a100-40gb", peak_bf16: 312.0 * T, peak_fp8: 0.0, peak_fp32: 19.5 * T, mem_bytes: 40.0 * GB, mem_bw: 1555.0 * GB, gemm_eff: 0.72, link: "nvlink3", flash: true, fa2_attention_rel: 1.0, source: "NVIDIA A100 datasheet: 312 TF bf16 dense, 1.56 TB/s", measured: None },
    Gpu { name: "a100-80gb", peak_bf16: 312.0 * T, peak_fp8: 0.0, peak_fp32: 19.5 * T, mem_bytes: 80.0 * GB, mem_bw: 2039.0 * GB, gemm_eff: 0.72, link: "nvlink3", flash: true, fa2_attention_rel: 1.0, source: "NVIDIA A100 datasheet: 312 TF bf16 dense, 2.04 TB/s (SXM4 80 GB)", measured: None },
    Gpu { name: "h100-sxm", peak_bf16: 989.0 * T, peak_fp8: 1979.0 * T, peak_fp32: 67.0 * T, mem_bytes: 80.0 * GB, mem_bw: 3350.0 * GB, gemm_eff: 0.66, link: "nvlink4", flash: true, fa2_attention_rel: 0.47, source: "NVIDIA H100 datasheet (SXM5): 989 TF bf16 dense, 1979 fp8, 3.35 TB/s", measured: None },
    Gpu { name: "h100-96gb-500w", peak_bf16: 989.0 * T, peak_fp8: 1979.0 * T, peak_fp32: 67.0 * T, mem_bytes: 96.0 * GB, mem_bw: 2400.0 * GB, gemm_eff: 0.50, link: "nvlink4", flash: true, fa2_attention_rel: 0.47, source: "Meta Grand Teton H100 96 GB HBM2e capped at 500 W (torchtitan 2024); bandwidth and sustained clock are assumptions (500 W cap: sustained tensor clock ~0.75x of the 700 W part, so 0.50 instead of 0.66 GEMM fraction)", measured: None },
    Gpu { name: "h100-pcie", peak_bf16: 756.0 * T, peak_fp8: 1513.0 * T, peak_fp32: 51.0 * T, mem_bytes: 80.0 * GB, mem_bw: 2000.0 * GB, gemm_eff: 0.66, link: "pcie5", flash: true, fa2_attention_rel: 0.47, source: "NVIDIA H100 datasheet (PCIe): 756 TF bf16 dense, 1513 fp8, 2.0 TB/s HBM2e, PCIe Gen5 (an NVLink bridge pairs two cards); GEMM fraction assumed as SXM's", measured: None },
    Gpu { name: "h200", peak_bf16: 989.0 * T, peak_fp8: 1979.0 * T, peak_fp32: 67.0 * T, mem_bytes: 141.0 * GB, mem_bw: 4800.0 * GB, gemm_eff: 0.66, link: "nvlink4", flash: true, fa2_attention_rel: 0.47, source: "NVIDIA H200 datasheet (SXM): 141 GB HBM3e, 4.8 TB/s", measured: None },
    Gpu { name: "b200", peak_bf16: 2250.0 * T, peak_fp8: 4500.0 * T, peak_fp32: 80.0 * T, mem_bytes: 180.0 * GB, mem_bw: 8000.0 * GB, gemm_eff: 0.70, link: "nvlink5", flash: true, fa2_attention_rel: 0.47, source: "NVIDIA DGX B200 datasheet: 2.25 PF bf16 dense per GPU, 180 GB, 8 TB/s", measured: None },
    // AMD: papers on Frontier count each MI250X graphics compute die (GCD) as a GPU.
    Gpu {
        name: "mi250x-gcd",
        peak_bf16: 191.5 * T,
        peak_fp8: 0.0,
        peak_fp32: 23.9 * T,
        mem_bytes: 64.0 * GB,
        mem_bw: 1638.0 * GB,
        gemm_eff: 0.60,
        link: "infinity-fabric-mi250x",
        flash: true,
        fa2_attention_rel: 1.0,
        source: "AMD Instinct MI250X datasheet (383 TF bf16, 128 GB, 3.2 TB/s per OAM = 2 GCDs); GEMM fraction assumed below NVIDIA's (rocBLAS)",
        measured: None,
    },
    Gpu {
        name: "mi300x",
        peak_bf16: 1307.0 * T,
        peak_fp8: 2615.0 * T,
        peak_fp32: 163.4 * T,
        mem_bytes: 192.0 * GB,
        mem_bw: 5300.0 * GB,
        gemm_eff: 0.55,
        link: "xgmi-mi300x",
        flash: true,
        fa2_attention_rel: 1.0,
        source: "AMD Instinct MI300X datasheet: 1307 TF bf16 dense, 192 GB, 5.3 TB/s; public hipBLASLt GEMM benchmarks reach ~55-60% of peak",
        measured: None,
    },
    // Measured, not datasheet: best f32 GEMM of the kernels crate (gemm 0.19, AVX-512)
    // is 255 GFLOP/s on one core (crates/kernels/BENCHMARKS.md), x 2 cores; streaming
    // bandwidth 10.7 GB/s (numpy `x * 2.0` on 200 MB, loaded machine). The peak IS the
    // measured GEMM rate, hence a GEMM fraction near 1.
    Gpu { name: "cpu-local", peak_bf16: 0.51 * T, peak_fp8: 0.0, peak_fp32: 0.51 * T, mem_bytes: 8.0 * GB, mem_bw: 10.7 * GB, gemm_eff: 0.95, link: "shm", flash: false, fa2_attention_rel: 1.0, source: "this machine: 2 AMD EPYC cores with AVX-512; 255 GFLOP/s per core measured (crates/kernels/BENCHMARKS.md), 10.7 GB/s measured stream bandwidth", measured: None },
];

/// A link between GPUs or nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub name: &'static str,
    /// Bytes/s in ONE direction per GPU (NVLink, PCIe) or per NIC (network).
    pub bw_per_dir: f64,
    /// Per-message latency in seconds (alpha of the alpha-beta model).
    pub latency: f64,
    pub source: &'static str,
}

/// The link catalog.
pub const LINKS: &[Link] = &[
    Link {
        name: "nvlink2",
        bw_per_dir: 150.0 * GB,
        latency: 5e-6,
        source: "V100 NVLink 2.0: 6 links x 25 GB/s per direction = 300 GB/s bidirectional"
    },
    Link {
        name: "nvswitch2",
        bw_per_dir: 150.0 * GB,
        latency: 5e-6,
        source: "DGX-2 NVSwitch: 300 GB/s bidirectional per GPU"
    },
    Link {
        name: "nvlink3",
        bw_per_dir: 300.0 * GB,
        latency: 5e-6,
        source: "A100 NVLink 3.0: 12 links, 600 GB/s bidirectional"
    },
    Link {
        name: "nvlink3-a800",
        bw_per_dir: 200.0 * GB,
        latency: 5e-6,
        source: "A800 (A100 export variant): NVLink 400 GB/s bidirectional (NVIDIA A800 product brief)"
    },
    Link {
        name: "nvlink4-h800",
        bw_per_dir: 200.0 * GB,
        latency: 5e-6,
        source: "H800 SXM (H100 export variant): NVLink 400 GB/s bidirectional (NVIDIA H800 product brief)"
    },
    Link {
        name: "nvlink4",
        bw_per_dir: 450.0 * GB,
        latency: 5e-6,
        source: "H100 NVLink 4.0: 18 links, 900 GB/s bidirectional"
    },
    Link {
        name: "nvlink5",
        bw_per_dir: 900.0 * GB,
        latency: 5e-6,
        source: "B200 NVLink 5.0: 1.8 TB/s bidirectional"
    },
    Link {
        name: "infinity-fabric-mi250x",
        bw_per_dir: 50.0 * GB,
        latency: 5e-6,
        source: "MI250X GCD-to-GCD Infinity Fabric, 50-100 GB/s per direction in a Frontier node; 50 assumed"
    },
    Link {
        name: "xgmi-mi300x",
        bw_per_dir: 448.0 * GB,
        latency: 5e-6,
        source: "MI300X: 7 x 64 GB/s xGMI links, 896 GB/s bidirectional"
    },
    Link {
        name: "pcie3",
        bw_per_dir: 16.0 * GB,
        latency: 10e-6,
        source: "PCIe 3.0 x16: ~16 GB/s per direction"
    },
    Link {
        name: "pcie4",
        bw_per_dir: 32.0 * GB,
        latency: 10e-6,
        source: "PCIe 4.0 x16: ~32 GB/s per direction"
    },
    Link {
        name: "pcie5",
        bw_per_dir: 64.0 * GB,
        latency: 10e-6,
        source: "PCIe 5.0 x16: ~64 GB/s per direction"
    },
    Link {
        name: "ib-edr",
        bw_per_dir: 12.5 * GB,
        latency: 8e-6,
        source: "InfiniBand EDR 100 Gb/s"
    },
    Link {
        name: "ib-hdr",
        bw_per_dir: 25.0 * GB,
        latency: 8e-6,
        source: "InfiniBand HDR 200 Gb/s"
    },
    Link {
        name: "ib-ndr",
        bw_per_dir: 50.0 * GB,
        latency: 8e-6,
        source: "InfiniBand NDR 400 Gb/s"
    },
    Link {
        name: "roce-100",
        bw_per_dir: 12.5 * GB,
        latency: 10e-6,
        source: "RoCE v2, 100 GbE"
    },
    Link {
        name: "roce-200",
        bw_per_dir: 25.0 * GB,
        latency: 10e-6,
        source: "RoCE v2, 200 GbE"
    },
    Link {
        name: "roce-400",
        bw_per_dir: 50.0 * GB,
        latency: 10e-6,
        source: "RoCE v2, 400 GbE (e.g. Meta's Llama 3 RoCE fabric)"
    },
    Link {
        name: "omnipath-100",
        bw_per_dir: 12.5 * GB,
        latency: 8e-6,
        source: "Intel Omni-Path 100 Gb/s"
    },
    Link {
        name: "slingshot-200",
        bw_per_dir: 25.0 * GB,
        latency: 10e-6,
        source: "HPE Slingshot-11, 200 Gb/s per NIC (Frontier: 4 per node)"
    },
    Link {
        name: "shm",
        bw_per_dir: 10.0 * GB,
        latency: 2e-6,
        source: "shared memory between threads of one CPU (assumed)"
    },
];

/// A cluster: identical nodes of `gpus_per_node` GPUs on one network.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: &'static str,
    pub gpu: &'static str,
    pub gpus: u64,
    pub gpus_per_node: u64,
    /// Intra-node link (catalog name).
    pub intra: &'static str,
    /// Network bandwidth per node in bytes/s, all NICs together, one direction.
    pub node_net_bw: f64,
    /// NIC kind (catalog name) for latency.
    pub nic: &'static str,
    pub source: &'static str,
    /// Unpublished details that are assumptions.
    pub assumptions: &'static str,
}

/// Gb/s to bytes/s.
const fn gbit(x: f64) -> f64 {
    x * 1e9 / 8.0
}

/// The cluster catalog.
pub const CLUSTERS: &[Cluster] = &[
    Cluster { name: "azure-openai-2020", gpu: "v100-32gb", gpus: 10_000, gpus_per_node: 8, intra: "nvlink2", node_net_bw: gbit(400.0), nic: "ib-edr",
        source: "Microsoft, May 2020 ('more than 285,000 CPU cores, 10,000 GPUs and 400 gigabits per second of network connectivity for each GPU server'); GPT-3 paper: V100s on a Microsoft cluster",
        assumptions: "GPU = V100 SXM2 32 GB; 8 GPUs per server (1,250 servers) with NVLink 2.0; 400 Gb/s per server as 4 x EDR 100 Gb/s InfiniBand" },
    Cluster { name: "dgx-a100-superpod", gpu: "a100-80gb", gpus: 1120, gpus_per_node: 8, intra: "nvlink3", node_net_bw: gbit(1600.0), nic: "ib-hdr",
        source: "NVIDIA DGX SuperPOD reference architecture (140 DGX A100 nodes, 8 x 200 Gb/s HDR compute NICs per node)", assumptions: "80 GB A100s" },
    Cluster { name: "selene", gpu: "a100-80gb", gpus: 4480, gpus_per_node: 8, intra: "nvlink3", node_net_bw: gbit(1600.0), nic: "ib-hdr",
        source: "NVIDIA Selene (560 DGX A100), used by Megatron-LM 2021/2022", assumptions: "all nodes 80 GB A100s" },
    Cluster { name: "h100-10k", gpu: "h100-sxm", gpus: 10_000, gpus_per_node: 8, intra: "nvlink4", node_net_bw: gbit(3200.0), nic: "ib-ndr",
        source: "DGX H100 SuperPOD design (8 x 400 Gb/s NDR per node), scaled to 1,250 nodes", assumptions: "hypothetical 10,000-GPU H100 SXM cluster, non-blocking fat tree" },
    Cluster { name: "dgx-h100-superpod", gpu: "h100-sxm", gpus: 256, gpus_per_node: 8, intra: "nvlink4", node_net_bw: gbit(3200.0), nic: "ib-ndr",
        source: "NVIDIA DGX H100 SuperPOD scalable unit (32 nodes)", assumptions: "one scalable unit" },
    Cluster { name: "h200-1k", gpu: "h200", gpus: 1024, gpus_per_node: 8, intra: "nvlink4", node_net_bw: gbit(3200.0), nic: "ib-ndr",
        source: "HGX H200 nodes, 8 x 400 Gb/s NDR", assumptions: "hypothetical 128-node cluster" },
    Cluster { name: "b200-1k", gpu: "b200", gpus: 1024, gpus_per_node: 8, intra: "nvlink5", node_net_bw: gbit(3200.0), nic: "ib-ndr",
        source: "DGX B200 datasheet: 8 x 400 Gb/s ConnectX-7 per node", assumptions: "hypothetical 128-node cluster" },
    Cluster { name: "cpu-local", gpu: "cpu-local", gpus: 1, gpus_per_node: 1, intra: "shm", node_net_bw: gbit(10.0), nic: "roce-100",
        source: "this machine (2 cores)", assumptions: "one device = the whole CPU" },
];

fn names<I: Iterator<Item = &'static str>>(it: I) -> String {
    it.collect::<Vec<_>>().join(", ")
}

/// Look up a GPU by catalog name.
pub fn gpu(name: &str) -> Result<&'static Gpu, PlanError> {
    GPUS.iter()
        .find(|g| g.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| PlanError::UnknownName {
            kind: "gpu",
            name: name.to_string(),
            valid: names(GPUS.iter().map(|g| g.name)),
        })
}

/// Look up a link by catalog name.
pub fn link(name: &str) -> Result<&'static Link, PlanError> {
    LINKS
        .iter()
        .find(|l| l.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| PlanError::UnknownName {
            kind: "link",
            name: name.to_string(),
            valid: names(LINKS.iter().map(|l| l.name)),
        })
}

/// Look up a cluster by catalog name.
pub fn cluster(name: &str) -> Result<&'static Cluster, PlanError> {
    CLUSTERS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| PlanError::UnknownName {
            kind: "cluster",
            name: name.to_string(),
            valid: names(CLUSTERS.iter().map(|c| c.name)),
        })
}

/// A resolved machine: what the time model reads (a cluster with its parts looked up,
/// possibly with overrides from a validation row).
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub gpu: Gpu,
    pub gpus_per_node: u64,
    /// One direction, per GPU, inside a node.
    pub intra_bw: f64,
    pub intra_latency: f64,
    /// One direction, per node.
    pub node_net_bw: f64,
    pub net_latency: f64,
}

impl Machine {
    /// Resolve a catalog cluster.
    pub fn from_cluster(c: &Cluster) -> Result<Machine, PlanError> {
        let g = gpu(c.gpu)?;
        let l = link(c.intra)?;
        let n = link(c.nic)?;
        Ok(Machine {
            gpu: g.clone(),
            gpus_per_node: c.gpus_per_node,
            intra_bw: l.bw_per_dir,
            intra_latency: l.latency,
            node_net_bw: c.node_net_bw,
            net_latency: n.latency,
        })
    }

    /// Network bandwidth one GPU gets when every GPU of its node sends at once.
    pub fn net_bw_per_gpu(&self) -> f64 {
        self.node_net_bw / self.gpus_per_node as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_resolves_and_unknown_names_list_valid_ones() {
        for c in CLUSTERS {
            let m = Machine::from_cluster(c).unwrap();
            assert!(
                m.gpu.peak_bf16 > 0.0 && m.intra_bw > 0.0 && m.node_net_bw > 0.0,
                "{}",
                c.name
            );
        }
        let err = cluster("nope").unwrap_err().to_string();
        assert!(
            err.contains("azure-openai-2020") && err.contains("h100-10k"),
            "{err}"
        );
        // 400 Gb/s per server of 8 GPUs = 6.25 GB/s per GPU.
        let az = Machine::from_cluster(cluster("azure-openai-2020").unwrap()).unwrap();
        assert!((az.net_bw_per_gpu() - 6.25e9).abs() < 1.0);
        assert_eq!(gpu("H100-SXM").unwrap().peak(Dtype::Fp8), 1979e12);
        assert_eq!(gpu("a100-80gb").unwrap().peak(Dtype::Fp8), 312e12);
    }
}
