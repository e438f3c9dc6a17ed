//! Parquet's block codecs: a snappy block, and an LZ4 raw block of a claimed size (the first two
//! bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = train_gpt2_cuda::formats::snappy::decompress(bytes);
    if bytes.len() >= 2 {
        let size = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
        let _ = train_gpt2_cuda::formats::lz4::decompress(&bytes[2..], size);
    }
});
