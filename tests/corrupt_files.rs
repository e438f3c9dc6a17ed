//! Every reader of a file a user hands the engine, fed damaged copies of good files: each byte of
//! the part that describes the rest (headers, JSON, the first records) changed three ways, a
//! sample of the other bytes too, and the file cut at many lengths. Each copy must give an error
//! or a value, never a panic, and never an allocation the size a damaged count asks for (that
//! would abort the test process). The errors' texts are checked elsewhere (tests/formats.rs,
//! tests/data.rs, tests/hf_gpt2.rs, tests/hellaswag.rs); here only that nothing crashes.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::data::DataLoader;
use train_gpt2_cuda::formats::checkpoint::{read_checkpoint, read_checkpoint_bf16};
use train_gpt2_cuda::formats::debug_state::read_debug_state;
use train_gpt2_cuda::formats::gzip::GzReader;
use train_gpt2_cuda::formats::parquet::read_text_column;
use train_gpt2_cuda::formats::read_model;
use train_gpt2_cuda::formats::shard::{read_shard, read_shard_len};
use train_gpt2_cuda::formats::tokenizer_file::read_tokenizer_file;
use train_gpt2_cuda::formats::train_state::{
    write_train_state, BestVal, DataPosition, OptimizerSettings, TrainState, TrainStateFile,
};
use train_gpt2_cuda::formats::zstd::ZstdReader;
use train_gpt2_cuda::hellaswag::read_examples;
use train_gpt2_cuda::outliers::{OutlierWindow, Outliers};

mod engine_bin;

fn fixture(name: &str) -> PathBuf {
    engine_bin::root().join("tests/fixtures").join(name)
}

fn scratch(name: &str) -> engine_bin::TempFolder {
    engine_bin::scratch(&format!("corrupt-{name}"))
}

/// The damaged copies of `good`: every byte of `good[..dense]` and every 61st byte after it (and
/// the last 16) replaced by its complement, by 0 and by itself + 1; then `good` cut after 0, 1,
/// ..., 64 bytes, at every 61st length, and one byte short.
fn damaged(good: &[u8], dense: usize) -> Vec<(String, Vec<u8>)> {
    let n = good.len();
    let mut places: Vec<usize> = (0..dense.min(n)).collect();
    places.extend((dense..n).step_by(61));
    places.extend(n.saturating_sub(16)..n);
    places.sort_unstable();
    places.dedup();
    let mut out = Vec::new();
    for &i in &places {
        for (how, byte) in [
            ("complemented", !good[i]),
            ("zeroed", 0),
            ("plus 1", good[i].wrapping_add(1)),
        ] {
            if byte != good[i] {
                let mut bytes = good.to_vec();
                bytes[i] = byte;
                out.push((format!("byte {i} {how}"), bytes));
            }
        }
    }
    let mut cuts: Vec<usize> = (0..=64.min(n)).chain((64..n).step_by(61)).collect();
    cuts.push(n.saturating_sub(1));
    cuts.sort_unstable();
    cuts.dedup();
    out.extend(
        cuts.into_iter()
            .map(|k| (format!("cut to {k} bytes"), good[..k].to_vec())),
    );
    out
}

/// Writes each damaged copy of `good` to `path` (`also` writes any other files the reader needs,
/// once) and calls `read` on it; panics listing the copies whose read panicked.
fn never_panics<T>(
    what: &str,
    path: &Path,
    good: &[u8],
    dense: usize,
    read: impl Fn(&Path) -> anyhow::Result<T>,
) {
    // the good file reads
    std::fs::write(path, good).unwrap();
    if let Err(e) = read(path) {
        panic!("{what}: the undamaged file does not read: {e:#}");
    }
    let copies = damaged(good, dense);
    let (mut panicked, mut errors) = (Vec::new(), 0);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for (how, bytes) in &copies {
        std::fs::write(path, bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read(path))) {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => errors += 1,
            Err(_) => panicked.push(how.clone()),
        }
    }
    std::panic::set_hook(hook);
    assert!(
        panicked.is_empty(),
        "{what}: {} of {} damaged copies panicked, e.g. {:?}",
        panicked.len(),
        copies.len(),
        &panicked[..panicked.len().min(8)]
    );
    // the damage is seen: most copies are refused (a changed float is a good file)
    assert!(errors > 0, "{what}: no damaged copy was refused");
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

#[test]
fn damaged_checkpoints_never_panic() {
    let dir = scratch("checkpoints");
    for name in ["llmc_model_v3.bin", "llmc_model_v5.bin"] {
        let good = read_fixture(name);
        let path = dir.join(name);
        never_panics(name, &path, &good, good.len(), read_checkpoint);
        never_panics(name, &path, &good, good.len(), read_checkpoint_bf16);
        never_panics(name, &path, &good, good.len(), read_model);
    }
}

#[test]
fn damaged_shards_and_tokenizer_files_never_panic() {
    let dir = scratch("shards");
    let good = read_fixture("shard_small.bin");
    let path = dir.join("shard.bin");
    never_panics("shard", &path, &good, good.len(), read_shard);
    never_panics("shard", &path, &good, good.len(), read_shard_len);
    never_panics("shard", &path, &good, good.len(), |p| {
        DataLoader::new(&p.to_string_lossy(), 2, 3, 65536, None)
    });
    for name in ["llmc_tokenizer_v1.bin", "llmc_tokenizer_v2.bin"] {
        let good = read_fixture(name);
        never_panics(
            name,
            &dir.join(name),
            &good,
            good.len(),
            read_tokenizer_file,
        );
    }
}

#[test]
fn damaged_debug_and_training_states_never_panic() {
    let dir = scratch("states");
    let cfg = GPT2Config::new(8, 10, 16, 2, 2, 4).unwrap();
    let good = read_fixture("llmc_debug_state.bin");
    never_panics(
        "debug state",
        &dir.join("debug.bin"),
        &good,
        good.len(),
        |p| read_debug_state(p, &cfg),
    );
    // a training state of 300 parameters with master weights
    let state = TrainState {
        step: 40,
        data: DataPosition {
            batch: 4,
            seq: 64,
            shuffle_seed: Some(7),
            batches_served: 80,
            tokens: 338_025,
            shards: 1,
        },
        num_parameters: 300,
        master_weights: true,
        outliers: Outliers {
            loss: OutlierWindow::from_values(&[3.5; 40]),
            norm: OutlierWindow::from_values(&[0.25; 64]),
            skipped_in_a_row: 1,
        },
        best_val: Some(BestVal {
            step: 30,
            loss: 3.25,
            model: Some(42),
        }),
        optimizer: Some(OptimizerSettings {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }),
        model_fingerprint: Some(u64::MAX - 5),
    };
    let path = dir.join("state.bin");
    write_train_state(&path, &state, |_| Ok(vec![0.5; 300])).unwrap();
    let good = std::fs::read(&path).unwrap();
    never_panics("training state", &path, &good, 1024, |p| {
        let file = TrainStateFile::open(p)?;
        file.read_arrays(|_, values| {
            assert_eq!(values.len(), 300);
            Ok(())
        })
    });
}

#[test]
fn damaged_hugging_face_models_never_panic() {
    let dir = scratch("hf");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let src = fixture("hf_tiny");
    std::fs::copy(src.join("config.json"), model.join("config.json")).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    // config.json, every byte
    let config = std::fs::read(src.join("config.json")).unwrap();
    never_panics(
        "config.json",
        &model.join("config.json"),
        &config,
        config.len(),
        |_| read_model(&model),
    );
    std::fs::write(model.join("config.json"), &config).unwrap();
    // model.safetensors: the 8-byte length and the JSON header, every byte; the tensors sampled
    let st = std::fs::read(src.join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    never_panics(
        "model.safetensors",
        &model.join("model.safetensors"),
        &st,
        header,
        |_| read_model(&model),
    );
}

#[test]
fn damaged_gzip_files_never_panic() {
    let dir = scratch("gzip");
    for name in ["all_flags.gz", "members.gz"] {
        let good = std::fs::read(fixture("gzip").join(name)).unwrap();
        never_panics(name, &dir.join(name), &good, 2048, |p| {
            let mut text = Vec::new();
            GzReader::new(std::fs::File::open(p)?).read_to_end(&mut text)?;
            Ok(text)
        });
    }
}

#[test]
fn damaged_zstd_files_never_panic() {
    let dir = scratch("zstd");
    for name in ["plain.zst", "frames.zst", "skippable.zst"] {
        let good = std::fs::read(fixture("zstd").join(name)).unwrap();
        never_panics(name, &dir.join(name), &good, 2048, |p| {
            let mut text = Vec::new();
            ZstdReader::new(std::fs::File::open(p)?).read_to_end(&mut text)?;
            Ok(text)
        });
    }
}

/// Every byte of each Parquet layout damaged (the footer's Thrift, the page headers, the levels,
/// the dictionary indices, the compressed pages of each codec) and every cut.
#[test]
fn damaged_parquet_files_never_panic() {
    let dir = scratch("parquet");
    for name in [
        "plain_snappy.parquet",
        "dict_zstd_v2.parquet",
        "nulls_gzip_groups.parquet",
        "nulls_v2_plain.parquet",
        "required_none.parquet",
        "columns.parquet",
        "lz4.parquet",
        "delta.parquet",
        "delta_length_many.parquet",
    ] {
        let good = std::fs::read(fixture("parquet").join(name)).unwrap();
        never_panics(name, &dir.join(name), &good, good.len(), |p| {
            let mut bytes = 0;
            read_text_column(p, "text", |v| {
                bytes += v.map_or(0, str::len);
                Ok(())
            })?;
            Ok(bytes)
        });
    }
}

#[test]
fn damaged_hellaswag_files_never_panic() {
    let dir = scratch("hellaswag");
    let good = read_fixture("hellaswag_tiny.jsonl");
    never_panics(
        "hellaswag",
        &dir.join("h.jsonl"),
        &good,
        good.len(),
        read_examples,
    );
}
