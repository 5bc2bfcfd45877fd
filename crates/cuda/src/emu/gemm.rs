//! cuBLAS's GEMM written plainly, for the emulated device: column-major operands with
//! their leading dimensions and batch strides exactly as `cublasGemmStridedBatchedEx`
//! reads them, the argument checks cuBLAS makes (`CUBLAS_STATUS_INVALID_VALUE`), every
//! operand's extent checked against its allocation, and every element read checked
//! against the never-written fill. No fast path: a wrong transpose or leading
//! dimension reads other elements here exactly as it would on a GPU. fp32 accumulation
//! over k in order; the bias epilogue adds in fp32 before C's one rounding.

use crate::device::{Dtype, Gemm};
use crate::emu::mem;

#[inline(always)]
fn load(p: u64, i: usize, t: Dtype) -> (f32, bool) {
    // SAFETY: the extent of every operand was checked against its allocation.
    unsafe {
        match t {
            Dtype::F32 => {
                let bits = *(p as *const u32).add(i);
                (f32::from_bits(bits), bits == mem::NEVER_WRITTEN_F32)
            }
            Dtype::Bf16 => {
                let bits = *(p as *const u16).add(i);
                (f32::from_bits((bits as u32) << 16), bits == mem::NEVER_WRITTEN_BF16)
            }
        }
    }
}

fn store(p: u64, i: usize, t: Dtype, v: f32) {
    // SAFETY: as `load`.
    unsafe {
        match t {
            Dtype::F32 => *(p as *mut f32).add(i) = v,
            Dtype::Bf16 => *(p as *mut u16).add(i) = bf16_bits(v),
        }
    }
}

/// The number of elements an operand of `rows x cols` (column-major, leading dimension
/// `ld`) spans over `batch` matrices `stride` apart.
fn extent(rows: usize, cols: usize, ld: usize, stride: usize, batch: usize) -> usize {
    if rows == 0 || cols == 0 || batch == 0 {
        return 0;
    }
    (rows - 1) + (cols - 1) * ld + (batch - 1) * stride + 1
}

pub fn run(device: usize, g: &Gemm) -> Result<(), String> {
    let what = || format!("cuBLAS {g}");
    // cuBLAS's own argument checks.
    let (ar, ac) = if g.ta { (g.k, g.m) } else { (g.m, g.k) };
    let (br, bc) = if g.tb { (g.n, g.k) } else { (g.k, g.n) };
    for (name, ld, rows) in [("lda", g.lda, ar), ("ldb", g.ldb, br), ("ldc", g.ldc, g.m)] {
        if ld < rows.max(1) {
            return Err(format!("{}: {name} = {ld} is less than the {rows} rows of its operand (CUBLAS_STATUS_INVALID_VALUE)", what()));
        }
    }
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let es = |t: Dtype| t.size();
    mem::check(device, g.c, extent(g.m, g.n, g.ldc, g.stride_c, g.batch) * es(g.cd), &|| format!("{}: C", what()))?;
    if g.k > 0 && g.alpha != 0.0 {
        mem::check(device, g.a, extent(ar, ac, g.lda, g.stride_a, g.batch) * es(g.ab), &|| format!("{}: A", what()))?;
        mem::check(device, g.b, extent(br, bc, g.ldb, g.stride_b, g.batch) * es(g.ab), &|| format!("{}: B", what()))?;
    }
    if g.gelu_aux != 0 && g.bias == 0 {
        return Err(format!("{}: the GELU epilogue here is GELU_AUX_BIAS, which needs a bias (CUBLAS_STATUS_INVALID_VALUE)", what()));
    }
    if g.bias != 0 {
        mem::check(device, g.bias, g.m * es(g.cd), &|| format!("{}: bias", what()))?;
    }
    if g.gelu_aux != 0 {
        mem::check(device, g.gelu_aux, extent(g.m, g.n, g.ldc, g.stride_c, g.batch) * es(g.cd), &|| format!("{}: GELU aux", what()))?;
    }
    // Element i of an operand, or the error naming it when it was never written.
    let read = |p: u64, i: usize, t, op: &str| match load(p, i, t) {
        (_, true) => Err(format!("{}: reads {op} element {i}, which was never written", what())),
        (v, false) => Ok(v),
    };
    let mut col = vec![0.0f32; g.k];
    let mut acc = vec![0.0f32; g.m];
    for p in 0..g.batch {
        let (a0, b0, c0) = (p * g.stride_a, p * g.stride_b, p * g.stride_c);
        for j in 0..g.n {
            acc.fill(0.0);
            if g.alpha != 0.0 {
                // Column j of op(B).
                for (l, x) in col.iter_mut().enumerate() {
                    *x = read(g.b, b0 + if g.tb { j + l * g.ldb } else { l + j * g.ldb }, g.ab, "B")?;
                }
                // acc[i] = sum over l in order of op(A)[i, l] col[l], walking A along its
                // contiguous dimension (the order of the sum is the same either way).
                if g.ta {
                    for (i, out) in acc.iter_mut().enumerate() {
                        let mut s = 0.0f32;
                        for (l, &bv) in col.iter().enumerate() {
                            s += read(g.a, a0 + l + i * g.lda, g.ab, "A")? * bv;
                        }
                        *out = s;
                    }
                } else {
                    for (l, &bv) in col.iter().enumerate() {
                        for (i, out) in acc.iter_mut().enumerate() {
                            *out += read(g.a, a0 + i + l * g.lda, g.ab, "A")? * bv;
                        }
                    }
                }
            }
            for (i, &s) in acc.iter().enumerate() {
                let ic = c0 + i + j * g.ldc;
                let mut out = g.alpha * s;
                if g.beta != 0.0 {
                    out += g.beta * read(g.c, ic, g.cd, "C (beta != 0)")?;
                }
                if g.bias != 0 {
                    out += read(g.bias, i, g.cd, "bias")?;
                }
                if g.gelu_aux != 0 {
                    store(g.gelu_aux, ic, g.cd, out);
                    out = gelu(out);
                }
                store(g.c, ic, g.cd, out);
            }
        }
    }
    Ok(())
}

/// GELU in its tanh form, GPT-2's (the kernels' and cuBLASLt's epilogue's form).
fn gelu(x: f32) -> f32 {
    const K: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (K * (x + 0.044_715 * x * x * x)).tanh())
}

/// f32 to bf16 bits, round to nearest even, NaN kept NaN (the kernels' prelude's rule).
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return 0x7fc0;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
