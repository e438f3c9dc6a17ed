//! Hugging Face's safetensors files (`model.safetensors`): read only, one tensor at a time.
//!
//! Layout, little-endian:
//! - 8 bytes: N, the header's length (u64);
//! - N bytes: the header, a JSON object: for each tensor, by name,
//!   `{"dtype": "F32", "shape": [768, 2304], "data_offsets": [BEGIN, END]}`, and optionally
//!   `"__metadata__": {string: string}`; it may end in spaces;
//! - the data: each tensor's bytes at `[BEGIN, END)` counted from the end of the header, row-major
//!   (C order), in its dtype.
//!
//! Opening checks the header (its length, its JSON, every entry) and that every tensor's range
//! holds exactly its shape's elements, lies inside the file and overlaps no other. Reading converts
//! F32, F16, BF16 and F64 to f32 (exactly, except F64, which rounds to nearest). Writing
//! ([`write_safetensors`]) stores F32 or BF16, the tensors back to back in the order given, the
//! header padded with spaces to a multiple of 8 bytes (as the reference implementation does).

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The longest header accepted: the format's own limit, 100 MB (the reference reader, Hugging
/// Face's `safetensors`, refuses a longer one).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes converted per read when loading a tensor.
const CHUNK_BYTES: usize = 1 << 20;

/// A tensor's element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F64" => Some(Dtype::F64),
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// One element from its little-endian bytes (`b.len() == self.size()`).
    fn to_f32(self, b: &[u8]) -> f32 {
        match self {
            Dtype::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            Dtype::F32 => f32::from_le_bytes(b.try_into().unwrap()),
            Dtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        }
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The element type, or the name of one this reader cannot convert (an integer type, say).
    pub dtype: std::result::Result<Dtype, String>,
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    /// The number of elements (1 for a scalar of shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open safetensors file whose header has been checked.
pub struct SafeTensors {
    path: PathBuf,
    file: std::fs::File,
    /// Where the data section starts in the file (8 + N).
    data_start: u64,
    tensors: BTreeMap<String, TensorInfo>,
}

/// The value `v` as a non-negative integer that fits a u64, or an error naming `what`.
fn as_u64(v: &Value, what: &str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| anyhow!("{what} is {v}, not a non-negative integer"))
}

/// Parses one header entry.
fn tensor_info(entry: &Value) -> Result<TensorInfo> {
    let obj = entry
        .as_object()
        .ok_or_else(|| anyhow!("the entry is {entry}, not an object"))?;
    let field = |k: &str| obj.get(k).ok_or_else(|| anyhow!("no \"{k}\" field"));
    let dtype_name = field("dtype")?
        .as_str()
        .ok_or_else(|| anyhow!("\"dtype\" is not a string"))?;
    let dtype = Dtype::parse(dtype_name).ok_or_else(|| dtype_name.to_string());
    let shape = field("shape")?
        .as_array()
        .ok_or_else(|| anyhow!("\"shape\" is not an array"))?
        .iter()
        .map(|d| {
            let d = as_u64(d, "a dimension")?;
            usize::try_from(d).map_err(|_| anyhow!("dimension {d} is too large"))
        })
        .collect::<Result<Vec<usize>>>()?;
    let offsets = field("data_offsets")?
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| anyhow!("\"data_offsets\" is not a [begin, end] pair"))?;
    let begin = as_u64(&offsets[0], "the begin offset")?;
    let end = as_u64(&offsets[1], "the end offset")?;
    if end < begin {
        bail!("\"data_offsets\" [{begin}, {end}] ends before it begins");
    }
    let numel = shape
        .iter()
        .try_fold(1u128, |n, &d| n.checked_mul(d as u128))
        .ok_or_else(|| anyhow!("shape {shape:?} has too many elements"))?;
    if let Ok(dt) = dtype {
        let bytes = numel * dt.size() as u128;
        if bytes != (end - begin) as u128 {
            bail!(
                "shape {shape:?} of {dtype_name} is {bytes} bytes, but \"data_offsets\" \
                 [{begin}, {end}] hold {}",
                end - begin
            );
        }
    }
    Ok(TensorInfo {
        dtype,
        shape,
        begin,
        end,
    })
}

impl SafeTensors {
    /// Opens `path` and checks its header and every tensor's byte range.
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display();
        let (mut file, size) = super::open_with_size(path)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| anyhow!("{p}: not a safetensors file: shorter than its 8-byte length"))?;
        let n = u64::from_le_bytes(len);
        let after = size.saturating_sub(8);
        if n > MAX_HEADER_BYTES || n > after {
            bail!(
                "{p}: not a safetensors file, or truncated: the header length {n} exceeds {}",
                if n > MAX_HEADER_BYTES {
                    format!("the format's limit of {MAX_HEADER_BYTES} bytes")
                } else {
                    format!("the {after} bytes after it")
                }
            );
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("{p}: cannot read the header"))?;
        let json: Value = serde_json::from_slice(&header)
            .map_err(|e| anyhow!("{p}: not a safetensors file: its header is not JSON ({e})"))?;
        let entries = json
            .as_object()
            .ok_or_else(|| anyhow!("{p}: the safetensors header is not a JSON object"))?;
        let data_len = after - n;
        let mut tensors = BTreeMap::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                continue;
            }
            let info = tensor_info(entry)
                .map_err(|e| anyhow!("{p}: tensor \"{name}\" in the header: {e}"))?;
            if info.end > data_len {
                bail!(
                    "{p}: safetensors file is truncated: tensor \"{name}\" ends at byte {} of the \
                     data, which has {data_len} bytes",
                    info.end
                );
            }
            tensors.insert(name.clone(), info);
        }
        let mut ranges: Vec<(&String, &TensorInfo)> =
            tensors.iter().filter(|(_, t)| t.end > t.begin).collect();
        ranges.sort_by_key(|(_, t)| t.begin);
        for w in ranges.windows(2) {
            if w[1].1.begin < w[0].1.end {
                bail!(
                    "{p}: tensors \"{}\" and \"{}\" overlap in the data",
                    w[0].0,
                    w[1].0
                );
            }
        }
        Ok(SafeTensors {
            path: path.to_path_buf(),
            file,
            data_start: 8 + n,
            tensors,
        })
    }

    /// A file whose tensors lie at the given byte ranges from its start, not in a safetensors
    /// layout (a `torch.save` archive: `formats::torch_zip`); ranges may overlap (tensors that
    /// share a storage). The caller has checked them against the file.
    pub(super) fn from_ranges(
        path: &Path,
        file: std::fs::File,
        tensors: BTreeMap<String, TensorInfo>,
    ) -> Self {
        SafeTensors {
            path: path.to_path_buf(),
            file,
            data_start: 0,
            tensors,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, by name (in name order).
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Reads tensor `name` into `out` as f32 (`out.len()` must be its number of elements).
    pub fn read_f32(&mut self, name: &str, out: &mut [f32]) -> Result<()> {
        let p = self.path.display();
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| anyhow!("{p}: no tensor \"{name}\""))?;
        let dtype = match &info.dtype {
            Ok(d) => *d,
            Err(other) => {
                bail!("{p}: tensor \"{name}\" is {other}: only F32, F16, BF16 and F64 can be read")
            }
        };
        assert_eq!(out.len(), info.numel(), "tensor {name}: output size");
        self.file
            .seek(SeekFrom::Start(self.data_start + info.begin))
            .with_context(|| format!("{p}: cannot seek to tensor \"{name}\""))?;
        let size = dtype.size();
        let mut buf = vec![0u8; CHUNK_BYTES.min(out.len() * size)];
        for chunk in out.chunks_mut((CHUNK_BYTES / size).max(1)) {
            let bytes = &mut buf[..chunk.len() * size];
            self.file
                .read_exact(bytes)
                .with_context(|| format!("{p}: cannot read tensor \"{name}\""))?;
            for (o, b) in chunk.iter_mut().zip(bytes.chunks_exact(size)) {
                *o = dtype.to_f32(b);
            }
        }
        Ok(())
    }
}

/// Whether `head`, a file's first bytes (9 are enough), starts as a safetensors file does: a
/// plausible header length followed by `{`.
pub fn starts_like_safetensors(head: &[u8]) -> bool {
    let Some(head) = head.get(..9) else {
        return false;
    };
    let n = u64::from_le_bytes(head[..8].try_into().unwrap());
    (2..=MAX_HEADER_BYTES).contains(&n) && head[8] == b'{'
}

/// Writes a safetensors file of the tensors `entries` (name, shape), in that order, stored as
/// `dtype` (F32, or BF16 rounded to nearest even), with `metadata` as its `__metadata__`;
/// `values(i)` gives tensor i's values (row-major), one tensor at a time. The file is one of
/// `files`, named when they are committed.
pub fn write_safetensors(
    files: &mut super::StagedFiles,
    path: &Path,
    dtype: Dtype,
    entries: &[(String, Vec<usize>)],
    metadata: &[(&str, &str)],
    mut values: impl FnMut(usize) -> Vec<f32>,
) -> Result<()> {
    let (name, size) = match dtype {
        Dtype::F32 => ("F32", 4),
        Dtype::BF16 => ("BF16", 2),
        other => bail!("{}: writing {other:?} is not supported", path.display()),
    };
    let mut header = serde_json::Map::new();
    let meta: serde_json::Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut offset = 0usize;
    for (tensor, shape) in entries {
        let end = offset + shape.iter().product::<usize>() * size;
        let entry =
            serde_json::json!({"dtype": name, "shape": shape, "data_offsets": [offset, end]});
        header.insert(tensor.clone(), entry);
        offset = end;
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    files.write_with(path, |w| {
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(&text)?;
        let mut buf = Vec::new();
        for (i, (_, shape)) in entries.iter().enumerate() {
            let x = values(i);
            assert_eq!(
                x.len(),
                shape.iter().product::<usize>(),
                "tensor {i}'s values"
            );
            buf.clear();
            match dtype {
                Dtype::BF16 => {
                    for v in x {
                        buf.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
                    }
                }
                _ => super::put_f32s(&mut buf, &x),
            }
            w.write_all(&buf)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file starts with its header's length (8 bytes) and the header's `{`: fewer
    /// than 9 bytes, or another start, is not one.
    #[test]
    fn what_starts_like_safetensors() {
        assert!(starts_like_safetensors(b"\x02\0\0\0\0\0\0\0{}"));
        assert!(starts_like_safetensors(b"\x40\0\0\0\0\0\0\0{\"wte\""));
        for head in [
            &b""[..],
            b"\x02\0\0\0\0\0\0\0",
            b"\x02\0\0\0\0\0\0\0[",
            b"PK\x03\x04",
        ] {
            assert!(!starts_like_safetensors(head), "{head:?}");
        }
        // a header length of 0 or 1 cannot hold "{}", nor one over the limit of 100 MB
        assert!(!starts_like_safetensors(b"\x01\0\0\0\0\0\0\0{"));
        assert!(starts_like_safetensors(&length_then(100_000_000, b"{")));
        assert!(!starts_like_safetensors(&length_then(100_000_001, b"{")));
    }

    /// A header length of `n` (true or not), then `rest`.
    fn length_then(n: u64, rest: &[u8]) -> Vec<u8> {
        [&n.to_le_bytes()[..], rest].concat()
    }

    /// A safetensors file's bytes: the header's length, the header, the data.
    fn safetensors_bytes(header: &[u8], data: &[u8]) -> Vec<u8> {
        length_then(header.len() as u64, &[header, data].concat())
    }

    /// `bytes` written to a file of this process's in the temporary folder.
    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{name}-{}.safetensors", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// F16 and F64 tensors (no fixture has either) read as f32: F16 exactly (subnormal and
    /// largest included), F64 rounded to the nearest f32.
    #[test]
    fn f16_and_f64_tensors_read_as_f32() {
        let halves = [1.5f32, -2.0, 65504.0, 2f32.powi(-24)];
        let doubles = [0.1f64, -3.25];
        let mut data: Vec<u8> = halves
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        data.extend(doubles.iter().flat_map(|x| x.to_le_bytes()));
        let header = br#"{"h":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"d":{"dtype":"F64","shape":[2],"data_offsets":[8,24]}}"#;
        let path = temp_file("f16-f64", &safetensors_bytes(header, &data));
        let mut st = SafeTensors::open(&path).unwrap();
        let mut h = [0f32; 4];
        st.read_f32("h", &mut h).unwrap();
        let mut d = [0f32; 2];
        st.read_f32("d", &mut d).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(h, halves);
        assert_eq!(d, [0.1f32, -3.25]);
    }

    /// A tensor of no elements holds no bytes, so it overlaps nothing, even where its offsets
    /// lie at or inside another's range (a writer places it where the data stands): the file
    /// opens, and its neighbour reads whole. Two tensors that do share a byte still overlap.
    #[test]
    fn an_empty_tensor_overlaps_nothing() {
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"c":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]}}"#;
        let path = temp_file("empty-tensors", &safetensors_bytes(header, &data));
        let opened = SafeTensors::open(&path).map(|mut st| {
            let mut a = [0f32; 2];
            st.read_f32("a", &mut a).map(|()| (st.tensors().len(), a))
        });
        let shared = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        std::fs::write(&path, safetensors_bytes(shared, &data)).unwrap();
        let overlapping = SafeTensors::open(&path).err().map(|e| e.to_string());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(opened.unwrap().unwrap(), (3, [1.0, 2.0]));
        let e = overlapping.expect("tensors sharing bytes 4..8 opened");
        assert!(
            e.contains("tensors \"a\" and \"b\" overlap in the data"),
            "{e}"
        );
    }

    /// A file that is its header alone (no tensors, no data) is whole; one byte less, and the
    /// header's length exceeds what follows it.
    #[test]
    fn a_header_that_ends_the_file_is_whole() {
        let header = br#"{"__metadata__":{"format":"pt"}}"#;
        let file = safetensors_bytes(header, &[]);
        let path = temp_file("header-only", &file);
        let whole = SafeTensors::open(&path).map(|st| st.tensors().len());
        std::fs::write(&path, &file[..file.len() - 1]).unwrap();
        let cut = SafeTensors::open(&path).err().map(|e| e.to_string());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(whole.unwrap(), 0);
        let want = format!(
            "the header length {} exceeds the {} bytes after it",
            header.len(),
            header.len() - 1
        );
        assert!(cut.as_ref().is_some_and(|e| e.contains(&want)), "{cut:?}");
    }

    /// A header length past 100 MB is refused by the format's limit, one of 100 MB (in a short
    /// file) by the bytes that follow it.
    #[test]
    fn a_header_longer_than_100_mb_is_past_the_format_s_limit() {
        let error_of = |n: u64| {
            let path = temp_file("header-limit", &length_then(n, b"{}"));
            let e = SafeTensors::open(&path).err().map(|e| e.to_string());
            std::fs::remove_file(&path).unwrap();
            e.unwrap_or_default()
        };
        let e = error_of(100_000_001);
        let want = "the header length 100000001 exceeds the format's limit of 100000000 bytes";
        assert!(e.contains(want), "{e}");
        let e = error_of(100_000_000);
        assert!(e.contains("100000000 exceeds the 2 bytes after it"), "{e}");
    }
}
