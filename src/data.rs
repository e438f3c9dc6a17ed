//! The batch loader: (inputs, targets) batches of B x T tokens from llm.c token shards, and the
//! location of the default corpus (Shakespeare, committed under `data/shakespeare`).
//!
//! Shards are named by a pattern whose file-name part may hold `*` (any run of characters) and
//! `?` (one character); the matches are taken in sorted path order. A shard of N tokens holds
//! (N - 1) / (B*T) chunks: chunk k is tokens [k*B*T, k*B*T + B*T + 1), whose first B*T tokens are
//! the inputs and whose last B*T tokens are the targets (the inputs shifted by one); a shard of
//! B*T tokens or fewer holds none and is passed over (with a note on stderr), and only a set none
//! of whose shards holds a chunk is an error. An epoch serves every chunk of every shard once; at
//! its end the loader wraps around to the next epoch.
//!
//! Sequential mode serves shards in order and chunks in order. Shuffled mode (with a seed, as in
//! llm.c) permutes the shard order at the start of each epoch and the chunk order each time a
//! shard is entered, from one random stream seeded once, so every epoch has a fresh order and the
//! whole sequence of batches is a function of the seed.
//!
//! Only one shard is held in memory (as u16, like the file). Every shard's header and size are
//! checked when the loader is built; a shard's tokens are checked against V when it is loaded
//! (the first one when the loader is built, the others when the loader reaches them).
//!
//! The glob matching is a small matcher here rather than the `glob` crate: only `*` and `?` in the
//! file name are needed, and its errors can name the pattern and the directory.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::formats::shard::{check_tokens, read_shard, read_shard_len};
use crate::rng::Rng;
use crate::text::count;

/// The default corpus's training shard, relative to [`default_corpus_dir`].
pub const DEFAULT_TRAIN_FILE: &str = "train.bin";
/// The default corpus's validation shard, relative to [`default_corpus_dir`].
pub const DEFAULT_VAL_FILE: &str = "val.bin";

/// The directory of the default corpus: `<crate root>/data/shakespeare`, where the crate root is
/// `CARGO_MANIFEST_DIR` from the environment at run time where that holds the corpus (under
/// cargo, or on a GPU machine that runs a copy of the tree elsewhere), else the crate's directory
/// at compile time. (Another crate's cargo, running this binary from its tests, sets
/// `CARGO_MANIFEST_DIR` to its own root: that one holds no corpus and is passed over.)
pub fn default_corpus_dir() -> PathBuf {
    let corpus = |root: PathBuf| root.join("data").join("shakespeare");
    let compiled = corpus(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    match std::env::var_os("CARGO_MANIFEST_DIR").map(|r| corpus(PathBuf::from(r))) {
        Some(dir) if dir.join(DEFAULT_TRAIN_FILE).is_file() || !compiled.is_dir() => dir,
        _ => compiled,
    }
}

/// The default training shard pattern (a plain path: one shard).
pub fn default_train_pattern() -> String {
    default_corpus_dir()
        .join(DEFAULT_TRAIN_FILE)
        .to_string_lossy()
        .into_owned()
}

/// The default validation shard pattern (a plain path: one shard).
pub fn default_val_pattern() -> String {
    default_corpus_dir()
        .join(DEFAULT_VAL_FILE)
        .to_string_lossy()
        .into_owned()
}

/// Whether `name` matches `pat`, where `*` matches any run of characters and `?` one character.
pub fn wildcard_match(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let s: Vec<char> = name.chars().collect();
    // Greedy matching with backtracking to the last `*`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None; // (position of '*' in p, position in s)
    while j < s.len() {
        if i < p.len() && (p[i] == '?' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// The files matching `pattern` (wildcards `*`, `?` in the file-name part only), sorted.
/// No match is an error naming the pattern.
pub fn glob_files(pattern: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("no file matches the pattern '{pattern}': it has no file name"))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    if dir.to_string_lossy().contains(['*', '?']) {
        bail!(
            "bad pattern '{pattern}': wildcards (* and ?) are supported only in the file name, \
             not in the directory"
        );
    }
    // (only * and ? are wildcards: say so where a shell's [...] or {a,b} may have been meant)
    let no_match = || {
        let hint = if name.contains(['[', '{']) {
            " (only * and ? are wildcards here, not [...] or {a,b})"
        } else {
            ""
        };
        anyhow::anyhow!("no file matches the pattern '{pattern}'{hint}")
    };
    if !name.contains(['*', '?']) {
        if path.is_file() {
            return Ok(vec![path.to_path_buf()]);
        }
        if path.is_dir() {
            bail!(
                "'{pattern}' is a directory: give a pattern of its shards, such as '{}'",
                path.join("*.bin").display()
            );
        }
        return Err(no_match());
    }
    let read_from = crate::formats::folder_of(path);
    let entries = std::fs::read_dir(read_from).with_context(|| {
        format!(
            "no file matches the pattern '{pattern}': cannot read the directory '{}'",
            read_from.display()
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("{}: cannot list the directory", read_from.display()))?;
        let file_name = entry.file_name();
        // (a name that is not UTF-8 is matched with U+FFFD for its bad bytes: `*` and `?` still
        // take it in, as a shell's glob would)
        let candidate = dir.join(&file_name);
        if wildcard_match(name, &file_name.to_string_lossy()) && candidate.is_file() {
            files.push(candidate);
        }
    }
    if files.is_empty() {
        return Err(no_match());
    }
    files.sort();
    Ok(files)
}

/// The shards matching `pattern` and their token counts, checked to hold at least one batch of
/// `b` x `t` (B*T+1 tokens) between them: a shard of fewer tokens holds no batch and is passed
/// over (see [`DataLoader::passed_over`]), a set none of whose shards holds one is an error
/// naming the largest.
fn shard_lengths(pattern: &str, b: usize, t: usize) -> Result<(Vec<PathBuf>, Vec<usize>)> {
    if b == 0 || t == 0 {
        bail!("data loader for '{pattern}': batch size B={b} and sequence length T={t} must both be positive");
    }
    let bt1 = b
        .checked_mul(t)
        .and_then(|bt| bt.checked_add(1))
        .with_context(|| format!("data loader for '{pattern}': B*T is too large (B={b}, T={t})"))?;
    let files = glob_files(pattern)?;
    let lens = files
        .iter()
        .map(|f| read_shard_len(f))
        .collect::<Result<Vec<_>>>()?;
    // (glob_files finds at least one shard)
    let largest = (0..files.len()).max_by_key(|&i| lens[i]).unwrap_or(0);
    let n = lens[largest];
    if n < bt1 {
        let path = files[largest].display();
        let which = if files.len() == 1 {
            format!("{path}: the shard has")
        } else {
            format!(
                "no shard of '{pattern}' holds one batch: the largest of its {}, {path}, has",
                files.len()
            )
        };
        // (a batch of 1x1 needs 2 tokens: a shorter shard holds none at any size)
        let advice = if n < 2 {
            "it holds no batch at any --batch and --seq (tokenize more text into it)"
        } else {
            "give a smaller --batch or --seq, or tokenize more text into the set (for a val \
             set that prepro made, a larger --val-fraction)"
        };
        bail!(
            "{which} {}, fewer than B*T+1 = {bt1} needed for one batch (B={b}, T={t}): {advice}",
            count(n, "token", "tokens")
        );
    }
    Ok((files, lens))
}

/// The batches of `b` x `t` in one epoch of the shards matching `pattern` (what
/// [`DataLoader::num_batches`] counts), from the shards' headers alone.
pub fn epoch_batches(pattern: &str, b: usize, t: usize) -> Result<usize> {
    let (_, lens) = shard_lengths(pattern, b, t)?;
    Ok(lens.iter().map(|&n| chunks_in(n, b * t)).sum())
}

/// The batches of `bt` tokens (and the next one's first, the last target) in a shard of `n`
/// tokens: (N - 1) / (B*T), 0 for a shard of B*T tokens or fewer.
fn chunks_in(n: usize, bt: usize) -> usize {
    n.saturating_sub(1) / bt
}

/// Serves (inputs, targets) batches of B x T tokens from token shards.
pub struct DataLoader {
    pattern: String,
    /// The shards, sorted.
    files: Vec<PathBuf>,
    /// N for each shard.
    lens: Vec<usize>,
    b: usize,
    t: usize,
    vocab_size: usize,
    seed: Option<u64>,
    rng: Option<Rng>,
    /// This epoch's shard order (indices into `files`).
    shard_order: Vec<usize>,
    /// The position in `shard_order` of the current shard.
    shard_pos: usize,
    /// The current shard's chunk order (chunk indices).
    chunk_order: Vec<usize>,
    /// The position in `chunk_order` of the next chunk to serve.
    chunk_pos: usize,
    /// Which shard `tokens` holds.
    loaded: Option<usize>,
    /// (N,) the loaded shard's tokens.
    tokens: Vec<u16>,
    /// (B*T+1,) the current batch: inputs are [0, B*T), targets [1, B*T+1).
    buf: Vec<u32>,
    epoch: usize,
    batches_served: usize,
}

impl DataLoader {
    /// A loader over the shards matching `pattern`, serving batches of `b` x `t` tokens, every
    /// token checked to be below V = `vocab_size`; shuffled from `shuffle_seed` if given.
    pub fn new(
        pattern: &str,
        b: usize,
        t: usize,
        vocab_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Result<DataLoader> {
        let (files, lens) = shard_lengths(pattern, b, t)?;
        let bt1 = b * t + 1;
        let mut dl = DataLoader {
            pattern: pattern.to_string(),
            files,
            lens,
            b,
            t,
            vocab_size,
            seed: shuffle_seed,
            rng: None,
            shard_order: Vec::new(),
            shard_pos: 0,
            chunk_order: Vec::new(),
            chunk_pos: 0,
            loaded: None,
            tokens: Vec::new(),
            buf: vec![0; bt1],
            epoch: 0,
            batches_served: 0,
        };
        dl.note_passed_over();
        dl.reset()?;
        Ok(dl)
    }

    /// The shards with no whole batch of B x T (B*T+1 tokens or fewer), which the loader passes
    /// over: they count toward [`num_tokens`](Self::num_tokens) and [`files`](Self::files), not
    /// toward [`num_batches`](Self::num_batches).
    pub fn passed_over(&self) -> Vec<&Path> {
        self.short_shards()
            .map(|i| self.files[i].as_path())
            .collect()
    }

    /// The indices of the [passed over](Self::passed_over) shards.
    fn short_shards(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.files.len()).filter(|&i| self.chunks(i) == 0)
    }

    /// Says on stderr which shards are [passed over](Self::passed_over), if any.
    fn note_passed_over(&self) {
        if let Some(note) = self.passed_over_note() {
            crate::errln!("{note}");
        }
    }

    /// The note on the [passed over](Self::passed_over) shards, if any: one for the set, naming
    /// the first few.
    fn passed_over_note(&self) -> Option<String> {
        const NAMED: usize = 5;
        let short = self.short_shards().count();
        if short == 0 {
            return None;
        }
        let mut names: Vec<String> = self
            .short_shards()
            .take(NAMED)
            .map(|i| {
                let n = count(self.lens[i], "token", "tokens");
                format!("{} ({n})", self.files[i].display())
            })
            .collect();
        if short > NAMED {
            names.push(format!("and {} more", short - NAMED));
        }
        let one = short == 1;
        Some(format!(
            "note: {short} of the {} shards of '{}' {} fewer than B*T+1 = {} tokens, no whole \
             batch of {}x{}, and {} passed over: {}",
            self.files.len(),
            self.pattern,
            if one { "holds" } else { "hold" },
            self.b * self.t + 1,
            self.b,
            self.t,
            if one { "is" } else { "are" },
            names.join(", ")
        ))
    }

    /// Back to the state right after construction: epoch 0, first batch, and (in shuffled mode)
    /// the random stream re-seeded, so the batches repeat from the first one.
    pub fn reset(&mut self) -> Result<()> {
        self.rng = self.seed.map(Rng::new);
        self.epoch = 0;
        self.batches_served = 0;
        self.start_epoch();
        self.load_shard()
    }

    /// Moves on `n` batches as if [`next_batch`](Self::next_batch) had served them (the same
    /// epochs, shard and chunk orders), reading only the shard it stops in: how a resumed run
    /// finds its place in the data.
    pub fn skip_batches(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            if self.chunk_pos == self.chunk_order.len() {
                self.next_shard();
            }
            let left = (self.chunk_order.len() - self.chunk_pos) as u64;
            let k = n.min(left);
            self.chunk_pos += k as usize;
            self.batches_served += k as usize;
            n -= k;
        }
        // at the end of a shard, the next batch comes from the next one (next_batch reads it)
        if self.chunk_pos < self.chunk_order.len() {
            self.load_shard()?;
        }
        Ok(())
    }

    /// The next batch: (inputs (B, T), targets (B, T)), `targets[i]` = the token after `inputs[i]`.
    /// Wraps around to a new epoch after the last batch. Errors if a shard it loads is bad.
    pub fn next_batch(&mut self) -> Result<(&[u32], &[u32])> {
        if self.chunk_pos == self.chunk_order.len() {
            self.next_shard();
            self.load_shard()?;
        }
        let bt = self.b * self.t;
        let off = self.chunk_order[self.chunk_pos] * bt;
        self.chunk_pos += 1;
        self.batches_served += 1;
        for (dst, &src) in self.buf.iter_mut().zip(&self.tokens[off..off + bt + 1]) {
            *dst = src as u32;
        }
        Ok((&self.buf[..bt], &self.buf[1..]))
    }

    /// The number of batches in one epoch: the sum over shards of (N - 1) / (B*T).
    pub fn num_batches(&self) -> usize {
        (0..self.files.len()).map(|i| self.chunks(i)).sum()
    }

    /// The batches in shard `idx`: (N - 1) / (B*T).
    fn chunks(&self, idx: usize) -> usize {
        chunks_in(self.lens[idx], self.b * self.t)
    }

    /// The epoch (from 0) of the last batch served: the number of wrap-arounds since construction
    /// or [`reset`](Self::reset).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// The number of batches served since construction or [`reset`](Self::reset).
    pub fn batches_served(&self) -> usize {
        self.batches_served
    }

    /// The shards, in sorted order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The total number of tokens over all shards.
    pub fn num_tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    /// The pattern the loader was built from.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// B: the rows of a batch.
    pub fn batch_size(&self) -> usize {
        self.b
    }

    /// T: the tokens per row.
    pub fn seq_len(&self) -> usize {
        self.t
    }

    /// Starts an epoch: a shard order (permuted in shuffled mode) of the shards that hold a batch
    /// (one at least: see [`shard_lengths`]), and its first shard.
    fn start_epoch(&mut self) {
        self.shard_order = (0..self.files.len())
            .filter(|&i| self.chunks(i) > 0)
            .collect();
        if let Some(rng) = self.rng.as_mut() {
            rng.shuffle(&mut self.shard_order);
        }
        self.shard_pos = 0;
        self.enter_shard();
    }

    /// The next shard of the epoch, or the first of the next epoch after the last.
    fn next_shard(&mut self) {
        self.shard_pos += 1;
        if self.shard_pos == self.shard_order.len() {
            self.epoch += 1;
            self.start_epoch();
        } else {
            self.enter_shard();
        }
    }

    /// Orders the chunks of the shard at `shard_pos` (permuted in shuffled mode); its tokens are
    /// read by [`load_shard`](Self::load_shard).
    fn enter_shard(&mut self) {
        let chunks = self.chunks(self.shard_order[self.shard_pos]);
        self.chunk_order = (0..chunks).collect();
        if let Some(rng) = self.rng.as_mut() {
            rng.shuffle(&mut self.chunk_order);
        }
        self.chunk_pos = 0;
    }

    /// Reads the tokens of the shard at `shard_pos` unless they are already loaded, checking
    /// them.
    fn load_shard(&mut self) -> Result<()> {
        let idx = self.shard_order[self.shard_pos];
        if self.loaded == Some(idx) {
            return Ok(());
        }
        let path = &self.files[idx];
        let tokens = read_shard(path)?;
        if tokens.len() != self.lens[idx] {
            bail!(
                "{}: the shard changed while training: it had {}, now {}",
                path.display(),
                count(self.lens[idx], "token", "tokens"),
                tokens.len()
            );
        }
        check_tokens(path, &tokens, self.vocab_size)?;
        self.tokens = tokens;
        self.loaded = Some(idx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The note names five passed-over shards, and counts those past the fifth.
    #[test]
    fn the_note_names_five_short_shards_and_counts_the_rest() {
        let dir = crate::test_dir("passed-over");
        let shard = |name: &str, n: u32| {
            let tokens: Vec<u32> = (0..n).collect();
            crate::formats::shard::write_shard(&dir.join(name), &tokens).unwrap();
        };
        // B=1, T=4: 5 tokens make a batch; shard a holds two
        shard("a.bin", 9);
        let short = |k: usize| {
            (0..k)
                .map(|i| format!("s{i}.bin (3 tokens)"))
                .collect::<Vec<_>>()
        };
        for i in 0..5 {
            shard(&format!("s{i}.bin"), 3);
        }
        let pattern = dir.join("*.bin").to_string_lossy().into_owned();
        let names = |note: String| {
            note.split(": ")
                .last()
                .unwrap()
                .replace(&format!("{}/", dir.display()), "")
        };
        let dl = DataLoader::new(&pattern, 1, 4, 100, None).unwrap();
        assert_eq!(names(dl.passed_over_note().unwrap()), short(5).join(", "));
        shard("s5.bin", 3);
        shard("s6.bin", 3);
        let dl = DataLoader::new(&pattern, 1, 4, 100, None).unwrap();
        let note = dl.passed_over_note().unwrap();
        assert!(note.starts_with("note: 7 of the 8 shards of"), "{note}");
        assert_eq!(names(note), short(5).join(", ") + ", and 2 more");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
