//! Token shards, prepro and the data loader: a shard written by an independent Python writer
//! (tools/write_shard_fixture.py), every bad-input error's text, exact batches from hand-made
//! shards, and the committed default corpus reproduced byte for byte.

use std::path::{Path, PathBuf};

use train_gpt2_cuda::data::{
    default_corpus_dir, default_train_pattern, default_val_pattern, epoch_batches, glob_files,
    wildcard_match, DataLoader,
};
use train_gpt2_cuda::formats::shard::{check_tokens, read_shard, read_shard_len, write_shard};
use train_gpt2_cuda::prepro::{
    default_corpus_inputs, encode_stream, prepro, prepro_default_corpus, prepro_with,
    PreproOptions, ValSplit, DEFAULT_VAL_PLAY,
};
use train_gpt2_cuda::tokenizer::Tokenizer;

/// The tokens of tests/fixtures/shard_small.bin (see tools/write_shard_fixture.py).
const SMALL_SHARD_TOKENS: [u16; 17] = [
    50256, 15496, 995, 0, 1, 255, 256, 257, 4660, 65535, 12345, 198, 50255, 7, 8, 9, 10,
];
const V: usize = 50257;

fn fixture(name: &str) -> PathBuf {
    Path::new(&root()).join("tests/fixtures").join(name)
}

/// A fresh, empty directory for one test.
fn tmp_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("data-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_contains(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error {e:?} does not contain {p:?}");
    }
}

// ---------------------------------------------------------------- shards

#[test]
fn reads_the_python_written_shard() {
    let path = fixture("shard_small.bin");
    assert_eq!(read_shard(&path).unwrap(), SMALL_SHARD_TOKENS);
    assert_eq!(read_shard_len(&path).unwrap(), 17);
    // 65535 at position 9 is out of range for GPT-2.
    let e = err_text(check_tokens(&path, &read_shard(&path).unwrap(), V));
    assert_contains(
        &e,
        &[
            "shard_small.bin",
            "token id 65535 at position 9 is out of range for vocabulary size 50257",
        ],
    );
    check_tokens(&path, &read_shard(&path).unwrap(), 65536).unwrap();
}

#[test]
fn write_matches_the_python_writer_and_round_trips() {
    let dir = tmp_dir("write");
    let path = dir.join("small.bin");
    let tokens: Vec<u32> = SMALL_SHARD_TOKENS.iter().map(|&x| x as u32).collect();
    write_shard(&path, &tokens).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(fixture("shard_small.bin")).unwrap()
    );
    // A longer one: size 1024 + 2N, and the same tokens back.
    let tokens: Vec<u32> = (0..3000u32).map(|i| (i * 7919) % 65536).collect();
    write_shard(&path, &tokens).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024 + 2 * 3000);
    let back: Vec<u32> = read_shard(&path)
        .unwrap()
        .into_iter()
        .map(u32::from)
        .collect();
    assert_eq!(back, tokens);
    // An empty shard is valid on disk.
    write_shard(&path, &[]).unwrap();
    assert_eq!(read_shard(&path).unwrap(), Vec::<u16>::new());
    // No temporary file is left behind.
    assert!(!dir.join("small.bin.tmp").exists());
}

#[test]
fn write_rejects_tokens_above_u16() {
    let path = tmp_dir("write_big").join("big.bin");
    let e = err_text(write_shard(&path, &[1, 2, 65536]));
    assert_contains(
        &e,
        &["big.bin", "token id 65536 at position 2", "at most 65535"],
    );
    assert!(!path.exists());
}

/// The fixture's bytes with `edit` applied, written to a fresh file.
fn edited_fixture(test: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(fixture("shard_small.bin")).unwrap();
    edit(&mut bytes);
    let path = tmp_dir(test).join("shard.bin");
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// Both readers (whole file, header only) and the loader give an error containing `parts`.
fn assert_bad_shard(path: &Path, parts: &[&str]) {
    let name = path.to_string_lossy().into_owned();
    let mut all = vec![name.as_str()];
    all.extend_from_slice(parts);
    assert_contains(&err_text(read_shard(path)), &all);
    assert_contains(&err_text(read_shard_len(path)), &all);
    assert_contains(&err_text(DataLoader::new(&name, 1, 2, V, None)), &all);
}

#[test]
fn missing_shard() {
    let path = tmp_dir("missing").join("nope.bin");
    let name = path.to_string_lossy().into_owned();
    assert_contains(&err_text(read_shard(&path)), &[&name, "cannot open"]);
    assert_contains(&err_text(read_shard_len(&path)), &[&name, "cannot open"]);
    assert_contains(
        &err_text(DataLoader::new(&name, 1, 2, V, None)),
        &[&format!("no file matches the pattern '{name}'")],
    );
}

#[test]
fn truncated_shard() {
    let path = edited_fixture("truncated", |b| b.truncate(b.len() - 2));
    assert_bad_shard(
        &path,
        &[
            "truncated",
            "the header says 17 tokens, so 1058 bytes are expected, but the file has 1056 bytes",
        ],
    );
    let path = edited_fixture("truncated_header", |b| b.truncate(1000));
    assert_bad_shard(&path, &["1000 bytes, shorter than the 1024-byte header"]);
}

#[test]
fn trailing_bytes() {
    let path = edited_fixture("trailing", |b| b.push(0));
    assert_bad_shard(
        &path,
        &[
            "1 trailing byte:",
            "1058 bytes are expected, but the file has 1059 bytes",
        ],
    );
}

#[test]
fn wrong_magic() {
    let path = edited_fixture("magic", |b| {
        b[0..4].copy_from_slice(&20240521i32.to_le_bytes())
    });
    assert_bad_shard(&path, &["bad magic number 20240521 (expected 20240520"]);
}

#[test]
fn wrong_version() {
    let path = edited_fixture("version", |b| b[4..8].copy_from_slice(&2i32.to_le_bytes()));
    assert_bad_shard(&path, &["unsupported token shard version 2 (supported: 1)"]);
}

#[test]
fn negative_count() {
    let path = edited_fixture("negative", |b| {
        b[8..12].copy_from_slice(&(-3i32).to_le_bytes())
    });
    assert_bad_shard(&path, &["negative token count -3"]);
}

// ---------------------------------------------------------------- glob

#[test]
fn wildcards() {
    assert!(wildcard_match("*.bin", "train.bin"));
    assert!(wildcard_match("*.bin", ".bin"));
    assert!(!wildcard_match("*.bin", "train.bin.tmp"));
    assert!(wildcard_match("shard_??.bin", "shard_07.bin"));
    assert!(!wildcard_match("shard_??.bin", "shard_7.bin"));
    assert!(wildcard_match("a*b*c", "aXXbYYbZc"));
    assert!(!wildcard_match("a*b*c", "aXXbYYbZ"));
    assert!(wildcard_match("*", ""));
    assert!(wildcard_match("x", "x"));
    assert!(!wildcard_match("x", "xx"));

    let dir = tmp_dir("glob");
    for n in ["b_01.bin", "a_02.bin", "a_01.bin", "a_01.txt"] {
        std::fs::write(dir.join(n), b"").unwrap();
    }
    std::fs::create_dir(dir.join("a_03.bin")).unwrap(); // a directory is not a shard
    let pat = dir.join("a_*.bin").to_string_lossy().into_owned();
    assert_eq!(
        glob_files(&pat).unwrap(),
        vec![dir.join("a_01.bin"), dir.join("a_02.bin")]
    );
    let pat = dir.join("?_01.*").to_string_lossy().into_owned();
    assert_eq!(
        glob_files(&pat).unwrap(),
        vec![
            dir.join("a_01.bin"),
            dir.join("a_01.txt"),
            dir.join("b_01.bin")
        ]
    );
    let pat = dir.join("c_*.bin").to_string_lossy().into_owned();
    assert_contains(
        &err_text(glob_files(&pat)),
        &[&format!("no file matches the pattern '{pat}'")],
    );
    // a shell's [...] is not a wildcard here, and the error says so
    let pat = dir.join("[ab]_01.bin").to_string_lossy().into_owned();
    assert_contains(
        &err_text(glob_files(&pat)),
        &["only * and ? are wildcards here, not [...] or {a,b}"],
    );
    // a directory is not a pattern of shards
    let pat = dir.to_string_lossy().into_owned();
    assert_contains(
        &err_text(glob_files(&pat)),
        &[
            "is a directory: give a pattern of its shards, such as",
            "*.bin",
        ],
    );
    // a name that is not UTF-8 is not left out
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = dir.join(std::ffi::OsStr::from_bytes(b"b_\xff.bin"));
        std::fs::write(&odd, b"").unwrap();
        let pat = dir.join("b_*.bin").to_string_lossy().into_owned();
        assert_eq!(glob_files(&pat).unwrap(), vec![dir.join("b_01.bin"), odd]);
    }
    let pat = dir.join("*").join("x.bin").to_string_lossy().into_owned();
    assert_contains(
        &err_text(glob_files(&pat)),
        &["only in the file name", &pat],
    );
    let pat = dir
        .join("nodir")
        .join("*.bin")
        .to_string_lossy()
        .into_owned();
    assert_contains(
        &err_text(glob_files(&pat)),
        &[
            &format!("no file matches the pattern '{pat}'"),
            "cannot read the directory",
        ],
    );
}

// ---------------------------------------------------------------- loader

/// Writes a shard of tokens start, start+1, ..., start+n-1.
fn ramp_shard(path: &Path, start: u32, n: u32) {
    write_shard(path, &(start..start + n).collect::<Vec<_>>()).unwrap();
}

#[test]
fn sequential_batches_are_exact_and_wrap() {
    let dir = tmp_dir("seq");
    let path = dir.join("s.bin");
    // 25 tokens, B=2, T=3: B*T = 6, (25 - 1) / 6 = 4 chunks; token 24 is only ever a target.
    ramp_shard(&path, 100, 25);
    let mut dl = DataLoader::new(&path.to_string_lossy(), 2, 3, V, None).unwrap();
    assert_eq!(dl.num_batches(), 4);
    assert_eq!(dl.num_tokens(), 25);
    let expected: [([u32; 6], [u32; 6]); 4] = [
        (
            [100, 101, 102, 103, 104, 105],
            [101, 102, 103, 104, 105, 106],
        ),
        (
            [106, 107, 108, 109, 110, 111],
            [107, 108, 109, 110, 111, 112],
        ),
        (
            [112, 113, 114, 115, 116, 117],
            [113, 114, 115, 116, 117, 118],
        ),
        (
            [118, 119, 120, 121, 122, 123],
            [119, 120, 121, 122, 123, 124],
        ),
    ];
    for epoch in 0..2 {
        for (x, y) in &expected {
            let (inp, tgt) = dl.next_batch().unwrap();
            assert_eq!((inp, tgt), (&x[..], &y[..]));
            assert_eq!(dl.epoch(), epoch);
        }
    }
    assert_eq!(dl.batches_served(), 8);
    dl.next_batch().unwrap();
    assert_eq!(dl.epoch(), 2);
    dl.reset().unwrap();
    assert_eq!((dl.epoch(), dl.batches_served()), (0, 0));
    assert_eq!(dl.next_batch().unwrap().0, &expected[0].0);
}

#[test]
fn sequential_over_shards_in_name_order() {
    let dir = tmp_dir("seq_multi");
    // Written in the reverse order of their names; 13 tokens each, B=1, T=4: 3 chunks each.
    ramp_shard(&dir.join("shard_1.bin"), 200, 13);
    ramp_shard(&dir.join("shard_0.bin"), 0, 13);
    std::fs::write(dir.join("other.txt"), b"not a shard").unwrap();
    let pat = dir.join("shard_?.bin").to_string_lossy().into_owned();
    let mut dl = DataLoader::new(&pat, 1, 4, V, None).unwrap();
    assert_eq!(
        dl.files(),
        &[dir.join("shard_0.bin"), dir.join("shard_1.bin")]
    );
    assert_eq!(dl.num_batches(), 6);
    let firsts: Vec<u32> = (0..7).map(|_| dl.next_batch().unwrap().0[0]).collect();
    assert_eq!(firsts, vec![0, 4, 8, 200, 204, 208, 0]);
}

/// The first input token of each of `n` batches, checking targets = inputs shifted by one on a
/// ramp shard (token i+1 follows token i).
fn chunk_starts(dl: &mut DataLoader, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let (x, y) = dl.next_batch().unwrap();
            for i in 0..x.len() {
                assert_eq!(y[i], x[i] + 1);
                if i > 0 {
                    assert_eq!(x[i], x[i - 1] + 1, "rows of a chunk are contiguous");
                }
            }
            x[0]
        })
        .collect()
}

#[test]
fn shuffled_is_reproducible_and_covers_every_chunk_once_per_epoch() {
    let dir = tmp_dir("shuffle");
    // Shard a: 41 tokens, shard b: 33 tokens; B=2, T=4: B*T = 8, chunks 5 and 4.
    ramp_shard(&dir.join("a.bin"), 1000, 41);
    ramp_shard(&dir.join("b.bin"), 2000, 33);
    let pat = dir.join("*.bin").to_string_lossy().into_owned();
    let all: Vec<u32> = (0..5)
        .map(|k| 1000 + 8 * k)
        .chain((0..4).map(|k| 2000 + 8 * k))
        .collect();

    let mut dl = DataLoader::new(&pat, 2, 4, V, Some(42)).unwrap();
    assert_eq!(dl.num_batches(), 9);
    let e1 = chunk_starts(&mut dl, 9);
    let e2 = chunk_starts(&mut dl, 9);
    assert_eq!(dl.epoch(), 1);
    for e in [&e1, &e2] {
        let mut sorted = e.clone();
        sorted.sort();
        assert_eq!(sorted, all, "every chunk once per epoch: {e:?}");
        // A shard's chunks are served together (shard order, then chunk order).
        let first_shard = e[0] / 1000;
        let n_first = if first_shard == 1 { 5 } else { 4 };
        assert!(
            e[..n_first].iter().all(|&s| s / 1000 == first_shard),
            "{e:?}"
        );
    }
    assert_ne!(e1, all, "seed 42 left the order unchanged");
    assert_ne!(e1, e2, "two epochs had the same order");

    // Same seed: the same sequence, from a new loader and after reset.
    let mut again = DataLoader::new(&pat, 2, 4, V, Some(42)).unwrap();
    assert_eq!(
        chunk_starts(&mut again, 18),
        [e1.clone(), e2.clone()].concat()
    );
    dl.reset().unwrap();
    assert_eq!(chunk_starts(&mut dl, 9), e1);
    // Another seed: another order.
    let mut other = DataLoader::new(&pat, 2, 4, V, Some(43)).unwrap();
    assert_ne!(chunk_starts(&mut other, 9), e1);
}

/// Skipping k batches lands where serving k batches does, shuffled or not, across shards and
/// epochs (k = 0 to three epochs), and counts them; the shards passed over are not read (one of
/// them is broken after the loader has checked it).
#[test]
fn skipping_batches_lands_where_serving_them_does() {
    let dir = tmp_dir("skip");
    // Shards a, b, c of 5, 4 and 3 chunks (B=2, T=4: 8 tokens a chunk): 12 batches an epoch.
    ramp_shard(&dir.join("a.bin"), 1000, 41);
    ramp_shard(&dir.join("b.bin"), 2000, 33);
    ramp_shard(&dir.join("c.bin"), 3000, 25);
    let pat = dir.join("*.bin").to_string_lossy().into_owned();
    for seed in [None, Some(42)] {
        let mut served = DataLoader::new(&pat, 2, 4, V, seed).unwrap();
        let stream = chunk_starts(&mut served, 40);
        for k in [0usize, 1, 4, 5, 9, 11, 12, 13, 30, 36] {
            let mut dl = DataLoader::new(&pat, 2, 4, V, seed).unwrap();
            dl.skip_batches(k as u64).unwrap();
            assert_eq!(dl.batches_served(), k);
            assert_eq!(dl.epoch(), k.saturating_sub(1) / 12, "seed {seed:?}, k {k}");
            assert_eq!(
                chunk_starts(&mut dl, 4),
                &stream[k..k + 4],
                "seed {seed:?}: after skipping {k}"
            );
        }
    }
    // Without shuffling the epoch is a, b, c: skipping 9 batches passes over a and b, then
    // reads c only. b broken after the loader checked its length: not read, so no error.
    let mut dl = DataLoader::new(&pat, 2, 4, V, None).unwrap();
    let mut into_b = DataLoader::new(&pat, 2, 4, V, None).unwrap();
    ramp_shard(&dir.join("b.bin"), 2000, 30);
    dl.skip_batches(9).unwrap();
    assert_eq!(dl.next_batch().unwrap().0[0], 3000);
    // ... while serving from it is the loader's usual error
    into_b.skip_batches(5).unwrap();
    let e = err_text(into_b.next_batch());
    assert_contains(&e, &["b.bin", "the shard changed while training"]);
}

/// A shard with no whole batch (B*T tokens or fewer, none at all among them) is passed over: an
/// epoch is the other shards' batches, which are served, shuffled and skipped as if it were not
/// there, while the set's tokens and shards (what a training state records) still count it.
#[test]
fn a_shard_without_a_batch_is_passed_over() {
    let dir = tmp_dir("short");
    // B=2, T=4: a holds 5 chunks, b 8 tokens (one short of a batch), c 3 chunks, d none
    ramp_shard(&dir.join("a.bin"), 1000, 41);
    ramp_shard(&dir.join("b.bin"), 2000, 8);
    ramp_shard(&dir.join("c.bin"), 3000, 25);
    write_shard(&dir.join("d.bin"), &[]).unwrap();
    let pat = dir.join("*.bin").to_string_lossy().into_owned();
    assert_eq!(epoch_batches(&pat, 2, 4).unwrap(), 8);
    let mut dl = DataLoader::new(&pat, 2, 4, V, None).unwrap();
    assert_eq!(dl.num_batches(), 8);
    assert_eq!(dl.passed_over(), [dir.join("b.bin"), dir.join("d.bin")]);
    assert_eq!((dl.num_tokens(), dl.files().len()), (41 + 8 + 25, 4));
    assert_eq!(
        chunk_starts(&mut dl, 9),
        [1000, 1008, 1016, 1024, 1032, 3000, 3008, 3016, 1000]
    );
    assert_eq!((dl.epoch(), dl.batches_served()), (1, 9));
    // with a batch of 2 x 3 (7 tokens) b holds one, and only d is passed over
    let dl = DataLoader::new(&pat, 2, 3, V, None).unwrap();
    assert_eq!(dl.num_batches(), 6 + 1 + 4);
    assert_eq!(dl.passed_over(), [dir.join("d.bin")]);

    let all: Vec<u32> = (0..5)
        .map(|k| 1000 + 8 * k)
        .chain((0..3).map(|k| 3000 + 8 * k))
        .collect();
    let mut shuffled = DataLoader::new(&pat, 2, 4, V, Some(42)).unwrap();
    let stream = chunk_starts(&mut shuffled, 24);
    for epoch in stream.chunks(8) {
        let mut sorted = epoch.to_vec();
        sorted.sort();
        assert_eq!(sorted, all, "every chunk once per epoch: {epoch:?}");
    }
    for k in [0usize, 3, 5, 8, 13, 16] {
        let mut dl = DataLoader::new(&pat, 2, 4, V, Some(42)).unwrap();
        dl.skip_batches(k as u64).unwrap();
        assert_eq!(dl.epoch(), k.saturating_sub(1) / 8, "k {k}");
        assert_eq!(
            chunk_starts(&mut dl, 4),
            &stream[k..k + 4],
            "after skipping {k}"
        );
    }
}

/// A set none of whose shards holds a batch is an error naming the largest shard.
#[test]
fn a_set_without_a_batch_is_an_error() {
    let dir = tmp_dir("all_short");
    ramp_shard(&dir.join("a.bin"), 0, 3);
    ramp_shard(&dir.join("b.bin"), 0, 6);
    let pat = dir.join("*.bin").to_string_lossy().into_owned();
    let want = format!(
        "no shard of '{pat}' holds one batch: the largest of its 2, {}, has 6 tokens, fewer \
         than B*T+1 = 7 needed for one batch (B=2, T=3): give a smaller --batch or --seq, or \
         tokenize more text into the set (for a val set that prepro made, a larger --val-fraction)",
        dir.join("b.bin").display()
    );
    assert_contains(&err_text(DataLoader::new(&pat, 2, 3, V, None)), &[&want]);
    assert_contains(&err_text(epoch_batches(&pat, 2, 3)), &[&want]);
    // one batch of 1 x 5 in b: a is passed over
    assert_eq!(epoch_batches(&pat, 1, 5).unwrap(), 1);
    // a shard of one token holds no batch at any size: no smaller --batch or --seq helps
    ramp_shard(&dir.join("one.bin"), 0, 1);
    let one = dir.join("one.bin").to_string_lossy().into_owned();
    let want = format!(
        "{one}: the shard has 1 token, fewer than B*T+1 = 2 needed for one batch (B=1, T=1): it \
         holds no batch at any --batch and --seq (tokenize more text into it)"
    );
    assert_contains(&err_text(DataLoader::new(&one, 1, 1, V, None)), &[&want]);
    // two tokens hold a batch of 1 x 1: a smaller --batch or --seq helps
    ramp_shard(&dir.join("two.bin"), 0, 2);
    let two = dir.join("two.bin").to_string_lossy().into_owned();
    let want = format!(
        "{two}: the shard has 2 tokens, fewer than B*T+1 = 3 needed for one batch (B=1, T=2): give \
         a smaller --batch or --seq"
    );
    assert_contains(&err_text(DataLoader::new(&two, 1, 2, V, None)), &[&want]);
    assert_eq!(epoch_batches(&two, 1, 1).unwrap(), 1);
}

#[test]
fn loader_argument_errors() {
    let dir = tmp_dir("loader_errors");
    let path = dir.join("s.bin");
    ramp_shard(&path, 0, 6);
    let name = path.to_string_lossy().into_owned();
    for (b, t) in [(0, 4), (4, 0)] {
        assert_contains(
            &err_text(DataLoader::new(&name, b, t, V, None)),
            &[&format!(
                "B={b} and sequence length T={t} must both be positive"
            )],
        );
    }
    // 6 tokens cannot make one 2 x 3 batch (which needs 7).
    assert_contains(
        &err_text(DataLoader::new(&name, 2, 3, V, None)),
        &[&name, "the shard has 6 tokens, fewer than B*T+1 = 7"],
    );
    DataLoader::new(&name, 1, 5, V, None).unwrap();
    let pat = dir.join("*.nothing").to_string_lossy().into_owned();
    assert_contains(
        &err_text(DataLoader::new(&pat, 1, 1, V, None)),
        &[&format!("no file matches the pattern '{pat}'")],
    );
}

#[test]
fn loader_checks_token_ids_against_v() {
    let name = fixture("shard_small.bin").to_string_lossy().into_owned();
    assert_contains(
        &err_text(DataLoader::new(&name, 1, 4, V, None)),
        &[
            &name,
            "token id 65535 at position 9 is out of range for vocabulary size 50257",
        ],
    );
    // Fine with a larger vocabulary: 16 tokens of inputs, (17 - 1) / 4 = 4 batches.
    let mut dl = DataLoader::new(&name, 1, 4, 65536, None).unwrap();
    assert_eq!(dl.num_batches(), 4);
    let (x, y) = dl.next_batch().unwrap();
    assert_eq!(
        (x, y),
        (&[50256, 15496, 995, 0][..], &[15496, 995, 0, 1][..])
    );

    // A bad token in a later shard is found when the loader reaches it.
    let dir = tmp_dir("late_bad");
    ramp_shard(&dir.join("a.bin"), 0, 9);
    write_shard(&dir.join("b.bin"), &[1, 2, 3, 4, 60000, 6, 7, 8, 9]).unwrap();
    let pat = dir.join("*.bin").to_string_lossy().into_owned();
    let mut dl = DataLoader::new(&pat, 2, 4, V, None).unwrap();
    dl.next_batch().unwrap();
    let e = err_text(dl.next_batch());
    assert_contains(
        &e,
        &[
            "b.bin",
            "token id 60000 at position 4 is out of range for vocabulary size 50257",
        ],
    );
}

// ---------------------------------------------------------------- prepro

fn write_docs(dir: &Path, docs: &[(&str, &[u8])]) -> Vec<PathBuf> {
    docs.iter()
        .map(|(name, text)| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect()
}

/// "Hello world", " the" and "hello world": [50256, 15496, 995], [50256, 262], [50256, 31373, 995].
fn three_docs(dir: &Path) -> Vec<PathBuf> {
    write_docs(
        dir,
        &[
            ("1.txt", b"Hello world"),
            ("2.txt", b" the"),
            ("3.txt", b"hello world"),
        ],
    )
}

/// The ids prepro gives a document: the end-of-text token, then `text` encoded whole (the
/// reference for prepro's parts, pieces and streams).
fn document(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut ids = vec![tok.eot()];
    ids.extend(tok.encode(text));
    ids
}

fn shards_of(shard_tokens: usize) -> PreproOptions {
    PreproOptions {
        shard_tokens,
        ..PreproOptions::default()
    }
}

fn shard_u32(path: &Path) -> Vec<u32> {
    read_shard(path)
        .unwrap()
        .into_iter()
        .map(u32::from)
        .collect()
}

#[test]
fn prepro_puts_eot_before_each_document() {
    let dir = tmp_dir("prepro");
    let inputs = three_docs(&dir);
    let out = dir.join("out");
    let s = prepro(&inputs, &out, ValSplit::LastFiles(1)).unwrap();
    assert_eq!((s.documents, s.train_tokens, s.val_tokens), (3, 5, 3));
    assert_eq!(
        shard_u32(&out.join("train.bin")),
        vec![50256, 15496, 995, 50256, 262]
    );
    assert_eq!(shard_u32(&out.join("val.bin")), vec![50256, 31373, 995]);

    // By fraction: the stream of 8 tokens, the last round(0.25 * 8) = 2 to val.
    let s = prepro(&inputs, &out, ValSplit::Fraction(0.25)).unwrap();
    assert_eq!((s.train_tokens, s.val_tokens), (6, 2));
    assert_eq!(
        shard_u32(&s.train_path),
        vec![50256, 15496, 995, 50256, 262, 50256]
    );
    assert_eq!(shard_u32(&s.val_path), vec![31373, 995]);

    // A literal "<|endoftext|>" in a document is ordinary text.
    let inputs = write_docs(&dir, &[("a.txt", b"a<|endoftext|>"), ("b.txt", b"")]);
    prepro(&inputs, &out, ValSplit::LastFiles(1)).unwrap();
    let train = shard_u32(&out.join("train.bin"));
    assert_eq!(train[0], 50256);
    assert!(!train[1..].contains(&50256), "{train:?}");
    assert_eq!(shard_u32(&out.join("val.bin")), vec![50256]);
}

#[test]
fn prepro_writes_numbered_shards_for_a_large_part_and_removes_stale_ones() {
    let dir = tmp_dir("prepro_shards");
    let inputs = three_docs(&dir);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // files that are not prepro's shards stay
    let keep = [
        "train_notes.bin",
        "train_1.bin",
        "mytrain.bin",
        "val_0000001.bin",
    ];
    for k in keep {
        std::fs::write(out.join(k), b"mine").unwrap();
    }
    // train: 5 tokens in shards of 2; val: 3 tokens
    let s = prepro_with(&inputs, &out, ValSplit::LastFiles(1), &shards_of(2)).unwrap();
    let names = |paths: &[PathBuf]| -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(&s.train_shards),
        ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    );
    assert_eq!(names(&s.val_shards), ["val_000000.bin", "val_000001.bin"]);
    assert_eq!(s.train_path, out.join("train_??????.bin"));
    assert_eq!(s.val_path, out.join("val_??????.bin"));
    let read =
        |paths: &[PathBuf]| -> Vec<Vec<u32>> { paths.iter().map(|p| shard_u32(p)).collect() };
    assert_eq!(
        read(&s.train_shards),
        [vec![50256, 15496], vec![995, 50256], vec![262]]
    );
    assert_eq!(read(&s.val_shards), [vec![50256, 31373], vec![995]]);
    // the pattern finds exactly them, not the files that are not shards
    let found = glob_files(&s.train_path.to_string_lossy()).unwrap();
    assert_eq!(found, s.train_shards);

    // again with shards of 3: train_000002.bin is stale and goes; val fits in one shard, so
    // val.bin is written and both numbered val shards go
    let s = prepro_with(&inputs, &out, ValSplit::LastFiles(1), &shards_of(3)).unwrap();
    assert_eq!(
        names(&s.train_shards),
        ["train_000000.bin", "train_000001.bin"]
    );
    assert_eq!(s.val_path, out.join("val.bin"));
    assert_eq!(
        read(&s.train_shards),
        [vec![50256, 15496, 995], vec![50256, 262]]
    );
    // and with the default size, one shard each: every numbered shard is gone
    let s = prepro(&inputs, &out, ValSplit::LastFiles(1)).unwrap();
    assert_eq!((s.train_shards.len(), s.val_shards.len()), (1, 1));
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = keep.iter().map(|k| k.to_string()).collect();
    want.extend(["train.bin".into(), "val.bin".into()]);
    want.sort();
    assert_eq!(left, want);

    for bad in [0, 1 << 31] {
        let err = err_text(prepro_with(
            &inputs,
            &out,
            ValSplit::LastFiles(1),
            &shards_of(bad),
        ));
        assert!(
            err.contains("the shard size must be in 1..=2147483647"),
            "{err}"
        );
    }
    // the largest size a shard's header can count is taken: one shard each, as by default
    let s = prepro_with(
        &inputs,
        &out,
        ValSplit::LastFiles(1),
        &shards_of(i32::MAX as usize),
    )
    .unwrap();
    assert_eq!((s.train_shards.len(), s.val_shards.len()), (1, 1));
    assert_eq!(read(&s.train_shards), [vec![50256, 15496, 995, 50256, 262]]);
}

/// [`encode_stream`] of `text` read from memory: its ids, and the progress calls.
fn encode_text(tok: &Tokenizer, text: &str, part_bytes: usize) -> (Vec<u32>, Vec<u64>) {
    let (mut ids, mut done) = (Vec::new(), Vec::new());
    let n = encode_stream(
        tok,
        text.as_bytes(),
        part_bytes,
        &"text",
        |part| {
            ids.extend_from_slice(part);
            Ok(())
        },
        |d| done.push(d),
    )
    .unwrap();
    assert_eq!(n, text.len() as u64);
    (ids, done)
}

#[test]
fn a_large_document_is_tokenized_in_parts_with_progress() {
    let tok = Tokenizer::gpt2().unwrap();
    let inputs = default_corpus_inputs(&default_corpus_dir()).unwrap();
    let text: String = inputs
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let (ids, done) = encode_text(&tok, &text, 100_000);
    let mut want = vec![tok.eot()];
    want.extend(tok.encode(&text));
    assert!(
        ids == want,
        "the ids of the parts differ from the whole text's"
    );
    // about 1 MB in parts of at least 100 kB but the last: a progress call after each, up to
    // the whole text
    assert!((9..=11).contains(&done.len()), "{done:?}");
    let sizes: Vec<u64> = done
        .iter()
        .scan(0, |prev, &d| Some(d - std::mem::replace(prev, d)))
        .collect();
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&n| n >= 100_000),
        "{done:?}"
    );
    assert_eq!(done.last(), Some(&(text.len() as u64)));
    // a document no longer than the part size: one part
    assert_eq!(
        encode_text(&tok, "Hello world", 11),
        (vec![50256, 15496, 995], vec![11])
    );
    // an empty document is its end-of-text token
    assert_eq!(encode_text(&tok, "", 11), (vec![50256], vec![]));
}

/// Every file (name, bytes) in `dir`, hidden ones included, in name order.
fn folder(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Three plays and a few tricky small texts, in an order that mixes large and small files.
fn streaming_docs(dir: &Path) -> Vec<PathBuf> {
    let plays = default_corpus_inputs(&default_corpus_dir()).unwrap();
    let mut docs = write_docs(
        dir,
        &[
            ("a.txt", "don't  stop \n\n  me 数字 🦀".as_bytes()),
            ("b.txt", b""),
            ("c.txt", b" x"),
        ],
    );
    docs.insert(1, plays[0].clone());
    docs.insert(2, plays[3].clone());
    docs.push(plays[5].clone());
    docs
}

#[test]
fn prepro_streams_the_corpus_into_the_shards_of_the_whole_token_stream() {
    let dir = tmp_dir("prepro_streaming");
    let inputs = streaming_docs(&dir);
    let out = dir.join("out");
    // the reference: each document's ids from one encode of its whole text, end to end
    let tok = Tokenizer::gpt2().unwrap();
    let docs: Vec<Vec<u32>> = inputs
        .iter()
        .map(|p| document(&tok, &std::fs::read_to_string(p).unwrap()))
        .collect();
    let all = docs.concat();
    let total = all.len();
    assert!(total > 60_000, "{total}");
    let last_two = docs[docs.len() - 2..].iter().map(Vec::len).sum::<usize>();
    // (val tokens, shard size, what the case exercises)
    let cases = [
        (last_two, 1_000_000, "by files, one shard each"),
        (last_two, 7_919, "by files, numbered shards"),
        (
            1_234,
            10_000,
            "by fraction: the cut in the last shard being filled",
        ),
        (
            total - 3 * 10_000,
            10_000,
            "by fraction: the cut on a shard's boundary",
        ),
        (
            total - 25_000,
            10_000,
            "by fraction: the cut inside a full shard",
        ),
        (total - 1, 9_999, "by fraction: one train token"),
        (
            total / 2,
            total,
            "by fraction: the whole stream is one shard",
        ),
    ];
    let default = PreproOptions::default();
    for (i, &(n_val, shard_tokens, what)) in cases.iter().enumerate() {
        let split = if i < 2 {
            ValSplit::LastFiles(2)
        } else {
            // round(total * f) == n_val
            ValSplit::Fraction((n_val as f64 + 0.25) / total as f64)
        };
        let cut = total - n_val;
        let want = |part: &[u32]| -> Vec<Vec<u32>> {
            part.chunks(shard_tokens).map(<[u32]>::to_vec).collect()
        };
        // whole files in parallel groups, files in parts of 20 kB one at a time, and small
        // groups: the same shards
        let sizes = [
            (default.part_bytes, default.group_bytes),
            (20_000, 1),
            (default.part_bytes, 30),
        ];
        for (part_bytes, group_bytes) in sizes {
            let opts = PreproOptions {
                shard_tokens,
                part_bytes,
                group_bytes,
                ..PreproOptions::default()
            };
            let s = prepro_with(&inputs, &out, split, &opts).unwrap();
            let read = |paths: &[PathBuf]| -> Vec<Vec<u32>> {
                paths.iter().map(|p| shard_u32(p)).collect()
            };
            let case = format!("{what} ({n_val} val tokens, {opts:?})");
            assert_eq!((s.train_tokens, s.val_tokens), (cut, n_val), "{case}");
            assert!(read(&s.train_shards) == want(&all[..cut]), "{case}");
            assert!(read(&s.val_shards) == want(&all[cut..]), "{case}");
            // nothing else is left in the folder
            let mut shards = [s.train_shards, s.val_shards].concat();
            shards.sort();
            let files: Vec<PathBuf> = folder(&out).into_iter().map(|(n, _)| out.join(n)).collect();
            assert_eq!(files, shards, "{case}");
        }
    }
}

#[test]
fn a_failed_prepro_leaves_the_earlier_shards_as_they_were() {
    let dir = tmp_dir("prepro_failed");
    let inputs = streaming_docs(&dir);
    let out = dir.join("out");
    let opts = PreproOptions {
        shard_tokens: 5_000,
        part_bytes: 20_000,
        group_bytes: 1,
        ..PreproOptions::default()
    };
    prepro_with(&inputs, &out, ValSplit::LastFiles(1), &opts).unwrap();
    let before = folder(&out);
    assert!(before.len() > 10, "{}", before.len());
    // a file that is not UTF-8 at the end, after most shards were written
    let bad = write_docs(&dir, &[("bad.txt", b"ok \xff")]);
    let mut with_bad = inputs.clone();
    with_bad.push(bad[0].clone());
    for split in [
        ValSplit::LastFiles(1),
        ValSplit::LastFiles(2),
        ValSplit::Fraction(0.5),
    ] {
        let e = err_text(prepro_with(&with_bad, &out, split, &opts));
        assert_contains(&e, &["bad.txt", "invalid byte at offset 3"]);
        assert!(folder(&out) == before, "{split:?}: the folder changed");
    }
    // a split that leaves val empty, found once every shard is written
    let e = err_text(prepro_with(&inputs, &out, ValSplit::Fraction(1e-9), &opts));
    assert_contains(&e, &["0 val tokens"]);
    assert!(folder(&out) == before, "the folder changed");

    // the temporary shards of a prepro that was killed go at the next one's end; files that
    // are not ours stay
    for f in [
        ".train_000042.bin.partial",
        ".val_000000.bin.partial",
        ".train_000013.bin.partial.tmp",
    ] {
        std::fs::write(out.join(f), b"killed").unwrap();
    }
    std::fs::write(out.join(".train_notes.partial"), b"mine").unwrap();
    prepro_with(&inputs, &out, ValSplit::LastFiles(1), &opts).unwrap();
    let mut after = folder(&out);
    assert_eq!(
        after.remove(0),
        (".train_notes.partial".into(), b"mine".to_vec())
    );
    assert!(after == before, "a killed prepro's shards were left");
}

#[test]
fn a_prepro_that_fails_writing_val_leaves_train_as_it_was() {
    let dir = tmp_dir("prepro_failed_val");
    let inputs = three_docs(&dir);
    let out = dir.join("out");
    prepro(&inputs, &out, ValSplit::LastFiles(1)).unwrap();
    let before = folder(&out);
    // val's shard cannot be written (as on a full disk): a directory holds its temporary name
    std::fs::create_dir(out.join(".val_000000.bin.partial")).unwrap();
    let swapped = [inputs[2].clone(), inputs[0].clone(), inputs[1].clone()];
    let e = err_text(prepro(&swapped, &out, ValSplit::LastFiles(1)));
    assert_contains(&e, &[".val_000000.bin.partial", "cannot write"]);
    std::fs::remove_dir(out.join(".val_000000.bin.partial")).unwrap();
    assert!(
        folder(&out) == before,
        "train.bin was replaced, or a temporary left"
    );
}

#[test]
fn prepro_never_overwrites_or_removes_an_input_or_a_file_that_is_not_a_shard() {
    let dir = tmp_dir("prepro_own_input");
    let text = b"Hello world, a text that happens to be named as a shard";
    let inputs = write_docs(&dir, &[("train.bin", text), ("b.txt", b" the end")]);
    for opts in [shards_of(4), PreproOptions::default()] {
        let e = err_text(prepro_with(&inputs, &dir, ValSplit::LastFiles(1), &opts));
        assert_contains(
            &e,
            &[
                "train.bin: an input that prepro would overwrite or remove",
                "--out-dir",
            ],
        );
        assert_eq!(std::fs::read(&inputs[0]).unwrap(), text);
    }
    // the same file through another path: the folder resolved
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let e = err_text(prepro(&inputs, &sub.join(".."), ValSplit::LastFiles(1)));
    assert_contains(&e, &["an input that prepro would overwrite or remove"]);
    // through a link elsewhere to it (the file itself resolved), and through a link in the
    // output folder named as a shard (the input's own path) to a text elsewhere
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&inputs[0], elsewhere.join("link.txt")).unwrap();
    std::fs::write(elsewhere.join("real.txt"), text).unwrap();
    let links = dir.join("links");
    std::fs::create_dir(&links).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("real.txt"), links.join("val.bin")).unwrap();
    for (input, out) in [
        (elsewhere.join("link.txt"), &dir),
        (links.join("val.bin"), &links),
    ] {
        let both = [input.clone(), inputs[1].clone()];
        let e = err_text(prepro(&both, out, ValSplit::LastFiles(1)));
        assert_contains(&e, &["an input that prepro would overwrite or remove"]);
    }
    assert_eq!(std::fs::read(&inputs[0]).unwrap(), text);
    assert!(links.join("val.bin").is_symlink());
    // a file of the user's named like a shard is not replaced or removed
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("val_000001.bin"), b"my notes").unwrap();
    let docs = three_docs(&sub);
    let e = err_text(prepro(&docs, &out, ValSplit::LastFiles(1)));
    assert_contains(&e, &["val_000001.bin: not a token shard", "move it"]);
    assert_eq!(
        std::fs::read(out.join("val_000001.bin")).unwrap(),
        b"my notes"
    );
    assert_eq!(folder(&out).len(), 1);
}

/// A JSON Lines file written by hand: escapes (\u00e9, a surrogate pair, \n, \", \\, \t), other
/// fields, a nested "text" that is not the record's, blank lines, CRLF, an empty text, and no
/// newline at the end. Returns its records' texts.
fn write_jsonl(path: &Path) -> Vec<String> {
    let lines = concat!(
        "{\"id\": 1, \"text\": \"Hello world\"}\n",
        "{\"text\": \"caf\\u00e9 \\ud83e\\udd80 crab\\n\\nnext \\\"quoted\\\" back\\\\slash\\ttab\", \"url\": \"x\"}\n",
        "\n",
        "   \n",
        "{\"meta\": {\"text\": \"not this\"}, \"text\": \"\"}\n",
        "{\"text\": \"windows line\"}\r\n",
        "{\"text\": \"数字 no newline\"}",
    );
    std::fs::write(path, lines).unwrap();
    [
        "Hello world",
        "café 🦀 crab\n\nnext \"quoted\" back\\slash\ttab",
        "",
        "windows line",
        "数字 no newline",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn prepro_reads_each_json_lines_record_as_a_document() {
    let dir = tmp_dir("prepro_jsonl");
    let tok = Tokenizer::gpt2().unwrap();
    let doc = |text: &str| document(&tok, text);
    let mut texts = write_jsonl(&dir.join("hand.jsonl"));
    // and a second file with a play as one record (serde_json writes its escapes)
    let play =
        std::fs::read_to_string(&default_corpus_inputs(&default_corpus_dir()).unwrap()[0]).unwrap();
    let record = serde_json::json!({ "title": "a play", "text": play });
    std::fs::write(dir.join("play.JSONL"), format!("{record}\n{record}\n")).unwrap();
    texts.extend([play.clone(), play]);
    let inputs = [
        write_docs(&dir, &[("a.txt", b"before")]),
        vec![dir.join("hand.jsonl"), dir.join("play.JSONL")],
        write_docs(&dir, &[("z.txt", b" after")]),
    ]
    .concat();
    let out = dir.join("out");
    let want_train: Vec<u32> = [
        doc("before"),
        texts.iter().map(|t| doc(t)).collect::<Vec<_>>().concat(),
    ]
    .concat();
    // records in batches of whatever fits in 64 MiB, and one at a time: the same shards
    for part_bytes in [PreproOptions::default().part_bytes, 1] {
        let opts = PreproOptions {
            part_bytes,
            ..PreproOptions::default()
        };
        let s = prepro_with(&inputs, &out, ValSplit::LastFiles(1), &opts).unwrap();
        assert_eq!(s.documents, 1 + 7 + 1);
        assert!(shard_u32(&s.train_path) == want_train);
        assert_eq!(shard_u32(&s.val_path), doc(" after"));
    }
    // the text in another field
    std::fs::write(
        dir.join("content.jsonl"),
        "{\"content\": \"one\"}\n{\"content\": \"two\", \"text\": 3}\n",
    )
    .unwrap();
    let opts = PreproOptions {
        text_field: "content".into(),
        ..PreproOptions::default()
    };
    let s = prepro_with(
        &[dir.join("content.jsonl")],
        &out,
        ValSplit::Fraction(0.5),
        &opts,
    )
    .unwrap();
    assert_eq!(s.documents, 2);
    assert_eq!(
        [shard_u32(&s.train_path), shard_u32(&s.val_path)].concat(),
        [doc("one"), doc("two")].concat()
    );
    // JSON Lines named .json (as datasets' to_json("x.json") writes them) or .ndjson: records,
    // not the braces and keys as text
    let lines = "{\"text\": \"one\"}\n{\"text\": \"two\"}\n";
    for name in ["records.json", "records.NDJSON"] {
        std::fs::write(dir.join(name), lines).unwrap();
        let s = prepro(&[dir.join(name)], &out, ValSplit::Fraction(0.5)).unwrap();
        assert_eq!(s.documents, 2, "{name}");
        assert_eq!(
            [shard_u32(&s.train_path), shard_u32(&s.val_path)].concat(),
            [doc("one"), doc("two")].concat(),
            "{name}"
        );
    }
    // a JSON document over many lines is not read, and the error says what a .json must be
    std::fs::write(dir.join("array.json"), "[\n  {\"text\": \"one\"}\n]\n").unwrap();
    let e = err_text(prepro(
        &[dir.join("array.json")],
        &out,
        ValSplit::Fraction(0.5),
    ));
    assert!(
        e.contains("array.json: line 1 (a .json file is read as JSON Lines, one record a line"),
        "{e}"
    );
}

/// A file given twice, by one name, two names or a link, is refused before anything is written:
/// its text would be in the shards twice (with two inputs, val would be train's own text).
#[test]
fn prepro_refuses_a_file_given_twice() {
    let dir = tmp_dir("prepro_twice");
    let a = write_docs(&dir, &[("a.txt", b"to be"), ("b.txt", b"or not")]);
    std::os::unix::fs::symlink(&a[0], dir.join("link.txt")).unwrap();
    let out = dir.join("out");
    for (inputs, says) in [
        (vec![a[0].clone(), a[0].clone()], "a.txt is given twice: "),
        (
            vec![a[0].clone(), a[1].clone(), dir.join("sub/../a.txt")],
            "sub/../a.txt is given twice (as ",
        ),
        (
            vec![a[0].clone(), dir.join("link.txt")],
            "link.txt is given twice (as ",
        ),
    ] {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let e = err_text(prepro(&inputs, &out, ValSplit::LastFiles(1)));
        assert!(e.contains(says), "{e}");
        assert!(!out.exists(), "{e}");
    }
    // each once: shards
    prepro(&a, &out, ValSplit::LastFiles(1)).unwrap();
}

/// Parquet files (tools/write_parquet_fixtures.py, by pyarrow): each row's text one document, in
/// the file's order, null rows skipped: row groups of 7 rows with nulls (gzip, dictionary), and
/// the text column after an int, a struct and before a list (snappy), between two text files;
/// in batches of 64 MiB of text or one row at a time. A column that is not there is an error
/// that names the file and the columns there are.
#[test]
fn prepro_reads_each_parquet_row_as_a_document() {
    let dir = tmp_dir("prepro_parquet");
    let tok = Tokenizer::gpt2().unwrap();
    let doc = |text: &str| document(&tok, text);
    let texts: std::collections::BTreeMap<String, Vec<Option<String>>> = serde_json::from_str(
        &std::fs::read_to_string(fixture("parquet").join("texts.json")).unwrap(),
    )
    .unwrap();
    let files = ["nulls_gzip_groups.parquet", "columns.parquet"];
    let inputs = [
        write_docs(&dir, &[("a.txt", b"before")]),
        files.map(|f| fixture("parquet").join(f)).to_vec(),
        write_docs(&dir, &[("z.txt", b" after")]),
    ]
    .concat();
    let rows: Vec<&String> = files
        .iter()
        .flat_map(|f| texts[*f].iter().flatten())
        .collect();
    assert_eq!(
        rows.len(),
        33 + 40,
        "7 of the first file's 40 rows are null"
    );
    let want_train: Vec<u32> = [
        doc("before"),
        rows.iter().map(|t| doc(t)).collect::<Vec<_>>().concat(),
    ]
    .concat();
    let out = dir.join("out");
    for part_bytes in [PreproOptions::default().part_bytes, 1] {
        let opts = PreproOptions {
            part_bytes,
            ..PreproOptions::default()
        };
        let s = prepro_with(&inputs, &out, ValSplit::LastFiles(1), &opts).unwrap();
        assert_eq!(s.documents, 1 + 33 + 40 + 1);
        assert!(shard_u32(&s.train_path) == want_train);
        assert_eq!(shard_u32(&s.val_path), doc(" after"));
    }
    let opts = PreproOptions {
        text_field: "body".into(),
        ..PreproOptions::default()
    };
    let e = prepro_with(&inputs, &out, ValSplit::LastFiles(1), &opts).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("nulls_gzip_groups.parquet: no column 'body' (the file has 'text')"),
        "{e}"
    );
}

/// gzip files (tools/write_gzip_fixtures.py, by Python's zlib) and zstd files
/// (tools/write_zstd_fixtures.py, by the zstd tool) are read as their text: a text file, one of
/// several members or frames, JSON Lines and a whole play, in parts of 3,000 bytes or whole.
#[test]
fn prepro_reads_compressed_files_as_their_text() {
    let dir = tmp_dir("prepro_compressed");
    let tok = Tokenizer::gpt2().unwrap();
    let doc = |text: &str| document(&tok, text);
    let play = std::fs::read_to_string(default_corpus_dir().join("hamlet.txt")).unwrap();
    let text = &play[..20000];
    let gz = |name: &str| fixture("gzip").join(name);
    let zst = |name: &str| fixture("zstd").join(name);
    let mut train = [doc(text), doc(text)].concat();
    for i in (0..20000).step_by(2000) {
        train.extend(doc(&text[i..i + 2000]));
    }
    for inputs in [
        [
            gz("plain.gz"),
            gz("members.gz"),
            gz("records.jsonl.gz"),
            gz("play.gz"),
        ],
        [
            zst("plain.zst"),
            zst("frames.zst"),
            zst("records.jsonl.zst"),
            zst("play.zst"),
        ],
    ] {
        for part_bytes in [PreproOptions::default().part_bytes, 3000] {
            let opts = PreproOptions {
                part_bytes,
                ..PreproOptions::default()
            };
            let s = prepro_with(&inputs, &dir, ValSplit::LastFiles(1), &opts).unwrap();
            let what = format!("{inputs:?}, parts of {part_bytes}");
            assert_eq!(s.documents, 1 + 1 + 10 + 1, "{what}");
            assert!(shard_u32(&s.train_path) == train, "{what}");
            assert!(shard_u32(&s.val_path) == doc(&play), "{what}");
        }
    }
    // a damaged one is named (a byte of gzip's CRC-32, of zstd's checksum)
    for (good, from_end, bad, needle) in [
        (
            gz("plain.gz"),
            8,
            "bad.txt.gz",
            "damaged: the CRC-32 of the data is",
        ),
        (
            zst("plain.zst"),
            1,
            "bad.txt.zst",
            "frame 1: the content checksum does not match",
        ),
    ] {
        let mut bytes = std::fs::read(&good).unwrap();
        let n = bytes.len();
        bytes[n - from_end] ^= 1;
        let bad = dir.join(bad);
        std::fs::write(&bad, &bytes).unwrap();
        let e = err_text(prepro(&[good, bad.clone()], &dir, ValSplit::LastFiles(1)));
        assert_contains(&e, &[&bad.file_name().unwrap().to_string_lossy(), needle]);
    }
}

#[test]
fn prepro_names_the_line_of_a_bad_json_lines_record() {
    let dir = tmp_dir("prepro_jsonl_errors");
    let out = dir.join("out");
    let good = write_docs(&dir, &[("good.txt", b"fine")]);
    let cases: [(&[u8], &str); 7] = [
        (
            b"{\"text\": 5}",
            "line 3: \"text\" is a number, not a string",
        ),
        (
            b"{\"text\": null}",
            "line 3: \"text\" is null, not a string",
        ),
        (
            b"[1, 2]",
            "line 3: an array, not an object with a \"text\" field",
        ),
        (
            b"{\"id\": 3, \"content\": \"x\"}",
            "line 3: no \"text\" field (the record's fields: content, id): --text-field names \
             the one that holds the text",
        ),
        (
            b"{}",
            "line 3: no \"text\" field (the record's fields: none)",
        ),
        (
            b"{\"text\": \"unterminated",
            "line 3: not a JSON record: EOF while parsing a string (column 22)",
        ),
        // the first two lines are 16 bytes, so the bad byte is at 16 + 13
        (
            b"{\"text\": \"ok \xff\"}",
            "line 3: not UTF-8 text (invalid byte at offset 29)",
        ),
    ];
    for (line, want) in cases {
        let bad = dir.join("bad.jsonl");
        let mut bytes = b"{\"text\": \"ok\"}\n\n".to_vec();
        assert_eq!(bytes.len(), 16);
        bytes.extend_from_slice(line);
        bytes.extend_from_slice(b"\n{\"text\": \"after\"}\n");
        std::fs::write(&bad, &bytes).unwrap();
        let e = err_text(prepro(
            &[good[0].clone(), bad],
            &out,
            ValSplit::LastFiles(1),
        ));
        assert_contains(&e, &["bad.jsonl: line", want]);
    }
}

#[test]
fn prepro_errors() {
    let dir = tmp_dir("prepro_errors");
    let out = dir.join("out");
    let inputs = write_docs(&dir, &[("1.txt", b"one"), ("2.txt", b"two")]);
    for k in [0, 2, 3] {
        assert_contains(
            &err_text(prepro(&inputs, &out, ValSplit::LastFiles(k))),
            &[&format!("cannot put the last {k} of 2 input files in val")],
        );
    }
    assert_contains(
        &err_text(prepro(&inputs[..1], &out, ValSplit::LastFiles(1))),
        &["cannot put the last 1 of 1 input file in val"],
    );
    for f in [0.0, 1.0, -0.5, f64::NAN] {
        assert_contains(
            &err_text(prepro(&inputs, &out, ValSplit::Fraction(f))),
            &["must be strictly between 0 and 1"],
        );
    }
    // 4 tokens; 0.01 of them rounds to no val token.
    assert_contains(
        &err_text(prepro(&inputs, &out, ValSplit::Fraction(0.01))),
        &["the split --val-fraction 0.01 leaves 4 train tokens and 0 val tokens"],
    );
    assert_contains(
        &err_text(prepro(&[], &out, ValSplit::LastFiles(1))),
        &["no input files"],
    );
    let bad = write_docs(&dir, &[("bad.txt", b"ok \xff\xfe nope")]);
    let e = err_text(prepro(
        &[inputs[0].clone(), bad[0].clone()],
        &out,
        ValSplit::LastFiles(1),
    ));
    assert_contains(
        &e,
        &["bad.txt", "not UTF-8 text (invalid byte at offset 3)"],
    );
    let missing = dir.join("missing.txt");
    let e = err_text(prepro(
        &[inputs[0].clone(), missing],
        &out,
        ValSplit::LastFiles(1),
    ));
    assert_contains(&e, &["missing.txt", "cannot read"]);
    let e = err_text(prepro(
        &[inputs[0].clone(), dir.clone()],
        &out,
        ValSplit::LastFiles(1),
    ));
    assert_contains(&e, &["is a directory: prepro takes text files", "*.txt"]);
    // the inputs are checked before the split counts them
    let missing = dir.join("missing.txt");
    let e = err_text(prepro(&[missing], &out, ValSplit::LastFiles(1)));
    assert_contains(&e, &["missing.txt: cannot read: No such file"]);
    let e = err_text(prepro(
        std::slice::from_ref(&dir),
        &out,
        ValSplit::LastFiles(1),
    ));
    assert_contains(&e, &["is a directory: prepro takes text files"]);
}

#[test]
fn prepro_expands_a_pattern_the_shell_did_not() {
    let dir = tmp_dir("prepro_glob");
    let inputs = three_docs(&dir);
    let (out, by_pattern) = (dir.join("out"), dir.join("out_pattern"));
    let s = prepro(&inputs, &out, ValSplit::LastFiles(1)).unwrap();
    let p = prepro(&[dir.join("?.txt")], &by_pattern, ValSplit::LastFiles(1)).unwrap();
    assert_eq!((p.documents, p.train_tokens, p.val_tokens), (3, 5, 3));
    assert_eq!(shard_u32(&p.train_path), shard_u32(&s.train_path));
    assert_eq!(shard_u32(&p.val_path), shard_u32(&s.val_path));
    let e = err_text(prepro(&[dir.join("*.md")], &out, ValSplit::LastFiles(1)));
    assert_contains(&e, &["no file matches the pattern", "*.md"]);
}

// ---------------------------------------------------------------- default corpus

#[test]
fn default_corpus_shards_match_their_texts() {
    let dir = default_corpus_dir();
    let tk = Tokenizer::gpt2().unwrap();
    let val = shard_u32(&dir.join("val.bin"));
    let text = std::fs::read_to_string(dir.join(DEFAULT_VAL_PLAY)).unwrap();
    assert_eq!(val[0], 50256);
    assert_eq!(tk.decode(&val[1..]).unwrap(), text);

    // train.bin: EOT then each train play, in name order.
    let train = shard_u32(&dir.join("train.bin"));
    let inputs = default_corpus_inputs(&dir).unwrap();
    assert_eq!(inputs.len(), 8);
    assert_eq!(inputs[7], dir.join(DEFAULT_VAL_PLAY));
    let docs: Vec<&[u32]> = train.split(|&x| x == 50256).skip(1).collect();
    assert_eq!(docs.len(), 7);
    for (doc, path) in docs.iter().zip(&inputs[..7]) {
        assert!(
            tk.decode(doc).unwrap() == std::fs::read_to_string(path).unwrap(),
            "{}",
            path.display()
        );
    }

    // The default patterns load: about a quarter million train tokens.
    let dl = DataLoader::new(&default_train_pattern(), 4, 64, V, Some(1)).unwrap();
    assert!(
        (200_000..400_000).contains(&dl.num_tokens()),
        "{}",
        dl.num_tokens()
    );
    let dl = DataLoader::new(&default_val_pattern(), 4, 64, V, None).unwrap();
    assert_eq!(dl.num_tokens(), val.len());
}

#[test]
fn prepro_reproduces_the_committed_default_corpus() {
    let out = tmp_dir("default_corpus");
    prepro_default_corpus(&out).unwrap();
    let dir = default_corpus_dir();
    for f in ["train.bin", "val.bin"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(dir.join(f)).unwrap(),
            "{f} differs from the committed file: regenerate it (cargo run --release --example \
             regenerate_default_corpus)"
        );
    }
}

/// The crate root: `CARGO_MANIFEST_DIR` at run time (cargo, or .gpu/on-gpu.sh on the GPU machine,
/// where the compile-time path does not exist), else the one compiled in.
fn root() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}
