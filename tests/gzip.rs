//! The gzip reader (`formats::gzip`) against files Python's zlib wrote
//! (tools/write_gzip_fixtures.py): every header field, stored blocks, several members, a file of
//! many reads; and each kind of damage, which must be named.

use std::io::Read;
use std::path::PathBuf;

use train_gpt2_cuda::formats::gzip::{crc32, GzReader};

mod engine_bin;
use engine_bin::{invalid_data_error, read_in_pieces, Trickle};

fn fixture(name: &str) -> PathBuf {
    engine_bin::root().join("tests/fixtures/gzip").join(name)
}

fn hamlet() -> Vec<u8> {
    std::fs::read(engine_bin::root().join("data/shakespeare/hamlet.txt")).unwrap()
}

/// `bytes` inflated through a reader of about `step` bytes a call, into reads of `out` bytes.
fn inflate(bytes: &[u8], step: usize, out: usize) -> std::io::Result<Vec<u8>> {
    read_in_pieces(GzReader::new(Trickle::new(bytes, step)), out)
}

#[test]
fn crc32_is_the_ieee_one() {
    // the standard check value, and a continued CRC equals the whole one
    assert_eq!(crc32(0, b"123456789"), 0xcbf4_3926);
    assert_eq!(crc32(0, b""), 0);
    assert_eq!(crc32(crc32(0, b"12345"), b"6789"), 0xcbf4_3926);
    // 16 bytes a step: the same as one bit at a time, for every length, start and split
    let bitwise = |crc: u32, bytes: &[u8]| {
        !bytes.iter().fold(!crc, |c, &b| {
            (0..8).fold(c ^ b as u32, |c, _| {
                (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg())
            })
        })
    };
    let bytes: Vec<u8> = (0..200u32).map(|i| (i * 73 + 11) as u8).collect();
    for start in 0..20 {
        for len in 0..bytes.len() - start {
            let b = &bytes[start..start + len];
            assert_eq!(crc32(5, b), bitwise(5, b), "start {start}, length {len}");
        }
    }
    for split in 0..bytes.len() {
        let (a, b) = bytes.split_at(split);
        assert_eq!(crc32(crc32(0, a), b), crc32(0, &bytes), "split at {split}");
    }
}

#[test]
fn reads_what_python_wrote() {
    let play = hamlet();
    let text = &play[..20000];
    for (name, want) in [
        ("plain.gz", text),
        ("all_flags.gz", text),
        ("stored.gz", text),
        ("members.gz", text),
        ("play.gz", &play[..]),
    ] {
        let gz = std::fs::read(fixture(name)).unwrap();
        // whole, through std's read_to_end; and a few bytes at a time, in and out
        let mut whole = Vec::new();
        let mut reader = GzReader::new(&gz[..]);
        // a read into no room reads nothing, before the stream and (below) after it
        assert_eq!(reader.read(&mut []).unwrap(), 0, "{name}");
        reader.read_to_end(&mut whole).unwrap();
        assert!(whole == want, "{name}");
        assert_eq!(reader.read(&mut []).unwrap(), 0, "{name}");
        for (step, out) in [(1, 7), (13, 1), (100, 4096)] {
            let got = inflate(&gz, step, out).unwrap();
            assert!(got == want, "{name}, reads of {step}, {out}");
        }
    }
}

/// A header with an extra field and no other optional field (plain.gz, whose flags are 0, with
/// one added): the data follows the field at once, whatever its length.
#[test]
fn reads_a_header_with_only_an_extra_field() {
    let gz = std::fs::read(fixture("plain.gz")).unwrap();
    assert_eq!(gz[3], 0, "plain.gz's flags");
    let play = hamlet();
    for extra in [&b""[..], b"a", b"AB\x03\x00xyz"] {
        let mut with = gz[..10].to_vec();
        with[3] = 0x04;
        with.extend((extra.len() as u16).to_le_bytes());
        with.extend_from_slice(extra);
        with.extend_from_slice(&gz[10..]);
        for (step, out) in [(1, 7), (100, 4096)] {
            let got = inflate(&with, step, out).unwrap();
            assert!(
                got == play[..20000],
                "extra {extra:?}, reads of {step}, {out}"
            );
        }
    }
}

/// Several members, the input's reads ending anywhere near the start of each member after the
/// first (two reads: up to the cut, then the rest), where a member's magic number can arrive
/// split across two reads.
#[test]
fn reads_members_whose_header_arrives_in_pieces() {
    let gz = std::fs::read(fixture("members.gz")).unwrap();
    let starts: Vec<usize> = (1..gz.len() - 2)
        .filter(|&i| gz[i..i + 3] == [0x1f, 0x8b, 8])
        .collect();
    assert_eq!(starts.len(), 2, "members.gz has three members");
    let play = hamlet();
    for cut in starts.iter().flat_map(|&s| s - 3..s + 12) {
        let pieces = std::io::Read::chain(&gz[..cut], &gz[cut..]);
        let got = read_in_pieces(GzReader::new(pieces), 4096).unwrap();
        assert!(got == play[..20000], "cut at {cut}");
    }
}

fn error_of(bytes: &[u8]) -> String {
    invalid_data_error(GzReader::new(bytes))
}

#[test]
fn damage_is_named() {
    let gz = std::fs::read(fixture("plain.gz")).unwrap();
    let n = gz.len();
    assert_eq!(
        error_of(b"plain text"),
        "not gzip: the file starts with 70 6c, not 1f 8b"
    );
    let mut method = gz.clone();
    method[2] = 7;
    assert_eq!(
        error_of(&method),
        "compression method 7 (gzip's is 8, deflate)"
    );
    let mut reserved = gz.clone();
    reserved[3] = 0x20;
    assert_eq!(error_of(&reserved), "reserved header flags set (0x20)");
    // the CRC and the length in the trailer
    let mut crc = gz.clone();
    crc[n - 8] ^= 1;
    assert!(
        error_of(&crc).starts_with("damaged: the CRC-32 of the data is "),
        "{}",
        error_of(&crc)
    );
    let mut len = gz.clone();
    len[n - 4] ^= 1;
    assert_eq!(
        error_of(&len),
        "damaged: the data is 20000 bytes (mod 2^32), the trailer says 20001"
    );
    // cut anywhere: a header, the data or the trailer ends early
    for cut in (0..n).step_by(7).chain([1, 9, n - 8, n - 1]) {
        if cut == 0 {
            continue;
        }
        let e = error_of(&gz[..cut]);
        assert!(e.contains("truncated?"), "cut to {cut}: {e}");
    }
    // cut inside the compressed data: the error counts the bytes that were read before it
    // (read_to_end keeps what it read before the error)
    let mut got = Vec::new();
    let e = GzReader::new(&gz[..n / 2])
        .read_to_end(&mut got)
        .unwrap_err()
        .to_string();
    let read = got.len();
    assert!(read > 0, "{e}");
    assert_eq!(
        e,
        format!("the file ends inside compressed data, after {read} bytes of output: truncated?")
    );
    // an empty file, or one byte, is a header cut short; 8 bytes of text are not gzip
    assert!(error_of(b"").contains("the file ends inside a gzip header"));
    assert!(error_of(&[0x1f]).contains("the file ends inside a gzip header"));
    assert_eq!(
        error_of(b"not gzip"),
        "not gzip: the file starts with 6e 6f, not 1f 8b"
    );
    // zeros from the start (a wiped file named .gz) are not gzip: only zeros after a member are
    // padding, or the file would read as empty
    assert_eq!(
        error_of(&[0; 16]),
        "not gzip: the file starts with 00 00, not 1f 8b"
    );
    // bytes after the last member that are not another member
    for (junk, starts) in [
        (&b"\n"[..], "0a"),
        (b"\n\n", "0a 0a"),
        (b"0123456789", "30 31"),
    ] {
        let mut tail = gz.clone();
        tail.extend_from_slice(junk);
        assert_eq!(
            error_of(&tail),
            format!("bytes that are not another gzip member follow the gzip data ({starts} ...)")
        );
    }
    // zeros after it are padding (GNU gzip: "trailing zero bytes ignored"), read in any pieces;
    // something after the zeros is not
    let mut padded = gz.clone();
    padded.extend_from_slice(&[0; 5000]);
    for (step, out) in [(1, 7), (13, 1), (100, 4096), (10000, 4096)] {
        let got = inflate(&padded, step, out).unwrap();
        assert!(got == hamlet()[..20000], "padded, reads of {step}, {out}");
    }
    padded.push(b'x');
    assert_eq!(
        error_of(&padded),
        "bytes that are not another gzip member follow the gzip data and its zero padding (78 ...)"
    );
}
