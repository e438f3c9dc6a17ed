//! A HellaSwag JSON Lines file.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let path = common::file("hellaswag.jsonl", bytes);
    common::show(train_gpt2_cuda::hellaswag::read_examples(&path));
});
