//! An llm.c debug state (`verify`'s PyTorch dump) of the tiny fixture model's shape.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;
use train_gpt2_cuda::config::GPT2Config;

fuzz_target!(|bytes: &[u8]| {
    let cfg = GPT2Config::new(8, 10, 16, 2, 2, 4).unwrap();
    let path = common::file("debug.bin", bytes);
    common::show(train_gpt2_cuda::formats::debug_state::read_debug_state(
        &path, &cfg,
    ));
});
