//! One part of prepro's output (train or val) as it is written: shards under temporary names as
//! they fill, renamed at the end.

use crate::outln;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use crate::formats::shard::{read_shard, write_shard_u16};

/// One part (train or val) as it is written: each shard goes to a temporary file when it is full
/// (`.train_000000.bin.partial`, ...), and [`PartWriter::commit`] names them at the end:
/// `train.bin` when there is one, else `train_000000.bin`, `train_000001.bin`, .... Dropped
/// uncommitted, it removes its temporary files.
pub(super) struct PartWriter {
    dir: PathBuf,
    /// The part's file when it fits in one shard, e.g. `train.bin`.
    file: &'static str,
    shard_tokens: usize,
    /// The temporary files of the full shards, in order.
    full: Vec<PathBuf>,
    /// (< shard_tokens,) the tokens after them.
    rest: Vec<u16>,
}

impl PartWriter {
    pub(super) fn new(dir: &Path, file: &'static str, shard_tokens: usize) -> PartWriter {
        PartWriter {
            dir: dir.to_path_buf(),
            file,
            shard_tokens,
            full: Vec::new(),
            rest: Vec::new(),
        }
    }

    /// `train` of `train.bin`: the numbered shards' prefix.
    fn name(&self) -> &'static str {
        self.file.strip_suffix(".bin").unwrap_or(self.file)
    }

    fn temp_path(&self, shard: usize) -> PathBuf {
        self.dir
            .join(format!(".{}_{shard:06}.bin.partial", self.name()))
    }

    /// The tokens pushed so far.
    pub(super) fn len(&self) -> usize {
        self.full.len() * self.shard_tokens + self.rest.len()
    }

    /// Appends `tokens`, writing each shard that fills.
    pub(super) fn push(&mut self, mut tokens: &[u16]) -> Result<()> {
        while !tokens.is_empty() {
            let take = (self.shard_tokens - self.rest.len()).min(tokens.len());
            self.rest.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.rest.len() == self.shard_tokens {
                let path = self.temp_path(self.full.len());
                write_shard_u16(&path, &self.rest)?;
                self.full.push(path);
                self.rest.clear();
            }
        }
        Ok(())
    }

    /// Moves the last `n` tokens to the end of `into`, reading back the full shards they are in
    /// one at a time.
    pub(super) fn move_tail(&mut self, n: usize, into: &mut PartWriter) -> Result<()> {
        let cut = self.len() - n;
        // the shard holding the cut (its index == full.len(): the tokens after the full shards)
        let (shard, at) = (cut / self.shard_tokens, cut % self.shard_tokens);
        if shard == self.full.len() {
            into.push(&self.rest[at..])?;
            self.rest.truncate(at);
            return Ok(());
        }
        let mut head = read_shard(&self.full[shard])?;
        into.push(&head[at..])?;
        for path in &self.full[shard + 1..] {
            into.push(&read_shard(path)?)?;
        }
        into.push(&self.rest)?;
        for path in self.full.drain(shard..) {
            remove(&path)?;
        }
        head.truncate(at);
        self.rest = head;
        Ok(())
    }

    /// Writes the last shard and gives every shard its name (replacing the files there), then
    /// removes the shards of either naming that an earlier prepro left in the folder. Returns
    /// the shard or the shards' pattern, and the shards.
    pub(super) fn commit(mut self) -> Result<(PathBuf, Vec<PathBuf>)> {
        // the full shards, then (when there are tokens after them, or none at all) the last
        let n_full = self.full.len();
        if !self.rest.is_empty() || self.full.is_empty() {
            let path = self.temp_path(n_full);
            write_shard_u16(&path, &self.rest)?;
            self.full.push(path);
        }
        let (file, name) = (self.file, self.name());
        let (pattern, paths): (PathBuf, Vec<PathBuf>) = if self.full.len() == 1 {
            let path = self.dir.join(file);
            (path.clone(), vec![path])
        } else {
            let paths = (0..self.full.len())
                .map(|i| self.dir.join(format!("{name}_{i:06}.bin")))
                .collect();
            (self.dir.join(format!("{name}_??????.bin")), paths)
        };
        for (i, (temp, path)) in self.full.iter().zip(&paths).enumerate() {
            std::fs::rename(temp, path)
                .with_context(|| format!("{}: cannot write", path.display()))?;
            let n = if i < n_full {
                self.shard_tokens
            } else {
                self.rest.len()
            };
            outln!("prepro: wrote {} ({n} tokens)", path.display());
        }
        // no temporary files left for Drop to remove
        self.full.clear();
        let numbered_prefix = format!("{name}_");
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("{}: cannot list the directory", self.dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let found = path.file_name().unwrap_or_default().to_string_lossy();
            let numbered = |s: &str| {
                s.strip_prefix(&numbered_prefix)
                    .and_then(|rest| rest.strip_suffix(".bin"))
                    .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
            };
            let partial = found
                .strip_prefix('.')
                .and_then(|s| s.strip_suffix(".partial"))
                .is_some_and(numbered);
            if (found == file || numbered(&found)) && !paths.contains(&path) {
                remove(&path)?;
                outln!(
                    "prepro: removed {} (an earlier prepro's shard)",
                    path.display()
                );
            } else if partial {
                // a shard of a prepro that did not finish
                remove(&path)?;
            }
        }
        Ok((pattern, paths))
    }
}

impl Drop for PartWriter {
    /// Removes the temporary files of a part that was not committed.
    fn drop(&mut self) {
        for path in &self.full {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("{}: cannot remove", path.display()))
}
