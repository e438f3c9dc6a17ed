//! llm.c-compatible file formats, byte for byte. Every file starts with a header of 256 i32 values
//! (little-endian): magic, version, then format-specific fields; the rest of the header is zero.
//! Readers check the magic, the version and the size, and name the file in every error.
//!
//! Models are also read from Hugging Face's formats (`safetensors`, `torch_zip` for
//! `pytorch_model.bin`, `hf_gpt2`): [`read_model`].

pub mod checkpoint;
pub mod debug_state;
pub mod gzip;
pub mod hf_gpt2;
pub mod hf_tokenizer;
pub mod lz4;
pub mod parquet;
pub mod safetensors;
pub mod shard;
pub mod snappy;
pub mod tokenizer_file;
pub mod torch_zip;
pub mod train_state;
pub mod zstd;

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;

/// The number of i32 values in every header.
pub const HEADER_INTS: usize = 256;
/// The header's size in bytes.
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// A file's 256-int header.
pub type Header = [i32; HEADER_INTS];

/// The most bytes a decompressor reserves up front, whatever a (possibly damaged) input claims
/// to hold (snappy, lz4 and Parquet's pages: the output grows past it only as it is written).
pub(crate) const MAX_RESERVE: usize = 64 << 20;

/// Appends `len` bytes copied from `offset` bytes back in `out` (LZ77's match, as snappy and lz4
/// store them), byte by byte: the source may overlap what the copy writes (offset 1 repeats the
/// last byte). An error where the offset is 0 or before the output's start, or where `out` would
/// grow past `limit` bytes; `codec` names the format in errors.
pub(crate) fn copy_back(
    out: &mut Vec<u8>,
    offset: usize,
    len: usize,
    limit: usize,
    codec: &str,
) -> Result<()> {
    if offset == 0 || offset > out.len() {
        bail!(
            "{codec}: a copy from {offset} bytes back, with {} bytes written",
            out.len()
        );
    }
    if out.len() + len > limit {
        bail!("{codec}: more than the {limit} bytes it says it holds");
    }
    let start = out.len() - offset;
    for i in 0..len {
        let b = out[start + i];
        out.push(b);
    }
    Ok(())
}

/// A zeroed header with the magic and version set.
pub fn new_header(magic: i32, version: i32) -> Header {
    let mut h = [0i32; HEADER_INTS];
    h[0] = magic;
    h[1] = version;
    h
}

/// Decodes a header from the first 1024 bytes of `bytes`; `path` names the file in errors.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    if bytes.len() < HEADER_BYTES {
        bail!(
            "{}: file is truncated: {} bytes, shorter than the {HEADER_BYTES}-byte header",
            path.display(),
            bytes.len()
        );
    }
    let mut h = [0i32; HEADER_INTS];
    for (i, v) in h.iter_mut().enumerate() {
        *v = i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    }
    Ok(h)
}

/// Opens `path` and reads its header: (the file, positioned after the header; the file's size in
/// bytes; the header). Errors name the file, a file shorter than the header included.
pub fn open_with_header(path: &Path) -> Result<(std::fs::File, u64, Header)> {
    let (mut file, size) = open_with_size(path)?;
    let mut head = Vec::with_capacity(HEADER_BYTES);
    (&mut file)
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let h = parse_header(path, &head)?;
    Ok((file, size, h))
}

/// Every format's magic number, its name and what it is for (for messages: a file of one format
/// given where another is expected is named as what it is).
const FORMATS: [(i32, &str, &str); 5] = [
    (checkpoint::CHECKPOINT_MAGIC, "model checkpoint", ""),
    (
        debug_state::DEBUG_STATE_MAGIC,
        "debug state",
        " (for verify)",
    ),
    (shard::SHARD_MAGIC, "token shard", ""),
    (tokenizer_file::TOKENIZER_MAGIC, "tokenizer file", ""),
    (
        train_state::STATE_MAGIC,
        "training state",
        " (for --resume)",
    ),
];

/// The first four bytes of a zip archive, as an i32: what `torch.save` writes (`pytorch_model.bin`).
const ZIP_MAGIC: i32 = i32::from_le_bytes(torch_zip::ZIP_MAGIC);
/// The first four bytes of PyTorch's legacy format (before 1.6: a bare pickle, protocol 2, that
/// begins with torch's magic number as a LONG1), as an i32.
const LEGACY_TORCH_MAGIC: i32 = 0x0a8a_0280;

/// Reads a model: an llm.c checkpoint (version 3 or 5), or a Hugging Face GPT-2 (a directory with
/// `config.json` and `model.safetensors` or `pytorch_model.bin`, or one of its weight files or
/// shard indexes).
pub fn read_model(path: &Path) -> Result<checkpoint::Checkpoint> {
    if let (false, Some(repo)) = (path.exists(), hf_gpt2::hub_repo(&path.to_string_lossy())) {
        let dir = repo.rsplit('/').next().unwrap_or(&repo);
        let p = path.display();
        bail!(
            "'{p}' is not a file or folder here: models are not downloaded; fetch the Hugging Face \
             GPT-2 first, e.g. `huggingface-cli download {repo} config.json model.safetensors \
             --local-dir {dir}`, then give --model {dir}"
        );
    }
    if hf_gpt2::is_hf_model(path) {
        hf_gpt2::read_hf_gpt2(path)
    } else {
        checkpoint::read_checkpoint(path)
    }
}

/// Checks that the magic number is `magic` (one of the formats here) and the version one of
/// `versions`.
pub fn check_magic_version(path: &Path, h: &Header, magic: i32, versions: &[i32]) -> Result<()> {
    let format = |m: i32| FORMATS.iter().find(|f| f.0 == m);
    let what = format(magic).map_or("file of this kind", |f| f.1);
    if h[0] != magic {
        let found = match format(h[0]) {
            Some((_, name, aside)) => format!(": this is a {name}{aside}, not a {what}"),
            None if h[0] == ZIP_MAGIC => ": this is a zip archive, as PyTorch's torch.save writes \
                 (pytorch_model.bin): give it to --model with the model's config.json beside it"
                .to_string(),
            None if h[0] == LEGACY_TORCH_MAGIC => ": this is PyTorch's legacy format (torch.save \
                 before PyTorch 1.6), which is not read: save it again with a current PyTorch"
                .to_string(),
            None => String::new(),
        };
        bail!(
            "{}: bad magic number {} (expected {magic} for a {what}){found}",
            path.display(),
            h[0]
        );
    }
    if !versions.contains(&h[1]) {
        bail!(
            "{}: unsupported {what} version {} (supported: {versions:?})",
            path.display(),
            h[1]
        );
    }
    Ok(())
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(bytes)
}

/// Opens `path` for reading, with its size in bytes.
pub fn open_with_size(path: &Path) -> Result<(std::fs::File, u64)> {
    let p = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("{p}: cannot open"))?;
    let size = file
        .metadata()
        .with_context(|| format!("{p}: cannot read the file size"))?
        .len();
    Ok((file, size))
}

/// Appends a header to `out`.
pub fn put_header(out: &mut Vec<u8>, h: &Header) {
    for v in h {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends little-endian f32 values to `out`.
pub fn put_f32s(out: &mut Vec<u8>, xs: &[f32]) {
    out.reserve(xs.len() * 4);
    for x in xs {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Decodes little-endian f32 values from `bytes` (whose length is a multiple of 4).
pub fn get_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that an interrupted write
/// never leaves a half-written file under the final name.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("{}: cannot write", path.display()))
}

/// Like [`write_file_atomic`], but `fill` streams the contents into a buffered writer, so that a
/// large file (a checkpoint) is never held in memory as one byte buffer.
pub fn write_file_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    let result = write();
    if result.is_err() {
        // Best effort: do not leave the partial temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("{}: cannot write", path.display()))
}
