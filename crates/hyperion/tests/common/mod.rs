//! Helpers shared by the CLI tests: run the built `hyperion` and check its outcome.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyperion"))
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, asserting success; shows both streams otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "command failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, asserting failure; returns its stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(!out.status.success(), "expected failure; stdout:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every model tensor (not the optimizer state) of a checkpoint, whole, by name:
/// `path` is a run directory (its latest checkpoint) or a checkpoint folder.
pub fn model_tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = checkpoint::open(path).unwrap();
    let mut names: Vec<String> = ck.tensor_names().into_iter().filter(|n| !n.starts_with("optim.")).collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), ck.read(&n).unwrap())).collect()
}
