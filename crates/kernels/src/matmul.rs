//! GEMM and the linear layer, in Hugging Face `Conv1D` layout (`y = x W + b`, W is
//! (in, out): GPT-2) or `nn.Linear` layout (`y = x W^T + b`, W is (out, in): Llama).
//! The `nn.Linear` variants read W through transposed strides: no copies.
//!
//! All products go through the `gemm` crate (0.19). Its `get_gemm_fn` picks the
//! microkernel at run time (`is_x86_feature_detected!("avx512f")` with our `x86-v4`
//! feature, else `"fma"`, else scalar) and caches it in an atomic pointer, so the binary
//! runs on CPUs without AVX-512. Its threading splits only the m/n dimensions across
//! rayon tasks; the k blocking (`kernel_params`) depends on the shape and the cache sizes,
//! never on the thread count, so every output element sums its k terms in the same
//! order whatever the pool size: products are deterministic.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::check_len;

/// A strided matrix operand: element (i, j) lives at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    /// Row-major (rows, cols) storage, optionally read transposed.
    pub(crate) fn row_major(data: &[f32], cols: usize, transposed: bool) -> Mat {
        if transposed {
            Mat { ptr: data.as_ptr(), rs: 1, cs: cols as isize }
        } else {
            Mat { ptr: data.as_ptr(), rs: cols as isize, cs: 1 }
        }
    }
}

/// `dst (m, n; row stride dst_rs) = [dst +] scale * a (m, k) @ b (k, n)`.
///
/// # Safety
/// `dst` must be valid for writes and `a`, `b` for reads at every index the strides
/// reach for the given shape, and `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    a: Mat,
    b: Mat,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let par = if parallel { Parallelism::Rayon(0) } else { Parallelism::None };
    // gemm computes dst := alpha * dst + beta * lhs @ rhs (alpha ignored unless read_dst).
    gemm::gemm(
        m, n, k, dst, 1, dst_rs as isize, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0,
        scale, false, false, false, par,
    );
}

/// `c[m,n] = op(a)[m,k] @ op(b)[k,n]` (+ c if accumulate). op(a)=a stored (m,k) if !ta,
/// else a^T with a stored (k,m); same for b. Multi-threaded, deterministic.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    check_len("matmul", "c", c.len(), m * n);
    check_len("matmul", "a", a.len(), m * k);
    check_len("matmul", "b", b.len(), k * n);
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // a stored (m,k) -> row stride k; a^T stored (k,m) -> element (i,p) at p*m + i.
    let am = Mat::row_major(a, if ta { m } else { k }, ta);
    let bm = Mat::row_major(b, if tb { k } else { n }, tb);
    // SAFETY: lengths checked above cover every index the strides reach; `c` is a
    // unique borrow so it cannot overlap `a` or `b`.
    unsafe { gemm_raw(c.as_mut_ptr(), n, am, bm, m, n, k, accumulate, 1.0, true) };
}

/// y (rows, out) = x (rows, in) @ w (in, out) + bias (out).
pub fn linear_forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    check_len("linear_forward", "y", y.len(), rows * out_dim);
    check_len("linear_forward", "x", x.len(), rows * in_dim);
    check_len("linear_forward", "w", w.len(), in_dim * out_dim);
    // w (in, out) read as is.
    linear_forward_with("linear_forward", y, x, Mat::row_major(w, out_dim, false), bias, rows, in_dim, out_dim);
}

/// y (rows, out) = x (rows, in) @ w^T + bias (out), with w (out, in) as `nn.Linear`
/// stores it (Llama checkpoints).
pub fn linear_t_forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    check_len("linear_t_forward", "y", y.len(), rows * out_dim);
    check_len("linear_t_forward", "x", x.len(), rows * in_dim);
    check_len("linear_t_forward", "w", w.len(), out_dim * in_dim);
    // w^T (in, out): element (p, j) = w[j * in + p].
    linear_forward_with("linear_t_forward", y, x, Mat::row_major(w, in_dim, true), bias, rows, in_dim, out_dim);
}

/// y = x @ wm + bias, `wm` an (in, out) view; lengths of y, x and w already checked.
#[allow(clippy::too_many_arguments)]
fn linear_forward_with(
    kernel: &'static str,
    y: &mut [f32],
    x: &[f32],
    wm: Mat,
    bias: Option<&[f32]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    let accumulate = match bias {
        Some(bias) => {
            check_len(kernel, "bias", bias.len(), out_dim);
            // Broadcast the bias first and let the GEMM accumulate onto it: one pass
            // over y instead of a GEMM pass plus a bias pass.
            y.par_chunks_mut(out_dim.max(1) * 64).for_each(|blk| {
                for row in blk.chunks_mut(out_dim.max(1)) {
                    row.copy_from_slice(bias);
                }
            });
            true
        }
        None => false,
    };
    let xm = Mat::row_major(x, in_dim, false);
    if in_dim == 0 {
        if !accumulate {
            y.fill(0.0);
        }
        return;
    }
    // SAFETY: the callers checked the lengths of y, x and w for these shapes; y is a
    // unique borrow, so it overlaps neither operand.
    unsafe { gemm_raw(y.as_mut_ptr(), out_dim, xm, wm, rows, out_dim, in_dim, accumulate, 1.0, true) };
}

/// dx += dy @ w^T ; dw += x^T @ dy ; dbias += column sums of dy. (dx None = not needed.)
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    linear_backward_with("linear_backward", false, dx, dw, dbias, dy, x, w, rows, in_dim, out_dim);
}

/// Backward of [`linear_t_forward`] (w (out, in)): dx += dy @ w ; dw (out, in) += dy^T @ x ;
/// dbias += column sums of dy. (dx None = not needed.)
#[allow(clippy::too_many_arguments)]
pub fn linear_t_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    linear_backward_with("linear_t_backward", true, dx, dw, dbias, dy, x, w, rows, in_dim, out_dim);
}

/// Both weight layouts' backward: `out_in` = w stored (out, in), else (in, out). The
/// same two GEMMs either way, only the strides of w and of dw's product differ.
#[allow(clippy::too_many_arguments)]
fn linear_backward_with(
    kernel: &'static str,
    out_in: bool,
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) {
    check_len(kernel, "dw", dw.len(), in_dim * out_dim);
    check_len(kernel, "dy", dy.len(), rows * out_dim);
    check_len(kernel, "x", x.len(), rows * in_dim);
    check_len(kernel, "w", w.len(), in_dim * out_dim);
    let dym = Mat::row_major(dy, out_dim, false);
    if let Some(dx) = dx {
        check_len(kernel, "dx", dx.len(), rows * in_dim);
        // dx (rows, in) += dy (rows, out) @ W^T (out, in), W the (in, out) view of w.
        let wt = if out_in { Mat::row_major(w, in_dim, false) } else { Mat::row_major(w, out_dim, true) };
        // SAFETY: lengths checked; dx is a unique borrow.
        unsafe { gemm_raw(dx.as_mut_ptr(), in_dim, dym, wt, rows, in_dim, out_dim, true, 1.0, true) };
    }
    if out_in {
        // dw (out, in) += dy^T (out, rows) @ x (rows, in)
        let dyt = Mat::row_major(dy, out_dim, true);
        let xm = Mat::row_major(x, in_dim, false);
        // SAFETY: lengths checked; dw is a unique borrow.
        unsafe { gemm_raw(dw.as_mut_ptr(), in_dim, dyt, xm, out_dim, in_dim, rows, true, 1.0, true) };
    } else {
        // dw (in, out) += x^T (in, rows) @ dy (rows, out)
        let xt = Mat::row_major(x, in_dim, true);
        // SAFETY: lengths checked; dw is a unique borrow.
        unsafe { gemm_raw(dw.as_mut_ptr(), out_dim, xt, dym, in_dim, out_dim, rows, true, 1.0, true) };
    }
    if let Some(db) = dbias {
        check_len(kernel, "dbias", db.len(), out_dim);
        column_sums_add(db, dy, rows, out_dim);
    }
}

/// Columns per task in [`column_sums_add`]: 64 floats = 4 cache lines per row visit.
const COL_BLOCK: usize = 64;

/// acc[c] += sum_r m[r, c], rows summed in order 0..rows for every column, so the
/// result is independent of how column blocks are spread over threads.
pub(crate) fn column_sums_add(acc: &mut [f32], m: &[f32], rows: usize, cols: usize) {
    acc.par_chunks_mut(COL_BLOCK).enumerate().for_each(|(blk, out)| {
        let c0 = blk * COL_BLOCK;
        let width = out.len();
        crate::simd::vectorized(#[inline(always)] || {
            let mut local = [0.0f32; COL_BLOCK];
            for r in 0..rows {
                let row = &m[r * cols + c0..r * cols + c0 + width];
                for (l, &v) in local.iter_mut().zip(row) {
                    *l += v;
                }
            }
            for (o, l) in out.iter_mut().zip(local.iter()) {
                *o += *l;
            }
        })
    });
}
