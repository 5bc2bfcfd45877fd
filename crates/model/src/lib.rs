//! GPT-2 as flat parameter buckets with an explicit forward and backward per stage.
//!
//! Parameter names and shapes equal Hugging Face GPT-2's (`transformer.h.0.attn.c_attn.weight`,
//! Conv1D layout `(in, out)`); the buckets are `[embedding, h.0 .. h.{L-1}, head]`.
//!
//! ```
//! use model::{Activations, Gpt, GptConfig};
//! let cfg = GptConfig { vocab_size: 11, n_layer: 1, n_head: 2, n_embd: 8, block_size: 4, bias: true };
//! let gpt = Gpt::new(cfg);
//! let params = gpt.init_params(42);
//! let mut grads = gpt.zeros();
//! let mut acts = Activations::new(&cfg, 1, 4, false);
//! let loss = gpt.forward_backward(&params, &mut grads, &mut acts, &[1, 2, 3, 4], &[2, 3, 4, 5], 0.25) / 4.0;
//! assert!((loss - (11f64).ln()).abs() < 0.1); // near-uniform predictions at init
//! ```

mod acts;
mod gpt;
pub mod init;
pub mod layout;

pub use acts::{Activations, BlockActs};
pub use gpt::Gpt;
pub use layout::{BucketSpec, GptConfig, Layout, TensorKind, TensorSpec};

impl Gpt {
    /// Freshly initialised buckets (see [`init::init_bucket`]).
    pub fn init_params(&self, seed: u64) -> Vec<Vec<f32>> {
        self.layout
            .buckets
            .iter()
            .map(|b| {
                let mut v = vec![0.0; b.numel];
                init::init_bucket(&self.cfg, b, seed, &mut v);
                v
            })
            .collect()
    }

    /// Zeroed buffers shaped like the buckets (gradients, optimizer moments).
    pub fn zeros(&self) -> Vec<Vec<f32>> {
        self.layout.buckets.iter().map(|b| vec![0.0; b.numel]).collect()
    }
}
