//! Where the test files that run the `train-gpt2-cuda` command find it and the project: the
//! engine cargo built, or, on a GPU machine (test executables built elsewhere and copied by
//! `../shared/gpu/pack`, where the build path does not exist), the one the pack put in
//! `.gpu/bin`; the project root from the run-time CARGO_MANIFEST_DIR when set (on-gpu.sh sets it).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// The engine binary.
pub fn engine() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_train-gpt2-cuda"));
    if built.exists() {
        built
    } else {
        root().join(".gpu/bin/train-gpt2-cuda")
    }
}

/// A command running the engine binary.
pub fn bin() -> Command {
    Command::new(engine())
}
