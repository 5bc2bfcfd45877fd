//! N-d pieces: tensor-parallel column and row blocks saved as boxes, read back whole,
//! by flat ranges and by boxes, and resharded to other layouts (tp = 4 -> tp = 2, tp ->
//! ZeRO flat ranges and back), bit-exact. Refusals and format compatibility are in
//! `nd_validation.rs`.

mod common;

use checkpoint::{begin, commit, open, NdSlice, ShardSlice, TensorSlice, FORMAT_VERSION};
use common::tp::{column_blocks, extract, save_tp, tensors, Tensor};
use common::{bits, random_bits, Rng};

#[test]
fn tp_blocks_round_trip_whole_by_ranges_and_by_boxes() {
    let run = tempfile::tempdir().unwrap();
    let (w, x) = tensors();
    save_tp(run.path(), 3, &w, &x, 4);

    let ckpt = open(run.path()).unwrap();
    assert_eq!(ckpt.manifest().format_version, FORMAT_VERSION);
    assert_eq!(ckpt.tensor_names(), ["w", "x", "bias"]);
    let p = &ckpt.files()[1].pieces[0];
    assert_eq!(
        (p.key.as_str(), p.slice.clone()),
        ("w[0:24,16:32]", Some(vec![(0, 24), (16, 16)]))
    );
    assert_eq!((p.start, p.end, p.len()), (16, 23 * 64 + 32, 24 * 16));
    assert_eq!(bits(&ckpt.read("w").unwrap()), bits(&w.1));
    assert_eq!(bits(&ckpt.read("x").unwrap()), bits(&x.1));

    // Flat ranges crossing column-block and row-block boundaries.
    let mut rng = Rng::new(3);
    for (name, data) in [("w", &w.1), ("x", &x.1)] {
        for _ in 0..200 {
            let (a, b) = (rng.below(data.len() + 1), rng.below(data.len() + 1));
            let (lo, hi) = (a.min(b), a.max(b));
            let mut out = vec![0f32; hi - lo];
            ckpt.read_range(name, lo, hi, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&data[lo..hi]), "{name} [{lo}, {hi})");
        }
        for (lo, hi) in [(15, 17), (63, 65), (0, 0), (23, 97), (100, 120)] {
            let mut out = vec![0f32; hi - lo];
            ckpt.read_range(name, lo, hi, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&data[lo..hi]));
        }
    }

    // Boxes spanning two column blocks, two row blocks, and random ones.
    let read_box = |name: &str, (shape, data): &Tensor, slice: &[(usize, usize)]| {
        let mut out = vec![0f32; slice.iter().map(|s| s.1).product()];
        ckpt.read_slice(name, slice, &mut out).unwrap();
        let expected = extract(shape, data, slice);
        assert_eq!(bits(&out), bits(&expected), "{name} {slice:?}");
    };
    read_box("w", &w, &[(3, 7), (10, 12)]);
    read_box("x", &x, &[(0, 2), (1, 2), (2, 4)]);
    read_box("x", &x, &[(2, 3), (0, 4), (0, 6)]);
    for _ in 0..200 {
        for (name, t) in [("w", &w), ("x", &x)] {
            let slice: Vec<(usize, usize)> =
                t.0.iter()
                    .map(|&d| {
                        let (a, b) = (rng.below(d + 1), rng.below(d + 1));
                        (a.min(b), a.max(b) - a.min(b))
                    })
                    .collect();
            read_box(name, t, &slice);
        }
    }
}

/// The block keeps its own shape in the shard, so standard safetensors readers see a
/// (24, 16) tensor `w[0:24,16:32]`.
#[test]
fn nd_pieces_are_plain_safetensors_with_the_block_shape() {
    let run = tempfile::tempdir().unwrap();
    let (w, x) = tensors();
    save_tp(run.path(), 3, &w, &x, 4);
    let dir = run.path().join("checkpoints/step-00000003");
    let bytes = std::fs::read(dir.join("tp-rank-1.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("w[0:24,16:32]").unwrap();
    assert_eq!(t.shape(), &[24, 16]);
    let le: Vec<u8> = extract(&w.0, &w.1, &[(0, 24), (16, 16)])
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(t.data(), &le[..]);
    assert_eq!(st.tensor("x[1:3,0:4,0:6]").unwrap().shape(), &[2, 4, 6]);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let extra = meta.metadata().as_ref().unwrap();
    assert_eq!(extra.get("format_version").map(String::as_str), Some("2"));
}

/// Written by tp = 4, read by tp = 2 (two column blocks) and by dp = 3 (ZeRO flat
/// ranges), then saved again by tp = 2 and reloaded: every element bit-exact.
#[test]
fn reshard_tp4_to_tp2_and_to_flat_ranges() {
    let run = tempfile::tempdir().unwrap();
    let (w, x) = tensors();
    save_tp(run.path(), 3, &w, &x, 4);
    let ckpt = open(run.path()).unwrap();

    for (rank, block) in column_blocks([24, 64], 2).iter().enumerate() {
        let mut out = vec![0f32; 24 * 32];
        ckpt.read_slice("w", block, &mut out).unwrap();
        assert_eq!(
            bits(&out),
            bits(&extract(&w.0, &w.1, block)),
            "tp rank {rank} of 2"
        );
    }
    for (name, data) in [("w", &w.1), ("x", &x.1)] {
        let per = data.len().div_ceil(3);
        for rank in 0..3 {
            let (lo, hi) = (rank * per, ((rank + 1) * per).min(data.len()));
            let mut out = vec![0f32; hi - lo];
            ckpt.read_range(name, lo, hi, &mut out).unwrap();
            assert_eq!(
                bits(&out),
                bits(&data[lo..hi]),
                "{name}: dp rank {rank} of 3"
            );
        }
    }

    let run2 = tempfile::tempdir().unwrap();
    let mut reread = (w.0.clone(), vec![0f32; w.1.len()]);
    let mut xs = (x.0.clone(), vec![0f32; x.1.len()]);
    ckpt.read_range("w", 0, w.1.len(), &mut reread.1).unwrap();
    ckpt.read_range("x", 0, x.1.len(), &mut xs.1).unwrap();
    save_tp(run2.path(), 4, &reread, &xs, 2);
    let again = open(run2.path()).unwrap();
    assert_eq!(again.files().len(), 2);
    assert_eq!(bits(&again.read("w").unwrap()), bits(&w.1));
    assert_eq!(bits(&again.read("x").unwrap()), bits(&x.1));

    // Hugging Face export writes the tensor-parallel tensors whole.
    let file = run2.path().join("model.safetensors");
    checkpoint::export_safetensors(&ckpt, &file, |n| Some(n.to_string())).unwrap();
    let exported = checkpoint::read_safetensors(&file).unwrap();
    assert_eq!((exported[0].name.as_str(), &exported[0].shape), ("w", &w.0));
    assert_eq!(bits(&exported[0].data), bits(&w.1));
}

/// The other direction: a ZeRO-style flat save read as tensor-parallel column blocks,
/// including windows larger than one read chunk and a sparse one-column read.
#[test]
fn flat_save_reads_as_column_blocks() {
    let run = tempfile::tempdir().unwrap();
    let shape = [3000usize, 400];
    let w = random_bits(5, 3000 * 400);
    let per = w.len().div_ceil(3);
    let pending = begin(run.path(), 1).unwrap();
    let records: Vec<_> = (0..3)
        .map(|r| {
            let (lo, hi) = (r * per, ((r + 1) * per).min(w.len()));
            let slice = TensorSlice {
                name: "w",
                global_shape: &shape,
                start: lo,
                data: &w[lo..hi],
            };
            pending
                .write_file(&format!("dp-{r}.safetensors"), &[slice])
                .unwrap()
        })
        .collect();
    commit(pending, serde_json::Value::Null, records, 0).unwrap();
    let ckpt = open(run.path()).unwrap();
    assert_eq!(
        ckpt.manifest().format_version,
        1,
        "flat-only checkpoints stay version 1"
    );
    for block in column_blocks(shape, 4)
        .iter()
        .chain([vec![(0, 3000), (7, 1)]].iter())
    {
        let mut out = vec![0f32; block[0].1 * block[1].1];
        ckpt.read_slice("w", block, &mut out).unwrap();
        assert_eq!(bits(&out), bits(&extract(&shape, &w, block)), "{block:?}");
    }

    // And back: saved as 4 column blocks of 300 000 elements (more than one read
    // window), read whole and as flat ranges.
    let run2 = tempfile::tempdir().unwrap();
    let pending = begin(run2.path(), 2).unwrap();
    let blocks = column_blocks(shape, 4);
    let records: Vec<_> = blocks
        .iter()
        .enumerate()
        .map(|(r, b)| {
            let data = extract(&shape, &w, b);
            let slice = NdSlice {
                name: "w",
                global_shape: &shape,
                slice: b,
                data: &data,
            };
            pending
                .write_file(&format!("tp-{r}.safetensors"), &[slice])
                .unwrap()
        })
        .collect();
    commit(pending, serde_json::Value::Null, records, 0).unwrap();
    let ckpt = open(run2.path()).unwrap();
    assert_eq!(bits(&ckpt.read("w").unwrap()), bits(&w));
    let mut out = vec![0f32; per];
    ckpt.read_range("w", per, 2 * per, &mut out).unwrap();
    assert_eq!(bits(&out), bits(&w[per..2 * per]));
}

/// Flat and N-d pieces of one tensor in one checkpoint: rows 0..2 flat, the rest as
/// two column blocks.
#[test]
fn mixed_flat_and_nd_pieces_of_one_tensor() {
    let run = tempfile::tempdir().unwrap();
    let shape = [10usize, 8];
    let w = random_bits(6, 80);
    let left = extract(&shape, &w, &[(2, 8), (0, 3)]);
    let right = extract(&shape, &w, &[(2, 8), (3, 5)]);
    let pending = begin(run.path(), 1).unwrap();
    let a = pending
        .write_file(
            "a.safetensors",
            &[
                ShardSlice::from(TensorSlice {
                    name: "w",
                    global_shape: &shape,
                    start: 0,
                    data: &w[..16],
                }),
                NdSlice {
                    name: "w",
                    global_shape: &shape,
                    slice: &[(2, 8), (0, 3)],
                    data: &left,
                }
                .into(),
            ],
        )
        .unwrap();
    let b = pending
        .write_file(
            "b.safetensors",
            &[NdSlice {
                name: "w",
                global_shape: &shape,
                slice: &[(2, 8), (3, 5)],
                data: &right,
            }],
        )
        .unwrap();
    commit(pending, serde_json::Value::Null, vec![a, b], 0).unwrap();
    let ckpt = open(run.path()).unwrap();
    assert_eq!(bits(&ckpt.read("w").unwrap()), bits(&w));
    let mut out = vec![0f32; 30];
    ckpt.read_range("w", 10, 40, &mut out).unwrap();
    assert_eq!(bits(&out), bits(&w[10..40]));
}

/// Irregular (non-grid) tilings: a 3-D tensor cut by random guillotine splits into
/// boxes over three files, read back by random flat ranges and random boxes.
#[test]
fn random_guillotine_tilings_read_back_by_ranges_and_boxes() {
    let mut rng = Rng::new(11);
    for round in 0..6 {
        let shape = vec![1 + rng.below(7), 1 + rng.below(6), 1 + rng.below(9)];
        let data = random_bits(20 + round, shape.iter().product());
        let mut leaves = Vec::new();
        let mut todo = vec![shape
            .iter()
            .map(|&d| (0, d))
            .collect::<Vec<(usize, usize)>>()];
        while let Some(b) = todo.pop() {
            let k = rng.below(3);
            if b[k].1 < 2 || rng.below(4) == 0 {
                leaves.push(b);
                continue;
            }
            let cut = 1 + rng.below(b[k].1 - 1);
            let (mut lo, mut hi) = (b.clone(), b);
            lo[k].1 = cut;
            hi[k] = (hi[k].0 + cut, hi[k].1 - cut);
            todo.extend([lo, hi]);
        }
        let blocks: Vec<Vec<f32>> = leaves.iter().map(|b| extract(&shape, &data, b)).collect();
        let run = tempfile::tempdir().unwrap();
        let pending = begin(run.path(), 1).unwrap();
        let records: Vec<_> = (0..3)
            .map(|f| {
                let slices: Vec<NdSlice> = (f..leaves.len())
                    .step_by(3)
                    .map(|i| NdSlice {
                        name: "t",
                        global_shape: &shape,
                        slice: &leaves[i],
                        data: &blocks[i],
                    })
                    .collect();
                pending
                    .write_file(&format!("f{f}.safetensors"), &slices)
                    .unwrap()
            })
            .collect();
        commit(pending, serde_json::Value::Null, records, 0).unwrap();
        let ckpt = open(run.path()).unwrap();
        assert_eq!(
            bits(&ckpt.read("t").unwrap()),
            bits(&data),
            "{shape:?} {leaves:?}"
        );
        for _ in 0..100 {
            let (a, b) = (rng.below(data.len() + 1), rng.below(data.len() + 1));
            let (lo, hi) = (a.min(b), a.max(b));
            let mut out = vec![0f32; hi - lo];
            ckpt.read_range("t", lo, hi, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&data[lo..hi]));
            let slice: Vec<(usize, usize)> = shape
                .iter()
                .map(|&d| {
                    let (a, b) = (rng.below(d + 1), rng.below(d + 1));
                    (a.min(b), a.max(b) - a.min(b))
                })
                .collect();
            let mut out = vec![0f32; slice.iter().map(|s| s.1).product()];
            ckpt.read_slice("t", &slice, &mut out).unwrap();
            assert_eq!(
                bits(&out),
                bits(&extract(&shape, &data, &slice)),
                "{slice:?}"
            );
        }
    }
}
