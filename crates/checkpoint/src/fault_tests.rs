//! Write failures injected through the private `Sink` seam (see `write::fault`) at
//! each file a save writes: a shard, the manifest, the `latest` pointer. Every one must
//! leave the previous checkpoint and `latest` intact and loadable, and name the file.

use std::path::Path;

use crate::sink::fault;
use crate::{begin, clean_stale, commit, open, CheckpointError, TensorSlice};

fn values(step: u64, n: usize) -> Vec<f32> {
    (0..n).map(|i| (step as f32) * 0.5 + i as f32).collect()
}

/// Saves `step` as two shards of one 1000-element tensor.
fn save(run: &Path, step: u64) -> Result<std::path::PathBuf, CheckpointError> {
    let data = values(step, 1000);
    let pending = begin(run, step)?;
    let a = pending.write_file(
        "a.safetensors",
        &[TensorSlice {
            name: "w",
            global_shape: &[1000],
            start: 0,
            data: &data[..333],
        }],
    )?;
    let b = pending.write_file(
        "b.safetensors",
        &[TensorSlice {
            name: "w",
            global_shape: &[1000],
            start: 333,
            data: &data[333..],
        }],
    )?;
    commit(pending, serde_json::json!({ "step": step }), vec![a, b], 3)
}

fn assert_previous_intact(run: &Path) {
    let ckpt = open(run).unwrap();
    assert_eq!(ckpt.step(), 1);
    assert_eq!(ckpt.read("w").unwrap(), values(1, 1000));
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-00000001");
}

#[test]
fn failures_at_every_file_of_a_save_keep_the_previous_checkpoint() {
    // (file that fails, bytes it accepts first, does a complete step-2 folder exist?)
    let cases = [
        ("a.safetensors", 0, false),
        ("b.safetensors", 1000, false), // mid-data, after the header
        ("manifest.json", 10, false),
        ("latest.tmp", 3, true), // after the rename: step-2 exists but is not `latest`
    ];
    for (target, budget, step2_exists) in cases {
        let run = tempfile::tempdir().unwrap();
        save(run.path(), 1).unwrap();
        fault::fail_after(target, budget);
        let err = save(run.path(), 2).unwrap_err();
        fault::clear();
        match &err {
            CheckpointError::Io { path, .. } => {
                assert_eq!(
                    path.file_name().and_then(|n| n.to_str()),
                    Some(target),
                    "{err}"
                )
            }
            other => panic!("{target}: expected Io, got {other}"),
        }
        assert!(err.to_string().contains("no space left"), "{err}");
        let tmp = run.path().join("checkpoints/.tmp-step-00000002");
        assert!(
            !tmp.exists(),
            "{target}: the temporary folder must not survive an error"
        );
        let step2 = run.path().join("checkpoints/step-00000002/manifest.json");
        assert_eq!(step2.exists(), step2_exists, "{target}");
        assert!(
            !run.path().join("checkpoints/latest.tmp").exists(),
            "{target}"
        );
        assert_previous_intact(run.path());
        // The engine's next start cleans up and saving works again.
        clean_stale(run.path()).unwrap();
        save(run.path(), 3).unwrap();
        assert_eq!(
            open(run.path()).unwrap().read("w").unwrap(),
            values(3, 1000)
        );
    }
}

#[test]
fn fault_hook_is_scoped_to_its_file_name() {
    let run = tempfile::tempdir().unwrap();
    fault::fail_after("other.safetensors", 0);
    let saved = save(run.path(), 1);
    fault::clear();
    assert!(saved.is_ok());
    assert_previous_intact(run.path());
}
