//! One part of prepro's output (train or val) as it is written: shards under temporary names as
//! they fill, renamed at the end (once both parts are written: a failure in either leaves the
//! folder as it was).

use crate::outln;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use crate::formats::shard::{is_shard_file, read_shard, write_shard_u16_new};

/// One part (train or val) as it is written: each shard goes to a temporary file when it is full
/// (`.train_000000.bin.partial`, ...), [`PartWriter::finish`] writes the last, and
/// [`PartWriter::rename`] names them: `train.bin` when there is one, else `train_000000.bin`,
/// `train_000001.bin`, .... Dropped before that, it removes its temporary files.
pub(super) struct PartWriter {
    dir: PathBuf,
    /// The part's file when it fits in one shard, e.g. `train.bin`.
    file: &'static str,
    shard_tokens: usize,
    /// The temporary files of the full shards, in order.
    full: Vec<PathBuf>,
    /// (< shard_tokens,) the tokens after them.
    rest: Vec<u16>,
    /// The temporary file of the last shard, `rest`, once [`PartWriter::finish`] wrote it.
    last: Option<PathBuf>,
}

impl PartWriter {
    pub(super) fn new(dir: &Path, file: &'static str, shard_tokens: usize) -> PartWriter {
        PartWriter {
            dir: dir.to_path_buf(),
            file,
            shard_tokens,
            full: Vec::new(),
            rest: Vec::new(),
            last: None,
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
                // (one document can fill many shards: an interrupt stops between them)
                super::check_interrupt()?;
                let path = self.temp_path(self.full.len());
                write_shard_u16_new(&path, &self.rest)?;
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

    /// Writes the last shard (when there are tokens after the full shards, or none at all) under
    /// its temporary name: after this every shard of the part is on the disk, none yet named.
    pub(super) fn finish(&mut self) -> Result<()> {
        if !self.rest.is_empty() || self.full.is_empty() {
            let path = self.temp_path(self.full.len());
            write_shard_u16_new(&path, &self.rest)?;
            self.last = Some(path);
        }
        Ok(())
    }

    /// The shards' names once [`PartWriter::finish`]ed: `train.bin` when there is one shard, else
    /// `train_000000.bin`, ...; and the part's path for `--train`, the pattern of the numbered
    /// ones.
    pub(super) fn names(&self) -> (PathBuf, Vec<PathBuf>) {
        let (file, name) = (self.file, self.name());
        let shards = self.full.len() + usize::from(self.last.is_some());
        if shards == 1 {
            let path = self.dir.join(file);
            (path.clone(), vec![path])
        } else {
            let paths = (0..shards)
                .map(|i| self.dir.join(format!("{name}_{i:06}.bin")))
                .collect();
            (self.dir.join(format!("{name}_??????.bin")), paths)
        }
    }

    /// Gives every shard written by [`PartWriter::finish`] its name (replacing the files there).
    /// Returns the shard or the shards' pattern, and the shards.
    pub(super) fn rename(&mut self) -> Result<(PathBuf, Vec<PathBuf>)> {
        let (pattern, paths) = self.names();
        let n_full = self.full.len();
        let temps = self.full.iter().chain(&self.last);
        for (i, (temp, path)) in temps.zip(&paths).enumerate() {
            std::fs::rename(temp, path)
                .with_context(|| format!("{}: cannot write", path.display()))?;
            let n = if i < n_full {
                self.shard_tokens
            } else {
                self.rest.len()
            };
            outln!(
                "prepro: wrote {} ({})",
                path.display(),
                crate::text::count(n, "token", "tokens")
            );
        }
        // no temporary files left for Drop to remove
        self.full.clear();
        self.last = None;
        Ok((pattern, paths))
    }

    /// Removes the shards of either naming that an earlier prepro left in the folder (those that
    /// are token shards: a file of the user's named like one stays, with a note), and the
    /// temporary files of a prepro that did not finish (killed, say). `keep` are this prepro's.
    pub(super) fn remove_stale(&self, keep: &[PathBuf]) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("{}: cannot list the directory", self.dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let found = path.file_name().unwrap_or_default().to_string_lossy();
            if is_shard_name(self.name(), &found) && !keep.contains(&path) {
                if is_shard_file(&path) {
                    remove(&path)?;
                    outln!(
                        "prepro: removed {} (an earlier prepro's shard)",
                        path.display()
                    );
                } else {
                    outln!(
                        "prepro: left {}: named like a shard, but not a token shard",
                        path.display()
                    );
                }
            } else if is_leftover_name(self.name(), &found) {
                remove(&path)?;
            }
        }
        Ok(())
    }
}

/// Whether a file named `found` is one of the shards of the part `name` (`train`): `train.bin`,
/// or `train_` and six digits `.bin`. Prepro replaces or removes such files.
pub(super) fn is_shard_name(name: &str, found: &str) -> bool {
    found.strip_suffix(".bin") == Some(name) || is_numbered(name, found)
}

/// `train_000042.bin` of `train`.
fn is_numbered(name: &str, found: &str) -> bool {
    found
        .strip_prefix(name)
        .and_then(|s| s.strip_prefix('_'))
        .and_then(|rest| rest.strip_suffix(".bin"))
        .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a file named `found` is a temporary file of the part `name` that a prepro which did
/// not finish left: `.train_000042.bin.partial`, or the `.partial.tmp` that earlier versions
/// wrote it through.
pub(super) fn is_leftover_name(name: &str, found: &str) -> bool {
    found
        .strip_prefix('.')
        .and_then(|s| {
            s.strip_suffix(".partial")
                .or(s.strip_suffix(".partial.tmp"))
        })
        .is_some_and(|s| is_numbered(name, s))
}

impl Drop for PartWriter {
    /// Removes the temporary files of a part that was not committed.
    fn drop(&mut self) {
        for path in self.full.iter().chain(&self.last) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("{}: cannot remove", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail moved to val leaves train's folder as it goes: the full shards it came from are
    /// removed at once (a corpus's val part is not on the disk twice until the end).
    #[test]
    fn moving_the_tail_removes_the_shards_it_empties() {
        let dir = crate::test_dir("part-writer");
        let temps = |name: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!(".{name}_")))
                .collect();
            v.sort();
            v
        };
        let (mut train, mut val) = (
            PartWriter::new(&dir, "train.bin", 2),
            PartWriter::new(&dir, "val.bin", 2),
        );
        train.push(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
        assert_eq!(temps("train").len(), 3);
        // the last 4 tokens: 4 of shard 1 (whose 3 stays, back in memory), shard 2, the rest 7
        train.move_tail(4, &mut val).unwrap();
        assert_eq!(temps("train"), [".train_000000.bin.partial"]);
        assert_eq!((train.len(), &train.rest[..]), (3, &[3][..]));
        assert_eq!((val.len(), &val.rest[..]), (4, &[][..]));
        assert_eq!(
            read_shard(&dir.join(".val_000001.bin.partial")).unwrap(),
            [6, 7]
        );
        assert_eq!(temps("val").len(), 2);
        drop((train, val));
        assert!(temps("train").is_empty() && temps("val").is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
