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
use std::path::{Path, PathBuf};

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

/// Decodes a header from the first 1024 bytes of `bytes`; `path` names the file in errors. The
/// magic number is checked against `magic` as soon as its 4 bytes are there, before the length:
/// a short file of another kind (a log, a JSON config) is named as not this format, not as a
/// truncated one.
pub fn parse_header(path: &Path, bytes: &[u8], magic: i32) -> Result<Header> {
    if let Some(found) = magic_of(bytes) {
        check_magic(path, found, magic)?;
    }
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
/// bytes; the header). Errors name the file, a file whose magic number is not `magic` or that is
/// shorter than the header included ([`parse_header`]).
pub fn open_with_header(path: &Path, magic: i32) -> Result<(std::fs::File, u64, Header)> {
    let (mut file, size) = open_with_size(path)?;
    let mut head = Vec::with_capacity(HEADER_BYTES);
    (&mut file)
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let h = parse_header(path, &head, magic)?;
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
/// What is said of a file in PyTorch's legacy format.
pub(crate) const LEGACY_TORCH: &str = "this is PyTorch's legacy format (torch.save before PyTorch \
     1.6), which is not read: save it again with a current PyTorch";

/// Whether `head` (a file's first bytes) begins PyTorch's legacy format.
pub(crate) fn starts_like_legacy_torch(head: &[u8]) -> bool {
    magic_of(head) == Some(LEGACY_TORCH_MAGIC)
}

/// A file's magic number: its first four bytes, `head`'s, as a little-endian i32 (None when it is
/// shorter).
fn magic_of(head: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(head.get(..4)?.try_into().ok()?))
}

/// The first `n` bytes of the file at `path` (fewer when it is shorter): enough to tell what it
/// holds by its magic number.
pub(crate) fn file_head(path: &Path, n: u64) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n as usize);
    std::fs::File::open(path)?.take(n).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads a model: an llm.c checkpoint (version 3 or 5), or a Hugging Face GPT-2 (a directory with
/// `config.json` and `model.safetensors` or `pytorch_model.bin`, or one of its weight files or
/// shard indexes).
pub fn read_model(path: &Path) -> Result<checkpoint::Checkpoint> {
    let p = path.display();
    // (a run makes a new model from a descriptor without reading one: see train::load_model)
    let descriptor = crate::config::GPT2Config::from_descriptor(&path.to_string_lossy()).is_ok();
    if descriptor && path.symlink_metadata().is_err() {
        bail!(
            "'{p}' is not a file or folder here: a descriptor makes a new, untrained model, and \
             only in training (train-gpt2-cuda --model {p}); this command needs a trained \
             checkpoint (such as out/model_000100.bin) or a Hugging Face GPT-2 folder"
        );
    }
    if let (false, Some(repo)) = (path.exists(), hf_gpt2::hub_repo(&path.to_string_lossy())) {
        let dir = repo.rsplit('/').next().unwrap_or(&repo);
        bail!(
            "'{p}' is not a file or folder here: models are not downloaded; fetch the Hugging Face \
             GPT-2 first, e.g. `huggingface-cli download {repo} config.json model.safetensors \
             --local-dir {dir}`, then give --model {dir}"
        );
    }
    // (before the Hugging Face formats are told apart by their first bytes)
    check_not_special(path)?;
    // a training run's folder (no config.json) is not a model, its checkpoints are
    if path.is_dir() && !path.join("config.json").exists() {
        if let Some(newest) = crate::checkpoints::newest_model(path) {
            bail!(
                "{p} is a training run's folder, not a model: give one of its checkpoints, such \
                 as its newest, --model {}",
                newest.display()
            );
        }
    }
    let ck = if hf_gpt2::is_hf_model(path) {
        hf_gpt2::read_hf_gpt2(path)?
    } else {
        checkpoint::read_checkpoint(path).map_err(|e| hf_folder_hint(path, e))?
    };
    check_finite(path, &ck)?;
    Ok(ck)
}

/// `e`, the error of reading `path` as a checkpoint, with a hint where `path` is not one but a
/// file of a Hugging Face model's folder (its `config.json`, `tokenizer.json`, ...): the model is
/// the folder, which is what to give.
fn hf_folder_hint(path: &Path, e: anyhow::Error) -> anyhow::Error {
    let dir = folder_of(path);
    let Ok(head) = file_head(path, 4) else {
        return e;
    };
    if magic_of(&head) == Some(checkpoint::CHECKPOINT_MAGIC) || !dir.join("config.json").is_file() {
        return e;
    }
    anyhow::anyhow!(
        "{e:#}: this is a file of the Hugging Face model in {}, which is read from its folder: \
         give the folder instead (--model {})",
        dir.display(),
        dir.display()
    )
}

/// Refuses a model with a parameter that is NaN or infinite: nothing can be computed with it (its
/// losses are NaN, its samples one token repeated), and training from it diverges at once.
pub fn check_finite(path: &Path, ck: &checkpoint::Checkpoint) -> Result<()> {
    let tensors = crate::params::split(&ck.config, &ck.params).into_array();
    let mut bad = tensors.iter().enumerate().flat_map(|(k, x)| {
        x.iter()
            .enumerate()
            .filter(|(_, v)| !v.is_finite())
            .map(move |(i, v)| (k, i, *v))
    });
    if let Some((k, i, v)) = bad.next() {
        let n = 1 + bad.count();
        // (wte's rows past V pad it to Vp: no token reads them)
        let padding = if k == 0 && i >= ck.config.vocab_size * ck.config.channels {
            " (a padding row, past V)"
        } else {
            ""
        };
        bail!(
            "{}: the model holds {} that {} not finite, the first {v} in {}[{i}]{padding}: the \
             file is damaged, or from a run that diverged",
            path.display(),
            crate::text::count(n, "parameter", "parameters"),
            if n == 1 { "is" } else { "are" },
            crate::params::PARAM_NAMES[k]
        );
    }
    Ok(())
}

/// Checks that the magic number is `magic` (one of the formats here) and the version one of
/// `versions`.
pub fn check_magic_version(path: &Path, h: &Header, magic: i32, versions: &[i32]) -> Result<()> {
    check_magic(path, h[0], magic)?;
    let what = format_of(magic).map_or("file of this kind", |f| f.1);
    if !versions.contains(&h[1]) {
        bail!(
            "{}: unsupported {what} version {} (supported: {})",
            path.display(),
            h[1],
            versions
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The format (of [`FORMATS`]) whose magic number is `magic`.
fn format_of(magic: i32) -> Option<&'static (i32, &'static str, &'static str)> {
    FORMATS.iter().find(|f| f.0 == magic)
}

/// Checks that `found`, a file's first four bytes, is `magic` (one of the formats here); the
/// error names what the file is where that is known (another of these formats, a zip archive).
fn check_magic(path: &Path, found: i32, magic: i32) -> Result<()> {
    if found == magic {
        return Ok(());
    }
    let what = format_of(magic).map_or("file of this kind", |f| f.1);
    let is = match format_of(found) {
        Some((_, name, aside)) => format!(": this is a {name}{aside}, not a {what}"),
        None if found == ZIP_MAGIC => ": this is a zip archive, as PyTorch's torch.save writes \
             (pytorch_model.bin): give it to --model with the model's config.json beside it"
            .to_string(),
        None if found == LEGACY_TORCH_MAGIC => format!(": {LEGACY_TORCH}"),
        None => String::new(),
    };
    bail!(
        "{}: bad magic number {found} (expected {magic} for a {what}){is}",
        path.display()
    );
}

/// Reads a whole file, naming it in the error; a pipe or a device is refused ([`open_with_size`]).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let (mut f, _) = open_with_size(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(bytes)
}

/// Opens `path` for reading, with its size in bytes. A pipe or a device is an error
/// ([`check_not_special`]: its size is not what it holds), before it is opened (a FIFO's open
/// waits for a writer).
pub fn open_with_size(path: &Path) -> Result<(std::fs::File, u64)> {
    check_not_special(path)?;
    let p = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("{p}: cannot open"))?;
    let size = file
        .metadata()
        .with_context(|| format!("{p}: cannot read the file size"))?
        .len();
    Ok((file, size))
}

/// Refuses `path` where it is there but is neither a regular file nor a directory: a pipe (as
/// `<(cat model.bin)` gives) or a device (`/dev/zero`). A model's format is told from its first
/// bytes before it is read again from the start, which a pipe's bytes, once read, cannot be (the
/// rest read as a wrong magic number); every reader checks a file's size against its header,
/// which a pipe or a device does not have; and a device such as `/dev/zero` never ends.
pub fn check_not_special(path: &Path) -> Result<()> {
    if is_special_file(path) {
        bail!(not_a_regular_file(path));
    }
    Ok(())
}

/// What is said of a pipe or a device given where a file is read.
fn not_a_regular_file(path: &Path) -> String {
    format!(
        "{} is not a regular file (a pipe or a device): give the file itself",
        path.display()
    )
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

/// The folder `path` is in: its parent, `.` for a bare file name (whose parent is empty, which
/// neither `read_dir` nor `canonicalize` takes).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes the folder `dir` (and the folders above it) where it is not there yet: the folder of an
/// output that `flag` names (`--out-dir`, or `--out` for a folder), checked first with
/// [`check_folder`].
pub fn make_folder(flag: &str, dir: &Path) -> Result<()> {
    check_folder(flag, dir, dir)?;
    create_folder(dir)
}

/// Makes the folder that `flag`'s file `path` is about to be written in (see [`make_folder`]).
pub fn make_folder_of(flag: &str, path: &Path) -> Result<()> {
    let dir = folder_of(path);
    check_folder(flag, dir, path)?;
    create_folder(dir)
}

fn create_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the folder", dir.display()))
}

/// An error where the folder `dir` cannot be made because it, or a folder above it, is a file or
/// a symbolic link to nothing, naming which and `flag`'s `target` (`dir` itself, or a file to be
/// written in it): the system's "File exists" or "Not a directory" named neither, nor what to do.
pub fn check_folder(flag: &str, dir: &Path, target: &Path) -> Result<()> {
    let t = target.display();
    // the nearest of `dir` and the folders above it that is there decides
    for at in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        let Ok(link) = std::fs::symlink_metadata(at) else {
            continue; // (not there, or under a file: the folder above says)
        };
        let dangling = link.file_type().is_symlink();
        let what = match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => "a file, not a folder".to_string(),
            Err(_) if dangling => {
                let to = std::fs::read_link(at).unwrap_or_default();
                format!("a symbolic link to {}, which is not there", to.display())
            }
            Err(_) => return Ok(()), // (cannot tell: creating it says why)
        };
        let advice = if dangling {
            format!("make that folder, or give another {flag}")
        } else if at == target {
            "give a folder's name for the output files".to_string()
        } else {
            format!("give another {flag}")
        };
        if at == target {
            bail!("{flag} {t} is {what}: {advice}");
        }
        let made = if dir == target { "made" } else { "written" };
        bail!(
            "{} is {what}, so {flag} {t} cannot be {made}: {advice}",
            at.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that an interrupted write
/// never leaves a half-written file under the final name (see [`write_file_atomic_with`]).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_file_atomic`], but `fill` streams the contents into a buffered writer, so that a
/// large file (a checkpoint) is never held in memory as one byte buffer.
///
/// A symbolic link is followed: its target is written (atomically), the link stays. A path that
/// is not a regular file (`/dev/null`, a FIFO) is written into directly: a rename would replace
/// the device or the pipe with a file. A directory is an error before anything is written.
pub fn write_file_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut files = StagedFiles::new();
    files.write_with(path, fill)?;
    files.commit()
}

/// Files written under temporary names (`NAME.tmp` beside each) and given their names together by
/// [`StagedFiles::commit`], so that a failure while writing any of them (a full disk) leaves every
/// one of them as it was: a Hugging Face folder never holds new weights with an old config.
/// Dropped uncommitted, it removes its temporary files.
#[derive(Default)]
pub struct StagedFiles {
    /// (temporary file, the name it gets), in the order written.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl StagedFiles {
    pub fn new() -> StagedFiles {
        StagedFiles::default()
    }

    /// Writes `bytes` as the file `path` will be.
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.write_with(path, |w| w.write_all(bytes))
    }

    /// Writes what `fill` streams as the file `path` will be: under a temporary name, or straight
    /// into `path` where that is not a regular file (a device, a FIFO: nothing to rename over).
    pub fn write_with(
        &mut self,
        path: &Path,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let target = write_target(path)?;
        let permissions = replaced_permissions(path, &target, REPLACE_ADVICE)?;
        if is_special_file(&target) {
            let write = || -> std::io::Result<()> {
                let f = std::fs::OpenOptions::new().write(true).open(&target)?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                fill(&mut w)?;
                w.flush()
            };
            return write().with_context(|| format!("{}: cannot write", path.display()));
        }
        let mut tmp = target.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        write_new_file_with(&tmp, permissions, fill)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        self.staged.push((tmp, target));
        Ok(())
    }

    /// Renames every temporary file to its name.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, path) in std::mem::take(&mut self.staged) {
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("{}: cannot write", path.display()));
            }
        }
        Ok(())
    }
}

impl Drop for StagedFiles {
    /// Removes the temporary files that were not renamed.
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Creates `path` (replacing a file there) with what `fill` streams into it, synced to the disk;
/// on failure removes what was written (best effort), so that no partial file is left behind.
pub fn write_new_file(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    write_new_file_with(path, None, fill)
}

/// Like [`write_new_file`], with `permissions` (those of the file it is about to replace) set as
/// soon as the file is created, before anything is written into it: a private file's new
/// contents are never readable by others, not even while they are being written.
fn write_new_file_with(
    path: &Path,
    permissions: Option<std::fs::Permissions>,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The file a write to `path` goes to: `path`, or where its symbolic links lead (a link to a
/// missing file included: the file is created there). An error for a directory, which a file
/// cannot replace: `--out .` would otherwise write `..tmp` and fail on the rename.
fn write_target(path: &Path) -> Result<PathBuf> {
    let p = path.display();
    if path.as_os_str().to_string_lossy().ends_with('/') {
        bail!("{p} ends in '/', a directory's name: give the name of a file to write");
    }
    // a device or a pipe is written into as named: where its links lead may not be a path
    // (`/dev/stdout` leads to `/proc/self/fd/1`, whose link reads `pipe:[1234]` for a pipe)
    if is_special_file(path) {
        return Ok(path.to_path_buf());
    }
    let mut target = path.to_path_buf();
    // (40: the kernel's own limit on the links of one path)
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target)
                    .with_context(|| format!("{p}: cannot read the symbolic link"))?;
                let dir = target.parent().unwrap_or(Path::new(""));
                target = dir.join(link);
            }
            Ok(meta) if meta.is_dir() => {
                bail!("{p} is a directory: give the name of a file to write")
            }
            _ => return Ok(target),
        }
    }
    bail!("{p}: too many levels of symbolic links")
}

/// Checks, before any work, that a write to `path` may replace what is there: an error naming the
/// file where it is a regular file that no one may write (`chmod 444`: a file its owner protected
/// against being overwritten, which a rename would otherwise replace without a word). A path that
/// is not there yet, or a device, is fine.
pub fn check_replaceable(path: &Path) -> Result<()> {
    check_replaceable_or(path, REPLACE_ADVICE)
}

/// [`check_replaceable`] for a file whose name the user does not give (a run's `model_best.bin`,
/// its `log.jsonl`): its error ends with `advice`, what to do instead of giving another name.
pub fn check_replaceable_or(path: &Path, advice: &str) -> Result<()> {
    replaced_permissions(path, &write_target(path)?, advice).map(|_| ())
}

/// Checks, before any work, that `flag`'s output `path` may be replaced by a file of the format
/// whose magic number is `magic` ([`check_replaceable`], and more): a regular file there must be
/// empty or of that format already. A file of another kind (a training state where a model goes,
/// a model where the tokenizer goes, notes) is refused by name, with what it holds: a typo in an
/// output's name would otherwise replace it without a word. A device or a pipe is written into.
pub fn check_replaceable_by(flag: &str, path: &Path, magic: i32) -> Result<()> {
    let target = write_target(path)?;
    replaced_permissions(path, &target, REPLACE_ADVICE)?;
    let p = path.display();
    let Ok(meta) = std::fs::metadata(&target) else {
        return Ok(());
    };
    if !meta.is_file() || meta.len() == 0 {
        return Ok(());
    }
    let head = file_head(&target, 512).with_context(|| {
        format!("{p}: cannot read what it holds, to see whether {flag} may replace it")
    })?;
    let first = magic_of(&head);
    if first == Some(magic) {
        return Ok(());
    }
    let what = format_of(magic).map_or("file of this kind", |f| f.1);
    let holds = match first.and_then(format_of) {
        Some((_, name, aside)) => format!("a {name}{aside}"),
        None if first == Some(ZIP_MAGIC) => "a zip archive (as PyTorch's torch.save writes)".into(),
        None if starts_like_legacy_torch(&head) => "a PyTorch file (legacy format)".into(),
        None if safetensors::starts_like_safetensors(&head) => "a safetensors file".into(),
        None if looks_like_text(&head) => "text".into(),
        None => format!(
            "{} of another kind",
            crate::text::count(meta.len(), "byte", "bytes")
        ),
    };
    bail!(
        "{flag} {p} holds {holds}, not a {what}: it is not replaced; remove it first, or give \
         another {flag}"
    );
}

/// Whether `head`, a file's first bytes, reads as text: UTF-8 without NUL bytes (where the bytes
/// were cut inside a character, up to its cut).
fn looks_like_text(head: &[u8]) -> bool {
    let utf8 = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    utf8 && !head.contains(&0)
}

/// What a read-only file that a command was asked to write calls for, where the user named it.
const REPLACE_ADVICE: &str =
    "give another name, or make it writable first (chmod u+w) to replace it";

/// The permissions of the regular file at `target` (where a write to `path` goes) that a write
/// replaces, for its new contents (`chmod 600` stays private: a new file would get the umask's,
/// usually world-readable); None where there is no file. An error where the file is read-only
/// (see [`check_replaceable`]), ending with `advice`.
fn replaced_permissions(
    path: &Path,
    target: &Path,
    advice: &str,
) -> Result<Option<std::fs::Permissions>> {
    let Ok(meta) = std::fs::metadata(target) else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.permissions().readonly() {
        bail!(
            "{} is read-only (no one may write it): it is not replaced; {advice}",
            path.display()
        );
    }
    Ok(Some(meta.permissions()))
}

/// Whether `path` exists and is neither a regular file nor a directory: a device (`/dev/null`), a
/// FIFO or a socket, written into rather than replaced.
fn is_special_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}
