//! Round trips, sharding, layout independence and the safetensors format.

mod common;

use checkpoint::{begin, commit, open, CheckpointError, TensorSlice};
use common::{bits, random_bits, save_step, save_whole, Rng};

#[test]
fn round_trip_preserves_exact_bits_shapes_meta_and_order() {
    let run = tempfile::tempdir().unwrap();
    let wte = random_bits(1, 50 * 8);
    let bias = random_bits(2, 8);
    let scalar = vec![f32::from_bits(0x7fa0_0001)]; // a signalling-NaN payload
    let empty: Vec<f32> = Vec::new();
    let pending = begin(run.path(), 7).unwrap();
    let rec = pending
        .write_file(
            "model.safetensors",
            &[
                TensorSlice {
                    name: "wte.weight",
                    global_shape: &[50, 8],
                    start: 0,
                    data: &wte,
                },
                TensorSlice {
                    name: "h.0.ln_1.bias",
                    global_shape: &[8],
                    start: 0,
                    data: &bias,
                },
                TensorSlice {
                    name: "scale",
                    global_shape: &[],
                    start: 0,
                    data: &scalar,
                },
                TensorSlice {
                    name: "unused",
                    global_shape: &[0, 4],
                    start: 0,
                    data: &empty,
                },
            ],
        )
        .unwrap();
    assert_eq!(
        rec.bytes,
        std::fs::metadata(pending.path().join("model.safetensors"))
            .unwrap()
            .len()
    );
    assert_eq!(rec.sha256.len(), 64);
    let meta =
        serde_json::json!({ "config": { "n_layer": 2 }, "rng": [1, 2, 3], "tokens_seen": 4096 });
    let dir = commit(pending, meta.clone(), vec![rec], 0).unwrap();
    assert!(dir.ends_with("checkpoints/step-00000007"));

    let ckpt = open(run.path()).unwrap();
    assert_eq!(ckpt.step(), 7);
    assert_eq!(ckpt.dir(), dir.as_path());
    assert_eq!(ckpt.meta(), &meta);
    assert_eq!(
        ckpt.tensor_names(),
        ["wte.weight", "h.0.ln_1.bias", "scale", "unused"]
    );
    assert_eq!(ckpt.global_shape("wte.weight"), Some(&[50usize, 8][..]));
    assert_eq!(ckpt.global_shape("scale"), Some(&[][..]));
    assert_eq!(ckpt.global_shape("nope"), None);
    assert_eq!(bits(&ckpt.read("wte.weight").unwrap()), bits(&wte));
    assert_eq!(bits(&ckpt.read("h.0.ln_1.bias").unwrap()), bits(&bias));
    assert_eq!(bits(&ckpt.read("scale").unwrap()), bits(&scalar));
    assert!(ckpt.read("unused").unwrap().is_empty());
    assert!(
        matches!(ckpt.read("nope"), Err(CheckpointError::MissingTensor { name }) if name == "nope")
    );
}

/// A (37, 29) tensor cut at odd offsets across three files, each also holding pieces
/// of other tensors, reads back whole and by every kind of range.
#[test]
fn tensor_split_across_three_files_reads_back_whole_and_by_ranges() {
    let run = tempfile::tempdir().unwrap();
    let shape = [37usize, 29];
    let w = random_bits(3, 37 * 29);
    let v = random_bits(4, 101);
    let cuts = [0usize, 311, 800, w.len()];
    let pending = begin(run.path(), 1).unwrap();
    let mut records = Vec::new();
    for f in 0..3 {
        let (lo, hi) = (cuts[f], cuts[f + 1]);
        let vlo = [0, 1, 50][f];
        let vhi = [1, 50, 101][f];
        let slices = [
            TensorSlice {
                name: "v",
                global_shape: &[101],
                start: vlo,
                data: &v[vlo..vhi],
            },
            TensorSlice {
                name: "w",
                global_shape: &shape,
                start: lo,
                data: &w[lo..hi],
            },
        ];
        // Written in reverse file order: the manifest must not depend on it.
        records.insert(
            0,
            pending
                .write_file(&format!("shard-{f}.safetensors"), &slices)
                .unwrap(),
        );
    }
    commit(pending, serde_json::Value::Null, records, 1).unwrap();

    let ckpt = open(run.path()).unwrap();
    assert_eq!(bits(&ckpt.read("w").unwrap()), bits(&w));
    assert_eq!(bits(&ckpt.read("v").unwrap()), bits(&v));
    let mut rng = Rng::new(5);
    for _ in 0..300 {
        let a = rng.below(w.len() + 1);
        let b = rng.below(w.len() + 1);
        let (lo, hi) = (a.min(b), a.max(b));
        let mut out = vec![0f32; hi - lo];
        ckpt.read_range("w", lo, hi, &mut out).unwrap();
        assert_eq!(bits(&out), bits(&w[lo..hi]), "range [{lo}, {hi})");
    }
    // Ranges that start or end exactly on the cuts.
    for (lo, hi) in [
        (311, 800),
        (310, 312),
        (799, 801),
        (0, 0),
        (1073, 1073),
        (0, 1073),
    ] {
        let mut out = vec![0f32; hi - lo];
        ckpt.read_range("w", lo, hi, &mut out).unwrap();
        assert_eq!(bits(&out), bits(&w[lo..hi]));
    }
}

/// The layout-independence contract: 4 ZeRO-style ranks (threads) save a flat bucket
/// of several tensors cut into equal contiguous ranges; a 3-rank layout reloads its
/// own, differently cut ranges bit-exactly.
#[test]
fn four_rank_save_loads_into_three_rank_layout() {
    let run = tempfile::tempdir().unwrap();
    let params: Vec<(String, Vec<usize>)> = vec![
        ("wte.weight".into(), vec![16, 12]),
        ("h.0.attn.c_attn.weight".into(), vec![12, 36]),
        ("h.0.attn.c_attn.bias".into(), vec![36]),
        ("ln_f.weight".into(), vec![12]),
    ];
    let sizes: Vec<usize> = params.iter().map(|(_, s)| s.iter().product()).collect();
    let total: usize = sizes.iter().sum();
    let bucket = random_bits(6, total);
    // Flat bucket offsets of each named tensor.
    let offsets: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &n| {
            let o = *acc;
            *acc += n;
            Some(o)
        })
        .collect();

    let shard = |rank: usize, world: usize| {
        let per = total.div_ceil(world);
        (rank * per).min(total)..((rank + 1) * per).min(total)
    };
    let records: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|rank| {
                let (params, offsets, sizes, bucket) = (&params, &offsets, &sizes, &bucket);
                let run = run.path();
                s.spawn(move || {
                    let pending = begin(run, 20).unwrap(); // every rank calls begin
                    let own = shard(rank, 4);
                    let slices: Vec<TensorSlice> = params
                        .iter()
                        .enumerate()
                        .filter_map(|(i, (name, shape))| {
                            let (lo, hi) = (
                                offsets[i].max(own.start),
                                (offsets[i] + sizes[i]).min(own.end),
                            );
                            (lo < hi).then(|| TensorSlice {
                                name,
                                global_shape: shape,
                                start: lo - offsets[i],
                                data: &bucket[lo..hi],
                            })
                        })
                        .collect();
                    pending
                        .write_file(&format!("zero-rank-{rank}.safetensors"), &slices)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pending = begin(run.path(), 20).unwrap();
    commit(pending, serde_json::json!({ "dp": 4 }), records, 2).unwrap();

    let ckpt = open(run.path()).unwrap();
    for rank in 0..3 {
        let own = shard(rank, 3);
        let mut got = vec![0f32; own.len()];
        for (i, (name, _)) in params.iter().enumerate() {
            let (lo, hi) = (
                offsets[i].max(own.start),
                (offsets[i] + sizes[i]).min(own.end),
            );
            if lo < hi {
                let out = &mut got[lo - own.start..hi - own.start];
                ckpt.read_range(name, lo - offsets[i], hi - offsets[i], out)
                    .unwrap();
            }
        }
        assert_eq!(bits(&got), bits(&bucket[own.clone()]), "rank {rank} of 3");
    }
}

#[test]
fn shards_parse_with_the_safetensors_reader() {
    let run = tempfile::tempdir().unwrap();
    let w = random_bits(7, 6 * 4);
    let b = random_bits(8, 4);
    let pending = begin(run.path(), 3).unwrap();
    let r0 = pending
        .write_file(
            "a.safetensors",
            &[
                TensorSlice {
                    name: "w",
                    global_shape: &[6, 4],
                    start: 0,
                    data: &w[..10],
                },
                TensorSlice {
                    name: "b",
                    global_shape: &[4],
                    start: 0,
                    data: &b,
                },
            ],
        )
        .unwrap();
    let r1 = pending
        .write_file(
            "b.safetensors",
            &[TensorSlice {
                name: "w",
                global_shape: &[6, 4],
                start: 10,
                data: &w[10..],
            }],
        )
        .unwrap();
    let dir = commit(pending, serde_json::Value::Null, vec![r0, r1], 0).unwrap();

    let bytes = std::fs::read(dir.join("a.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let whole = st.tensor("b").unwrap(); // whole tensors keep name and shape
    assert_eq!(whole.dtype(), safetensors::Dtype::F32);
    assert_eq!(whole.shape(), &[4]);
    let le: Vec<u8> = b.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(whole.data(), &le[..]);
    let part = st.tensor("w[0:10]").unwrap(); // partial ranges are 1-D, named by range
    assert_eq!(part.shape(), &[10]);
    let le: Vec<u8> = w[..10].iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(part.data(), &le[..]);
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!((8 + header_len) % 8, 0, "data must start 8-byte aligned");
    let extra = metadata.metadata().as_ref().unwrap();
    assert_eq!(
        extra.get("format").map(String::as_str),
        Some("hyperion-checkpoint")
    );
    assert_eq!(extra.get("step").map(String::as_str), Some("3"));

    let bytes = std::fs::read(dir.join("b.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names(), ["w[10:24]"]);
}

#[test]
fn identical_saves_are_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let t = vec![
        ("x", vec![3, 3], random_bits(9, 9)),
        ("y", vec![2], random_bits(10, 2)),
    ];
    save_whole(a.path(), 5, &t, 0);
    save_whole(b.path(), 5, &t, 0);
    let (ca, cb) = (open(a.path()).unwrap(), open(b.path()).unwrap());
    assert_eq!(
        ca.files(),
        cb.files(),
        "same data must give the same sha256 and sizes"
    );
}

#[test]
fn commit_rejects_gaps_and_overlaps_and_leaves_previous_latest() {
    let run = tempfile::tempdir().unwrap();
    save_step(run.path(), 1, 10, 0);
    let w = random_bits(11, 10);
    for (second_start, expect) in [(6usize, "elements [5, 6) are in no file"), (4, "overlaps")] {
        let pending = begin(run.path(), 2).unwrap();
        let tmp = pending.path().to_path_buf();
        let r0 = pending
            .write_file(
                "a.safetensors",
                &[TensorSlice {
                    name: "w",
                    global_shape: &[10],
                    start: 0,
                    data: &w[..5],
                }],
            )
            .unwrap();
        let r1 = pending
            .write_file(
                "b.safetensors",
                &[TensorSlice {
                    name: "w",
                    global_shape: &[10],
                    start: second_start,
                    data: &w[second_start..],
                }],
            )
            .unwrap();
        let err = commit(pending, serde_json::Value::Null, vec![r0, r1], 0).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Coverage { name, .. } if name == "w"),
            "{err}"
        );
        assert!(err.to_string().contains(expect), "{err}");
        assert!(
            !tmp.exists(),
            "failed commit must remove its temporary folder"
        );
        assert!(!run.path().join("checkpoints/step-00000002").exists());
        let ckpt = open(run.path()).unwrap();
        assert_eq!(ckpt.step(), 1);
        assert_eq!(ckpt.read("w").unwrap(), common::step_values(1, 10));
    }
}

#[test]
fn write_file_rejects_bad_slices_and_names() {
    let run = tempfile::tempdir().unwrap();
    let pending = begin(run.path(), 1).unwrap();
    let data = [1.0f32; 4];
    let err = pending
        .write_file(
            "a.safetensors",
            &[TensorSlice {
                name: "w",
                global_shape: &[2, 3],
                start: 3,
                data: &data,
            }],
        )
        .unwrap_err();
    assert!(
        matches!(&err, CheckpointError::InvalidSlice { file, name, .. } if file == "a.safetensors" && name == "w")
    );
    assert!(err.to_string().contains("exceed the 6 elements"), "{err}");
    let twice = [
        TensorSlice {
            name: "w",
            global_shape: &[4],
            start: 0,
            data: &data,
        },
        TensorSlice {
            name: "w",
            global_shape: &[4],
            start: 0,
            data: &data,
        },
    ];
    assert!(matches!(
        pending.write_file("a.safetensors", &twice),
        Err(CheckpointError::InvalidSlice { .. })
    ));
    for bad in ["../escape.safetensors", "manifest.json", ".hidden"] {
        let one = [TensorSlice {
            name: "w",
            global_shape: &[4],
            start: 0,
            data: &data,
        }];
        assert!(
            matches!(
                pending.write_file(bad, &one),
                Err(CheckpointError::InvalidFileName { .. })
            ),
            "{bad}"
        );
    }
    assert!(
        pending.path().is_dir(),
        "rejected input must not destroy the pending checkpoint"
    );
}

#[test]
fn read_range_checks_bounds_and_buffer() {
    let run = tempfile::tempdir().unwrap();
    save_step(run.path(), 1, 10, 0);
    let ckpt = open(run.path()).unwrap();
    let mut out = [0f32; 3];
    let err = ckpt.read_range("w", 8, 11, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::InvalidRange {
                start: 8,
                end: 11,
                ..
            }
        ),
        "{err}"
    );
    let err = ckpt.read_range("w", 0, 2, &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("output buffer holds 3 elements, range has 2"),
        "{err}"
    );
    ckpt.read_range("w", 7, 10, &mut out).unwrap();
    assert_eq!(out, [1007.0, 1008.0, 1009.0]);
}
