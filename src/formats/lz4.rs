//! LZ4's block format (github.com/lz4/lz4, doc/lz4_Block_format.md), decompression only: what
//! Parquet's LZ4_RAW codec stores each page as (the page header gives the uncompressed size). A
//! block is sequences of a token (literal length in its high 4 bits, match length - 4 in its low
//! 4, 15 meaning "more bytes follow, each added, until one is not 255"), the literals, and a
//! match: a 2-byte little-endian offset back into the output and that many bytes copied (which
//! may overlap what the copy writes). The last sequence is literals only.

use super::{copy_back, MAX_RESERVE};
use anyhow::{bail, Result};

/// Decompresses one LZ4 block into exactly `size` bytes. Errors (never panics) on a damaged
/// block: a length past the input, a match from before the output's start, or output longer or
/// shorter than `size`.
pub fn decompress(block: &[u8], size: usize) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(size.min(MAX_RESERVE));
    let mut pos = 0;
    loop {
        let Some(&token) = block.get(pos) else {
            bail!("lz4: the block ends before its last literals");
        };
        pos += 1;
        let literals = read_length(block, &mut pos, (token >> 4) as usize)?;
        let Some(lit) = block.get(pos..pos.saturating_add(literals)) else {
            bail!("lz4: {literals} literals run past the end of the block");
        };
        if out.len() + literals > size {
            bail!("lz4: more than the {size} bytes it says it holds");
        }
        out.extend_from_slice(lit);
        pos += literals;
        if pos == block.len() {
            break;
        }
        let Some(o) = block.get(pos..pos + 2) else {
            bail!("lz4: a match's offset runs past the end of the block");
        };
        let offset = u16::from_le_bytes([o[0], o[1]]) as usize;
        pos += 2;
        let len = read_length(block, &mut pos, (token & 0x0f) as usize)? + 4;
        copy_back(&mut out, offset, len, size, "lz4")?;
    }
    if out.len() != size {
        bail!(
            "lz4: the block holds {} bytes, the page says {size}",
            out.len()
        );
    }
    Ok(out)
}

/// A length whose first part, `nibble`, is in a token: at 15, the bytes after it are added, up
/// to and including the first that is not 255.
fn read_length(block: &[u8], pos: &mut usize, nibble: usize) -> Result<usize> {
    let mut n = nibble;
    if nibble == 15 {
        loop {
            let Some(&b) = block.get(*pos) else {
                bail!("lz4: the block ends inside a length");
            };
            *pos += 1;
            n = n.saturating_add(b as usize);
            if b != 255 {
                break;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_literals_and_overlapping_matches() {
        // "abcabcabcabc!": token (3 literals, match 9 - 4 = 5) "abc", offset 3; token (1 literal) "!"
        let block = [0x35, b'a', b'b', b'c', 3, 0, 0x10, b'!'];
        assert_eq!(decompress(&block, 13).unwrap(), b"abcabcabcabc!");
        // a run: 1 literal, match of 4 + 15 + 2 = 21 from 1 back, then no literals
        let block = [0x1f, b'x', 1, 0, 2, 0x00];
        assert_eq!(decompress(&block, 22).unwrap(), vec![b'x'; 22]);
        // 20 literals: 15 + 5
        let mut block = vec![0xf0, 5];
        block.extend(std::iter::repeat_n(b'z', 20));
        assert_eq!(decompress(&block, 20).unwrap(), vec![b'z'; 20]);
        assert_eq!(decompress(&[0x00], 0).unwrap(), b"");
    }

    #[test]
    fn damaged_blocks_are_errors() {
        let err = |b: &[u8], n| format!("{:#}", decompress(b, n).unwrap_err());
        assert!(err(&[], 0).contains("ends before its last literals"));
        assert!(err(&[0x30, b'a'], 3).contains("3 literals run past the end"));
        assert!(err(&[0x10, b'a', 2, 0, 0x00], 10).contains("a copy from 2 bytes back"));
        assert!(err(&[0x10, b'a', 1, 0, 0x00], 3).contains("more than the 3 bytes"));
        assert!(err(&[0x10, b'a'], 2).contains("holds 1 bytes, the page says 2"));
        assert!(err(&[0xf0], 20).contains("ends inside a length"));
        assert!(err(&[0x10, b'a', 1], 9).contains("offset runs past the end"));
        // cut just after a match (its offset whole): the last literals are missing
        assert!(err(&[0x10, b'a', 1, 0], 5).contains("ends before its last literals"));
    }
}
