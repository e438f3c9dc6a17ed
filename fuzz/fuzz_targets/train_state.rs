//! A training state (`--resume`), its header and its arrays.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;
use train_gpt2_cuda::formats::train_state::TrainStateFile;

fuzz_target!(|bytes: &[u8]| {
    let path = common::file("state.bin", bytes);
    common::show(TrainStateFile::open(&path).and_then(|f| f.read_arrays(|_, _| Ok(()))));
});
