//! llm.c debug states (`gpt2_124M_debug_state.bin`): one batch with PyTorch's outputs for it, the
//! reference a training step is checked against.
//!
//! Layout, little-endian:
//! - header: 256 x i32: `[0]` = 20240327 (magic), `[1]` = 2 (version), `[2]` = B, `[3]` = T; the
//!   rest is zero.
//! - x: B*T i32 input tokens; y: B*T i32 target tokens.
//! - the expected logits: B*T*V f32 (V unpadded); the expected loss: 1 f32.
//! - the expected gradients: every parameter's gradient as f32 in checkpoint order, wte padded to
//!   Vp rows (num_parameters values).
//!
//! The file does not store the model config: V and the parameter sizes come from the checkpoint the
//! state belongs to.

use super::checkpoint::checked_num_parameters;
use super::{check_magic_version, get_f32s, new_header, open_with_header, put_f32s, put_header};
use super::{write_file_atomic, HEADER_BYTES};
use crate::config::GPT2Config;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// The debug state magic number (`header[0]`).
pub const DEBUG_STATE_MAGIC: i32 = 20240327;
/// The only debug state version (`header[1]`).
pub const DEBUG_STATE_VERSION: i32 = 2;

/// One batch and PyTorch's results for it.
#[derive(Clone, Debug, PartialEq)]
pub struct DebugState {
    /// B: the batch size.
    pub b: usize,
    /// T: the sequence length (at most maxT).
    pub t: usize,
    pub x: Vec<u32>,      // (B, T) input tokens
    pub y: Vec<u32>,      // (B, T) target tokens
    pub logits: Vec<f32>, // (B, T, V) expected logits, V unpadded
    /// The expected mean cross-entropy loss.
    pub loss: f32,
    pub grads: Vec<f32>, // (num_parameters) expected gradients, checkpoint order, wte with Vp rows
}

/// Checks the config and B, T against it; returns num_parameters.
fn check_dims(path: &Path, what: &str, cfg: &GPT2Config, b: i64, t: i64) -> Result<usize> {
    cfg.validate()
        .map_err(|e| anyhow!("{}: {what}: {e}", path.display()))?;
    let n = checked_num_parameters(cfg).ok_or_else(|| {
        anyhow!(
            "{}: {what}: the model config {cfg} has too many parameters",
            path.display()
        )
    })?;
    if b <= 0 || b > i32::MAX as i64 {
        bail!(
            "{}: {what}: batch size B={b} must be in 1..={}",
            path.display(),
            i32::MAX
        );
    }
    if t <= 0 {
        bail!(
            "{}: {what}: sequence length T={t} must be positive",
            path.display()
        );
    }
    if t > cfg.max_seq_len as i64 {
        bail!(
            "{}: {what}: sequence length T={t} exceeds the model's maxT={}",
            path.display(),
            cfg.max_seq_len
        );
    }
    Ok(n)
}

/// Checks that every id of `ids` (B, T), named `name`, is a token id in 0..V.
fn check_tokens(
    path: &Path,
    what: &str,
    name: &str,
    ids: impl Iterator<Item = i64>,
    t: usize,
    v: usize,
) -> Result<()> {
    for (i, id) in ids.enumerate() {
        if id < 0 || id >= v as i64 {
            bail!(
                "{}: {what}: {name}[{i}] (b={}, t={}) = {id} is not a token id in 0..{v} (V)",
                path.display(),
                i / t,
                i % t
            );
        }
    }
    Ok(())
}

/// What is said after the sizes of a debug state of `actual` bytes that is shorter than the model
/// given needs, for B*T = `bt`: nothing where no model could explain its size (it ends inside its
/// tokens x and y, whose size the header alone gives, or inside a 4-byte value), so it was cut
/// short; else that a whole file of this size would be a smaller model's state.
fn short_state_aside(actual: u128, bt: u128) -> &'static str {
    let tokens_end = HEADER_BYTES as u128 + 8 * bt;
    if actual < tokens_end || !(actual - HEADER_BYTES as u128).is_multiple_of(4) {
        ""
    } else {
        " (or, if the file is whole, it was made with a smaller model than this one)"
    }
}

/// Reads a debug state; `cfg` is the config of the model checkpoint it belongs to.
pub fn read_debug_state(path: &Path, cfg: &GPT2Config) -> Result<DebugState> {
    let what = "debug state";
    // the header first: the rest is read only once the file's size is the one it gives (a file
    // far larger than that, or a device that never ends, is not read into memory)
    let (mut file, actual, h) = open_with_header(path, DEBUG_STATE_MAGIC)?;
    check_magic_version(path, &h, DEBUG_STATE_MAGIC, &[DEBUG_STATE_VERSION])?;
    let n = check_dims(path, what, cfg, h[2] as i64, h[3] as i64)?;
    // Both positive i32 now.
    let (b, t) = (h[2] as usize, h[3] as usize);
    let v = cfg.vocab_size;
    let bt = b as u128 * t as u128;
    let floats = 2 * bt + bt * v as u128 + 1 + n as u128;
    let expected = HEADER_BYTES as u128 + 4 * floats;
    let actual = actual as u128;
    let describe = || {
        format!(
            "expected {expected} bytes ({HEADER_BYTES}-byte header + x, y ({b}*{t} i32 each) + \
             logits ({b}*{t}*{v} f32) + loss (1 f32) + gradients ({n} f32)) for the model given, \
             found {actual}"
        )
    };
    if actual < expected {
        bail!(
            "{}: {what} is truncated: {}{}",
            path.display(),
            describe(),
            short_state_aside(actual, bt)
        );
    }
    if actual > expected {
        bail!(
            "{}: {what} has {}: {} (a state made with another model does not fit)",
            path.display(),
            crate::text::count(actual - expected, "trailing byte", "trailing bytes"),
            describe()
        );
    }
    // The size matched, so every count below fits in memory.
    let bt = b * t;
    let body = read_body(path, &mut file, (expected - HEADER_BYTES as u128) as usize)?;
    let mut rest = &body[..];
    let mut take = |count: usize| {
        let (head, tail) = rest.split_at(4 * count);
        rest = tail;
        head
    };
    let get_i32s = |bytes: &[u8]| -> Vec<i32> {
        bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let x = get_i32s(take(bt)); // (B, T)
    let y = get_i32s(take(bt)); // (B, T)
    check_tokens(path, what, "x", x.iter().map(|&id| id as i64), t, v)?;
    check_tokens(path, what, "y", y.iter().map(|&id| id as i64), t, v)?;
    let logits = get_f32s(take(bt * v)); // (B, T, V)
    let loss = get_f32s(take(1))[0];
    let grads = get_f32s(take(n)); // (num_parameters)
                                   // a reference that is not finite would compare as nothing: |got - NaN| is NaN
    for (name, values) in [
        ("logits", &logits[..]),
        ("loss", &[loss]),
        ("gradients", &grads),
    ] {
        if let Some((i, x)) = values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            bail!(
                "{}: {what}: {x} in its {name} (element {i}): a reference must be finite",
                path.display()
            );
        }
    }
    Ok(DebugState {
        b,
        t,
        x: x.into_iter().map(|id| id as u32).collect(),
        y: y.into_iter().map(|id| id as u32).collect(),
        logits,
        loss,
        grads,
    })
}

/// The `len` bytes after the header of the debug state `path` (`file`, positioned there); an
/// error naming the file where they cannot be allocated or read.
fn read_body(path: &Path, file: &mut std::fs::File, len: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    body.try_reserve_exact(len).map_err(|_| {
        anyhow!(
            "{}: debug state: could not allocate {} to read it",
            path.display(),
            crate::host_memory::size_text(len as f64)
        )
    })?;
    file.take(len as u64)
        .read_to_end(&mut body)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if body.len() < len {
        bail!(
            "{}: debug state: cut short while it was read",
            path.display()
        );
    }
    Ok(body)
}

/// Writes a debug state for a model with config `cfg`.
pub fn write_debug_state(path: &Path, cfg: &GPT2Config, s: &DebugState) -> Result<()> {
    let what = "cannot write debug state";
    let as_i64 = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
    let n = check_dims(path, what, cfg, as_i64(s.b), as_i64(s.t))?;
    let (b, t, v) = (s.b, s.t, cfg.vocab_size);
    let bt = b
        .checked_mul(t)
        .ok_or_else(|| anyhow!("{}: {what}: B*T overflows", path.display()))?;
    let lengths = [
        ("x", s.x.len(), Some(bt)),
        ("y", s.y.len(), Some(bt)),
        ("logits", s.logits.len(), bt.checked_mul(v)),
        ("grads", s.grads.len(), Some(n)),
    ];
    for (name, len, want) in lengths {
        if Some(len) != want {
            let want = want.map_or("more than fits in memory".into(), |w| w.to_string());
            bail!(
                "{}: {what}: {name} has {len} values, B={b}, T={t}, V={v} need {want}",
                path.display()
            );
        }
    }
    check_tokens(path, what, "x", s.x.iter().map(|&id| id as i64), t, v)?;
    check_tokens(path, what, "y", s.y.iter().map(|&id| id as i64), t, v)?;
    let mut h = new_header(DEBUG_STATE_MAGIC, DEBUG_STATE_VERSION);
    // check_dims: both in 1..=i32::MAX.
    h[2] = b as i32;
    h[3] = t as i32;
    let mut out = Vec::with_capacity(HEADER_BYTES + 4 * (2 * bt + bt * v + 1 + n));
    put_header(&mut out, &h);
    // Token ids are < V <= i32::MAX.
    for &id in s.x.iter().chain(&s.y) {
        out.extend_from_slice(&(id as i32).to_le_bytes());
    }
    put_f32s(&mut out, &s.logits);
    put_f32s(&mut out, &[s.loss]);
    put_f32s(&mut out, &s.grads);
    write_file_atomic(path, &out)
}
