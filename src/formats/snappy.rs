//! Snappy's raw block format (github.com/google/snappy, format_description.txt), decompression
//! only: what Parquet's SNAPPY codec stores each page as. A block is the uncompressed length (a
//! varint), then elements: a literal (its bytes follow) or a copy of earlier output (a length and
//! an offset back, which may overlap what it writes: offset 1 repeats the last byte).

use super::{copy_back, MAX_RESERVE};
use anyhow::{bail, Result};

/// Decompresses one raw snappy block. Errors (never panics) on a damaged block: a length that
/// runs past the input, a copy from before the output's start, or output longer or shorter than
/// the block says.
pub fn decompress(block: &[u8]) -> Result<Vec<u8>> {
    let mut pos = 0;
    let len = read_varint(block, &mut pos)?;
    let Ok(len) = usize::try_from(len) else {
        bail!("snappy: an uncompressed length of {len} bytes");
    };
    let mut out: Vec<u8> = Vec::with_capacity(len.min(MAX_RESERVE));
    while pos < block.len() {
        let tag = block[pos];
        pos += 1;
        let (copy_len, offset) = match tag & 3 {
            0 => {
                // a literal: its length - 1 in the tag, or in the 1 to 4 bytes after it
                let mut n = (tag >> 2) as usize;
                if n >= 60 {
                    let bytes = n - 59;
                    let Some(b) = block.get(pos..pos + bytes) else {
                        bail!("snappy: a literal's length runs past the end of the block");
                    };
                    n = b.iter().rev().fold(0usize, |acc, &x| acc << 8 | x as usize);
                    pos += bytes;
                }
                let n = n + 1;
                let Some(lit) = block.get(pos..pos.saturating_add(n)) else {
                    bail!("snappy: a literal of {n} bytes runs past the end of the block");
                };
                if out.len() + n > len {
                    bail!("snappy: more than the {len} bytes it says it holds");
                }
                out.extend_from_slice(lit);
                pos += n;
                continue;
            }
            1 => {
                let Some(&b) = block.get(pos) else {
                    bail!("snappy: a copy runs past the end of the block");
                };
                pos += 1;
                (
                    4 + ((tag >> 2) & 7) as usize,
                    ((tag as usize >> 5) << 8) | b as usize,
                )
            }
            2 => {
                let Some(b) = block.get(pos..pos + 2) else {
                    bail!("snappy: a copy runs past the end of the block");
                };
                pos += 2;
                (
                    1 + (tag >> 2) as usize,
                    u16::from_le_bytes([b[0], b[1]]) as usize,
                )
            }
            _ => {
                let Some(b) = block.get(pos..pos + 4) else {
                    bail!("snappy: a copy runs past the end of the block");
                };
                pos += 4;
                let offset = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                (1 + (tag >> 2) as usize, offset as usize)
            }
        };
        copy_back(&mut out, offset, copy_len, len, "snappy")?;
    }
    if out.len() != len {
        bail!("snappy: the block holds {} bytes, it says {len}", out.len());
    }
    Ok(out)
}

/// A little-endian base-128 varint of at most 32 bits (snappy's lengths) at `pos`.
fn read_varint(block: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..35).step_by(7) {
        let Some(&b) = block.get(*pos) else {
            bail!("snappy: the block ends inside its length");
        };
        *pos += 1;
        value |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("snappy: a length of more than 5 bytes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_literals_and_overlapping_copies() {
        // "abcabcabcabc!" as: length 13; literal "abc" (tag (3-1)<<2 = 8); copy of 9 bytes from 3
        // back with a 2-byte offset (tag (9-1)<<2 | 2 = 34); literal "!"
        let block = [13, 8, b'a', b'b', b'c', 34, 3, 0, 0, b'!'];
        assert_eq!(decompress(&block).unwrap(), b"abcabcabcabc!");
        // a 1-byte-offset copy: 4 + 3 = 7 bytes from 1 back (tag 3 << 2 | 1 = 13, offset 1)
        let block = [8, 0, b'x', 13, 1];
        assert_eq!(decompress(&block).unwrap(), b"xxxxxxxx");
        // a 4-byte-offset copy of 2 bytes from 2 back (tag 1 << 2 | 3 = 7)
        let block = [4, 4, b'h', b'i', 7, 2, 0, 0, 0];
        assert_eq!(decompress(&block).unwrap(), b"hihi");
        // a literal of 70 bytes: length - 1 = 69 in one byte after the tag (60 << 2 = 240)
        let mut block = vec![70, 240, 69];
        block.extend(std::iter::repeat_n(b'z', 70));
        assert_eq!(decompress(&block).unwrap(), vec![b'z'; 70]);
        // a literal of 300 bytes: length - 1 = 299 = 0x012b in two bytes, low first (tag 61 << 2);
        // the block's length 300 as a varint (0xac 0x02)
        let mut block = vec![0xac, 0x02, 244, 0x2b, 0x01];
        block.extend((0..300).map(|i| i as u8));
        assert_eq!(decompress(&block).unwrap(), &block[5..]);
        // a 4-byte-offset copy from 65536 back (offset bytes 0, 0, 1, 0) of 4 bytes (tag 3 << 2
        // | 3 = 15), after a literal of 65536 (65535 in two bytes); the length 65540 as a varint
        let lit: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
        let mut block = vec![0x84, 0x80, 0x04, 244, 0xff, 0xff];
        block.extend(&lit);
        block.extend([15, 0, 0, 1, 0]);
        assert_eq!(decompress(&block).unwrap(), [&lit[..], &lit[..4]].concat());
        // empty
        assert_eq!(decompress(&[0]).unwrap(), b"");
    }

    #[test]
    fn damaged_blocks_are_errors() {
        let err = |b: &[u8]| format!("{:#}", decompress(b).unwrap_err());
        assert!(err(&[]).contains("ends inside its length"));
        assert!(err(&[3, 8, b'a']).contains("runs past the end"));
        assert!(err(&[4, 0, b'a', 13, 2]).contains("a copy from 2 bytes back, with 1 bytes"));
        assert!(err(&[2, 8, b'a', b'b', b'c']).contains("more than the 2 bytes"));
        assert!(err(&[5, 0, b'a']).contains("holds 1 bytes, it says 5"));
        assert!(err(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).contains("more than 5 bytes"));
    }
}
