//! Running the `vitkit` binary as a user does, for the command-line tests.

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
