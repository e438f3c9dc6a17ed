//! Text files -> llm.c token shards (`train.bin` and `val.bin`) with the GPT-2 tokenizer.
//!
//! Each input file is one document. Following llm.c (`dev/data/fineweb.py`), the end-of-text token
//! (50256) goes BEFORE each document: it delimits documents, and each shard that starts on a
//! document boundary starts with it, so the first token of every document is predicted from
//! "<|endoftext|>" as in GPT-2's training. Text inside a file is encoded as ordinary text: a
//! literal "<|endoftext|>" in a file is not the special token.
//!
//! The split into train and val is either by files (the last K input files are val) or by a
//! fraction of tokens (the token stream of all documents in input order is cut, and its last part
//! is val; the cut may fall inside a document).
//!
//! Each part is written as one shard, `train.bin` / `val.bin`, when it fits in one of at most
//! `shard_tokens` tokens (100M by default, llm.c's FineWeb shard size), else as numbered shards
//! `train_000000.bin`, `train_000001.bin`, ... (`--train 'DIR/train_??????.bin'`): the data
//! loader holds one shard in memory at a time, and shuffles the shards' order. Shards of either
//! naming left in the folder by an earlier prepro are removed, so a pattern never mixes two
//! corpora. Tokens are held as u16 (as in the shards), 2 bytes each.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

use crate::data::{default_corpus_dir, DEFAULT_TRAIN_FILE, DEFAULT_VAL_FILE};
use crate::formats::shard::{to_u16, write_shard_u16};
use crate::tokenizer::{split_for_encoding, Tokenizer};

/// Which part of the input goes to the validation shard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValSplit {
    /// The last K input files (documents) are val, the others train.
    LastFiles(usize),
    /// The last `f` (0 < f < 1) of the token stream is val, rounded to whole tokens.
    Fraction(f64),
}

/// What [`prepro`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct PreproSummary {
    /// The train shard, or the pattern of the train shards when there are several (for `--train`).
    pub train_path: PathBuf,
    /// Likewise for val (for `--val`).
    pub val_path: PathBuf,
    pub train_shards: Vec<PathBuf>,
    pub val_shards: Vec<PathBuf>,
    /// The number of input files (documents).
    pub documents: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
}

/// The default corpus's validation play (the other plays are train).
pub const DEFAULT_VAL_PLAY: &str = "midsummer_nights_dream.txt";

/// The most tokens of a shard [`prepro`] writes (llm.c's FineWeb shards hold as many).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;

/// Tokenizes `inputs` (each file one document, EOT before each) and writes `<out_dir>/train.bin`
/// and `<out_dir>/val.bin` (creating `out_dir`), or numbered shards for a part of more than
/// [`DEFAULT_SHARD_TOKENS`]. Both parts must be non-empty. Prints one line per file and shard.
pub fn prepro(inputs: &[PathBuf], out_dir: &Path, split: ValSplit) -> Result<PreproSummary> {
    prepro_sharded(inputs, out_dir, split, DEFAULT_SHARD_TOKENS)
}

/// [`prepro`] with shards of at most `shard_tokens` tokens.
pub fn prepro_sharded(
    inputs: &[PathBuf],
    out_dir: &Path,
    split: ValSplit,
    shard_tokens: usize,
) -> Result<PreproSummary> {
    if inputs.is_empty() {
        bail!("prepro: no input files");
    }
    if shard_tokens == 0 || shard_tokens > i32::MAX as usize {
        bail!(
            "prepro: the shard size must be in 1..={} tokens, got {shard_tokens}",
            i32::MAX
        );
    }
    match split {
        ValSplit::LastFiles(k) if k == 0 || k >= inputs.len() => bail!(
            "prepro: cannot put the last {k} of {} input files in val: train and val must both \
             get at least one file (or split by tokens: --val-fraction 0.1 puts the last tenth \
             of the tokens in val)",
            inputs.len()
        ),
        ValSplit::Fraction(f) if !(f > 0.0 && f < 1.0) => {
            bail!("prepro: the val fraction {f} must be strictly between 0 and 1")
        }
        _ => {}
    }
    let tok = Tokenizer::gpt2()?;
    // Tokenize the documents in parallel; each keeps its place in the input order, and an error
    // is the first file's in that order (not whichever thread failed first).
    let docs: Vec<Result<Vec<u16>>> = inputs
        .par_iter()
        .map(|path| -> Result<Vec<u16>> {
            let bytes =
                std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not UTF-8 text (invalid byte at offset {})",
                    path.display(),
                    e.valid_up_to()
                )
            })?;
            let mb = text.len() as f64 / 1e6;
            let ids = encode_document(&tok, text, PROGRESS_BYTES, |done| {
                let pct = 100.0 * done as f64 / text.len() as f64;
                println!("prepro: {}: {pct:.0}% of {mb:.1} MB", path.display());
            });
            println!(
                "prepro: {}: {} bytes -> {} tokens",
                path.display(),
                bytes.len(),
                ids.len()
            );
            to_u16(&ids, &path.display())
        })
        .collect();
    let docs: Vec<Vec<u16>> = docs.into_iter().collect::<Result<_>>()?;

    let (train, val): (Vec<u16>, Vec<u16>) = match split {
        ValSplit::LastFiles(k) => {
            let cut = docs.len() - k;
            (docs[..cut].concat(), docs[cut..].concat())
        }
        ValSplit::Fraction(f) => {
            let all = docs.concat();
            let n_val = ((all.len() as f64) * f).round() as usize;
            let cut = all.len() - n_val.min(all.len());
            (all[..cut].to_vec(), all[cut..].to_vec())
        }
    };
    if train.is_empty() || val.is_empty() {
        bail!(
            "prepro: the split {split:?} leaves {} train and {} val tokens: both must be non-empty",
            train.len(),
            val.len()
        );
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create the directory", out_dir.display()))?;
    let (train_path, train_shards) = write_part(out_dir, DEFAULT_TRAIN_FILE, &train, shard_tokens)?;
    let (val_path, val_shards) = write_part(out_dir, DEFAULT_VAL_FILE, &val, shard_tokens)?;
    Ok(PreproSummary {
        train_path,
        val_path,
        train_shards,
        val_shards,
        documents: docs.len(),
        train_tokens: train.len(),
        val_tokens: val.len(),
    })
}

/// Writes `tokens` as `<dir>/<name>.bin` (`file`, e.g. `train.bin`) when they fit in one shard of
/// `shard_tokens`, else as `<dir>/<name>_000000.bin`, ...; then removes the shards of either
/// naming that an earlier prepro left there. Returns the shard or the shards' pattern, and the
/// shards.
fn write_part(
    dir: &Path,
    file: &str,
    tokens: &[u16],
    shard_tokens: usize,
) -> Result<(PathBuf, Vec<PathBuf>)> {
    let name = file.strip_suffix(".bin").unwrap_or(file);
    let chunks: Vec<&[u16]> = tokens.chunks(shard_tokens).collect();
    let (pattern, paths): (PathBuf, Vec<PathBuf>) = if chunks.len() == 1 {
        let path = dir.join(file);
        (path.clone(), vec![path])
    } else {
        let paths = (0..chunks.len())
            .map(|i| dir.join(format!("{name}_{i:06}.bin")))
            .collect();
        (dir.join(format!("{name}_??????.bin")), paths)
    };
    for (path, chunk) in paths.iter().zip(&chunks) {
        write_shard_u16(path, chunk)?;
        println!("prepro: wrote {} ({} tokens)", path.display(), chunk.len());
    }
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the directory", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let found = path.file_name().unwrap_or_default().to_string_lossy();
        let ours = found == file
            || found
                .strip_prefix(&format!("{name}_"))
                .and_then(|rest| rest.strip_suffix(".bin"))
                .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()));
        if ours && !paths.contains(&path) {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove this earlier shard", path.display()))?;
            println!(
                "prepro: removed {} (an earlier prepro's shard)",
                path.display()
            );
        }
    }
    Ok((pattern, paths))
}

/// A document larger than this is tokenized this much at a time, with a progress line after each.
pub const PROGRESS_BYTES: usize = 64 << 20;
/// The pieces a document is cut into to be tokenized in parallel (`Tokenizer::encode_parallel`).
const PIECE_BYTES: usize = 1 << 20;

/// The ids of one document: the end-of-text token, then `text` (encoded in parallel pieces, the
/// same ids as in one). A text longer than `progress_bytes` goes in parts of about that size,
/// and `on_progress` gets the bytes done after each.
pub fn encode_document(
    tok: &Tokenizer,
    text: &str,
    progress_bytes: usize,
    mut on_progress: impl FnMut(usize),
) -> Vec<u32> {
    let mut ids = Vec::with_capacity(1 + text.len() / 3);
    ids.push(tok.eot());
    if text.len() <= progress_bytes {
        ids.extend(tok.encode_parallel(text, PIECE_BYTES));
        return ids;
    }
    let mut done = 0;
    for part in split_for_encoding(text, progress_bytes) {
        ids.extend(tok.encode_parallel(part, PIECE_BYTES));
        done += part.len();
        on_progress(done);
    }
    ids
}

/// The default corpus's inputs in `text_dir`: every `*.txt` except [`DEFAULT_VAL_PLAY`] in sorted
/// order (train), then [`DEFAULT_VAL_PLAY`] (val, with `ValSplit::LastFiles(1)`).
pub fn default_corpus_inputs(text_dir: &Path) -> Result<Vec<PathBuf>> {
    let pattern = text_dir.join("*.txt");
    let mut files = crate::data::glob_files(&pattern.to_string_lossy())?;
    let val = text_dir.join(DEFAULT_VAL_PLAY);
    let n = files.len();
    files.retain(|f| f != &val);
    if files.len() + 1 != n {
        bail!(
            "{}: the default corpus's val play is missing",
            val.display()
        );
    }
    files.push(val);
    Ok(files)
}

/// Regenerates the default corpus's shards from its texts: reads `<default_corpus_dir>/*.txt`
/// and writes `train.bin` and `val.bin` into `out_dir`.
pub fn prepro_default_corpus(out_dir: &Path) -> Result<PreproSummary> {
    let inputs = default_corpus_inputs(&default_corpus_dir())?;
    prepro(&inputs, out_dir, ValSplit::LastFiles(1))
}
