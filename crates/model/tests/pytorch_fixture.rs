//! The whole model against a PyTorch reference: loss, logits and every parameter
//! gradient on a tiny config, with and without biases. Fixtures are made by
//! `tests/fixtures/make_gpt_fixture.py` (float64 PyTorch, stored as f32).

use model::{Activations, Gpt, GptConfig};
use safetensors::{Dtype, SafeTensors};

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture lacks {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn ids(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture lacks {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

fn close(name: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{name} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{name}[{i}]: got {g}, PyTorch {w}");
    }
}

fn check(file: &str, bias: bool) {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cfg = GptConfig { vocab_size: 37, n_layer: 2, n_head: 2, n_embd: 16, block_size: 8, bias };
    let (b, t) = (2, 8);
    let gpt = Gpt::new(cfg);
    let mut params = gpt.zeros();
    for (bk, spec) in gpt.layout.tensors() {
        let src = f32s(&st, &spec.name);
        assert_eq!(st.tensor(&spec.name).unwrap().shape(), spec.shape.as_slice(), "{}", spec.name);
        params[bk][spec.range()].copy_from_slice(&src);
    }
    let (x, y) = (ids(&st, "tokens"), ids(&st, "targets"));
    let n = b * t;

    // Logits at every position.
    let mut acts = Activations::new(&cfg, b, t, false);
    gpt.forward_hidden(&params, &mut acts, &x);
    let want_logits = f32s(&st, "logits");
    let mut row = vec![0.0; cfg.vocab_size];
    for s in 0..b {
        for p in 0..t {
            gpt.head_logits(&params[0], &params[gpt.layout.head()], &mut acts, s, p, &mut row);
            let r = (s * t + p) * cfg.vocab_size;
            close("logits", &row, &want_logits[r..r + cfg.vocab_size], 1e-4, 1e-5);
        }
    }

    // Loss and gradients of the mean loss.
    let mut grads = gpt.zeros();
    let loss = gpt.forward_backward(&params, &mut grads, &mut acts, &x, &y, 1.0 / n as f32) / n as f64;
    let want_loss = f32s(&st, "loss")[0] as f64;
    assert!((loss - want_loss).abs() < 1e-5 * want_loss, "loss {loss} vs PyTorch {want_loss}");
    for (bk, spec) in gpt.layout.tensors() {
        let want = f32s(&st, &format!("grad.{}", spec.name));
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        close(&format!("grad.{}", spec.name), &grads[bk][spec.range()], &want, 1e-3, 1e-4 * scale);
    }
}

#[test]
fn matches_pytorch_with_bias() {
    check("gpt_tiny_bias.safetensors", true);
}

#[test]
fn matches_pytorch_without_bias() {
    check("gpt_tiny_nobias.safetensors", false);
}
