//! N-d pieces that must be refused (gaps, overlaps, boxes outside the shape, wrong data
//! length), the edge cases the writer normalises, and format version 1 compatibility.

mod common;

use std::path::Path;

use checkpoint::{begin, commit, open, CheckpointError, NdSlice, TensorSlice};
use common::tp::{extract, save_tp, tensors};
use common::{bits, random_bits};

fn commit_err(run: &Path, files: &[(&str, Vec<NdSlice>)]) -> CheckpointError {
    let pending = begin(run, 9).unwrap();
    let tmp = pending.path().to_path_buf();
    let records = files
        .iter()
        .map(|(f, s)| pending.write_file(f, s).unwrap())
        .collect();
    let err = commit(pending, serde_json::Value::Null, records, 0).unwrap_err();
    assert!(
        !tmp.exists(),
        "a refused commit removes its temporary folder"
    );
    assert!(
        matches!(&err, CheckpointError::Coverage { name, .. } if name == "w"),
        "{err}"
    );
    err
}

#[test]
fn gaps_and_overlaps_of_blocks_are_refused_naming_tensor_and_region() {
    let run = tempfile::tempdir().unwrap();
    let shape = [4usize, 8];
    let w = random_bits(7, 32);
    let slices: [&[(usize, usize)]; 3] = [&[(0, 4), (0, 4)], &[(0, 4), (4, 3)], &[(0, 4), (3, 5)]];
    let data: Vec<Vec<f32>> = slices.iter().map(|s| extract(&shape, &w, s)).collect();
    let nd = |i: usize| NdSlice {
        name: "w",
        global_shape: &shape,
        slice: slices[i],
        data: &data[i],
    };

    let err = commit_err(
        run.path(),
        &[
            ("a.safetensors", vec![nd(0)]),
            ("b.safetensors", vec![nd(1)]),
        ],
    );
    assert!(
        err.to_string()
            .contains("elements [0:4, 7:8] are in no file"),
        "{err}"
    );

    let err = commit_err(
        run.path(),
        &[
            ("a.safetensors", vec![nd(0)]),
            ("b.safetensors", vec![nd(2)]),
        ],
    );
    assert!(
        err.to_string().contains(
            "slice [0:4, 0:4] in a.safetensors and slice [0:4, 3:8] in b.safetensors both hold elements [0:4, 3:4]"
        ),
        "{err}"
    );
    assert!(open(run.path()).is_err(), "nothing was ever committed");
}

#[test]
fn write_file_rejects_blocks_that_do_not_fit() {
    let run = tempfile::tempdir().unwrap();
    let pending = begin(run.path(), 1).unwrap();
    let data = [0f32; 12];
    // (slice, data, expected error)
    type Case<'a> = (&'a [(usize, usize)], &'a [f32], &'a str);
    let cases: [Case; 4] = [
        (
            &[(0, 4), (6, 3)],
            &data,
            "dim 1: start 6 + len 3 exceeds its size 8",
        ),
        (
            &[(0, 4), (0, 4)],
            &data[..12],
            "data has 12 elements, slice [0:4, 0:4] holds 16",
        ),
        (
            &[(0, 4)],
            &data[..4],
            "slice has 1 dims, the tensor's shape [4, 8] has 2",
        ),
        (&[(usize::MAX, 2), (0, 1)], &data[..2], "exceeds its size 4"),
    ];
    for (slice, data, expect) in cases {
        let err = pending
            .write_file(
                "a.safetensors",
                &[NdSlice {
                    name: "w",
                    global_shape: &[4, 8],
                    slice,
                    data,
                }],
            )
            .unwrap_err();
        assert!(
            matches!(&err, CheckpointError::InvalidSlice { file, name, .. } if file == "a.safetensors" && name == "w"),
            "{err}"
        );
        assert!(err.to_string().contains(expect), "{err}");
    }
    let twice = [NdSlice {
        name: "w",
        global_shape: &[4, 8],
        slice: &[(0, 1), (0, 2)],
        data: &data[..2],
    }; 2];
    let err = pending.write_file("a.safetensors", &twice).unwrap_err();
    assert!(
        err.to_string().contains("slice [0:1, 0:2] appears twice"),
        "{err}"
    );
    assert!(pending.path().is_dir());
}

#[test]
fn whole_boxes_are_stored_as_whole_tensors() {
    let run = tempfile::tempdir().unwrap();
    let w = random_bits(8, 6);
    let pending = begin(run.path(), 1).unwrap();
    let record = pending
        .write_file(
            "a.safetensors",
            &[
                NdSlice {
                    name: "w",
                    global_shape: &[2, 3],
                    slice: &[(0, 2), (0, 3)],
                    data: &w,
                },
                NdSlice {
                    name: "s",
                    global_shape: &[],
                    slice: &[],
                    data: &w[..1],
                },
                // Empty boxes of non-empty tensors are skipped, like empty flat slices.
                NdSlice {
                    name: "w",
                    global_shape: &[2, 3],
                    slice: &[(1, 0), (0, 3)],
                    data: &[],
                },
            ],
        )
        .unwrap();
    assert_eq!(record.pieces.len(), 2);
    assert!(record
        .pieces
        .iter()
        .all(|p| p.slice.is_none() && p.key == p.name));
    commit(pending, serde_json::Value::Null, vec![record], 0).unwrap();
    let ckpt = open(run.path()).unwrap();
    assert_eq!(ckpt.manifest().format_version, 1);
    assert_eq!(bits(&ckpt.read("w").unwrap()), bits(&w));
    let mut one = [0f32];
    ckpt.read_slice("s", &[], &mut one).unwrap();
    assert_eq!(one[0].to_bits(), w[0].to_bits());
}

#[test]
fn read_slice_checks_rank_bounds_and_buffer() {
    let run = tempfile::tempdir().unwrap();
    let (w, x) = tensors();
    save_tp(run.path(), 3, &w, &x, 4);
    let ckpt = open(run.path()).unwrap();
    let mut out = vec![0f32; 8];
    for (slice, expect) in [
        (
            vec![(0, 2), (60, 5)],
            "dim 1: start 60 + len 5 exceeds its size 64",
        ),
        (vec![(0, 8)], "slice has 1 dims"),
        (
            vec![(0, 2), (0, 3)],
            "output buffer holds 8 elements, slice has 6",
        ),
    ] {
        let err = ckpt.read_slice("w", &slice, &mut out).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::InvalidReadSlice { name, .. } if name == "w"),
            "{err}"
        );
        assert!(err.to_string().contains(expect), "{err}");
    }
    assert!(matches!(
        ckpt.read_slice("nope", &[], &mut out),
        Err(CheckpointError::MissingTensor { .. })
    ));
    ckpt.read_slice("w", &[(3, 0), (0, 64)], &mut []).unwrap();
}

/// A checkpoint written by the flat-only writer (format version 1, no `slice` field),
/// kept as files, loads unchanged; the current writer, given the same tensors, writes
/// it again byte for byte.
#[test]
fn format_version_1_checkpoint_loads_and_is_rewritten_identically() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1/step-00000007");
    let ckpt = open(&fixture).unwrap();
    assert_eq!(ckpt.manifest().format_version, 1);
    assert_eq!(ckpt.step(), 7);
    assert_eq!(ckpt.meta()["tokens_seen"], 4096);
    assert_eq!(ckpt.tensor_names(), ["w", "b", "empty", "scale"]);
    let w: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    assert_eq!(ckpt.read("w").unwrap(), w);
    assert_eq!(ckpt.read("b").unwrap(), [1.5, -2.25, 0.0]);
    assert!(ckpt.read("empty").unwrap().is_empty());
    assert_eq!(ckpt.read("scale").unwrap()[0].to_bits(), 0x7fc0_1234);
    let mut block = vec![0f32; 6];
    ckpt.read_slice("w", &[(1, 2), (2, 3)], &mut block).unwrap();
    assert_eq!(block, extract(&[4, 6], &w, &[(1, 2), (2, 3)]));

    let run = tempfile::tempdir().unwrap();
    let (b, s, e) = (
        vec![1.5f32, -2.25, 0.0],
        vec![f32::from_bits(0x7fc0_1234)],
        Vec::<f32>::new(),
    );
    let pending = begin(run.path(), 7).unwrap();
    let r0 = pending
        .write_file(
            "rank-0.safetensors",
            &[
                TensorSlice {
                    name: "w",
                    global_shape: &[4, 6],
                    start: 0,
                    data: &w[..10],
                },
                TensorSlice {
                    name: "b",
                    global_shape: &[3],
                    start: 0,
                    data: &b,
                },
                TensorSlice {
                    name: "empty",
                    global_shape: &[0, 5],
                    start: 0,
                    data: &e,
                },
            ],
        )
        .unwrap();
    let r1 = pending
        .write_file(
            "rank-1.safetensors",
            &[
                TensorSlice {
                    name: "w",
                    global_shape: &[4, 6],
                    start: 10,
                    data: &w[10..],
                },
                TensorSlice {
                    name: "scale",
                    global_shape: &[],
                    start: 0,
                    data: &s,
                },
            ],
        )
        .unwrap();
    let meta = serde_json::json!({ "tokens_seen": 4096, "note": "written by the flat-only (format 1) writer" });
    let dir = commit(pending, meta, vec![r0, r1], 0).unwrap();
    for file in ["manifest.json", "rank-0.safetensors", "rank-1.safetensors"] {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(fixture.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn a_version_1_label_on_nd_pieces_is_refused_at_open() {
    let run = tempfile::tempdir().unwrap();
    let (w, x) = tensors();
    save_tp(run.path(), 3, &w, &x, 4);
    let path = run.path().join("checkpoints/step-00000003/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"format_version\": 2", "\"format_version\": 1"),
    )
    .unwrap();
    let err = open(run.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::BadManifest { .. }), "{err}");
    assert!(err.to_string().contains("cannot hold N-d pieces"), "{err}");
}
