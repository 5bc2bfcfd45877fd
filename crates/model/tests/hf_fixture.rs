//! The model against Hugging Face `transformers` itself: a tiny `LlamaForCausalLM` (GQA,
//! kv_heads < heads, head_dim given, untied head) and a tiny `GPT2LMHeadModel`, random
//! weights from a fixed seed, computed in float64 and stored as f32 by
//! `tests/fixtures/make_hf_fixtures.py`. The model is built from the fixture's own
//! `config.json` (through `model::hf::from_config`) and its weights are loaded by name:
//! logits, loss and every parameter gradient must match.

use model::{Activations, Model};
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

/// max |got - want| / max |want| over the tensor, i.e. relative to the tensor's scale.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64)).max(1e-12);
    got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).abs()).fold(0.0, f64::max) / scale
}

fn check(file: &str, family: model::spec::Family) {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().expect("fixture metadata");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let config: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    let spec = model::hf::from_config(&config).unwrap();
    assert_eq!(spec.family, family);
    let (b, t): (usize, usize) = (meta["B"].parse().unwrap(), meta["T"].parse().unwrap());
    let m = Model::new(spec.clone());
    let mut params = m.zeros();
    for (bk, ts) in m.layout.tensors() {
        assert_eq!(st.tensor(&ts.name).unwrap().shape(), ts.shape.as_slice(), "{}", ts.name);
        params[bk][ts.range()].copy_from_slice(&f32s(&st, &ts.name));
    }
    // Every stored parameter is one of the model's (nothing left unloaded).
    let stored = st.names().into_iter().filter(|n| !n.starts_with("grad.") && !["tokens", "targets", "logits", "loss"].contains(&&n[..])).count();
    assert_eq!(stored, m.layout.tensors().count());
    let (x, y) = (ids(&st, "tokens"), ids(&st, "targets"));
    let n = b * t;

    let mut acts = Activations::new(&spec, b, t, false);
    m.forward_hidden(&params, &mut acts, &x);
    let want_logits = f32s(&st, "logits");
    let v = spec.vocab;
    let mut row = vec![0.0; v];
    let mut worst = 0.0f64;
    for s in 0..b {
        for p in 0..t {
            m.head_logits(&params[0], &params[m.layout.head()], &mut acts, s, p, &mut row);
            let r = (s * t + p) * v;
            worst = worst.max(rel_err(&row, &want_logits[r..r + v]));
        }
    }
    assert!(worst < 1e-5, "{file}: logits relative error {worst:e}");

    let mut grads = m.zeros();
    let loss = m.forward_backward(&params, &mut grads, &mut acts, &x, &y, 1.0 / n as f32) / n as f64;
    let want_loss = f32s(&st, "loss")[0] as f64;
    assert!((loss - want_loss).abs() < 1e-5 * want_loss, "{file}: loss {loss} vs transformers {want_loss}");
    for (bk, ts) in m.layout.tensors() {
        let e = rel_err(&grads[bk][ts.range()], &f32s(&st, &format!("grad.{}", ts.name)));
        assert!(e < 1e-4, "{file}: grad.{} relative error {e:e}", ts.name);
    }
}

#[test]
fn matches_transformers_llama_with_gqa() {
    check("hf_llama_tiny.safetensors", model::spec::Family::Llama);
}

#[test]
fn matches_transformers_gpt2() {
    check("hf_gpt2_tiny.safetensors", model::spec::Family::Gpt2);
}
