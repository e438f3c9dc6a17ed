//! Zstandard inputs (`*.zst`, RFC 8878): the uncompressed bytes of a `.txt.zst` or `.jsonl.zst`
//! file, as large corpora are shipped (The Pile, SlimPajama, RedPajama). The frames are decoded by
//! the `ruzstd` crate (pure Rust) one after another; this reader adds what its streaming decoder
//! leaves to the caller: a file of several frames (as `pzstd`, or `cat a.zst b.zst`, makes them),
//! skippable frames, each frame's content checksum checked where it has one, and errors that say
//! what is wrong and where: not zstd, damaged data, a checksum that does not match, a file that
//! ends early.

use std::io::{BufRead, BufReader, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// The first bytes of every zstd frame (0xFD2FB528, little-endian).
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Whether `path` is read as zstd: its name ends in `.zst`.
pub fn is_zstd(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zst"))
}

/// Where the reader is in the stream.
enum State {
    /// Between frames (or before the first): a header or the end comes next.
    Between,
    /// Inside frame `frames` (from 1).
    InFrame,
    /// After the last frame.
    Done,
}

/// The uncompressed bytes of a zstd stream. Errors are `io::ErrorKind::InvalidData`, each saying
/// which frame and what is wrong.
pub struct ZstdReader<R: Read> {
    source: BufReader<R>,
    decoder: FrameDecoder,
    state: State,
    /// Frames begun, skippable ones included.
    frames: usize,
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl<R: Read> ZstdReader<R> {
    pub fn new(source: R) -> ZstdReader<R> {
        ZstdReader {
            source: BufReader::with_capacity(1 << 16, source),
            decoder: FrameDecoder::new(),
            state: State::Between,
            frames: 0,
        }
    }

    /// Reads the next frame's header, skipping skippable frames; the end of the source here ends
    /// the stream (an empty source is not zstd).
    fn next_frame(&mut self) -> std::io::Result<()> {
        loop {
            // the next bytes, for messages
            let head: Vec<u8> = self.source.fill_buf()?.iter().take(4).copied().collect();
            if head.is_empty() {
                if self.frames == 0 {
                    return Err(invalid("not a zstd file: it is empty".into()));
                }
                self.state = State::Done;
                return Ok(());
            }
            self.frames += 1;
            let frame = self.frames;
            let bytes = head
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            match self.decoder.reset(&mut self.source) {
                Ok(()) => {
                    self.state = State::InFrame;
                    return Ok(());
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let mut payload = (&mut self.source).take(length as u64);
                    let skipped = std::io::copy(&mut payload, &mut std::io::sink())?;
                    if skipped < length as u64 {
                        return Err(invalid(format!(
                            "the file ends early: inside skippable frame {frame} ({skipped} of its \
                             {length} bytes)"
                        )));
                    }
                }
                // (fewer than 4 bytes left: the start of zstd's magic number is a file cut short)
                Err(FrameDecoderError::ReadFrameHeaderError(
                    ReadFrameHeaderError::MagicNumberReadError(_),
                )) if MAGIC.starts_with(&head) => {
                    return Err(invalid(format!(
                        "the file ends early: inside the magic number of frame {frame}"
                    )));
                }
                Err(FrameDecoderError::ReadFrameHeaderError(
                    ReadFrameHeaderError::BadMagicNumber(_)
                    | ReadFrameHeaderError::MagicNumberReadError(_),
                )) => {
                    return Err(invalid(if frame == 1 {
                        format!(
                            "not a zstd file: it starts with {bytes}, zstd's frames with 28 b5 2f fd"
                        )
                    } else {
                        format!(
                            "bytes that are not another zstd frame follow frame {} ({bytes} ...)",
                            frame - 1
                        )
                    }));
                }
                Err(FrameDecoderError::WindowSizeTooBig { requested, max }) => {
                    return Err(invalid(format!(
                        "frame {frame} needs a window of {} MiB, more than the {} MiB this \
                         reader allows (as `zstd -d` without --memory): recompress it without \
                         --long (or --long=27 at most)",
                        requested >> 20,
                        max >> 20
                    )));
                }
                Err(e) => {
                    let at_end = self.source.fill_buf().is_ok_and(|b| b.is_empty());
                    return Err(invalid(if at_end {
                        format!("the file ends early: inside the header of frame {frame}")
                    } else {
                        format!("frame {frame}: a bad header: {e}")
                    }));
                }
            }
        }
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Between => self.next_frame()?,
                State::InFrame => {
                    if self.decoder.can_collect() > 0 {
                        return self.decoder.read(buf);
                    }
                    let frame = self.frames;
                    if self.decoder.is_finished() {
                        let (want, got) = (
                            self.decoder.get_checksum_from_data(),
                            self.decoder.get_calculated_checksum(),
                        );
                        if let (Some(want), Some(got)) = (want, got) {
                            if want != got {
                                return Err(invalid(format!(
                                    "frame {frame}: the content checksum does not match (the \
                                     data is damaged): {got:#010x}, the frame says {want:#010x}"
                                )));
                            }
                        }
                        self.state = State::Between;
                        continue;
                    }
                    if let Err(e) = self
                        .decoder
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    {
                        // (a block cut short by the end of the file reads as damaged to the decoder)
                        let at_end = self.source.fill_buf().is_ok_and(|b| b.is_empty());
                        return Err(invalid(if at_end {
                            format!("the file ends early: inside frame {frame}")
                        } else {
                            format!("frame {frame}: damaged data: {e}")
                        }));
                    }
                }
            }
        }
    }
}
