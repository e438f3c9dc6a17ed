//! llm.c tokenizer files (`gpt2_tokenizer.bin`): the byte string of every token id, used to decode
//! generated tokens.
//!
//! Layout, little-endian:
//! - header: 256 x i32: `[0]` = 20240328 (magic), `[1]` = version (1 or 2), `[2]` = the number of
//!   tokens, `[3]` = the end-of-text token id (version 2 only; version 1 has no such field, and
//!   llm.c assumes 50256, GPT-2's); the rest is zero.
//! - for each token id in order: one u8 length (1..=255) and that many bytes.

use super::{check_magic_version, new_header, parse_header, put_header};
use super::{read_file, write_file_atomic, HEADER_BYTES};
use anyhow::{bail, Result};
use std::path::Path;

/// The tokenizer file magic number (`header[0]`).
pub const TOKENIZER_MAGIC: i32 = 20240328;
/// The version without an EOT field.
pub const TOKENIZER_VERSION_1: i32 = 1;
/// The version with the EOT id in `header[3]`; the one we write.
pub const TOKENIZER_VERSION_2: i32 = 2;

/// The contents of a tokenizer file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerFile {
    /// The end-of-text token id; `None` for a version 1 file, which does not store it.
    pub eot: Option<u32>,
    /// The bytes of each token, indexed by token id (each 1..=255 bytes).
    pub tokens: Vec<Vec<u8>>,
}

/// Reads a version 1 or version 2 tokenizer file.
pub fn read_tokenizer_file(path: &Path) -> Result<TokenizerFile> {
    let bytes = read_file(path)?;
    let h = parse_header(path, &bytes, TOKENIZER_MAGIC)?;
    check_magic_version(
        path,
        &h,
        TOKENIZER_MAGIC,
        &[TOKENIZER_VERSION_1, TOKENIZER_VERSION_2],
    )?;
    let vocab = match usize::try_from(h[2]) {
        Ok(n) if n > 0 => n,
        _ => bail!(
            "{}: tokenizer file header says {} tokens (header[2]), must be positive",
            path.display(),
            h[2]
        ),
    };
    let eot = if h[1] == TOKENIZER_VERSION_2 {
        match u32::try_from(h[3]) {
            Ok(id) if (id as usize) < vocab => Some(id),
            _ => bail!(
                "{}: tokenizer file EOT token id {} (header[3]) is not in 0..{vocab}",
                path.display(),
                h[3]
            ),
        }
    } else {
        None
    };
    // Every token takes at least 2 bytes, which bounds the allocation by the file size.
    let mut tokens = Vec::with_capacity(vocab.min((bytes.len() - HEADER_BYTES) / 2));
    let mut pos = HEADER_BYTES;
    for id in 0..vocab {
        let Some(&len) = bytes.get(pos) else {
            bail!(
                "{}: tokenizer file is truncated: it ends at byte {pos} before token {id} of {vocab}",
                path.display()
            );
        };
        if len == 0 {
            bail!(
                "{}: tokenizer file token {id} has length 0 (at byte {pos}); lengths must be 1..=255",
                path.display()
            );
        }
        let start = pos + 1;
        let end = start + len as usize;
        if end > bytes.len() {
            bail!(
                "{}: tokenizer file is truncated: token {id} of {vocab} needs bytes {start}..{end}, \
                 the file has {}",
                path.display(),
                bytes.len()
            );
        }
        tokens.push(bytes[start..end].to_vec());
        pos = end;
    }
    if pos != bytes.len() {
        bail!(
            "{}: tokenizer file has {} after its {vocab} tokens (expected {pos} bytes, found \
             {})",
            path.display(),
            crate::text::count(bytes.len() - pos, "trailing byte", "trailing bytes"),
            bytes.len()
        );
    }
    Ok(TokenizerFile { eot, tokens })
}

/// Writes a version 2 tokenizer file: `tokens` indexed by token id (each 1..=255 bytes), and the
/// end-of-text id `eot`.
pub fn write_tokenizer_file(path: &Path, tokens: &[Vec<u8>], eot: u32) -> Result<()> {
    let what = "cannot write tokenizer file";
    if tokens.is_empty() || tokens.len() > i32::MAX as usize {
        bail!(
            "{}: {what}: {} tokens, must be in 1..={}",
            path.display(),
            tokens.len(),
            i32::MAX
        );
    }
    if eot as usize >= tokens.len() {
        bail!(
            "{}: {what}: EOT token id {eot} is not in 0..{}",
            path.display(),
            tokens.len()
        );
    }
    let mut h = new_header(TOKENIZER_MAGIC, TOKENIZER_VERSION_2);
    h[2] = tokens.len() as i32; // checked above
    h[3] = eot as i32; // < tokens.len() <= i32::MAX
    let body: usize = tokens.iter().map(|tok| 1 + tok.len()).sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + body);
    put_header(&mut out, &h);
    for (id, tok) in tokens.iter().enumerate() {
        if tok.is_empty() || tok.len() > 255 {
            bail!(
                "{}: {what}: token {id} has {} bytes, must be 1..=255",
                path.display(),
                tok.len()
            );
        }
        out.push(tok.len() as u8);
        out.extend_from_slice(tok);
    }
    write_file_atomic(path, &out)
}
