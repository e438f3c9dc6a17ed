//! The zstd reader (`formats::zstd`) against files the reference `zstd` tool wrote
//! (tools/write_zstd_fixtures.py): with and without checksums, several frames, skippable frames, a
//! file of many blocks; and each kind of damage, which must be named.

use std::io::Read;
use std::path::PathBuf;

use train_gpt2_cuda::formats::zstd::ZstdReader;

mod engine_bin;
use engine_bin::{invalid_data_error, read_in_pieces, Trickle};

fn fixture(name: &str) -> PathBuf {
    engine_bin::root().join("tests/fixtures/zstd").join(name)
}

fn hamlet() -> Vec<u8> {
    std::fs::read(engine_bin::root().join("data/shakespeare/hamlet.txt")).unwrap()
}

/// `bytes` decoded through a reader of about `step` bytes a call, into reads of `out` bytes.
fn decode(bytes: &[u8], step: usize, out: usize) -> std::io::Result<Vec<u8>> {
    read_in_pieces(ZstdReader::new(Trickle::new(bytes, step)), out)
}

#[test]
fn reads_what_the_zstd_tool_wrote() {
    let play = hamlet();
    let text = &play[..20000];
    for (name, want) in [
        ("plain.zst", text),
        ("nocheck.zst", text),
        ("frames.zst", text),
        ("skippable.zst", text),
        ("play.zst", &play[..]),
        ("window.zst", &play[..]),
        ("only_skippable.zst", b""),
    ] {
        let zst = std::fs::read(fixture(name)).unwrap();
        let mut whole = Vec::new();
        ZstdReader::new(&zst[..]).read_to_end(&mut whole).unwrap();
        assert!(whole == want, "{name}");
        for (step, out) in [(1, 7), (13, 1), (100, 4096)] {
            let got = decode(&zst, step, out).unwrap();
            assert!(got == want, "{name}, reads of {step}, {out}");
        }
    }
}

fn error_of(bytes: &[u8]) -> String {
    invalid_data_error(ZstdReader::new(bytes))
}

#[test]
fn damage_is_named() {
    let zst = std::fs::read(fixture("plain.zst")).unwrap();
    let n = zst.len();
    assert_eq!(
        error_of(b"plain text"),
        "not a zstd file: it starts with 70 6c 61 69, zstd's frames with 28 b5 2f fd"
    );
    let gz = std::fs::read(engine_bin::root().join("tests/fixtures/gzip/plain.gz")).unwrap();
    assert!(error_of(&gz).starts_with("not a zstd file: it starts with 1f 8b"));
    assert_eq!(error_of(b""), "not a zstd file: it is empty");
    assert_eq!(
        error_of(b"\x28\xb5"),
        "the file ends early: inside the magic number of frame 1"
    );
    assert_eq!(
        error_of(b"\x28\xb6"),
        "not a zstd file: it starts with 28 b6, zstd's frames with 28 b5 2f fd"
    );
    // the content checksum, the frame's last 4 bytes
    let mut sum = zst.clone();
    sum[n - 1] ^= 1;
    let e = error_of(&sum);
    assert!(
        e.starts_with("frame 1: the content checksum does not match (the data is damaged)"),
        "{e}"
    );
    // cut anywhere: the header, a block or the checksum ends early
    for cut in (1..n).step_by(7).chain([1, 4, 5, 6, n - 4, n - 1]) {
        let e = error_of(&zst[..cut]);
        assert!(
            e.starts_with("the file ends early: inside "),
            "cut to {cut}: {e}"
        );
    }
    // a frame header asking for a 256 MiB window (window descriptor 0x90: 2^(10 + 18) bytes)
    assert_eq!(
        error_of(b"\x28\xb5\x2f\xfd\x00\x90"),
        "frame 1 needs a window of 256 MiB, more than the 128 MiB this reader allows (as `zstd \
         -d` without --memory): recompress it without --long (or --long=27 at most)"
    );
    // a skippable frame cut short
    let skippable = std::fs::read(fixture("skippable.zst")).unwrap();
    assert_eq!(
        error_of(&skippable[..12]),
        "the file ends early: inside skippable frame 1 (4 of its 11 bytes)"
    );
    // bytes after the last frame that are not another frame
    for (junk, starts) in [(&b"\n"[..], "0a"), (b"0123456789", "30 31 32 33")] {
        let mut tail = zst.clone();
        tail.extend_from_slice(junk);
        assert_eq!(
            error_of(&tail),
            format!("bytes that are not another zstd frame follow frame 1 ({starts} ...)")
        );
    }
}

/// With a content checksum, no damage goes unseen: every copy of plain.zst with one byte
/// complemented is refused, or decodes to the text itself (a header change that does not matter).
#[test]
fn the_checksum_catches_every_damaged_byte() {
    let zst = std::fs::read(fixture("plain.zst")).unwrap();
    let text = &hamlet()[..20000];
    let mut refused = 0;
    for i in 0..zst.len() {
        let mut bad = zst.clone();
        bad[i] = !bad[i];
        let mut out = Vec::new();
        match ZstdReader::new(&bad[..]).read_to_end(&mut out) {
            Ok(_) => assert!(out == text, "byte {i} complemented: wrong text, no error"),
            Err(_) => refused += 1,
        }
    }
    assert!(refused > zst.len() * 9 / 10, "{refused} of {}", zst.len());
}

/// A source that counts the bytes read from it.
struct Counted<'a> {
    bytes: &'a [u8],
    read: std::rc::Rc<std::cell::Cell<usize>>,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read(buf)?;
        self.read.set(self.read.get() + n);
        Ok(n)
    }
}

/// The reader streams: a frame with a small window (1 KiB) hands out its text long before the
/// frame ends; and an empty read reads nothing.
#[test]
fn text_comes_out_before_the_frame_ends() {
    let zst = std::fs::read(fixture("window.zst")).unwrap();
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut r = ZstdReader::new(Counted {
        bytes: &zst,
        read: read.clone(),
    });
    assert_eq!(r.read(&mut []).unwrap(), 0);
    assert_eq!(read.get(), 0);
    let mut first = vec![0u8; 10_000];
    r.read_exact(&mut first).unwrap();
    assert!(first == hamlet()[..10_000]);
    // (the reader's buffer takes 64 KiB of the 100 KB file at a time)
    assert!(
        read.get() < zst.len(),
        "{} of {} bytes read",
        read.get(),
        zst.len()
    );
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest == hamlet()[10_000..]);
    assert_eq!(read.get(), zst.len());
}
