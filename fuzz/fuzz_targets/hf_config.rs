//! A Hugging Face GPT-2 folder's `config.json`, beside good weights.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let dir = common::hf_folder(
        "hf_config",
        ("model.safetensors", "hf_tiny/model.safetensors"),
        "config.json",
        bytes,
    );
    common::show(train_gpt2_cuda::formats::read_model(&dir));
});
