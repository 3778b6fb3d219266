//! Running the `vitkit` binary as a user does, for the command-line tests.

use std::path::Path;
use std::process::{Command, Output};

pub fn vitkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitkit"))
        .args(args)
        .output()
        .expect("run vitkit")
}

/// Runs `args`, which must succeed; its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = vitkit(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args`, which must fail with exit code 1, no panic, and every needle in its error.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let out = vitkit(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: expected '{n}' in: {stderr}");
    }
}

/// `vitkit train` of `model` on the built-in data into `run`: two epochs of two steps of batch
/// 8 with stochastic depth 0.1, plus `extra`.
pub fn train_briefly(model: &str, run: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "2",
        "--max-steps-per-epoch",
        "2",
        "--batch-size",
        "8",
        "--drop-path",
        "0.1",
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// The weights file of a brief run's last (second) epoch.
pub fn last_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/epoch-0002/model.safetensors")).unwrap()
}

/// The names of the tensors whose bytes differ between the last checkpoints of two runs (or
/// that one of them lacks).
pub fn differing_tensors(a: &Path, b: &Path) -> Vec<String> {
    let (a, b) = (last_weights(a), last_weights(b));
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    a.names()
        .into_iter()
        .filter(|k| {
            b.tensor(k)
                .map(|t| t.data() != a.tensor(k).unwrap().data())
                .unwrap_or(true)
        })
        .map(String::from)
        .collect()
}
