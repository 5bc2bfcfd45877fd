//! The whole model on the CUDA backend against the CPU backend: one forward and
//! backward of tiny GPT-2 and Llama models (every op of both families, GQA, RoPE, tied
//! and untied heads) gives the same loss and gradients (f32, no TF32: relative 1e-4;
//! bf16 storage with fp32 arithmetic and statistics: 2e-2 on the loss, 5e-2 on each
//! bucket's gradient, which rounds at every op).
//! Runs on the emulated device everywhere, and on GPU 0 where there is one (skipping
//! that half, saying so, without one).

use cuda_kernels::backend::Cuda;
use cuda_kernels::device::Dtype;
use cuda_kernels::gpu::unavailable;
use model::backend::Backend;
use model::spec::ModelSpec;
use model::{Activations, Gpt, Model};

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

fn check(spec: ModelSpec, cuda: &Cuda) {
    let (b, t) = (2, spec.seq.min(16));
    let cpu = Gpt::new(spec.clone());
    let params = cpu.init_params(7);
    let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 31 + 5) % spec.vocab) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i * 17 + 3) % spec.vocab) as u32).collect();
    let mut grads = cpu.zeros();
    let mut acts = Activations::new(&spec, b, t, false);
    let want = cpu.forward_backward(&params, &mut grads, &mut acts, &tokens, &targets, 0.1);

    let gpu = Model::with_backend(cuda.clone(), spec.clone());
    let dparams: Vec<_> = params.iter().map(|p| cuda.from_host(p)).collect();
    let mut dgrads: Vec<_> = grads.iter().map(|g| cuda.zeros(g.len())).collect();
    let mut dacts = Activations::with_backend(cuda, &spec, b, t, false);
    let got = gpu.forward_backward(&dparams, &mut dgrads, &mut dacts, &tokens, &targets, 0.1);
    let (loss_tol, grad_tol) = if cuda.dtype == Dtype::Bf16 { (2e-2, 5e-2) } else { (1e-5, 1e-4) };
    let le = ((got - want) / want).abs();
    assert!(le < loss_tol, "{} {:?}: loss {got} on the GPU, {want} on the CPU", spec.name, cuda.dtype);
    let mut worst = 0.0f64;
    for (i, (d, h)) in dgrads.iter().zip(&grads).enumerate() {
        let mut host = vec![0.0; h.len()];
        cuda.to_host(d, &mut host);
        let e = rel(&host, h);
        worst = worst.max(e);
        assert!(e < grad_tol, "{} {:?}: bucket {i} gradient differs by relative {e:e}", spec.name, cuda.dtype);
    }
    eprintln!("{} {:?}: loss relative {le:e}, worst bucket gradient {worst:e}", spec.name, cuda.dtype);
}

fn models(cuda: &Cuda) {
    for name in ["gpt2-mini", "llama-mini"] {
        let mut spec = model::spec::get(name).expect("a catalog entry");
        spec.layers = 2;
        check(spec, cuda);
    }
}

#[test]
fn the_model_on_the_emulated_device_matches_the_cpu() {
    models(&Cuda::emulated(0));
}

#[test]
fn the_bf16_model_on_the_emulated_device_matches_the_cpu() {
    models(&Cuda::emulated(0).with_dtype(Dtype::Bf16));
}

#[test]
fn the_model_on_the_gpu_matches_the_cpu() {
    if let Some(why) = unavailable(0) {
        eprintln!("SKIPPED: no GPU check here: {why}");
        return;
    }
    let gpu = Cuda::new(0).expect("the CUDA backend");
    models(&gpu);
    models(&gpu.with_dtype(Dtype::Bf16));
}
