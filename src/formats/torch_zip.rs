//! PyTorch's `torch.save` files (`pytorch_model.bin`): read only, the tensors of a state dict.
//!
//! Since PyTorch 1.6 `torch.save` writes a zip archive whose entries are stored, not compressed:
//! `<name>/data.pkl`, a pickle of the object, and `<name>/data/<key>`, the bytes of each storage
//! (little-endian; `<name>/byteorder` says so where present). In the pickle a tensor is
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` and its
//! storage a persistent id `("storage", torch.FloatStorage, key, location, numel)`.
//!
//! The pickle is read by a small machine of our own that knows the opcodes `torch.save` uses and
//! builds only what a state dict holds: dicts, lists, tuples, strings, numbers, storages and
//! tensors. It runs no Python code: the only globals it takes are `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the storage types, and
//! any other (what a malicious pickle would call) is an error naming it. A tensor must be
//! contiguous, as a state dict's are; tensors that share a storage (GPT-2's tied `lm_head.weight`
//! and `wte.weight`) read the same bytes. The result is a [`SafeTensors`] over the archive: each
//! tensor at its byte range in the file, read and converted as a safetensors file's are.
//!
//! Containers are copied, not shared, when the pickle fetches them again from its memo: exact for
//! a state dict, whose containers are filled before anything refers back to them. So that a small
//! crafted pickle cannot build a huge object (a list holding the previous one twice, twenty times
//! over, is a million values), each value made or copied is charged to a budget of
//! `VALUES_PER_BYTE` a byte of pickle, and containers nest at most `MAX_DEPTH` deep (a state
//! dict is five), which also bounds the recursion of dropping or copying one.
//!
//! The CRC-32 of each entry read (`data.pkl`, `byteorder`, and every storage a tensor is in) is
//! checked against the zip directory's when the archive is opened, the storages on all cores: a
//! damaged file is an error that names the entry, not a model with changed weights.

use super::gzip::crc32;
use super::safetensors::{Dtype, SafeTensors, TensorInfo};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

/// The first four bytes of a zip archive (and of each entry's local header).
pub const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";

/// Whether `head`, a file's first bytes, starts as a zip archive does.
pub fn starts_like_zip(head: &[u8]) -> bool {
    head.starts_with(&ZIP_MAGIC)
}

/// Opens the `torch.save` archive at `path` and finds every tensor of its state dict.
pub fn open_torch_zip(path: &Path) -> Result<SafeTensors> {
    let p = path.display();
    let (mut file, size) = super::open_with_size(path)?;
    let entries = zip_entries(&mut file, size).map_err(|e| anyhow!("{p}: {e}"))?;
    let (pkl, pickle_entry) = entries
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or_else(|| anyhow!("{p}: a zip archive without data.pkl: not a torch.save file"))?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let byteorder = format!("{prefix}byteorder");
    if let Some(order) = entries.get(&byteorder) {
        let bytes = read_at(&mut file, order.offset, order.size.min(16))?;
        if bytes.len() as u64 == order.size {
            check_crc(order, crc32(0, &bytes)).map_err(|e| anyhow!("{p}: {byteorder}: {e}"))?;
        }
        if bytes != b"little" {
            bail!(
                "{p}: the tensors are stored {}-endian: only little-endian ones are read",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    let pickle = read_at(&mut file, pickle_entry.offset, pickle_entry.size)
        .with_context(|| format!("{p}: cannot read {pkl}"))?;
    check_crc(pickle_entry, crc32(0, &pickle)).map_err(|e| anyhow!("{p}: {pkl}: {e}"))?;
    let object = Machine::default()
        .run(&pickle)
        .map_err(|e| anyhow!("{p}: data.pkl: {e}"))?;
    let Py::Dict(items) = object else {
        bail!("{p}: data.pkl holds {}, not a state dict", object.kind());
    };
    let mut tensors = BTreeMap::new();
    // the entries of the storages the tensors are in, each checked once
    let mut storages = BTreeMap::new();
    for (key, value) in items {
        let Py::Str(name) = key else {
            bail!("{p}: a state dict key is {}, not a string", key.kind());
        };
        let Py::Tensor(t) = value else {
            bail!("{p}: \"{name}\" is {}, not a tensor", value.kind());
        };
        let entry_name = format!("{prefix}data/{}", t.storage.key);
        let storage = entries.get(&entry_name).ok_or_else(|| {
            anyhow!(
                "{p}: tensor \"{name}\": its storage data/{} is not in the archive",
                t.storage.key
            )
        })?;
        let info = t
            .info(storage.offset, storage.size)
            .map_err(|e| anyhow!("{p}: tensor \"{name}\": {e}"))?;
        tensors.insert(name.to_string(), info);
        storages.insert(entry_name, storage);
    }
    // each entry through its own handle, on all cores (about 2 GB/s a core), the largest first:
    // GPT-2's wte is a third of its bytes
    let mut storages: Vec<_> = storages.into_iter().collect();
    storages.sort_by_key(|(_, entry)| std::cmp::Reverse(entry.size));
    storages.par_iter().try_for_each(|(name, entry)| {
        verify_entry(path, entry).map_err(|e| anyhow!("{p}: {name}: {e:#}"))
    })?;
    Ok(SafeTensors::from_ranges(path, file, tensors))
}

/// The bytes read at a time when an entry's CRC-32 is checked.
const CRC_CHUNK: usize = 1 << 20;

/// Checks the CRC-32 of `entry`'s bytes in the file at `path` against the zip directory's,
/// reading them in chunks.
fn verify_entry(path: &Path, entry: &Entry) -> Result<()> {
    let mut file = std::fs::File::open(path).context("cannot open the file again")?;
    file.seek(SeekFrom::Start(entry.offset))
        .context("cannot seek to it")?;
    let mut buf = vec![0u8; CRC_CHUNK.min(usize::try_from(entry.size)?)];
    let (mut left, mut crc) = (entry.size, 0);
    while left > 0 {
        let bytes = &mut buf[..left.min(CRC_CHUNK as u64) as usize];
        file.read_exact(bytes).context("cannot read it")?;
        crc = crc32(crc, bytes);
        left -= bytes.len() as u64;
    }
    check_crc(entry, crc)
}

/// An error unless `computed`, the CRC-32 of `entry`'s bytes, is the one the directory holds.
fn check_crc(entry: &Entry, computed: u32) -> Result<()> {
    if computed != entry.crc {
        bail!(
            "CRC-32 mismatch (stored {:08x}, computed {computed:08x}): the file is damaged",
            entry.crc
        );
    }
    Ok(())
}

/// Reads `len` bytes at `offset`.
fn read_at(file: &mut std::fs::File, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len)?];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

// ------------------------------------------------------------------------------------------------
// The zip archive

/// Where an entry's bytes are in the file, and their CRC-32 as the zip directory holds it.
struct Entry {
    offset: u64,
    size: u64,
    crc: u32,
}

/// The unsigned little-endian integer of up to 8 bytes (the zip's fields and the pickle's).
fn le_uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | x as u64)
}

/// The little-endian integer of `n` bytes at `at` in `b`, or an error when `b` is too short.
fn le(b: &[u8], at: usize, n: usize) -> Result<u64> {
    let bytes = b
        .get(at..at + n)
        .ok_or_else(|| anyhow!("the zip directory is truncated"))?;
    Ok(le_uint(bytes))
}

/// Every entry of the archive by name, from its central directory (zip64 included); an entry that
/// is compressed, or whose bytes lie outside the file, is an error.
fn zip_entries(file: &mut std::fs::File, size: u64) -> Result<BTreeMap<String, Entry>> {
    // the end-of-central-directory record: 22 bytes and a comment of up to 65535 at the end
    let tail_len = size.min(22 + 65535);
    let tail = read_at(file, size - tail_len, tail_len)?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..].starts_with(b"PK\x05\x06"))
        .ok_or_else(|| anyhow!("a zip archive without its directory at the end: truncated?"))?;
    let eocd = &tail[at..];
    let (mut count, mut cd_size, mut cd_offset) =
        (le(eocd, 10, 2)?, le(eocd, 12, 4)?, le(eocd, 16, 4)?);
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // zip64: a locator just before the record points at the zip64 record
        let loc = at
            .checked_sub(20)
            .map(|i| &tail[i..at])
            .filter(|l| l.starts_with(b"PK\x06\x07"))
            .ok_or_else(|| anyhow!("a zip64 archive without its zip64 locator"))?;
        let rec = read_at(file, le(loc, 8, 8)?, 56)?;
        if !rec.starts_with(b"PK\x06\x06") {
            bail!("the zip64 directory record is not where its locator says");
        }
        (count, cd_size, cd_offset) = (le(&rec, 32, 8)?, le(&rec, 40, 8)?, le(&rec, 48, 8)?);
    }
    if cd_offset.saturating_add(cd_size) > size {
        bail!("the zip directory lies beyond the end of the file: truncated?");
    }
    let cd = read_at(file, cd_offset, cd_size)?;
    let mut entries = BTreeMap::new();
    let mut i = 0;
    for _ in 0..count {
        if !cd
            .get(i..)
            .is_some_and(|rest| rest.starts_with(b"PK\x01\x02"))
        {
            bail!("a damaged zip directory");
        }
        let method = le(&cd, i + 10, 2)?;
        let crc = le(&cd, i + 16, 4)? as u32;
        let (mut comp, mut len) = (le(&cd, i + 20, 4)?, le(&cd, i + 24, 4)?);
        let (name_len, extra_len, comment_len) = (
            le(&cd, i + 28, 2)? as usize,
            le(&cd, i + 30, 2)? as usize,
            le(&cd, i + 32, 2)? as usize,
        );
        let mut local = le(&cd, i + 42, 4)?;
        let name_bytes = cd
            .get(i + 46..i + 46 + name_len)
            .ok_or_else(|| anyhow!("the zip directory is truncated"))?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // zip64 sizes and offset, in this order, for those that are 0xFFFFFFFF
        let extra = cd
            .get(i + 46 + name_len..i + 46 + name_len + extra_len)
            .ok_or_else(|| anyhow!("the zip directory is truncated"))?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, n) = (le(extra, e, 2)?, le(extra, e + 2, 2)? as usize);
            if id == 1 {
                let mut f = e + 4;
                for v in [&mut len, &mut comp, &mut local] {
                    if *v == 0xFFFF_FFFF {
                        *v = le(extra, f, 8)?;
                        f += 8;
                    }
                }
            }
            e += 4 + n;
        }
        if method != 0 || comp != len {
            bail!("entry {name} is compressed (method {method}); torch.save stores its entries uncompressed");
        }
        let head = read_at(file, local, 30)?;
        if !starts_like_zip(&head) {
            bail!("entry {name}: no local header where the directory says");
        }
        let offset = local + 30 + le(&head, 26, 2)? + le(&head, 28, 2)?;
        if offset.saturating_add(len) > size {
            bail!("entry {name} ends beyond the end of the file: truncated?");
        }
        entries.insert(
            name,
            Entry {
                offset,
                size: len,
                crc,
            },
        );
        i += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

// ------------------------------------------------------------------------------------------------
// The pickle

/// A storage: its element type (or the name of a type this reader does not convert) and size in
/// bytes, its entry `data/<key>` and its number of elements.
#[derive(Clone, Debug, PartialEq)]
struct Storage {
    dtype: std::result::Result<Dtype, String>,
    elem_size: usize,
    key: Rc<str>,
    numel: u64,
}

/// Bytes per element of a storage type (`torch.FloatStorage`, ...), and its element type where
/// this reader converts it.
fn storage_type(name: &str) -> Option<(usize, std::result::Result<Dtype, String>)> {
    let converted = |d: Dtype| Some((d.size(), Ok(d)));
    let other = |size: usize| Some((size, Err(name.to_string())));
    match name.strip_prefix("torch.")? {
        "FloatStorage" => converted(Dtype::F32),
        "HalfStorage" => converted(Dtype::F16),
        "BFloat16Storage" => converted(Dtype::BF16),
        "DoubleStorage" => converted(Dtype::F64),
        "LongStorage" => other(8),
        "IntStorage" => other(4),
        "ShortStorage" => other(2),
        "CharStorage" | "ByteStorage" | "BoolStorage" => other(1),
        _ => None,
    }
}

/// A tensor: a contiguous view into a storage.
#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    storage: Storage,
    /// In elements.
    offset: u64,
    shape: Vec<usize>,
}

impl Tensor {
    /// Its place in the file, given its storage entry's.
    fn info(&self, entry_offset: u64, entry_size: u64) -> Result<TensorInfo> {
        // (a damaged or crafted pickle's shape and offset may be anything: no sum may overflow)
        let numel = self
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| anyhow!("a shape of {:?} elements: too many", self.shape))?;
        let es = self.storage.elem_size as u64;
        if self.storage.numel.saturating_mul(es) > entry_size {
            bail!(
                "its storage holds {} elements of {es} bytes, but data/{} has {entry_size} bytes",
                self.storage.numel,
                self.storage.key
            );
        }
        if self.offset as u128 + numel as u128 > self.storage.numel as u128 {
            bail!(
                "elements {}..{} of a storage of {}",
                self.offset,
                self.offset as u128 + numel as u128,
                self.storage.numel
            );
        }
        // now offset + numel <= the storage's elements, whose bytes fit in its entry
        let begin = entry_offset + self.offset * es;
        Ok(TensorInfo {
            dtype: self.storage.dtype.clone(),
            shape: self.shape.clone(),
            begin,
            end: begin + numel * es,
        })
    }
}

/// A value on the pickle machine's stack. Strings are shared, not copied, when the memo gives them
/// again, and storages and tensors boxed: a value is 32 bytes, and copying one makes one.
#[derive(Clone, Debug, PartialEq)]
enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Tuple(Vec<Py>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
    /// A global the machine accepts, as "module.name".
    Global(Rc<str>),
    Storage(Box<Storage>),
    Tensor(Box<Tensor>),
}

impl Py {
    /// What it is, for messages.
    fn kind(&self) -> &'static str {
        match self {
            Py::None => "None",
            Py::Bool(_) => "a bool",
            Py::Int(_) => "an int",
            Py::Float(_) => "a float",
            Py::Str(_) => "a string",
            Py::Tuple(_) => "a tuple",
            Py::List(_) => "a list",
            Py::Dict(_) => "a dict",
            Py::Global(_) => "a class or function",
            Py::Storage(_) => "a storage",
            Py::Tensor(_) => "a tensor",
        }
    }

    fn int(&self) -> Result<i64> {
        match self {
            Py::Int(i) => Ok(*i),
            other => bail!("expected an int, found {}", other.kind()),
        }
    }

    /// A tuple of non-negative ints (a size or a stride).
    fn dims(&self) -> Result<Vec<usize>> {
        match self {
            Py::Tuple(xs) => xs
                .iter()
                .map(|x| usize::try_from(x.int()?).map_err(|_| anyhow!("a negative dimension")))
                .collect(),
            other => bail!("expected a tuple of ints, found {}", other.kind()),
        }
    }
}

/// The globals the machine accepts; any other is refused by name.
const GLOBALS: [&str; 3] = [
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

/// How deep containers may nest in the pickle: a state dict is five deep (the dict, a tensor's
/// arguments, its size), so this is generous; it bounds the recursion of copying and dropping a
/// value (about 300 bytes of stack a level, so 300 KB at most).
const MAX_DEPTH: usize = 1000;

/// The values the pickle machine may make or copy (as [`Held::size`] counts them) per byte of
/// pickle. Without its memo each instruction, a byte or more, makes one value at most; a state
/// dict's copies from the memo (each small tuple once, the globals and strings it refers back to)
/// bring `torch.save`'s pickles to 0.4 to 0.6 a byte. A value is 32 bytes, so a pickle, however
/// crafted, takes at most a few hundred times its length in memory (140 MB for 1 MB that copies
/// one list from the memo again and again).
const VALUES_PER_BYTE: u64 = 4;

/// A value on the machine's stack or in its memo, with its depth and size, known without walking
/// it.
#[derive(Clone)]
struct Held {
    value: Py,
    /// How many containers deep it is: 0 for a value that is not one, 1 for an empty one.
    depth: usize,
    /// What copying it makes: one for each value in it (itself included) and for each dimension of
    /// its tensors (strings are shared).
    size: u64,
}

impl Held {
    /// A value that holds no other: a number, a string, a global, a storage, a tensor, or an empty
    /// container.
    fn leaf(value: Py) -> Held {
        let (depth, dims) = match &value {
            Py::Tensor(t) => (0, t.shape.len()),
            Py::Tuple(_) | Py::List(_) | Py::Dict(_) => (1, 0),
            _ => (0, 0),
        };
        Held {
            value,
            depth,
            size: 1 + dims as u64,
        }
    }

    /// A container (`make` of their values) that holds `items`, which are moved into it.
    fn container(items: Vec<Held>, make: impl FnOnce(Vec<Py>) -> Result<Py>) -> Result<Held> {
        let depth = 1 + items.iter().map(|h| h.depth).max().unwrap_or(0);
        let size = 1 + items.iter().map(|h| h.size).sum::<u64>();
        let value = make(items.into_iter().map(|h| h.value).collect())?;
        Ok(Held { value, depth, size })
    }

    /// Counts `items`, which the caller moves into this container, as part of it: their depth and
    /// size add to its own.
    fn took(&mut self, items: &[Held]) {
        for h in items {
            self.depth = self.depth.max(h.depth + 1);
            self.size += h.size;
        }
    }
}

/// The pickle machine: its stack, the positions of its marks, its memo, and what it has made so
/// far against what it may.
#[derive(Default)]
struct Machine {
    stack: Vec<Held>,
    marks: Vec<usize>,
    memo: HashMap<u64, Held>,
    made: u64,
    budget: u64,
    /// The pickle's length, for the message when the budget runs out.
    code_len: usize,
}

impl Machine {
    fn pop(&mut self) -> Result<Held> {
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("the stack is empty"))
    }

    fn top(&mut self) -> Result<&mut Held> {
        self.stack
            .last_mut()
            .ok_or_else(|| anyhow!("the stack is empty"))
    }

    /// The values above the last mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Held>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("no mark"))?;
        if m > self.stack.len() {
            bail!("a mark above the stack");
        }
        Ok(self.stack.split_off(m))
    }

    /// Counts `n` values made or copied against the budget: an error once it is spent (before the
    /// copy is made).
    fn charge(&mut self, n: u64) -> Result<()> {
        self.made = self.made.saturating_add(n);
        if self.made > self.budget {
            bail!(
                "the pickle builds more objects than a state dict could (over {} from {} bytes)",
                self.budget,
                self.code_len
            );
        }
        Ok(())
    }

    /// Pushes `h`, whose values the caller has charged, unless it nests too deep.
    fn push(&mut self, h: Held) -> Result<()> {
        check_depth(h.depth)?;
        self.stack.push(h);
        Ok(())
    }

    /// Pushes a new value that holds no other, charging it.
    fn push_leaf(&mut self, value: Py) -> Result<()> {
        let h = Held::leaf(value);
        self.charge(h.size)?;
        self.push(h)
    }

    /// Pushes a new container of `items`, charging the container (its items are moved into it).
    fn push_container(
        &mut self,
        items: Vec<Held>,
        make: impl FnOnce(Vec<Py>) -> Result<Py>,
    ) -> Result<()> {
        self.charge(1)?;
        let h = Held::container(items, make)?;
        self.push(h)
    }

    fn global(&self, module: &str, name: &str) -> Result<Py> {
        let full = format!("{module}.{name}");
        if GLOBALS.contains(&full.as_str()) || storage_type(&full).is_some() {
            Ok(Py::Global(full.into()))
        } else {
            bail!("it calls {full}, which this reader does not run (only a state dict of tensors is read)")
        }
    }

    /// Runs the pickle and returns the object it builds.
    fn run(mut self, code: &[u8]) -> Result<Py> {
        self.code_len = code.len();
        self.budget = VALUES_PER_BYTE.saturating_mul(code.len() as u64);
        let mut pc = 0usize;
        let take = |pc: &mut usize, n: usize| -> Result<&[u8]> {
            let b = code
                .get(*pc..*pc + n)
                .ok_or_else(|| anyhow!("the pickle ends in the middle of an instruction"))?;
            *pc += n;
            Ok(b)
        };
        loop {
            let op = *take(&mut pc, 1)?.first().unwrap();
            match op {
                0x80 => _ = take(&mut pc, 1)?,             // PROTO
                0x95 => _ = take(&mut pc, 8)?,             // FRAME
                b'.' => return Ok(self.pop()?.value),      // STOP
                b'(' => self.marks.push(self.stack.len()), // MARK
                b'N' => self.push_leaf(Py::None)?,
                0x88 => self.push_leaf(Py::Bool(true))?,
                0x89 => self.push_leaf(Py::Bool(false))?,
                b'K' => {
                    let v = le_uint(take(&mut pc, 1)?);
                    self.push_leaf(Py::Int(v as i64))?
                }
                b'M' => {
                    let v = le_uint(take(&mut pc, 2)?);
                    self.push_leaf(Py::Int(v as i64))?
                }
                b'J' => {
                    let v = le_uint(take(&mut pc, 4)?) as u32 as i32;
                    self.push_leaf(Py::Int(v as i64))?
                }
                0x8a => {
                    // LONG1: n bytes, little-endian two's complement
                    let n = le_uint(take(&mut pc, 1)?) as usize;
                    if n > 8 {
                        bail!("an integer of {n} bytes");
                    }
                    let b = take(&mut pc, n)?;
                    let v = if n == 0 {
                        0
                    } else {
                        let shift = 64 - 8 * n as u32;
                        ((le_uint(b) << shift) as i64) >> shift
                    };
                    self.push_leaf(Py::Int(v))?
                }
                b'G' => {
                    let b = take(&mut pc, 8)?;
                    self.push_leaf(Py::Float(f64::from_be_bytes(b.try_into().unwrap())))?
                }
                b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                    let n = match op {
                        b'X' | b'T' => le_uint(take(&mut pc, 4)?),
                        0x8d => le_uint(take(&mut pc, 8)?),
                        _ => le_uint(take(&mut pc, 1)?),
                    };
                    let b = take(&mut pc, usize::try_from(n)?)?;
                    let s: String = if matches!(op, b'U' | b'T') {
                        b.iter().map(|&c| c as char).collect() // latin-1
                    } else {
                        String::from_utf8(b.to_vec())
                            .map_err(|_| anyhow!("a string that is not UTF-8"))?
                    };
                    self.push_leaf(Py::Str(s.into()))?
                }
                b'}' => self.push_leaf(Py::Dict(Vec::new()))?,
                b']' => self.push_leaf(Py::List(Vec::new()))?,
                b')' => self.push_leaf(Py::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, |v| Ok(Py::Tuple(v)))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, |v| Ok(Py::List(v)))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, |v| Ok(Py::Dict(pairs(v)?)))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("the stack is empty");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_container(items, |v| Ok(Py::Tuple(v)))?
                }
                b'a' | b'e' => {
                    // APPEND, APPENDS
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let top = self.top()?;
                    top.took(&items);
                    check_depth(top.depth)?;
                    match &mut top.value {
                        Py::List(l) => l.extend(items.into_iter().map(|h| h.value)),
                        other => bail!("APPEND to {}", other.kind()),
                    }
                }
                b's' | b'u' => {
                    // SETITEM, SETITEMS
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let top = self.top()?;
                    top.took(&items);
                    check_depth(top.depth)?;
                    let new = pairs(items.into_iter().map(|h| h.value).collect())?;
                    match &mut top.value {
                        Py::Dict(d) => d.extend(new),
                        other => bail!("SETITEM on {}", other.kind()),
                    }
                }
                b'q' | b'r' | 0x94 => {
                    // BINPUT, LONG_BINPUT, MEMOIZE: a copy of the top
                    let idx = match op {
                        b'q' => le_uint(take(&mut pc, 1)?),
                        b'r' => le_uint(take(&mut pc, 4)?),
                        _ => self.memo.len() as u64,
                    };
                    let size = self.top()?.size;
                    self.charge(size)?;
                    let v = self.top()?.clone();
                    self.memo.insert(idx, v);
                }
                b'h' | b'j' => {
                    // BINGET, LONG_BINGET: a copy of a memo entry
                    let idx = le_uint(take(&mut pc, if op == b'h' { 1 } else { 4 })?);
                    let size = self
                        .memo
                        .get(&idx)
                        .ok_or_else(|| anyhow!("memo {idx} is empty"))?
                        .size;
                    self.charge(size)?;
                    let v = self.memo[&idx].clone();
                    self.push(v)?
                }
                b'c' => {
                    let mut line = || -> Result<String> {
                        let end = code[pc..]
                            .iter()
                            .position(|&c| c == b'\n')
                            .ok_or_else(|| anyhow!("a GLOBAL without its newline"))?;
                        let s = String::from_utf8_lossy(&code[pc..pc + end]).into_owned();
                        pc += end + 1;
                        Ok(s)
                    };
                    let (module, name) = (line()?, line()?);
                    let g = self.global(&module, &name)?;
                    self.push_leaf(g)?
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    let (Py::Str(module), Py::Str(name)) = (module, name) else {
                        bail!("STACK_GLOBAL of values that are not strings");
                    };
                    let g = self.global(&module, &name)?;
                    self.push_leaf(g)?
                }
                b'Q' => {
                    // BINPERSID: ("storage", storage type, key, location, numel)
                    let pid = self.pop()?.value;
                    let storage = match pid {
                        Py::Tuple(t) if t.len() == 5 && t[0] == Py::Str("storage".into()) => {
                            let Py::Global(ty) = &t[1] else {
                                bail!("a storage whose type is {}", t[1].kind());
                            };
                            let (elem_size, dtype) = storage_type(ty)
                                .ok_or_else(|| anyhow!("a storage of type {ty}"))?;
                            let key = match &t[2] {
                                Py::Str(k) => k.clone(),
                                other => bail!("a storage key that is {}", other.kind()),
                            };
                            let numel = u64::try_from(t[4].int()?)?;
                            Py::Storage(Box::new(Storage {
                                dtype,
                                elem_size,
                                key,
                                numel,
                            }))
                        }
                        other => {
                            bail!("a persistent id that is {} and not a storage", other.kind())
                        }
                    };
                    self.push_leaf(storage)?
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: callable(*args)
                    let args = self.pop()?.value;
                    let f = self.pop()?.value;
                    let Py::Tuple(args) = args else {
                        bail!("a call whose arguments are {}", args.kind());
                    };
                    let v = call(&f, args)?;
                    self.push_leaf(v)?
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (its `_metadata`) is not needed
                    let _state = self.pop()?;
                    match &self.top()?.value {
                        Py::Dict(_) => {}
                        other => bail!("BUILD on {}", other.kind()),
                    }
                }
                _ => bail!(
                    "pickle opcode 0x{op:02x} at byte {} is not one torch.save writes",
                    pc - 1
                ),
            }
        }
    }
}

/// An error for a value nested deeper than [`MAX_DEPTH`].
fn check_depth(depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("the pickle nests containers more than {MAX_DEPTH} deep: not a state dict");
    }
    Ok(())
}

/// Key-value pairs from a flat list.
fn pairs(items: Vec<Py>) -> Result<Vec<(Py, Py)>> {
    if !items.len().is_multiple_of(2) {
        bail!("a dict of an odd number of values");
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// Calls one of the accepted globals.
fn call(f: &Py, args: Vec<Py>) -> Result<Py> {
    let Py::Global(name) = f else {
        bail!("a call of {}", f.kind());
    };
    match &**name {
        "collections.OrderedDict" if args.is_empty() => Ok(Py::Dict(Vec::new())),
        "torch._utils._rebuild_parameter" => match args.into_iter().next() {
            Some(t @ Py::Tensor(_)) => Ok(t),
            _ => bail!("a parameter that is not a tensor"),
        },
        "torch._utils._rebuild_tensor_v2" if args.len() >= 4 => {
            let Py::Storage(storage) = &args[0] else {
                bail!("a tensor whose storage is {}", args[0].kind());
            };
            let offset = u64::try_from(args[1].int()?)?;
            let (shape, stride) = (args[2].dims()?, args[3].dims()?);
            if shape.len() != stride.len() {
                bail!("a tensor of shape {shape:?} with strides {stride:?}");
            }
            // contiguous (row-major): each stride the product of the later sizes (any for size 1)
            let mut want = 1;
            for (&n, &s) in shape.iter().zip(&stride).rev() {
                if n != 1 && s != want {
                    bail!(
                        "a tensor of shape {shape:?} with strides {stride:?}: not contiguous \
                         (save its .contiguous() copy)"
                    );
                }
                // (saturating: a shape too large for its count is refused by Tensor::info)
                want = want.saturating_mul(n);
            }
            Ok(Py::Tensor(Box::new(Tensor {
                storage: (**storage).clone(),
                offset,
                shape,
            })))
        }
        other => bail!("a call of {other} with {} arguments", args.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_s_place_never_overflows() {
        let tensor = |shape: Vec<usize>, offset: u64| Tensor {
            storage: Storage {
                dtype: Ok(Dtype::F32),
                elem_size: 4,
                key: "0".into(),
                numel: 6,
            },
            offset,
            shape,
        };
        // a good one: elements 2..6 of the storage, bytes 8..24 of an entry at 100
        let info = tensor(vec![2, 2], 2).info(100, 24).unwrap();
        assert_eq!((info.begin, info.end), (108, 124));
        let err = |t: Tensor| t.info(100, 24).unwrap_err().to_string();
        assert_eq!(
            err(tensor(vec![1 << 40, 1 << 40], 0)),
            "a shape of [1099511627776, 1099511627776] elements: too many"
        );
        assert_eq!(
            err(tensor(vec![2], u64::MAX)),
            "elements 18446744073709551615..18446744073709551617 of a storage of 6"
        );
        assert_eq!(err(tensor(vec![7], 0)), "elements 0..7 of a storage of 6");
    }

    /// Each storage's element size, as PyTorch's dtypes have them: those converted to f32 and
    /// those refused when read (whose size the reader still checks against their bytes).
    #[test]
    fn storages_have_their_dtype_s_element_size() {
        let size = |name: &str| storage_type(name).map(|(size, d)| (size, d.is_ok()));
        for (name, want) in [
            ("FloatStorage", (4, true)),
            ("HalfStorage", (2, true)),
            ("BFloat16Storage", (2, true)),
            ("DoubleStorage", (8, true)),
            ("LongStorage", (8, false)),
            ("IntStorage", (4, false)),
            ("ShortStorage", (2, false)),
            ("CharStorage", (1, false)),
            ("ByteStorage", (1, false)),
            ("BoolStorage", (1, false)),
        ] {
            assert_eq!(size(&format!("torch.{name}")), Some(want), "{name}");
        }
        assert_eq!(size("torch.ComplexFloatStorage"), None);
        assert_eq!(size("FloatStorage"), None);
    }

    #[test]
    fn a_pickle_that_calls_anything_else_is_refused() {
        // protocol 2: os.system("echo hi")
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let err = Machine::default().run(evil).unwrap_err().to_string();
        assert!(
            err.contains("it calls os.system, which this reader does not run"),
            "{err}"
        );
        // builtins.eval through STACK_GLOBAL (protocol 4)
        let evil = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.";
        let err = Machine::default().run(evil).unwrap_err().to_string();
        assert!(err.contains("builtins.eval"), "{err}");
    }

    #[test]
    fn plain_values_by_hand() {
        // pickle.dumps({"a": (1, -2, 300, 70000, True, None), "b": [1.5]}, protocol=2)
        let code = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01(K\x01J\xfe\xff\xff\xffM,\x01Jp\x11\x01\x00\x88Ntq\x02X\x01\x00\x00\x00bq\x03]q\x04G?\xf8\x00\x00\x00\x00\x00\x00au.";
        let v = Machine::default().run(code).unwrap();
        let want = Py::Dict(vec![
            (
                Py::Str("a".into()),
                Py::Tuple(vec![
                    Py::Int(1),
                    Py::Int(-2),
                    Py::Int(300),
                    Py::Int(70000),
                    Py::Bool(true),
                    Py::None,
                ]),
            ),
            (Py::Str("b".into()), Py::List(vec![Py::Float(1.5)])),
        ]);
        assert_eq!(v, want);
        // pickle.dumps((2**40, -(2**40)), protocol=2): LONG1
        let code =
            b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x06\x00\x00\x00\x00\x00\xff\x86q\x00.";
        let v = Machine::default().run(code).unwrap();
        assert_eq!(v, Py::Tuple(vec![Py::Int(1 << 40), Py::Int(-(1 << 40))]));
        // LONG1 of no bytes is 0 (pickle's encode_long(0)), of the byte ff -1
        let v = Machine::default().run(b"\x80\x02\x8a\x00\x8a\x01\xff\x86.");
        assert_eq!(v.unwrap(), Py::Tuple(vec![Py::Int(0), Py::Int(-1)]));
        // pickle.dumps((True, False), protocol=2): NEWTRUE, NEWFALSE (a tensor's requires_grad)
        let v = Machine::default().run(b"\x80\x02\x88\x89\x86q\x00.");
        assert_eq!(v.unwrap(), Py::Tuple(vec![Py::Bool(true), Py::Bool(false)]));
    }

    /// A tensor is read only where it is contiguous: each stride the product of the later sizes,
    /// except that a dimension of size 1 may have any stride (PyTorch gives such ones all kinds).
    #[test]
    fn only_contiguous_tensors_are_rebuilt() {
        let rebuild = |shape: &[i64], stride: &[i64]| {
            let storage = Storage {
                dtype: Ok(Dtype::F32),
                elem_size: 4,
                key: "0".into(),
                numel: 64,
            };
            let dims = |d: &[i64]| Py::Tuple(d.iter().map(|&n| Py::Int(n)).collect());
            let f = Py::Global("torch._utils._rebuild_tensor_v2".into());
            let args = vec![
                Py::Storage(Box::new(storage)),
                Py::Int(0),
                dims(shape),
                dims(stride),
            ];
            call(&f, args).map(|_| ()).map_err(|e| e.to_string())
        };
        rebuild(&[2, 3, 4], &[12, 4, 1]).unwrap();
        rebuild(&[1, 3, 1], &[99, 1, 7]).unwrap();
        for (shape, stride) in [([2, 3, 4], [12, 1, 3]), ([2, 3, 1], [4, 1, 1])] {
            let e = rebuild(&shape, &stride).unwrap_err();
            assert!(e.contains("not contiguous"), "{shape:?} {stride:?}: {e}");
        }
    }

    #[test]
    fn broken_pickles_are_errors_not_panics() {
        for code in [
            &b""[..],
            b"\x80",
            b"X\xff\x00\x00\x00ab",
            b"t.",
            b"a.",
            b"h\x05.",
            b"\xff",
        ] {
            assert!(Machine::default().run(code).is_err(), "{code:?}");
        }
    }

    /// The error `code` gives (without printing what it built where it gives none).
    fn refused(code: &[u8]) -> String {
        let Err(e) = Machine::default().run(code) else {
            panic!("{} bytes read without error", code.len());
        };
        e.to_string()
    }

    /// A list holding the previous memo entry twice, `n` times over: 2^n values from 8n bytes.
    fn doubling(n: u8) -> Vec<u8> {
        let mut code = b"\x80\x02]q\x00".to_vec();
        for i in 1..=n {
            code.extend([b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
        }
        code.push(b'.');
        code
    }

    #[test]
    fn a_pickle_that_multiplies_its_memo_is_refused() {
        // 2^18 values would be 8 MB; 2^60 more than any machine holds: both stop at once
        for n in [18, 60] {
            let code = doubling(n);
            let start = std::time::Instant::now();
            let err = refused(&code);
            assert!(
                err.contains("the pickle builds more objects than a state dict could"),
                "{err}"
            );
            assert!(err.contains(&format!("from {} bytes", code.len())), "{err}");
            assert!(start.elapsed().as_secs() < 2, "{:?}", start.elapsed());
        }
        // a few doublings fit the budget, and the copies are what they were
        let v = Machine::default().run(&doubling(3)).unwrap();
        let two = |x: Py| Py::List(vec![x.clone(), x]);
        assert_eq!(v, two(two(two(Py::List(vec![])))));
        // what the budget's claim on memory rests on
        assert_eq!(std::mem::size_of::<Py>(), 32);
    }

    #[test]
    fn the_budget_counts_every_value_made_or_copied() {
        // doubling(5) makes 2^8 - 6 - 2*5 = 240 values: the first list and its memo copy (2),
        // then at step i two copies of entry i-1 and the new list (2^(i+1) - 1 values), and its
        // memo copy. Its 46 bytes allow 184; each PROTO (2 bytes, making nothing) adds 8.
        let padded = |p: usize| [&b"\x80\x02".repeat(p)[..], &doubling(5)].concat();
        assert!(Machine::default().run(&padded(7)).is_ok(), "240 of 240");
        let err = refused(&padded(6));
        assert!(err.contains("(over 232 from 58 bytes)"), "{err}");
    }

    /// How many containers deep `v` is (as `Held::depth` counts), walked without recursion.
    fn depth(v: &Py) -> usize {
        let mut deepest = 0;
        // each value with the number of containers around it
        let mut todo = vec![(v, 0)];
        while let Some((v, around)) = todo.pop() {
            let inner = around + 1;
            match v {
                Py::Tuple(xs) | Py::List(xs) => todo.extend(xs.iter().map(|x| (x, inner))),
                Py::Dict(kv) => todo.extend(kv.iter().flat_map(|(k, v)| [(k, inner), (v, inner)])),
                _ => {
                    deepest = deepest.max(around);
                    continue;
                }
            }
            deepest = deepest.max(inner);
        }
        deepest
    }

    #[test]
    fn deep_nesting_is_refused_and_the_deepest_allowed_is_safe() {
        let lists = |n: usize| [&b"\x80\x02"[..], &b"(".repeat(n), &b"l".repeat(n), b"."].concat();
        let tuples = |n: usize| [&b"\x80\x02)"[..], &b"\x85".repeat(n - 1), b"."].concat();
        // (((K5lll: the innermost list holds a number, which adds no depth of its own
        let numbers = |n: usize| {
            [
                &b"\x80\x02"[..],
                &b"(".repeat(n),
                b"K\x05",
                &b"l".repeat(n),
                b".",
            ]
            .concat()
        };
        // ]]]...a a a: each list appended to the one below it
        let appends =
            |n: usize| [&b"\x80\x02"[..], &b"]".repeat(n), &b"a".repeat(n - 1), b"."].concat();
        // {N{N{...{ s s s: each dict set (at key None) in the one below it
        let dicts = |n: usize| {
            [
                &b"\x80\x02"[..],
                &b"}N".repeat(n - 1),
                b"}",
                &b"s".repeat(n - 1),
                b".",
            ]
            .concat()
        };
        for (what, make) in [
            ("lists", &lists as &dyn Fn(usize) -> Vec<u8>),
            ("tuples", &tuples),
            ("lists around a number", &numbers),
            ("appends", &appends),
            ("dicts", &dicts),
        ] {
            // as deep as allowed: read, copied into the memo and out, and dropped (recursive
            // clones and drops, about 300 bytes of stack a level) on 1 MiB of stack (a thread's
            // default is 2 MiB, the main thread's 8 MiB)
            let mut code = make(MAX_DEPTH);
            code.truncate(code.len() - 1);
            code.extend(b"q\x00h\x00.");
            let deepest = std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || depth(&Machine::default().run(&code).unwrap()))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(deepest, MAX_DEPTH, "{what}");
            // one deeper, and far deeper (200,000 overflowed the stack): errors
            for n in [MAX_DEPTH + 1, 200_000] {
                let err = refused(&make(n));
                assert!(
                    err.contains("the pickle nests containers more than 1000 deep"),
                    "{what}, {n}: {err}"
                );
            }
        }
    }
}
