#![allow(dead_code)] // (each target uses some of these)
//! What the targets share: a scratch folder of this process's in /dev/shm (a reader takes a path),
//! and the fixtures the readers need beside the fuzzed file.

use std::path::{Path, PathBuf};

/// This process's scratch folder (made once).
pub fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("train-gpt2-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A committed fixture's bytes (tests/fixtures/NAME).
fn fixture(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    std::fs::read(root.join(name)).unwrap()
}

/// A Hugging Face model folder `dir` in the scratch folder: its file `fixed.0` a copy of the
/// fixture `fixed.1` (written once), its file `fuzzed` the bytes `bytes`.
pub fn hf_folder(dir: &str, fixed: (&str, &str), fuzzed: &str, bytes: &[u8]) -> PathBuf {
    let dir = scratch().join(dir);
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(fixed.0), fixture(fixed.1)).unwrap();
    }
    std::fs::write(dir.join(fuzzed), bytes).unwrap();
    dir
}

/// Formats an error the way the engine prints it (so its Display runs too).
pub fn show<T>(r: anyhow::Result<T>) {
    if let Err(e) = r {
        let _ = format!("{e:#}");
    }
}
