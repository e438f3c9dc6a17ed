//! llm.c token shards (`*.bin` from llm.c's `dev/data` scripts).
//!
//! Layout: a 256 x i32 header (little-endian): `header[0]` = magic 20240520, `header[1]` = version
//! 1, `header[2]` = N the token count; then N tokens as u16 little-endian. The file is exactly
//! 1024 + 2 * N bytes.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

use super::{check_magic_version, new_header, parse_header, put_header, read_file, HEADER_BYTES};
use crate::text::count;

/// `header[0]` of a token shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// `header[1]` of a token shard.
pub const SHARD_VERSION: i32 = 1;

/// Writes `tokens` (N,) as a shard at `path` (atomically). A token > 65535 is an error.
pub fn write_shard(path: &Path, tokens: &[u32]) -> Result<()> {
    write_shard_u16(path, &to_u16(tokens, path)?)
}

/// `tokens` as a shard stores them (u16); a token > 65535 is an error naming `path` (the file
/// they are written to, or read from).
pub fn to_u16(tokens: &[u32], path: &Path) -> Result<Vec<u16>> {
    let what = path.display();
    let mut out = Vec::with_capacity(tokens.len());
    for (pos, &id) in tokens.iter().enumerate() {
        let Ok(id16) = u16::try_from(id) else {
            bail!(
                "{what}: cannot write token id {id} at position {pos}: shards store u16 tokens \
                 (at most 65535)"
            );
        };
        out.push(id16);
    }
    Ok(out)
}

/// Writes `tokens` (N,) as a shard at `path` (atomically).
pub fn write_shard_u16(path: &Path, tokens: &[u16]) -> Result<()> {
    let header = shard_header(path, tokens.len())?;
    super::write_file_atomic_with(path, |w| put_shard(w, &header, tokens))
}

/// Writes `tokens` (N,) as a shard at `path`, a file of one's own (prepro's temporary shards):
/// straight into it, with no temporary file of its own; a failed write removes it.
pub fn write_shard_u16_new(path: &Path, tokens: &[u16]) -> Result<()> {
    let header = shard_header(path, tokens.len())?;
    super::write_new_file(path, |w| put_shard(w, &header, tokens))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The header bytes of a shard of `n` tokens; an error naming `path` where a shard cannot hold so
/// many.
fn shard_header(path: &Path, n: usize) -> Result<Vec<u8>> {
    if n > i32::MAX as usize {
        bail!(
            "{}: cannot write {n} tokens: a shard holds at most {} tokens",
            path.display(),
            i32::MAX
        );
    }
    let mut h = new_header(SHARD_MAGIC, SHARD_VERSION);
    h[2] = n as i32;
    let mut header = Vec::with_capacity(HEADER_BYTES);
    put_header(&mut header, &h);
    Ok(header)
}

/// Streams a shard, `header` then `tokens`, through a buffered writer: a 100M-token shard is not
/// copied into 200 MB of bytes.
fn put_shard(w: &mut dyn Write, header: &[u8], tokens: &[u16]) -> std::io::Result<()> {
    w.write_all(header)?;
    for &id in tokens {
        w.write_all(&id.to_le_bytes())?;
    }
    Ok(())
}

/// Whether the file at `path` starts as a token shard does (its magic number): prepro removes
/// or replaces an earlier shard only when it is one, never a file of the user's that happens to
/// be named like one.
pub fn is_shard_file(path: &Path) -> bool {
    super::open_with_header(path, SHARD_MAGIC).is_ok()
}

/// Reads the shard at `path` and returns its tokens (N,).
pub fn read_shard(path: &Path) -> Result<Vec<u16>> {
    let bytes = read_file(path)?;
    let n = check_shard_bytes(path, &bytes)?;
    Ok(bytes[HEADER_BYTES..HEADER_BYTES + 2 * n]
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// Reads only the header of the shard at `path`, checks it against the file's size, and returns
/// the token count N. Cheap: reads 1024 bytes.
pub fn read_shard_len(path: &Path) -> Result<usize> {
    let (_, size, h) = super::open_with_header(path, SHARD_MAGIC)?;
    check_magic_version(path, &h, SHARD_MAGIC, &[SHARD_VERSION])?;
    let n = header_count(path, h[2])?;
    check_size(path, n, size)?;
    Ok(n)
}

/// Checks the header and size of a whole shard file's bytes; returns N.
fn check_shard_bytes(path: &Path, bytes: &[u8]) -> Result<usize> {
    let h = parse_header(path, bytes, SHARD_MAGIC)?;
    check_magic_version(path, &h, SHARD_MAGIC, &[SHARD_VERSION])?;
    let n = header_count(path, h[2])?;
    check_size(path, n, bytes.len() as u64)?;
    Ok(n)
}

fn header_count(path: &Path, count: i32) -> Result<usize> {
    if count < 0 {
        bail!(
            "{}: bad token shard: negative token count {count} in the header",
            path.display()
        );
    }
    Ok(count as usize)
}

fn check_size(path: &Path, n: usize, actual: u64) -> Result<()> {
    let expected = (HEADER_BYTES + 2 * n) as u64;
    if actual < expected {
        bail!(
            "{}: token shard is truncated: the header says {}, so {expected} bytes are \
             expected, but the file has {actual} bytes",
            path.display(),
            count(n, "token", "tokens")
        );
    }
    if actual > expected {
        bail!(
            "{}: token shard has {}: the header says {}, so {expected} bytes are expected, but \
             the file has {actual} bytes",
            path.display(),
            count(actual - expected, "trailing byte", "trailing bytes"),
            count(n, "token", "tokens")
        );
    }
    Ok(())
}

/// Checks that every token of `tokens` (N,) read from `path` is below V = `vocab_size`; the error
/// names the first offending position and id.
pub fn check_tokens<T: Copy + Into<u64>>(
    path: &Path,
    tokens: &[T],
    vocab_size: usize,
) -> Result<()> {
    if let Some((pos, &id)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &id)| id.into() >= vocab_size as u64)
    {
        bail!(
            "{}: token id {} at position {pos} is out of range for vocabulary size {vocab_size}",
            path.display(),
            id.into()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token id must be below the vocabulary size: V itself is out of range.
    #[test]
    fn token_ids_reach_v_minus_one() {
        let path = Path::new("train.bin");
        check_tokens(path, &[0u16, 49, 49], 50).unwrap();
        let e = check_tokens(path, &[0u16, 49, 50, 51], 50).unwrap_err();
        assert_eq!(
            e.to_string(),
            "train.bin: token id 50 at position 2 is out of range for vocabulary size 50"
        );
    }

    /// A shard's header counts its tokens in an i32: i32::MAX of them is the most a shard holds
    /// (checked without the 4 GiB of tokens).
    #[test]
    fn the_largest_shard_holds_i32_max_tokens() {
        let path = Path::new("big.bin");
        let header = shard_header(path, i32::MAX as usize).unwrap();
        assert_eq!(header.len(), HEADER_BYTES);
        assert_eq!(header[8..12], i32::MAX.to_le_bytes());
        let e = shard_header(path, i32::MAX as usize + 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "big.bin: cannot write 2147483648 tokens: a shard holds at most 2147483647 tokens"
        );
    }
}
