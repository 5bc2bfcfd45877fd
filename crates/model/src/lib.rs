//! Decoder-only transformers (GPT-2 and Llama) as data: one [`ModelSpec`] per model,
//! its parameters as named tensor specs in flat buckets, and the model as stages with an
//! explicit forward and backward, run through a [`Backend`].
//!
//! - [`spec`]: the shape (family, dims, norm, MLP, positions, tied head) and its exact
//!   parameter and FLOP counts; the catalog the presets and the planner share.
//! - [`layout`]: every parameter's Hugging Face name, shape, split dim and bucket offset.
//! - [`Model`]: stages (embedding, blocks, head) and the one stage loop every pass uses.
//! - [`backend`]: the seam where a backend plugs in ([`Cpu`] today).
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
//!
//! // The same for a Llama from the catalog.
//! let spec = model::spec::get("llama-char-cpu").unwrap();
//! let llama = model::Model::new(spec.clone());
//! assert_eq!(llama.layout.num_params(), spec.num_params());
//! ```

mod acts;
pub mod backend;
pub mod hf;
pub mod init;
pub mod layout;
mod model;
pub mod spec;

pub use acts::{Activations, BlockActs, Saved, HEAD_SCRATCH_FLOATS};
pub use backend::{Backend, Cpu};
pub use layout::{tp_part_boxes, BucketSpec, GptConfig, Layout, PartBox, Split, TensorKind, TensorSpec, ToSpec};
pub use model::{Chunk, Driver, Gpt, Model, Stage, TpPart, TpReduce};
pub use spec::ModelSpec;
