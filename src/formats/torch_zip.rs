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
//! a state dict, whose containers are filled before anything refers back to them.

use super::safetensors::{Dtype, SafeTensors, TensorInfo};
use anyhow::{anyhow, bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

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
    if let Some(order) = entries.get(&format!("{prefix}byteorder")) {
        let bytes = read_at(&mut file, order.offset, order.size.min(16))?;
        if bytes != b"little" {
            bail!(
                "{p}: the tensors are stored {}-endian: only little-endian ones are read",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    let pickle = read_at(&mut file, pickle_entry.offset, pickle_entry.size)?;
    let object = Machine::default()
        .run(&pickle)
        .map_err(|e| anyhow!("{p}: data.pkl: {e}"))?;
    let Py::Dict(items) = object else {
        bail!("{p}: data.pkl holds {}, not a state dict", object.kind());
    };
    let mut tensors = BTreeMap::new();
    for (key, value) in items {
        let Py::Str(name) = key else {
            bail!("{p}: a state dict key is {}, not a string", key.kind());
        };
        let Py::Tensor(t) = value else {
            bail!("{p}: \"{name}\" is {}, not a tensor", value.kind());
        };
        let storage = entries
            .get(&format!("{prefix}data/{}", t.storage.key))
            .ok_or_else(|| {
                anyhow!(
                    "{p}: tensor \"{name}\": its storage data/{} is not in the archive",
                    t.storage.key
                )
            })?;
        let info = t
            .info(storage.offset, storage.size)
            .map_err(|e| anyhow!("{p}: tensor \"{name}\": {e}"))?;
        tensors.insert(name, info);
    }
    Ok(SafeTensors::from_ranges(path, file, tensors))
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

/// Where an entry's bytes are in the file.
struct Entry {
    offset: u64,
    size: u64,
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
        entries.insert(name, Entry { offset, size: len });
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
    key: String,
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

/// A value on the pickle machine's stack.
#[derive(Clone, Debug, PartialEq)]
enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Py>),
    List(Vec<Py>),
    Dict(Vec<(Py, Py)>),
    /// A global the machine accepts, as "module.name".
    Global(String),
    Storage(Storage),
    Tensor(Tensor),
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

/// The pickle machine: its stack, the positions of its marks, and its memo.
#[derive(Default)]
struct Machine {
    stack: Vec<Py>,
    marks: Vec<usize>,
    memo: HashMap<u64, Py>,
}

impl Machine {
    fn pop(&mut self) -> Result<Py> {
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("the stack is empty"))
    }

    fn top(&mut self) -> Result<&mut Py> {
        self.stack
            .last_mut()
            .ok_or_else(|| anyhow!("the stack is empty"))
    }

    /// The values above the last mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Py>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("no mark"))?;
        if m > self.stack.len() {
            bail!("a mark above the stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn global(&self, module: &str, name: &str) -> Result<Py> {
        let full = format!("{module}.{name}");
        if GLOBALS.contains(&full.as_str()) || storage_type(&full).is_some() {
            Ok(Py::Global(full))
        } else {
            bail!("it calls {full}, which this reader does not run (only a state dict of tensors is read)")
        }
    }

    /// Runs the pickle and returns the object it builds.
    fn run(mut self, code: &[u8]) -> Result<Py> {
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
                b'.' => return self.pop(),                 // STOP
                b'(' => self.marks.push(self.stack.len()), // MARK
                b'N' => self.stack.push(Py::None),
                0x88 => self.stack.push(Py::Bool(true)),
                0x89 => self.stack.push(Py::Bool(false)),
                b'K' => {
                    let v = le_uint(take(&mut pc, 1)?);
                    self.stack.push(Py::Int(v as i64))
                }
                b'M' => {
                    let v = le_uint(take(&mut pc, 2)?);
                    self.stack.push(Py::Int(v as i64))
                }
                b'J' => {
                    let v = le_uint(take(&mut pc, 4)?) as u32 as i32;
                    self.stack.push(Py::Int(v as i64))
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
                    self.stack.push(Py::Int(v))
                }
                b'G' => {
                    let b = take(&mut pc, 8)?;
                    self.stack
                        .push(Py::Float(f64::from_be_bytes(b.try_into().unwrap())))
                }
                b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                    let n = match op {
                        b'X' | b'T' => le_uint(take(&mut pc, 4)?),
                        0x8d => le_uint(take(&mut pc, 8)?),
                        _ => le_uint(take(&mut pc, 1)?),
                    };
                    let b = take(&mut pc, usize::try_from(n)?)?;
                    let s = if matches!(op, b'U' | b'T') {
                        b.iter().map(|&c| c as char).collect() // latin-1
                    } else {
                        String::from_utf8(b.to_vec())
                            .map_err(|_| anyhow!("a string that is not UTF-8"))?
                    };
                    self.stack.push(Py::Str(s))
                }
                b'}' => self.stack.push(Py::Dict(Vec::new())),
                b']' => self.stack.push(Py::List(Vec::new())),
                b')' => self.stack.push(Py::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Py::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Py::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Py::Dict(pairs(items)?))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("the stack is empty");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Py::Tuple(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Py::List(l) => l.push(v),
                        other => bail!("APPEND to {}", other.kind()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Py::List(l) => l.extend(items),
                        other => bail!("APPENDS to {}", other.kind()),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let new = pairs(items)?;
                    match self.top()? {
                        Py::Dict(d) => d.extend(new),
                        other => bail!("SETITEM on {}", other.kind()),
                    }
                }
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => le_uint(take(&mut pc, 1)?),
                        b'r' => le_uint(take(&mut pc, 4)?),
                        _ => self.memo.len() as u64,
                    };
                    let v = self.top()?.clone();
                    self.memo.insert(idx, v);
                }
                b'h' | b'j' => {
                    let idx = le_uint(take(&mut pc, if op == b'h' { 1 } else { 4 })?);
                    let v = self
                        .memo
                        .get(&idx)
                        .ok_or_else(|| anyhow!("memo {idx} is empty"))?
                        .clone();
                    self.stack.push(v)
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
                    self.stack.push(g)
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Py::Str(module), Py::Str(name)) = (module, name) else {
                        bail!("STACK_GLOBAL of values that are not strings");
                    };
                    let g = self.global(&module, &name)?;
                    self.stack.push(g)
                }
                b'Q' => {
                    // BINPERSID: ("storage", storage type, key, location, numel)
                    let pid = self.pop()?;
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
                            Py::Storage(Storage {
                                dtype,
                                elem_size,
                                key,
                                numel,
                            })
                        }
                        other => {
                            bail!("a persistent id that is {} and not a storage", other.kind())
                        }
                    };
                    self.stack.push(storage)
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: callable(*args)
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let Py::Tuple(args) = args else {
                        bail!("a call whose arguments are {}", args.kind());
                    };
                    let v = call(&f, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (its `_metadata`) is not needed
                    let _state = self.pop()?;
                    match self.top()? {
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
    match name.as_str() {
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
            Ok(Py::Tensor(Tensor {
                storage: storage.clone(),
                offset,
                shape,
            }))
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
}
