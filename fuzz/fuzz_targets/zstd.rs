//! A zstd stream (frames, skippable frames).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|bytes: &[u8]| {
    let mut out = Vec::new();
    let _ = train_gpt2_cuda::formats::zstd::ZstdReader::new(bytes).read_to_end(&mut out);
});
