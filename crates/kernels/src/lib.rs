//! # hyperion-kernels
//!
//! CPU numerical kernels for training GPT-2- and Llama-style transformers, on flat
//! row-major `f32` slices, each with an explicit forward and backward (like llm.c's
//! layers). Shapes are documented per function: B batch, T sequence, C channels, NH
//! heads, NKV key/value heads, HD head dim, V vocabulary. Linear weights are `(in, out)`
//! (Hugging Face `Conv1D` layout, [`linear_forward`]) or `(out, in)` (`nn.Linear`,
//! [`linear_t_forward`]).
//!
//! Llama's pieces: [`rmsnorm_forward`], [`rope_forward`] (with a [`RopeTable`]),
//! [`swiglu_forward`], grouped-query [`attention_gqa_forward`], [`linear_t_forward`] and
//! [`token_embedding_forward`], each with its backward.
//!
//! Conventions (docs/architecture.md):
//! - every backward ADDS (`+=`) into all gradients it writes, so callers zero them
//!   (the one exception is [`rope_backward`], a rotation applied in place to the
//!   accumulated gradient of the rotated q/k);
//! - results are bitwise identical for any rayon pool size: reductions use fixed
//!   chunking and a fixed order, never atomics;
//! - wrong buffer lengths are programmer errors and panic with a [`KernelError`]
//!   message naming the kernel and buffer. Token ids from user data should be checked
//!   with [`check_tokens`] first.
//!
//! GEMMs use the `gemm` crate (runtime AVX-512/AVX2/scalar dispatch); elementwise
//! loops are auto-vectorized under runtime-dispatched `#[target_feature]` (see `simd`).
//!
//! ```
//! use kernels::{linear_forward, linear_backward};
//! // y (2, 3) = x (2, 2) @ w (2, 3) + bias
//! let x = [1.0, 2.0, 3.0, 4.0];
//! let w = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
//! let bias = [0.5, 0.5, 0.5];
//! let mut y = [0.0; 6];
//! linear_forward(&mut y, &x, &w, Some(&bias), 2, 2, 3);
//! assert_eq!(y, [1.5, 2.5, 3.5, 3.5, 4.5, 7.5]);
//! // Backward with dy = 1 everywhere: dbias = column sums = [2, 2, 2].
//! let dy = [1.0; 6];
//! let (mut dx, mut dw, mut db) = ([0.0; 4], [0.0; 6], [0.0; 3]);
//! linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dy, &x, &w, 2, 2, 3);
//! assert_eq!(db, [2.0, 2.0, 2.0]);
//! assert_eq!(dx, [2.0, 2.0, 2.0, 2.0]); // row sums of w
//! ```

// `x % n != 0` rather than `is_multiple_of` (Rust 1.87): the workspace's rust-version is 1.80.
#![allow(clippy::manual_is_multiple_of)]

mod activation;
mod attention;
mod elementwise;
mod embedding;
mod error;
mod loss;
mod matmul;
mod norm;
mod optim;
mod rmsnorm;
mod rope;
mod simd;
mod swiglu;

pub use activation::{gelu_backward, gelu_forward};
pub use attention::{attention_backward, attention_forward, attention_gqa_backward, attention_gqa_forward, attention_saved_len};
pub use elementwise::{add, add_inplace, scale, sum_squares};
pub use embedding::{
    embedding_backward, embedding_forward, embedding_part_backward, embedding_part_forward, position_embedding_backward, token_embedding_backward,
    token_embedding_forward,
};
pub use error::{check_tokens, KernelError};
pub use loss::{softmax_row, softmax_xent_forward, softmax_xent_forward_backward, xent_parallel_exp, xent_parallel_grad, xent_parallel_stats};
pub use matmul::{linear_backward, linear_forward, linear_t_backward, linear_t_forward, matmul};
pub use norm::{layernorm_backward, layernorm_forward, layernorm_forward_eps};
pub use optim::adamw_step;
pub use rmsnorm::{rmsnorm_backward, rmsnorm_forward};
pub use rope::{rope_backward, rope_forward, RopeTable};
pub use swiglu::{swiglu_backward, swiglu_forward};
