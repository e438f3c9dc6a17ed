//! A token shard, read whole and by the data loader (B=2, T=3).
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let path = common::file("shard.bin", bytes);
    common::show(train_gpt2_cuda::formats::shard::read_shard(&path));
    common::show(train_gpt2_cuda::formats::shard::read_shard_len(&path));
    common::show(
        train_gpt2_cuda::data::DataLoader::new(&path.to_string_lossy(), 2, 3, 65536, None)
            .and_then(|mut d| d.next_batch().map(|_| ())),
    );
});
