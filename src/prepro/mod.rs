//! Text files -> llm.c token shards (`train.bin` and `val.bin`) with the GPT-2 tokenizer.
//!
//! Each text file is one document, and each record of a JSON Lines file (`*.jsonl`, see
//! [`jsonl`]); either may be compressed with gzip (`*.txt.gz`, `*.jsonl.gz`, read through
//! [`crate::formats::gzip`]) or zstd (`*.txt.zst`, `*.jsonl.zst`, [`crate::formats::zstd`]). Each
//! row of a Parquet file's text column is one document too (`*.parquet`,
//! [`crate::formats::parquet`]). Following llm.c (`dev/data/fineweb.py`), the end-of-text token
//! (50256) goes BEFORE each document: it delimits documents, and each shard that starts on a
//! document boundary starts with it, so the first token of every document is predicted from
//! "<|endoftext|>" as in GPT-2's training. Text inside a file is encoded as ordinary text: a
//! literal "<|endoftext|>" in a document is not the special token.
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
//! corpora.
//!
//! The corpus streams through: files are read a part at a time, and each shard is written when
//! it fills (under a temporary name until the end), so memory does not grow with the corpus.

use crate::outln;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

use crate::data::{default_corpus_dir, DEFAULT_TRAIN_FILE, DEFAULT_VAL_FILE};
use crate::formats::gzip::{is_gzip, GzReader};
use crate::formats::parquet::is_parquet;
use crate::formats::shard::{is_shard_file, to_u16};
use crate::formats::zstd::{is_zstd, ZstdReader};
use crate::text::{count, typed};
use crate::tokenizer::{for_each_text_part, Tokenizer};

pub mod jsonl;
mod parquet;
mod part_writer;
mod records;

use part_writer::PartWriter;

/// Which part of the input goes to the validation shard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValSplit {
    /// The last K input files are val, the others train.
    LastFiles(usize),
    /// The last `f` (0 < f < 1) of the token stream is val, rounded to whole tokens.
    Fraction(f64),
}

impl std::fmt::Display for ValSplit {
    /// The split as the flag that asks for it, for messages: `--val-files 1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValSplit::LastFiles(k) => write!(f, "--val-files {k}"),
            ValSplit::Fraction(x) => write!(f, "--val-fraction {}", typed(*x)),
        }
    }
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
    /// The number of documents: one per text file, one per record of a JSON Lines file.
    pub documents: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
}

/// The default corpus's validation play (the other plays are train).
pub const DEFAULT_VAL_PLAY: &str = "midsummer_nights_dream.txt";

/// The most tokens of a shard [`prepro`] writes (llm.c's FineWeb shards hold as many).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;

/// How [`prepro_with`] reads its inputs and cuts its work. The defaults suit any corpus; tests
/// make the sizes small.
#[derive(Clone, Debug, PartialEq)]
pub struct PreproOptions {
    /// The most tokens of a shard (`--shard-tokens`).
    pub shard_tokens: usize,
    /// A file is read and tokenized this many bytes at a time (a progress line after each part
    /// of a larger file): memory holds a part, not the file.
    pub part_bytes: usize,
    /// Consecutive files no larger than a part are tokenized in parallel, in groups of about
    /// this many bytes: memory holds a group's tokens, not the corpus's.
    pub group_bytes: u64,
    /// The field of a JSON Lines record (`*.jsonl` inputs) that holds its text (`--text-field`).
    pub text_field: String,
}

impl Default for PreproOptions {
    fn default() -> Self {
        PreproOptions {
            shard_tokens: DEFAULT_SHARD_TOKENS,
            part_bytes: PROGRESS_BYTES,
            group_bytes: GROUP_BYTES,
            text_field: "text".into(),
        }
    }
}

/// A file larger than this is tokenized this much at a time, with a progress line after each.
pub const PROGRESS_BYTES: usize = 64 << 20;
/// The pieces a part is cut into to be tokenized in parallel (`Tokenizer::encode_parallel`).
pub(crate) const PIECE_BYTES: usize = 1 << 20;
/// The bytes of text in a group of small files tokenized in parallel.
const GROUP_BYTES: u64 = 256 << 20;

/// Tokenizes `inputs` (each text file one document, each JSON Lines record one; EOT before each)
/// and writes `<out_dir>/train.bin` and `<out_dir>/val.bin` (creating `out_dir`), or numbered
/// shards for a part of more than [`DEFAULT_SHARD_TOKENS`]. Both parts must be non-empty. Prints
/// one line per file and shard.
pub fn prepro(inputs: &[PathBuf], out_dir: &Path, split: ValSplit) -> Result<PreproSummary> {
    prepro_with(inputs, out_dir, split, &PreproOptions::default())
}

/// [`prepro`] with the shard size and the sizes of its work set by `opts`.
///
/// Memory holds a group of files' tokens, or a part of a large file, and the shard being filled
/// of each part (200 MB at the default 100M tokens), whatever the corpus's size. The shards are
/// written under temporary names (`.train_000000.bin.partial`, ...) as they fill and renamed at
/// the end, so a prepro that fails (a file that is not UTF-8, say) leaves the folder's earlier
/// shards as they were.
pub fn prepro_with(
    inputs: &[PathBuf],
    out_dir: &Path,
    split: ValSplit,
    opts: &PreproOptions,
) -> Result<PreproSummary> {
    if inputs.is_empty() {
        bail!("prepro: no input files");
    }
    // the inputs first: a missing file is named as missing, not counted by the split
    let inputs = &expand_inputs(inputs)?;
    check_each_once(inputs)?;
    let sizes = input_sizes(inputs)?;
    check_out_dir(inputs, out_dir)?;
    let shard_tokens = opts.shard_tokens;
    if shard_tokens == 0 || shard_tokens > i32::MAX as usize {
        bail!(
            "prepro: the shard size must be in 1..={} tokens, got {shard_tokens}",
            i32::MAX
        );
    }
    let train_files = match split {
        ValSplit::LastFiles(k) if k == 0 || k >= inputs.len() => bail!(
            "prepro: cannot put the last {k} of {} in val: train and val must both get at least \
             one file (or split by tokens: --val-fraction 0.1 puts the last tenth of the tokens \
             in val)",
            count(inputs.len(), "input file", "input files")
        ),
        ValSplit::Fraction(f) if !(f > 0.0 && f < 1.0) => {
            bail!(
                "prepro: the val fraction {} must be strictly between 0 and 1",
                typed(f)
            )
        }
        ValSplit::LastFiles(k) => inputs.len() - k,
        ValSplit::Fraction(_) => inputs.len(),
    };
    if opts.text_field != PreproOptions::default().text_field
        && !inputs.iter().any(|p| jsonl::is_jsonl(p) || is_parquet(p))
    {
        crate::errln!(
            "note: --text-field {} does nothing here: it names the field of JSON Lines records \
             and the column of Parquet files, and these inputs are text files",
            opts.text_field
        );
    }
    // (an empty JSON Lines file has no records: no document)
    for (path, _) in inputs
        .iter()
        .zip(&sizes)
        .filter(|(p, &n)| n == 0 && !is_compressed(p) && !jsonl::is_jsonl(p))
    {
        crate::errln!(
            "note: {} is empty: its document is the end-of-text token alone",
            path.display()
        );
    }
    crate::formats::make_folder("--out-dir", out_dir)?;
    let tok = Tokenizer::gpt2()?;
    let mut train = PartWriter::new(out_dir, DEFAULT_TRAIN_FILE, shard_tokens);
    let mut val = PartWriter::new(out_dir, DEFAULT_VAL_FILE, shard_tokens);
    let documents = for_each_document(&tok, inputs, &sizes, opts, |file, ids| {
        check_interrupt()?;
        if file < train_files {
            train.push(ids)
        } else {
            val.push(ids)
        }
    })?;
    if let ValSplit::Fraction(f) = split {
        let n_val = ((train.len() as f64) * f).round() as usize;
        train.move_tail(n_val.min(train.len()), &mut val)?;
    }
    if train.len() == 0 || val.len() == 0 {
        bail!(
            "prepro: the split {split} leaves {} and {}: both must be non-empty",
            count(train.len(), "train token", "train tokens"),
            count(val.len(), "val token", "val tokens")
        );
    }
    let (train_tokens, val_tokens) = (train.len(), val.len());
    // every shard of both parts on the disk under its temporary name, then all named: a failure
    // or an interrupt before (a full disk, Ctrl-C) leaves the folder as it was, not a new
    // train.bin beside an old val.bin; once they are named, prepro finishes
    check_interrupt()?;
    train.finish()?;
    val.finish()?;
    check_interrupt()?;
    let (train_path, train_shards) = train.rename()?;
    let (val_path, val_shards) = val.rename()?;
    let written = [&train_shards[..], &val_shards[..]].concat();
    train.remove_stale(&written)?;
    val.remove_stale(&written)?;
    Ok(PreproSummary {
        train_path,
        val_path,
        train_shards,
        val_shards,
        documents,
        train_tokens,
        val_tokens,
    })
}

/// An error once Ctrl-C or SIGTERM came (see `crate::interrupt`): prepro stops before the next
/// shard it would write, and before it names any; the temporary shards are removed as the
/// [`PartWriter`]s drop.
fn check_interrupt() -> Result<()> {
    if crate::interrupt::requested().is_some() {
        bail!("prepro: interrupted: nothing was written");
    }
    Ok(())
}

/// `inputs` with each one that is not a file but holds `*` or `?` replaced by the files it
/// matches ([`crate::data::glob_files`], as `--train` reads patterns): a pattern in quotes, which
/// the shell did not expand.
fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::with_capacity(inputs.len());
    for path in inputs {
        let text = path.to_string_lossy();
        if !path.exists() && text.contains(['*', '?']) {
            files.extend(crate::data::glob_files(&text).context("prepro")?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// An error where one file is given twice (by two names, or a pattern and a name): its text would
/// be in the shards twice, and with two files its copy would be all of val (train's own text).
fn check_each_once(inputs: &[PathBuf]) -> Result<()> {
    let mut seen: std::collections::HashMap<PathBuf, &PathBuf> =
        std::collections::HashMap::with_capacity(inputs.len());
    for input in inputs {
        let Ok(resolved) = std::fs::canonicalize(input) else {
            continue; // (a missing file is named by input_sizes)
        };
        if let Some(&first) = seen.get(&resolved) {
            let same = if first == input {
                String::new()
            } else {
                format!(" (as {})", first.display())
            };
            bail!(
                "prepro: {} is given twice{same}: its text would be in the shards twice; give \
                 each file once",
                input.display()
            );
        }
        seen.insert(resolved, input);
    }
    Ok(())
}

/// Every input's size: a missing file or a directory fails now, not after hours of tokenizing.
fn input_sizes(inputs: &[PathBuf]) -> Result<Vec<u64>> {
    inputs
        .iter()
        .map(|path| {
            let p = path.display();
            let meta = std::fs::metadata(path).with_context(|| format!("{p}: cannot read"))?;
            if meta.is_dir() {
                bail!("{p} is a directory: prepro takes text files (all of its texts: {p}/*.txt)");
            }
            Ok(meta.len())
        })
        .collect()
}

/// Checks that prepro can write into `out_dir` without losing a file of the user's: no input is
/// one of the files it replaces or removes there (`train.bin`, `val_000003.bin`, ...: a text
/// named so would be gone), and each such file already there is a token shard (an earlier
/// prepro's), not a directory or another file.
fn check_out_dir(inputs: &[PathBuf], out_dir: &Path) -> Result<()> {
    crate::formats::check_folder("--out-dir", out_dir, out_dir)?;
    let Ok(out) = std::fs::canonicalize(out_dir) else {
        return Ok(()); // (not there yet: created empty)
    };
    let o = out_dir.display();
    let ours = |name: &str| {
        [DEFAULT_TRAIN_FILE, DEFAULT_VAL_FILE].iter().any(|part| {
            let part = part.strip_suffix(".bin").unwrap_or(part);
            part_writer::is_shard_name(part, name) || part_writer::is_leftover_name(part, name)
        })
    };
    // an input's folder resolved, and the file itself resolved (a link to a shard is one too)
    let in_out = |path: &Path| {
        let Some(name) = path.file_name() else {
            return false;
        };
        std::fs::canonicalize(crate::formats::folder_of(path)).is_ok_and(|d| d == out)
            && ours(&name.to_string_lossy())
    };
    for input in inputs {
        let resolved = std::fs::canonicalize(input).unwrap_or_else(|_| input.clone());
        if in_out(input) || in_out(&resolved) {
            bail!(
                "{}: an input that prepro would overwrite or remove: it writes train.bin, val.bin \
                 or numbered shards (train_000000.bin, ...) into {o}; give another --out-dir",
                input.display()
            );
        }
    }
    let entries =
        std::fs::read_dir(out_dir).with_context(|| format!("{o}: cannot list the directory"))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("{o}: cannot list the directory"))?
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !ours(&name) || name.starts_with('.') {
            continue;
        }
        let p = path.display();
        if path.is_dir() {
            bail!("{p} is a directory, where prepro writes a shard: move it or give another --out-dir");
        }
        if !is_shard_file(&path) {
            bail!(
                "{p}: not a token shard, and prepro would replace or remove it (it writes its \
                 shards under such names): move it or give another --out-dir"
            );
        }
    }
    Ok(())
}

/// Tokenizes the files of `inputs` (of `sizes` bytes) in order and hands each document's tokens
/// to `emit` with its file's index, in order: a text file larger than a part in parts as they
/// are tokenized, smaller ones whole, in groups tokenized in parallel; a JSON Lines file's
/// records one by one. An error is the first file's in the input order (not whichever thread
/// failed first). Returns the number of documents.
fn for_each_document(
    tok: &Tokenizer,
    inputs: &[PathBuf],
    sizes: &[u64],
    opts: &PreproOptions,
    mut emit: impl FnMut(usize, &[u16]) -> Result<()>,
) -> Result<usize> {
    // a compressed file's size says little of its text's: it is read alone, a part at a time
    let small = |i: usize| {
        sizes[i] <= opts.part_bytes as u64
            && !jsonl::is_jsonl(&inputs[i])
            && !is_parquet(&inputs[i])
            && !is_compressed(&inputs[i])
    };
    let (mut i, mut documents) = (0, 0);
    while i < inputs.len() {
        // one file alone: a JSON Lines file's records, a Parquet file's rows, or a large (or
        // compressed) text in parts
        if !small(i) {
            let (path, size, field) = (&inputs[i], sizes[i], &opts.text_field);
            documents += if jsonl::is_jsonl(path) {
                jsonl::encode_jsonl(tok, path, size, field, opts.part_bytes, |ids| emit(i, ids))?
            } else if is_parquet(path) {
                parquet::encode_parquet(tok, path, size, field, opts.part_bytes, |ids| {
                    emit(i, ids)
                })?
            } else {
                encode_file(tok, path, size, opts.part_bytes, |ids| emit(i, ids))?;
                1
            };
            i += 1;
            continue;
        }
        // a group of small text files, tokenized in parallel
        let mut end = i + 1;
        let mut bytes = sizes[i];
        while end < inputs.len() && small(end) && bytes + sizes[end] <= opts.group_bytes {
            bytes += sizes[end];
            end += 1;
        }
        let docs: Vec<Result<Vec<u16>>> = (i..end)
            .into_par_iter()
            .map(|d| {
                let mut doc = Vec::new();
                encode_file(tok, &inputs[d], sizes[d], opts.part_bytes, |ids| {
                    doc.extend_from_slice(ids);
                    Ok(())
                })?;
                Ok(doc)
            })
            .collect();
        for (d, doc) in (i..end).zip(docs) {
            emit(d, &doc?)?;
        }
        documents += end - i;
        i = end;
    }
    Ok(documents)
}

/// One file as a document: [`encode_stream`] of it, with a progress line after each part of a
/// file larger than a part, and a line at the end.
fn encode_file(
    tok: &Tokenizer,
    path: &Path,
    size: u64,
    part_bytes: usize,
    mut on_ids: impl FnMut(&[u16]) -> Result<()>,
) -> Result<()> {
    let mut tokens = 0;
    let mut progress = Progress::new(path, size, part_bytes);
    let bytes = encode_stream(
        tok,
        open_input(path)?,
        part_bytes,
        &path.display(),
        |ids| {
            tokens += ids.len();
            on_ids(&to_u16(ids, path)?)
        },
        |done| progress.update(done),
    )?;
    outln!(
        "prepro: {}: {} -> {}",
        path.display(),
        count(bytes, "byte", "bytes"),
        count(tokens, "token", "tokens")
    );
    Ok(())
}

/// Whether `path` is read through a decompressor (`*.gz`, `*.zst`): its text's size is not known
/// until its end.
pub(crate) fn is_compressed(path: &Path) -> bool {
    is_gzip(path) || is_zstd(path)
}

/// `path` opened for reading its text: through [`GzReader`] for a `*.gz` file, [`ZstdReader`]
/// for a `*.zst` one.
pub(crate) fn open_input(path: &Path) -> Result<Box<dyn std::io::Read + Send>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // (both read the file 64 KiB at a time: no BufReader needed)
    Ok(if is_gzip(path) {
        Box::new(GzReader::new(file))
    } else if is_zstd(path) {
        Box::new(ZstdReader::new(file))
    } else {
        Box::new(file)
    })
}

/// The progress lines of a file of `size` bytes read a part at a time: a percentage after each
/// part of a file larger than one; for a compressed file, whose text's size is not known before
/// the end, the text read so far after each whole part.
pub(crate) struct Progress<'a> {
    path: &'a Path,
    size: u64,
    part_bytes: u64,
    compressed: bool,
}

impl<'a> Progress<'a> {
    pub(crate) fn new(path: &'a Path, size: u64, part_bytes: usize) -> Progress<'a> {
        Progress {
            path,
            size,
            part_bytes: part_bytes as u64,
            // (a Parquet file's size is of its compressed columns, not of its text)
            compressed: is_compressed(path) || is_parquet(path),
        }
    }

    /// After `done` bytes of text.
    pub(crate) fn update(&mut self, done: u64) {
        if let Some(line) = self.line(done) {
            outln!("{line}");
        }
    }

    /// The line after `done` bytes of text, if there is one.
    fn line(&self, done: u64) -> Option<String> {
        let path = self.path.display();
        if self.compressed {
            let mb = done as f64 / 1e6;
            (done >= self.part_bytes).then(|| format!("prepro: {path}: {mb:.1} MB of text so far"))
        } else if self.size > self.part_bytes {
            let pct = 100.0 * done as f64 / self.size.max(done) as f64;
            let mb = self.size as f64 / 1e6;
            Some(format!("prepro: {path}: {pct:.0}% of {mb:.1} MB"))
        } else {
            None
        }
    }
}

/// The ids of one document read from `reader`: the end-of-text token, then the text, read and
/// encoded a part of about `part_bytes` at a time (each part in parallel pieces; the same ids as
/// the whole text's, see [`crate::tokenizer::split_for_encoding`]) and handed to `on_ids` part by
/// part, with `on_progress(bytes done)` after each part. `what` names the input in errors.
/// Returns the text's length in bytes.
pub fn encode_stream(
    tok: &Tokenizer,
    reader: impl std::io::Read,
    part_bytes: usize,
    what: &dyn std::fmt::Display,
    mut on_ids: impl FnMut(&[u32]) -> Result<()>,
    mut on_progress: impl FnMut(u64),
) -> Result<u64> {
    on_ids(&[tok.eot()])?;
    let mut done = 0;
    for_each_text_part(reader, part_bytes, what, |part| {
        on_ids(&tok.encode_parallel(part, PIECE_BYTES))?;
        done += part.len() as u64;
        on_progress(done);
        Ok(())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain file's lines give the share of its bytes done, and come only for a file of more
    /// than one part; a compressed file's (or a Parquet file's) give the text read so far, after
    /// each whole part.
    #[test]
    fn progress_lines() {
        let plain = Progress::new(Path::new("a.txt"), 5_000_000, 2_000_000);
        assert_eq!(
            plain.line(2_000_000).unwrap(),
            "prepro: a.txt: 40% of 5.0 MB"
        );
        assert_eq!(
            plain.line(5_000_000).unwrap(),
            "prepro: a.txt: 100% of 5.0 MB"
        );
        assert_eq!(
            Progress::new(Path::new("a.txt"), 2_000_000, 2_000_000).line(1),
            None
        );
        for name in ["a.txt.gz", "b.jsonl.zst", "c.parquet"] {
            let packed = Progress::new(Path::new(name), 1_000, 2_000_000);
            assert_eq!(packed.line(1_999_999), None, "{name}");
            assert_eq!(
                packed.line(2_500_000).unwrap(),
                format!("prepro: {name}: 2.5 MB of text so far")
            );
        }
    }
}
