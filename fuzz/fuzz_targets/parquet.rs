//! A Parquet file's "text" column, every codec and encoding the reader knows.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let path = common::file("data.parquet", bytes);
    common::show(train_gpt2_cuda::formats::parquet::read_text_column(
        &path,
        "text",
        |_| Ok(()),
    ));
});
