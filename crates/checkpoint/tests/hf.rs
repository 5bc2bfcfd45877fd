//! Export to and import from standalone (Hugging Face style) safetensors files.

mod common;

use checkpoint::{
    begin, commit, export_safetensors, open, read_safetensors, CheckpointError, TensorSlice,
};
use common::{bits, random_bits};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A sharded checkpoint with two parameters and one optimizer moment.
fn sharded_checkpoint(run: &std::path::Path) -> (Vec<f32>, Vec<f32>) {
    let w = random_bits(21, 5 * 7);
    let b = random_bits(22, 7);
    let m = vec![0.25f32; 35];
    let pending = begin(run, 9).unwrap();
    let r0 = pending
        .write_file(
            "0.safetensors",
            &[
                TensorSlice {
                    name: "h.0.mlp.c_fc.weight",
                    global_shape: &[5, 7],
                    start: 0,
                    data: &w[..13],
                },
                TensorSlice {
                    name: "adam.m.h.0.mlp.c_fc.weight",
                    global_shape: &[5, 7],
                    start: 0,
                    data: &m,
                },
            ],
        )
        .unwrap();
    let r1 = pending
        .write_file(
            "1.safetensors",
            &[
                TensorSlice {
                    name: "h.0.mlp.c_fc.weight",
                    global_shape: &[5, 7],
                    start: 13,
                    data: &w[13..],
                },
                TensorSlice {
                    name: "h.0.mlp.c_fc.bias",
                    global_shape: &[7],
                    start: 0,
                    data: &b,
                },
            ],
        )
        .unwrap();
    commit(pending, serde_json::Value::Null, vec![r0, r1], 0).unwrap();
    (w, b)
}

#[test]
fn export_selects_renames_and_writes_whole_tensors() {
    let run = tempfile::tempdir().unwrap();
    let (w, b) = sharded_checkpoint(run.path());
    let ckpt = open(run.path()).unwrap();
    let out = run.path().join("model.safetensors");
    let exported = export_safetensors(&ckpt, &out, |name| {
        (!name.starts_with("adam.")).then(|| format!("transformer.{name}"))
    })
    .unwrap();
    assert_eq!(
        exported.tensors,
        [
            "transformer.h.0.mlp.c_fc.weight",
            "transformer.h.0.mlp.c_fc.bias"
        ]
    );
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(exported.bytes, bytes.len() as u64);
    assert!(!run.path().join(".model.safetensors.tmp").exists());

    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let wv = st.tensor("transformer.h.0.mlp.c_fc.weight").unwrap();
    assert_eq!((wv.dtype(), wv.shape()), (Dtype::F32, &[5usize, 7][..]));
    let le: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(wv.data(), &le[..]);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("pt")
    );

    let back = read_safetensors(&out).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[1].name, "transformer.h.0.mlp.c_fc.bias");
    assert_eq!(back[1].shape, vec![7]);
    assert_eq!(bits(&back[1].data), bits(&b));
}

#[test]
fn import_round_trips_into_a_new_checkpoint() {
    let run = tempfile::tempdir().unwrap();
    let (w, _) = sharded_checkpoint(run.path());
    let out = run.path().join("export.safetensors");
    export_safetensors(&open(run.path()).unwrap(), &out, |n| Some(n.to_string())).unwrap();

    let imported = read_safetensors(&out).unwrap();
    let run2 = tempfile::tempdir().unwrap();
    let pending = begin(run2.path(), 0).unwrap();
    let slices: Vec<_> = imported.iter().map(|t| t.as_slice()).collect();
    let rec = pending.write_file("imported.safetensors", &slices).unwrap();
    commit(
        pending,
        serde_json::json!({ "source": "export.safetensors" }),
        vec![rec],
        1,
    )
    .unwrap();
    let ckpt = open(run2.path()).unwrap();
    assert_eq!(ckpt.tensor_names().len(), 3);
    assert_eq!(bits(&ckpt.read("h.0.mlp.c_fc.weight").unwrap()), bits(&w));
    assert_eq!(
        ckpt.read("adam.m.h.0.mlp.c_fc.weight").unwrap(),
        vec![0.25; 35]
    );
}

#[test]
fn import_converts_half_bf16_and_f64_and_rejects_integers() {
    let dir = tempfile::tempdir().unwrap();
    let vals = [1.5f32, -0.25, 1024.0, 0.0];
    let f16: Vec<u8> = vals
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let f64b: Vec<u8> = vals
        .iter()
        .flat_map(|&x| (x as f64).to_le_bytes())
        .collect();
    let views = vec![
        ("a", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
        ("c", TensorView::new(Dtype::F64, vec![4, 1], &f64b).unwrap()),
    ];
    let path = dir.path().join("mixed.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let got = read_safetensors(&path).unwrap();
    let mut names: Vec<_> = got.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    for t in &got {
        assert_eq!(t.data, vals, "{}", t.name);
    }
    assert_eq!(
        got.iter().find(|t| t.name == "c").unwrap().shape,
        vec![4, 1]
    );

    let ints = [7i32, 8];
    let raw: Vec<u8> = ints.iter().flat_map(|x| x.to_le_bytes()).collect();
    let path = dir.path().join("ints.safetensors");
    safetensors::serialize_to_file(
        vec![(
            "tokens",
            TensorView::new(Dtype::I32, vec![2], &raw).unwrap(),
        )],
        None,
        &path,
    )
    .unwrap();
    let err = read_safetensors(&path).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::BadShard { file, message } if *file == path && message.contains("`tokens`")),
        "{err}"
    );

    let full = std::fs::read(dir.path().join("mixed.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &full[..full.len() - 3]).unwrap();
    assert!(matches!(
        read_safetensors(&cut),
        Err(CheckpointError::Truncated { .. })
    ));
}

#[test]
fn export_refuses_duplicate_names_and_leaves_nothing() {
    let run = tempfile::tempdir().unwrap();
    sharded_checkpoint(run.path());
    let out = run.path().join("dup.safetensors");
    let err =
        export_safetensors(&open(run.path()).unwrap(), &out, |_| Some("same".into())).unwrap_err();
    assert!(matches!(err, CheckpointError::InvalidSlice { .. }), "{err}");
    assert!(!out.exists());
}
