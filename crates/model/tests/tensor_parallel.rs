//! Tensor parallelism in the stage loop (Megatron-LM): every rank of a tp group holds
//! its part of each tensor (`Layout::tp_extract`), runs the same stage loop with
//! `tp_reduce` through a real communicator (thread ranks), and together they compute the
//! whole model's loss and gradients: each rank's gradients are its parts of the whole
//! gradients. GPT-2 (fused q|k|v, biases, tied head, learned positions) and Llama (GQA,
//! SwiGLU, RoPE, untied head), even and uneven vocabulary splits, recompute on and off.

use std::time::Duration;

use comm::{Communicator, ReduceOp};
use model::init::SplitMix64;
use model::spec::{ModelSpec, Positions};
use model::{Activations, Cpu, Driver, Model, TpReduce};

fn gpt2(vocab: usize) -> ModelSpec {
    ModelSpec::gpt("tiny-gpt2", 2, 32, 4, vocab, 8, "test")
}

fn llama(vocab: usize, tied: bool, bias: bool) -> ModelSpec {
    let mut m = ModelSpec::llama("tiny-llama", 2, 24, 4, 2, 16, vocab, 8, "test");
    m.head_dim = 6;
    m.tied = tied;
    m.bias = bias;
    m.positions = Positions::Rope { theta: 500.0 };
    m
}

fn batch(vocab: usize, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut r = SplitMix64(seed);
    let x = (0..n).map(|_| (r.next_u64() % vocab as u64) as u32).collect();
    let y = (0..n).map(|_| (r.next_u64() % vocab as u64) as u32).collect();
    (x, y)
}

/// Parameters with enough spread that every path matters (norm weights near 1).
fn params(m: &Model, seed: u64) -> Vec<Vec<f32>> {
    let mut r = SplitMix64(seed);
    let mut p = m.zeros();
    for (b, t) in m.layout.tensors() {
        let base = if t.name.contains("norm") || t.name.contains("ln_") { 1.0 } else { 0.0 };
        for x in &mut p[b][t.range()] {
            *x = base + 0.2 * r.next_normal() as f32;
        }
    }
    p
}

/// One rank's driver: its buckets whole, `tp_reduce` over the group's communicator.
struct Tp<'a> {
    params: &'a [Vec<f32>],
    grads: Vec<Vec<f32>>,
    comm: &'a dyn Communicator,
    reductions: usize,
    gathers: usize,
    scatters: usize,
}

impl<'a> Driver<Cpu> for Tp<'a> {
    type Error = comm::CommError;
    type Params = &'a [f32];
    type Grads = Vec<f32>;
    fn acquire(&mut self, b: usize) -> Result<&'a [f32], Self::Error> {
        Ok(&self.params[b])
    }
    fn release(&mut self, _b: usize, _p: &'a [f32]) {}
    fn grad(&mut self, b: usize) -> Result<Vec<f32>, Self::Error> {
        Ok(std::mem::take(&mut self.grads[b]))
    }
    fn grad_done(&mut self, b: usize, g: Vec<f32>) -> Result<(), Self::Error> {
        self.grads[b] = g;
        Ok(())
    }
    fn tp_reduce(&mut self, x: &mut [f32], op: TpReduce) -> Result<(), Self::Error> {
        self.reductions += 1;
        let op = match op {
            TpReduce::Sum => ReduceOp::Sum,
            TpReduce::Max => ReduceOp::Max,
        };
        self.comm.all_reduce(x.into(), op)
    }
    fn tp_all_gather(&mut self, shard: &[f32], full: &mut [f32]) -> Result<(), Self::Error> {
        self.gathers += 1;
        self.comm.all_gather(shard.into(), full.into())
    }
    fn tp_reduce_scatter(&mut self, full: &[f32], shard: &mut [f32]) -> Result<(), Self::Error> {
        self.scatters += 1;
        self.comm.reduce_scatter(full.into(), shard.into(), ReduceOp::Sum)
    }
}

fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-5 * scale.max(1e-3)
}

/// Runs `spec` whole and as `tp` ranks (with sequence parallelism when `sp`); checks
/// loss, eval loss, every gradient and the number of collectives.
fn check_sp(spec: &ModelSpec, tp: usize, recompute: bool, sp: bool) {
    let (b, t) = (3, spec.seq);
    let whole = Model::new(spec.clone());
    let p = params(&whole, 11);
    let (x, y) = batch(spec.vocab, b * t, 5);
    let mut g = whole.zeros();
    let mut acts = Activations::new(&whole.spec, b, t, recompute);
    let loss = whole.forward_backward(&p, &mut g, &mut acts, &x, &y, 0.25);
    let eval = whole.forward_loss(&p, &mut acts, &x, &y);
    let scale = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));

    let out = comm::run_local(tp, Duration::from_secs(30), |c| -> Result<(f64, f64, [usize; 3]), String> {
        let r = c.rank();
        let m = Model::tensor_parallel(Cpu, spec, tp, r)?;
        let mut mine = m.zeros();
        whole.layout.tp_extract(&p, &m.layout, &mut mine, tp, r);
        let mut expected = m.zeros();
        whole.layout.tp_extract(&g, &m.layout, &mut expected, tp, r);
        let mut d = Tp { params: &mine, grads: m.zeros(), comm: &c, reductions: 0, gathers: 0, scatters: 0 };
        let mut acts = Activations::sequence_parallel(&Cpu, &m.spec, b, t, recompute, if sp { tp } else { 1 });
        let l = m.train_micro(&mut d, &mut acts, &x, &y, 0.25).map_err(|e| e.to_string())?;
        let counts = [d.reductions, d.gathers, d.scatters];
        let e = m.eval_micro(&mut d, &mut acts, &x, &y).map_err(|e| e.to_string())?;
        for (bk, ts) in m.layout.tensors() {
            let (got, want) = (&d.grads[bk][ts.range()], &expected[bk][ts.range()]);
            let s = scale(want);
            if let Some(i) = (0..got.len()).find(|&i| !close(got[i], want[i], s)) {
                return Err(format!("rank {r}: gradient of {} [{i}]: {} vs whole {}", ts.name, got[i], want[i]));
            }
        }
        Ok((l, e, counts))
    })
    .unwrap();
    let l = spec.layers;
    let fwd = if recompute { 2 } else { 1 };
    let want = if sp {
        // All-reduces: 3 per head chunk, the norms' weight gradients of every block and
        // of the final norm. Gathers: 2 per block forward, 4 per block backward, the
        // head's input, the embedding's gradient. Scatters: the embedding, 2 per block
        // forward and backward, the head's d x.
        [3 + l + 1, 2 * fwd * l + 4 * l + 2, 1 + 2 * fwd * l + 2 * l + 1]
    } else {
        // The embedding, 2 per block forward, 3 per head chunk, 2 per block backward, the head's d x.
        [1 + 2 * fwd * l + 2 * l + 3 + 1, 0, 0]
    };
    for (r, (lo, e, counts)) in out.iter().enumerate() {
        assert!(((lo - loss) / loss).abs() < 1e-5, "{} tp={tp} sp={sp} rank {r}: loss {lo} vs whole {loss}", spec.name);
        assert!(((e - eval) / eval).abs() < 1e-5, "{} tp={tp} sp={sp} rank {r}: eval loss {e} vs whole {eval}", spec.name);
        assert_eq!(*counts, want, "{} tp={tp} sp={sp}: (all-reduces, all-gathers, reduce-scatters) per micro-batch", spec.name);
    }
}

fn check(spec: &ModelSpec, tp: usize, recompute: bool) {
    check_sp(spec, tp, recompute, false);
}

#[test]
fn sequence_parallel_ranks_compute_the_whole_models_loss_and_gradients() {
    for tp in [2, 4] {
        for recompute in [false, true] {
            check_sp(&gpt2(64), tp, recompute, true);
        }
    }
    check_sp(&gpt2(61), 4, false, true);
    for (tied, bias) in [(false, false), (true, true)] {
        check_sp(&llama(37, tied, bias), 2, false, true);
        check_sp(&llama(37, tied, bias), 2, true, true);
    }
}

#[test]
fn gpt2_tp_ranks_compute_the_whole_models_loss_and_gradients() {
    for tp in [2, 4] {
        for recompute in [false, true] {
            check(&gpt2(64), tp, recompute);
        }
    }
    // 61 tokens over 2 and 4 ranks: parts of 31 + 30 and 16 + 16 + 16 + 13.
    check(&gpt2(61), 2, false);
    check(&gpt2(61), 4, false);
}

#[test]
fn llama_tp_ranks_compute_the_whole_models_loss_and_gradients() {
    for (tied, bias) in [(false, false), (true, true)] {
        check(&llama(37, tied, bias), 2, false);
        check(&llama(37, tied, bias), 2, true);
    }
}

#[test]
fn a_tp_degree_that_does_not_divide_is_refused_naming_the_dimension() {
    // 2 key/value heads cannot be split 4 ways.
    let e = Model::tensor_parallel(Cpu, &llama(37, false, false), 4, 0).err().unwrap();
    assert!(e.contains("parallel.tp = 4") && e.contains("key/value heads (2)"), "{e}");
    let e = Model::tensor_parallel(Cpu, &gpt2(64), 3, 0).err().unwrap();
    assert!(e.contains("attention heads (4)"), "{e}");
    let e = Model::tensor_parallel(Cpu, &gpt2(3), 4, 3).err().unwrap();
    assert!(e.contains("no rows of the 3-token vocabulary"), "{e}");
}
