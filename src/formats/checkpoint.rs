//! llm.c model checkpoints (`gpt2_124M.bin`, `gpt2_124M_bf16.bin`, and what training writes).
//!
//! Layout, little-endian:
//! - header: 256 x i32: `[0]` = 20240326 (magic), `[1]` = version (3: fp32 parameters, 5: bf16
//!   parameters), `[2]` = maxT, `[3]` = V, `[4]` = L, `[5]` = NH, `[6]` = C, `[7]` = Vp; the rest
//!   is zero.
//! - the parameters: the 16 tensors in [`PARAM_NAMES`](crate::params::PARAM_NAMES) order with the
//!   sizes of [`param_sizes`](crate::params::param_sizes) (wte has Vp rows), back to back, as f32
//!   (version 3) or bf16 (version 5).
//!
//! Reading checks the magic, the version, the config and that the file is exactly header +
//! parameters long. The parameters are read and written in chunks, so that a checkpoint of a large
//! model is never held in memory twice.

use super::HEADER_BYTES;
use super::{check_magic_version, new_header, open_with_header, write_file_atomic_with, Header};
use crate::config::GPT2Config;
use crate::host_memory::{zeroed, Zeroable};
use crate::params::num_parameters;
use crate::precision::Precision;
use anyhow::{anyhow, bail, Context, Result};
use half::bf16;
use std::io::Read;
use std::path::Path;

/// The checkpoint magic number (`header[0]`).
pub const CHECKPOINT_MAGIC: i32 = 20240326;
/// `header[1]` of a checkpoint with fp32 parameters.
pub const CHECKPOINT_VERSION_FP32: i32 = 3;
/// `header[1]` of a checkpoint with bf16 parameters.
pub const CHECKPOINT_VERSION_BF16: i32 = 5;

/// Parameters read or converted per chunk when streaming a checkpoint.
const CHUNK_PARAMS: usize = 1 << 18;

/// How the parameters are stored in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointPrecision {
    /// Version 3: f32 parameters.
    Fp32,
    /// Version 5: bf16 parameters (f32 rounded to nearest, ties to even, when written).
    Bf16,
}

/// A checkpoint stores the weights in the precision an engine computes in.
impl From<Precision> for CheckpointPrecision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => CheckpointPrecision::Fp32,
            Precision::Bf16 => CheckpointPrecision::Bf16,
        }
    }
}

impl CheckpointPrecision {
    /// The header version that stores this precision.
    pub fn version(self) -> i32 {
        match self {
            CheckpointPrecision::Fp32 => CHECKPOINT_VERSION_FP32,
            CheckpointPrecision::Bf16 => CHECKPOINT_VERSION_BF16,
        }
    }

    /// The bytes per stored parameter.
    pub fn bytes_per_param(self) -> usize {
        match self {
            CheckpointPrecision::Fp32 => 4,
            CheckpointPrecision::Bf16 => 2,
        }
    }

    fn from_version(version: i32) -> Option<Self> {
        match version {
            CHECKPOINT_VERSION_FP32 => Some(CheckpointPrecision::Fp32),
            CHECKPOINT_VERSION_BF16 => Some(CheckpointPrecision::Bf16),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CheckpointPrecision::Fp32 => "fp32",
            CheckpointPrecision::Bf16 => "bf16",
        }
    }
}

/// A model checkpoint: the config and all parameters as f32 in one allocation
/// (length [`num_parameters`], checkpoint order).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: GPT2Config,
    pub params: Vec<f32>, // (num_parameters)
}

/// The number of parameters of `cfg`, or `None` where it does not fit in a usize. Computed in u128
/// from the same formulas as [`param_sizes`](crate::params::param_sizes), so that a header with
/// absurd dimensions is an error, not an overflow.
pub fn checked_num_parameters(cfg: &GPT2Config) -> Option<usize> {
    let [maxt, vp, l, c] = [
        cfg.max_seq_len,
        cfg.padded_vocab_size,
        cfg.num_layers,
        cfg.channels,
    ]
    .map(|x| x as u128);
    // Every dimension is at most i32::MAX < 2^31, so no product below exceeds 2^96.
    // wte + wpe + per layer (ln1 2C, qkv 3CC+3C, attproj CC+C, ln2 2C, fc 4CC+4C, fcproj 4CC+C)
    // + lnf 2C.
    let n = vp * c + maxt * c + l * (12 * c * c + 13 * c) + 2 * c;
    usize::try_from(n).ok()
}

/// The i32 header field `h[idx]` as a positive dimension, named `name` in errors.
fn header_dim(path: &Path, h: &Header, idx: usize, name: &str) -> Result<usize> {
    match usize::try_from(h[idx]) {
        Ok(x) if x > 0 => Ok(x),
        _ => bail!(
            "{}: checkpoint header field {name} (header[{idx}]) is {}, must be positive",
            path.display(),
            h[idx]
        ),
    }
}

/// The model config stored in a checkpoint header.
fn config_from_header(path: &Path, h: &Header) -> Result<GPT2Config> {
    let maxt = header_dim(path, h, 2, "maxT")?;
    let v = header_dim(path, h, 3, "V")?;
    let l = header_dim(path, h, 4, "L")?;
    let nh = header_dim(path, h, 5, "NH")?;
    let c = header_dim(path, h, 6, "C")?;
    let vp = header_dim(path, h, 7, "Vp")?;
    GPT2Config::new(maxt, v, vp, l, nh, c).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The header of a checkpoint of `cfg` stored with `precision`.
fn header_for(cfg: &GPT2Config, precision: CheckpointPrecision) -> Header {
    let mut h = new_header(CHECKPOINT_MAGIC, precision.version());
    // validate() guarantees every dimension fits in an i32.
    h[2] = cfg.max_seq_len as i32;
    h[3] = cfg.vocab_size as i32;
    h[4] = cfg.num_layers as i32;
    h[5] = cfg.num_heads as i32;
    h[6] = cfg.channels as i32;
    h[7] = cfg.padded_vocab_size as i32;
    h
}

/// An open checkpoint whose header and size have been checked; `file` is positioned at the first
/// parameter.
struct OpenCheckpoint {
    file: std::fs::File,
    config: GPT2Config,
    precision: CheckpointPrecision,
    n: usize,
}

/// Opens a checkpoint and checks its header and its size.
fn open_checkpoint(path: &Path) -> Result<OpenCheckpoint> {
    let (file, actual, h) = open_with_header(path, CHECKPOINT_MAGIC)?;
    check_magic_version(
        path,
        &h,
        CHECKPOINT_MAGIC,
        &[CHECKPOINT_VERSION_FP32, CHECKPOINT_VERSION_BF16],
    )?;
    let precision = CheckpointPrecision::from_version(h[1]).expect("version checked above");
    let config = config_from_header(path, &h)?;
    let n = checked_num_parameters(&config).ok_or_else(|| {
        anyhow!(
            "{}: the model config {config} has too many parameters",
            path.display()
        )
    })?;
    let expected = HEADER_BYTES as u128 + n as u128 * precision.bytes_per_param() as u128;
    let describe = || {
        format!(
            "expected {expected} bytes ({HEADER_BYTES}-byte header + {n} {} parameters of {} bytes), \
             found {actual}",
            precision.name(),
            precision.bytes_per_param()
        )
    };
    if (actual as u128) < expected {
        bail!(
            "{}: checkpoint is truncated: {}",
            path.display(),
            describe()
        );
    }
    if (actual as u128) > expected {
        bail!(
            "{}: checkpoint has {}: {}",
            path.display(),
            crate::text::count(actual as u128 - expected, "trailing byte", "trailing bytes"),
            describe()
        );
    }
    Ok(OpenCheckpoint {
        file,
        config,
        precision,
        n,
    })
}

/// Reads the parameters of an open checkpoint, converting each stored value with `from_f32`
/// (version 3) or `from_bf16` (version 5).
fn read_params<T: Zeroable>(
    path: &Path,
    ck: &mut OpenCheckpoint,
    from_f32: impl Fn(f32) -> T,
    from_bf16: impl Fn(bf16) -> T,
) -> Result<Vec<T>> {
    let bpp = ck.precision.bytes_per_param();
    // (an error, not the allocator's abort, where the memory is short)
    let what = format!("{}: the parameters", path.display());
    let mut out = zeroed::<T>(ck.n, &what)?; // (num_parameters)
    let mut buf = vec![0u8; CHUNK_PARAMS * bpp];
    for chunk in out.chunks_mut(CHUNK_PARAMS) {
        let bytes = &mut buf[..chunk.len() * bpp];
        ck.file
            .read_exact(bytes)
            .with_context(|| format!("{}: cannot read the parameters", path.display()))?;
        match ck.precision {
            CheckpointPrecision::Fp32 => {
                for (o, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
            CheckpointPrecision::Bf16 => {
                for (o, b) in chunk.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = from_bf16(bf16::from_le_bytes([b[0], b[1]]));
                }
            }
        }
    }
    Ok(out)
}

/// Reads a checkpoint's config and precision (the header only; the size is checked too).
pub fn read_checkpoint_config(path: &Path) -> Result<(GPT2Config, CheckpointPrecision)> {
    let ck = open_checkpoint(path)?;
    Ok((ck.config, ck.precision))
}

/// Reads a version 3 or version 5 checkpoint; bf16 parameters are widened to f32 (exactly).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let mut ck = open_checkpoint(path)?;
    let params = read_params(path, &mut ck, |x| x, bf16::to_f32)?;
    Ok(Checkpoint {
        config: ck.config,
        params,
    })
}

/// Reads a checkpoint's parameters as bf16: version 5 as stored, version 3 rounded to nearest,
/// ties to even.
pub fn read_checkpoint_bf16(path: &Path) -> Result<(GPT2Config, Vec<bf16>)> {
    let mut ck = open_checkpoint(path)?;
    let params = read_params(path, &mut ck, bf16::from_f32, |x| x)?;
    Ok((ck.config, params))
}

/// Writes a checkpoint of `cfg` with `params` (num_parameters, checkpoint order) stored as
/// `precision`: version 3 (f32) or version 5 (bf16, rounded to nearest, ties to even).
pub fn write_checkpoint(
    path: &Path,
    cfg: &GPT2Config,
    params: &[f32], // (num_parameters)
    precision: CheckpointPrecision,
) -> Result<()> {
    cfg.validate()
        .map_err(|e| anyhow!("{}: cannot write checkpoint: {e}", path.display()))?;
    let n = checked_num_parameters(cfg).ok_or_else(|| {
        anyhow!(
            "{}: cannot write checkpoint: the model config {cfg} has too many parameters",
            path.display()
        )
    })?;
    debug_assert_eq!(n, num_parameters(cfg));
    if params.len() != n {
        bail!(
            "{}: cannot write checkpoint: {} parameters given, the config needs {n}",
            path.display(),
            params.len()
        );
    }
    let h = header_for(cfg, precision);
    write_file_atomic_with(path, |w| {
        let mut buf = Vec::with_capacity(HEADER_BYTES.max(CHUNK_PARAMS * 4));
        super::put_header(&mut buf, &h);
        w.write_all(&buf)?;
        for chunk in params.chunks(CHUNK_PARAMS) {
            buf.clear();
            match precision {
                CheckpointPrecision::Fp32 => super::put_f32s(&mut buf, chunk),
                CheckpointPrecision::Bf16 => {
                    for &x in chunk {
                        buf.extend_from_slice(&bf16::from_f32(x).to_le_bytes());
                    }
                }
            }
            w.write_all(&buf)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_count_matches_param_sizes() {
        for (maxt, v, vp, l, nh, c) in [
            (8, 10, 16, 2, 2, 4),
            (1024, 50257, 50304, 12, 12, 768),
            (3, 5, 5, 1, 1, 1),
            (1024, 50257, 50304, 48, 25, 1600),
        ] {
            let cfg = GPT2Config::new(maxt, v, vp, l, nh, c).unwrap();
            assert_eq!(checked_num_parameters(&cfg), Some(num_parameters(&cfg)));
        }
        let huge = GPT2Config::new(1, 1, 1, 1 << 30, 1, 1 << 30).unwrap();
        assert_eq!(checked_num_parameters(&huge), None);
    }

    #[test]
    fn header_fields_are_in_llmc_order() {
        let cfg = GPT2Config::new(8, 10, 16, 2, 2, 4).unwrap();
        let h = header_for(&cfg, CheckpointPrecision::Bf16);
        assert_eq!(&h[..8], &[20240326, 5, 8, 10, 2, 2, 4, 16]);
        assert!(h[8..].iter().all(|&x| x == 0));
        assert_eq!(config_from_header(Path::new("x"), &h).unwrap(), cfg);
    }
}
