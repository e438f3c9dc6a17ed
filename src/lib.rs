//! train-gpt2-cuda: GPT-2 training with hand-written CUDA kernels driven from Rust, and a rayon CPU
//! path that computes the same math as the reference the GPU is checked against.
//!
//! Map of the crate:
//! - [`config`]: the model's dimensions (Config); [`params`]: the 16 parameter tensors in one
//!   allocation with named slices (Weights).
//! - [`formats`]: llm.c-compatible files: checkpoints, token shards, debug states, tokenizer files;
//!   and the training state that `--resume` continues a run from.
//! - [`tokenizer`]: the GPT-2 BPE; [`prepro`]: text -> token shards; [`data`]: the batch loader.
//! - [`hellaswag`]: the HellaSwag benchmark (`eval --hellaswag`).
//! - [`cpu`]: the CPU reference, one file per layer family with forward and backward side by side;
//!   [`host_memory`]: what the host can still allocate, and allocations that fail with an error.
//! - [`gpu`]: the CUDA engine: kernels in `kernels/*.cu`, launchers with the CPU twins' names.
//! - [`profile`]: the `--profile` table (time, FLOPs and bytes by kernel family).
//! - [`train`]: the training loop; [`lr_schedule`]: its learning rates; [`outliers`]: skipping
//!   the updates of outlier steps; [`checkpoints`]: writing, keeping and resuming from them;
//!   [`interrupt`]: Ctrl-C ends a run after a checkpoint; [`console`]: stdout that a closed pipe
//!   cannot bring down; [`text`]: numbers in messages ("1 batch", "2 batches").

pub mod activations;
pub mod checkpoints;
pub mod config;
pub mod console;
pub mod cpu;
pub mod data;
pub mod engine;
pub mod formats;
pub mod gpu;
pub mod hellaswag;
pub mod host_memory;
pub mod interrupt;
pub mod lr_schedule;
pub mod mfu;
pub mod out_of_memory;
pub mod outliers;
pub mod params;
pub mod precision;
pub mod prepro;
pub mod profile;
pub mod rng;
pub mod run_log;
pub mod sample;
pub mod text;
pub mod tokenizer;
pub mod train;
pub mod verify;

/// A fresh, empty folder `NAME-PID` in the system's temp folder, for a unit test of this process
/// (PID); the test removes it when it is done.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
