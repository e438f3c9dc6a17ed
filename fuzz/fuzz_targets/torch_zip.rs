//! A Hugging Face GPT-2 folder whose weights are a `torch.save` archive (`pytorch_model.bin`: a
//! zip of a pickle and the tensors), beside a good config.json.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let dir = common::hf_folder(
        "hf_torch",
        ("config.json", "hf_tiny_torch/config.json"),
        "pytorch_model.bin",
        bytes,
    );
    common::show(train_gpt2_cuda::formats::read_model(&dir));
});
