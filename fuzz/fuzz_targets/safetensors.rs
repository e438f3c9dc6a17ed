//! A Hugging Face GPT-2 folder's `model.safetensors`, beside a good config.json.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let dir = common::hf_folder(
        "hf_st",
        ("config.json", "hf_tiny/config.json"),
        "model.safetensors",
        bytes,
    );
    common::show(train_gpt2_cuda::formats::read_model(&dir));
});
