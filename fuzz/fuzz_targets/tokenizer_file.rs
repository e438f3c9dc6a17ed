//! An llm.c tokenizer file (version 1 or 2).
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let path = common::file("tokenizer.bin", bytes);
    common::show(train_gpt2_cuda::formats::tokenizer_file::read_tokenizer_file(&path));
});
