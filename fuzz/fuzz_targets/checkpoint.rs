//! An llm.c checkpoint (version 3 or 5), read as `--model FILE` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let path = common::file("model.bin", bytes);
    common::show(train_gpt2_cuda::formats::read_model(&path));
});
