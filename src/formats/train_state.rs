//! The training state written beside each checkpoint (`state_NNNNNN.bin` next to
//! `model_NNNNNN.bin`): what `--resume` needs to continue a run exactly where it stopped. The model
//! file holds the weights the engine computes with; this file holds the rest: the steps done, the
//! training data's position, AdamW's moments and, for a bf16 run, the fp32 master weights.
//!
//! Layout, little-endian (this project's own: llm.c's state file, magic 20240527, lays out its
//! data loader differently):
//! - header: 256 x i32: `[0]` = 20261202 (magic), `[1]` = 1 (version), `[2]` = steps done, `[3]` =
//!   B, `[4]` = T, `[5]` = 1 if master weights follow (else 0), `[6]` = 1 if the training data is
//!   shuffled, `[8..10]` = the shuffle seed, `[10..12]` = batches the training data served,
//!   `[12..14]` = num_parameters, `[14..16]` = tokens in the training shards, `[16]` = training
//!   shards (each u64 as two words, low first); the outlier windows (`crate::outliers`): `[17]`
//!   = the losses in the loss window, `[18]` = the norms in the norm window, `[19]` = the steps
//!   skipped in a row, `[32..96]` = the losses (f32 bits, oldest first), `[96..160]` = the norms;
//!   the lowest validation loss so far (`--keep-best`): `[20]` = 1 if there is one, `[21]` = its
//!   step, `[22]` = the loss (f32 bits); the optimizer's settings: `[23]` = 1 if they are
//!   recorded, `[24..29]` = beta1, beta2, eps, the weight decay and the gradient clip (f32 bits);
//!   the model checkpoint written with the state: `[29]` = 1 if recorded, `[30..32]` = its
//!   weights' fingerprint ([`weights_fingerprint`]); the model `--keep-best` wrote for the lowest
//!   validation loss: `[160]` = 1 if its fingerprint is recorded, `[161..163]` = the fingerprint;
//!   the rest is zero. (States written before
//!   the windows, the best loss, the settings or the fingerprint were added have zeros there:
//!   empty windows, no best loss, nothing recorded, which is what they read as.)
//! - AdamW's m, then v (num_parameters f32 each), then the master weights (num_parameters f32)
//!   when `header[5]` is 1.
//!
//! Reading checks the magic, the version, every field's range and that the file is exactly
//! header + arrays long. The arrays pass one at a time between the file and the engine, in chunks
//! on the file's side, so the host holds at most one of them (4 GB at 1B parameters, not 12).

use super::{check_magic_version, new_header, open_with_header, write_file_atomic_with, Header};
use super::{put_f32s, HEADER_BYTES};
use crate::engine::OptimizerArray;
use crate::host_memory::zeroed;
use crate::outliers::{OutlierWindow, Outliers, MAX_SKIPPED_IN_A_ROW, WINDOW};

/// Where the outlier windows lie in the header: each window's count word and first value's word,
/// loss then norm; and the word of the steps skipped in a row.
const WINDOWS_AT: [(usize, usize); 2] = [(17, 32), (18, 32 + WINDOW)];
const SKIPPED_AT: usize = 19;
/// Where the lowest validation loss lies in the header: whether there is one, its step, its bits.
const BEST_AT: [usize; 3] = [20, 21, 22];
/// Where the optimizer's settings lie in the header: whether they are recorded, and the first of
/// their five values.
const OPTIMIZER_AT: [usize; 2] = [23, 24];
/// Where the model's fingerprint lies in the header: whether it is recorded, and its two words.
const FINGERPRINT_AT: [usize; 2] = [29, 30];
/// Where the best model's fingerprint lies in the header: whether it is recorded, its two words.
const BEST_MODEL_AT: [usize; 2] = [160, 161];
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The state file's magic number (`header[0]`).
pub const STATE_MAGIC: i32 = 20261202;
/// `header[1]`.
pub const STATE_VERSION: i32 = 1;

/// f32 values read or written per chunk.
const CHUNK: usize = 1 << 18;

/// Where the training data stood, and what it was: a resumed run must read the same shards in
/// the same batches to continue the same stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPosition {
    /// B and T of the batches.
    pub batch: usize,
    pub seq: usize,
    /// The shuffle seed (None: the shards in order).
    pub shuffle_seed: Option<u64>,
    /// Batches served since the start of training (micro-batches: steps x grad-accum).
    pub batches_served: u64,
    /// The training shards' total tokens and their number (what identifies the data).
    pub tokens: u64,
    pub shards: usize,
}

/// A training state's header: everything a run needs besides the model file and AdamW's arrays
/// to continue exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    pub data: DataPosition,
    /// The length of each array: the model's num_parameters.
    pub num_parameters: usize,
    /// Whether the fp32 master weights follow the moments (a bf16 run).
    pub master_weights: bool,
    /// The recent losses and gradient norms that `--skip-loss-z` and `--skip-norm-z` judge by.
    pub outliers: Outliers,
    /// The run's lowest validation loss so far, whose model `--keep-best` wrote.
    pub best_val: Option<BestVal>,
    /// The optimizer's settings the run took its steps with (None: a state written before they
    /// were recorded).
    pub optimizer: Option<OptimizerSettings>,
    /// The [`weights_fingerprint`] of the model checkpoint written with this state (None: a
    /// state written before it was recorded).
    pub model_fingerprint: Option<u64>,
}

/// The flags that shape AdamW's steps besides the learning rate (whose schedule a resumed run's
/// log records): what a resumed run compares its own with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub grad_clip: f32,
}

impl OptimizerSettings {
    /// The settings with their flags' names, in the header's order.
    pub fn named(&self) -> [(&'static str, f32); 5] {
        [
            ("--beta1", self.beta1),
            ("--beta2", self.beta2),
            ("--eps", self.eps),
            ("--weight-decay", self.weight_decay),
            ("--grad-clip", self.grad_clip),
        ]
    }
}

/// A fingerprint of a model's weights (their f32 bits, in order: FNV-1a over 32-bit words), so
/// that a resumed run can tell the model written with its state from another in its place.
pub fn weights_fingerprint(params: &[f32]) -> u64 {
    params.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ x.to_bits() as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A validation loss and the steps done when it was measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BestVal {
    pub step: usize,
    pub loss: f32,
    /// The [`weights_fingerprint`] of the model `--keep-best` wrote for it (None: a state
    /// written before it was recorded).
    pub model: Option<u64>,
}

impl TrainState {
    /// The arrays the file holds, in its order.
    pub fn arrays(&self) -> &'static [OptimizerArray] {
        use OptimizerArray::*;
        if self.master_weights {
            &[M, V, Master]
        } else {
            &[M, V]
        }
    }
}

fn put_u64(h: &mut Header, idx: usize, x: u64) {
    h[idx] = x as u32 as i32;
    h[idx + 1] = (x >> 32) as u32 as i32;
}

fn get_u64(h: &Header, idx: usize) -> u64 {
    h[idx] as u32 as u64 | (h[idx + 1] as u32 as u64) << 32
}

/// A header field that must be a count in `min..`, as a usize; `name` names it in errors.
fn header_count(path: &Path, h: &Header, idx: usize, name: &str, min: i32) -> Result<usize> {
    if h[idx] < min {
        bail!(
            "{}: training state field {name} (header[{idx}]) is {}, must be at least {min}",
            path.display(),
            h[idx]
        );
    }
    Ok(h[idx] as usize)
}

/// A header field that must be 0 or 1.
fn header_flag(path: &Path, h: &Header, idx: usize, name: &str) -> Result<bool> {
    match h[idx] {
        0 => Ok(false),
        1 => Ok(true),
        x => bail!(
            "{}: training state field {name} (header[{idx}]) is {x}, must be 0 or 1",
            path.display()
        ),
    }
}

/// Writes `state` to `path` (through a temporary file and a rename, as checkpoints are), each of
/// its arrays as `array` gives it (num_parameters values), one at a time.
pub fn write_train_state(
    path: &Path,
    state: &TrainState,
    mut array: impl FnMut(OptimizerArray) -> Result<Vec<f32>>,
) -> Result<()> {
    let d = &state.data;
    let int = |x: usize, name: &str| {
        i32::try_from(x).with_context(|| {
            format!(
                "{}: cannot write the training state: {name} = {x} does not fit the header",
                path.display()
            )
        })
    };
    let mut h = new_header(STATE_MAGIC, STATE_VERSION);
    h[2] = int(state.step, "the step")?;
    h[3] = int(d.batch, "B")?;
    h[4] = int(d.seq, "T")?;
    h[5] = state.master_weights as i32;
    h[6] = d.shuffle_seed.is_some() as i32;
    put_u64(&mut h, 8, d.shuffle_seed.unwrap_or(0));
    put_u64(&mut h, 10, d.batches_served);
    put_u64(&mut h, 12, state.num_parameters as u64);
    put_u64(&mut h, 14, d.tokens);
    h[16] = int(d.shards, "the number of shards")?;
    let o = &state.outliers;
    for (w, (count, first)) in [&o.loss, &o.norm].into_iter().zip(WINDOWS_AT) {
        h[count] = w.values().len() as i32;
        for (i, v) in w.values().enumerate() {
            h[first + i] = v.to_bits() as i32;
        }
    }
    h[SKIPPED_AT] = o.skipped_in_a_row as i32;
    if let Some(best) = state.best_val {
        let [flag, step, loss] = BEST_AT;
        h[flag] = 1;
        h[step] = int(best.step, "the best validation loss's step")?;
        h[loss] = best.loss.to_bits() as i32;
        if let Some(f) = best.model {
            let [flag, at] = BEST_MODEL_AT;
            h[flag] = 1;
            put_u64(&mut h, at, f);
        }
    }
    if let Some(o) = &state.optimizer {
        let [flag, first] = OPTIMIZER_AT;
        h[flag] = 1;
        for (i, (_, x)) in o.named().into_iter().enumerate() {
            h[first + i] = x.to_bits() as i32;
        }
    }
    if let Some(f) = state.model_fingerprint {
        let [flag, at] = FINGERPRINT_AT;
        h[flag] = 1;
        put_u64(&mut h, at, f);
    }
    // the engine's errors cross write_file_atomic_with's io::Result as io::Error::other
    let other = |e: anyhow::Error| std::io::Error::other(format!("{e:#}"));
    write_file_atomic_with(path, |w| {
        let mut buf = Vec::with_capacity(HEADER_BYTES.max(CHUNK * 4));
        super::put_header(&mut buf, &h);
        w.write_all(&buf)?;
        for &which in state.arrays() {
            let values = array(which).map_err(other)?;
            if values.len() != state.num_parameters {
                return Err(other(anyhow::anyhow!(
                    "AdamW's {} has {} values, the model {} parameters",
                    which.name(),
                    values.len(),
                    state.num_parameters
                )));
            }
            for chunk in values.chunks(CHUNK) {
                buf.clear();
                put_f32s(&mut buf, chunk);
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}

/// A training state whose header and size have been checked, open at its first array.
#[derive(Debug)]
pub struct TrainStateFile {
    pub path: PathBuf,
    pub header: TrainState,
    file: std::fs::File,
}

impl TrainStateFile {
    /// Opens a training state and checks its header and its size; its arrays are read by
    /// [`read_arrays`](Self::read_arrays).
    pub fn open(path: &Path) -> Result<TrainStateFile> {
        let (file, actual, h) = open_with_header(path, STATE_MAGIC)?;
        check_magic_version(path, &h, STATE_MAGIC, &[STATE_VERSION])?;
        let step = header_count(path, &h, 2, "step", 0)?;
        let batch = header_count(path, &h, 3, "B", 1)?;
        let seq = header_count(path, &h, 4, "T", 1)?;
        let master_weights = header_flag(path, &h, 5, "master weights")?;
        let shuffled = header_flag(path, &h, 6, "shuffle")?;
        let shards = header_count(path, &h, 16, "shards", 1)?;
        let n = get_u64(&h, 12);
        let arrays = 2 + master_weights as u128;
        let expected = HEADER_BYTES as u128 + arrays * 4 * n as u128;
        if actual as u128 != expected {
            bail!(
                "{}: training state is {}: expected {expected} bytes ({HEADER_BYTES}-byte header + \
                 {arrays} arrays of {n} f32), found {actual}",
                path.display(),
                if (actual as u128) < expected {
                    "truncated"
                } else {
                    "too long"
                }
            );
        }
        let num_parameters =
            usize::try_from(n).with_context(|| format!("{}: too large", path.display()))?;
        let mut windows = WINDOWS_AT.into_iter().map(|(count, first)| {
            let n = header_count(path, &h, count, "outlier window count", 0)?;
            if n > WINDOW {
                bail!(
                    "{}: training state's outlier window (header[{count}]) holds {n} values, at \
                     most {WINDOW}",
                    path.display()
                );
            }
            let values: Vec<f32> = h[first..first + n]
                .iter()
                .map(|&b| f32::from_bits(b as u32))
                .collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: training state's outlier window value (header[{}]) is {}",
                    path.display(),
                    first + i,
                    values[i]
                );
            }
            Ok(OutlierWindow::from_values(&values))
        });
        let loss = windows.next().expect("two windows")?;
        let norm = windows.next().expect("two windows")?;
        let skipped_in_a_row = header_count(path, &h, SKIPPED_AT, "steps skipped in a row", 0)?;
        if skipped_in_a_row > MAX_SKIPPED_IN_A_ROW {
            bail!(
                "{}: training state's steps skipped in a row (header[{SKIPPED_AT}]) is \
                 {skipped_in_a_row}, at most {MAX_SKIPPED_IN_A_ROW}",
                path.display()
            );
        }
        let outliers = Outliers {
            loss,
            norm,
            skipped_in_a_row,
        };
        let [flag, best_step, best_loss] = BEST_AT;
        let best_val = if header_flag(path, &h, flag, "best validation loss")? {
            let best = BestVal {
                step: header_count(path, &h, best_step, "best validation loss's step", 0)?,
                loss: f32::from_bits(h[best_loss] as u32),
                model: None,
            };
            if best.step > step {
                bail!(
                    "{}: training state's best validation loss is of step {} (header[{best_step}]), \
                     after its step {step}",
                    path.display(),
                    best.step
                );
            }
            if !(best.loss.is_finite() && best.loss >= 0.0) {
                bail!(
                    "{}: training state's best validation loss (header[{best_loss}]) is {}",
                    path.display(),
                    best.loss
                );
            }
            let [flag, at] = BEST_MODEL_AT;
            let model =
                header_flag(path, &h, flag, "best model fingerprint")?.then(|| get_u64(&h, at));
            Some(BestVal { model, ..best })
        } else {
            None
        };
        let [flag, first] = OPTIMIZER_AT;
        let optimizer = if header_flag(path, &h, flag, "optimizer settings")? {
            let x: Vec<f32> = (0..5)
                .map(|i| f32::from_bits(h[first + i] as u32))
                .collect();
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: training state's optimizer setting (header[{}]) is {}",
                    path.display(),
                    first + i,
                    x[i]
                );
            }
            Some(OptimizerSettings {
                beta1: x[0],
                beta2: x[1],
                eps: x[2],
                weight_decay: x[3],
                grad_clip: x[4],
            })
        } else {
            None
        };
        let [flag, at] = FINGERPRINT_AT;
        let model_fingerprint =
            header_flag(path, &h, flag, "model fingerprint")?.then(|| get_u64(&h, at));
        let state = TrainState {
            step,
            data: DataPosition {
                batch,
                seq,
                shuffle_seed: shuffled.then(|| get_u64(&h, 8)),
                batches_served: get_u64(&h, 10),
                tokens: get_u64(&h, 14),
                shards,
            },
            num_parameters,
            master_weights,
            outliers,
            best_val,
            optimizer,
            model_fingerprint,
        };
        Ok(TrainStateFile {
            path: path.to_path_buf(),
            header: state,
            file,
        })
    }

    /// Reads the arrays, handing each to `each` in turn.
    pub fn read_arrays(
        mut self,
        mut each: impl FnMut(OptimizerArray, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let path = self.path.display();
        // (an error, not the allocator's abort, where the memory is short)
        let what = format!("{path}: AdamW's state");
        let mut values = zeroed(self.header.num_parameters, &what)?; // (num_parameters)
        let mut buf = vec![0u8; CHUNK * 4];
        for &which in self.header.arrays() {
            for chunk in values.chunks_mut(CHUNK) {
                let bytes = &mut buf[..chunk.len() * 4];
                self.file
                    .read_exact(bytes)
                    .with_context(|| format!("{path}: cannot read AdamW's {}", which.name()))?;
                for (o, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            check_values(&self.path, which, &values)?;
            each(which, &values)?;
        }
        Ok(())
    }
}

/// Refuses an array that no run writes: a value that is NaN or infinite, or a second moment below
/// zero (a sum of squares). Resumed, it would train on and write checkpoints of NaN.
fn check_values(path: &Path, which: OptimizerArray, values: &[f32]) -> Result<()> {
    let bad = |x: &f32| !x.is_finite() || (which == OptimizerArray::V && *x < 0.0);
    if let Some(i) = values.iter().position(bad) {
        let n = values.iter().filter(|x| bad(x)).count();
        let what = match which {
            OptimizerArray::V => "not finite or negative",
            _ => "not finite",
        };
        bail!(
            "{}: AdamW's {} holds {} {what}, the first {} at element {i}: the state is damaged; \
             resume from another one",
            path.display(),
            which.name(),
            crate::text::count(n, "value", "values"),
            values[i]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::parse_header;

    #[test]
    fn the_fingerprint_is_fnv_1a_over_the_weights_bits() {
        // FNV-1a 64 by hand: the offset basis, then (h ^ word) * prime per word
        let (basis, prime) = (0xcbf2_9ce4_8422_2325u64, 0x100_0000_01b3u64);
        assert_eq!(weights_fingerprint(&[]), basis);
        let one = (basis ^ 1.0f32.to_bits() as u64).wrapping_mul(prime);
        assert_eq!(weights_fingerprint(&[1.0]), one);
        let two = (one ^ (-0.0f32).to_bits() as u64).wrapping_mul(prime);
        assert_eq!(weights_fingerprint(&[1.0, -0.0]), two);
        // a sign, an order or one bit of one weight changes it
        let w = [0.5f32, -2.0, 3.25];
        let f = weights_fingerprint(&w);
        for other in [
            [0.5, 2.0, 3.25],
            [-2.0, 0.5, 3.25],
            [0.5, -2.0, f32::from_bits(3.25f32.to_bits() ^ 1)],
        ] {
            assert_ne!(weights_fingerprint(&other), f, "{other:?}");
        }
    }

    fn state(master: bool) -> TrainState {
        TrainState {
            step: 40,
            data: DataPosition {
                batch: 4,
                seq: 64,
                shuffle_seed: Some(0x1234_5678_9abc_def0),
                batches_served: (1 << 33) + 7,
                tokens: 338_025,
                shards: 1,
            },
            num_parameters: 5,
            master_weights: master,
            outliers: Outliers {
                loss: OutlierWindow::from_values(&[10.5, 9.25, 8.0]),
                norm: OutlierWindow::from_values(&[0.75; WINDOW]),
                skipped_in_a_row: 1,
            },
            best_val: Some(BestVal {
                step: 30,
                loss: 3.75,
                model: Some(0xfedc_ba98_7654_3210),
            }),
            optimizer: Some(OptimizerSettings {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                grad_clip: 0.0,
            }),
            model_fingerprint: Some(0x0123_4567_89ab_cdef),
        }
    }

    /// Five distinct values for each array.
    fn values(which: OptimizerArray) -> Vec<f32> {
        let k = match which {
            OptimizerArray::M => 0.25,
            OptimizerArray::V => 1e-3,
            OptimizerArray::Master => -3.0,
        };
        // (a second moment is never negative: reading refuses one)
        let offset = if which == OptimizerArray::V {
            0.0
        } else {
            -0.5
        };
        (0..5).map(|i| k * i as f32 + offset).collect()
    }

    fn write(path: &Path, s: &TrainState) -> Result<()> {
        write_train_state(path, s, |which| Ok(values(which)))
    }

    #[test]
    fn round_trips_and_lays_out_the_header_as_documented() {
        let dir = crate::test_dir("train-state");
        for master in [false, true] {
            let path = dir.join(format!("state_{master}.bin"));
            let s = state(master);
            let mut asked = Vec::new();
            write_train_state(&path, &s, |which| {
                asked.push(which);
                Ok(values(which))
            })
            .unwrap();
            assert_eq!(
                asked,
                s.arrays(),
                "each array asked for once, in the file's order"
            );
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), HEADER_BYTES + 4 * 5 * (2 + master as usize));
            let h = parse_header(&path, &bytes, STATE_MAGIC).unwrap();
            assert_eq!(
                &h[..7],
                &[20261202, 1, 40, 4, 64, master as i32, 1],
                "magic, version, step, B, T, master, shuffle"
            );
            assert_eq!(h[8] as u32, 0x9abc_def0);
            assert_eq!(h[9] as u32, 0x1234_5678);
            assert_eq!((h[10], h[11]), (7, 2), "batches served, low word first");
            assert_eq!((h[12], h[13], h[14], h[16]), (5, 0, 338_025, 1));
            // the outlier windows: counts, skipped in a row, values
            assert_eq!(&h[17..20], &[3, 64, 1]);
            // the best validation loss: there is one, of step 30, 3.75
            assert_eq!(&h[20..23], &[1, 30, 3.75f32.to_bits() as i32]);
            // the optimizer's settings: recorded, beta1, beta2, eps, weight decay, clip
            let bits = |x: f32| x.to_bits() as i32;
            assert_eq!(h[23], 1);
            assert_eq!(h[24..29], [0.9, 0.95, 1e-8, 0.1, 0.0].map(bits));
            // the model's fingerprint: recorded, low word first
            assert_eq!(&h[29..32], &[1, 0x89ab_cdefu32 as i32, 0x0123_4567]);
            assert_eq!(h[32..35], [10.5f32, 9.25, 8.0].map(|v| v.to_bits() as i32));
            assert_eq!(h[35], 0);
            assert_eq!(h[96], 0.75f32.to_bits() as i32);
            assert_eq!(h[159], 0.75f32.to_bits() as i32);
            // the best model's fingerprint: recorded, low word first
            assert_eq!(&h[160..163], &[1, 0x7654_3210, 0xfedc_ba98u32 as i32]);
            assert!(h[163..].iter().all(|&w| w == 0));
            // the arrays follow the header: m[1] = 0.25 - 0.5
            let m1 = f32::from_le_bytes(
                bytes[HEADER_BYTES + 4..HEADER_BYTES + 8]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(m1, -0.25);
            let file = TrainStateFile::open(&path).unwrap();
            assert_eq!(file.header, s);
            let mut read = Vec::new();
            file.read_arrays(|which, v| {
                read.push((which, v.to_vec()));
                Ok(())
            })
            .unwrap();
            let want: Vec<_> = s.arrays().iter().map(|&w| (w, values(w))).collect();
            assert_eq!(read, want);
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A state that records nothing optional (an unshuffled run with empty outlier windows, no
    /// best loss, no settings, no fingerprints) has zeros in every word it leaves unused, as the
    /// layout says, and reads back as it was.
    #[test]
    fn what_a_state_does_not_record_is_zero() {
        let dir = crate::test_dir("train-state-zero");
        let path = dir.join("state.bin");
        let mut s = state(false);
        s.data.shuffle_seed = None;
        s.outliers = Outliers::default();
        (s.best_val, s.optimizer, s.model_fingerprint) = (None, None, None);
        write(&path, &s).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let h = parse_header(&path, &bytes, STATE_MAGIC).unwrap();
        assert_eq!(&h[..6], &[20261202, 1, 40, 4, 64, 0]);
        assert_eq!(&h[6..10], &[0; 4], "no shuffle, and no seed");
        assert!(h[17..].iter().all(|&w| w == 0), "{:?}", &h[17..]);
        assert_eq!(TrainStateFile::open(&path).unwrap().header, s);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = crate::test_dir("train-state-bad");
        let path = dir.join("state.bin");
        write(&path, &state(true)).unwrap();
        let good = std::fs::read(&path).unwrap();
        let err = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            format!("{:#}", TrainStateFile::open(&path).unwrap_err())
        };
        assert!(err(&good[..good.len() - 4]).contains("training state is truncated"));
        let mut long = good.clone();
        long.extend_from_slice(&[0; 4]);
        assert!(err(&long).contains("training state is too long"));
        assert!(err(&good[..100]).contains("shorter than the 1024-byte header"));
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(err(&bad).contains("bad magic number"));
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&crate::formats::checkpoint::CHECKPOINT_MAGIC.to_le_bytes());
        assert!(err(&bad).contains("this is a model checkpoint, not a training state"));
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(err(&bad).contains("unsupported training state version 2"));
        let mut bad = good.clone();
        bad[20] = 2; // header[5], the master weights flag
        assert!(err(&bad).contains("master weights (header[5]) is 2, must be 0 or 1"));
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&0i32.to_le_bytes()); // header[3], B
        assert!(err(&bad).contains("B (header[3]) is 0, must be at least 1"));
        let mut bad = good.clone();
        bad[4 * 18..4 * 19].copy_from_slice(&65i32.to_le_bytes()); // the norm window's count
        assert!(err(&bad).contains("outlier window (header[18]) holds 65 values, at most 64"));
        let mut bad = good.clone();
        bad[4 * 19..4 * 20].copy_from_slice(&3i32.to_le_bytes()); // steps skipped in a row
        assert!(err(&bad).contains("steps skipped in a row (header[19]) is 3, at most 2"));
        let mut bad = good.clone();
        bad[4 * 33..4 * 34].copy_from_slice(&f32::NAN.to_le_bytes()); // the second loss
        assert!(err(&bad).contains("outlier window value (header[33]) is NaN"));
        let mut bad = good.clone();
        bad[4 * 20..4 * 21].copy_from_slice(&2i32.to_le_bytes()); // the best loss's flag
        assert!(err(&bad).contains("best validation loss (header[20]) is 2, must be 0 or 1"));
        let mut bad = good.clone();
        bad[4 * 21..4 * 22].copy_from_slice(&41i32.to_le_bytes()); // its step, after the state's
        assert!(err(&bad)
            .contains("best validation loss is of step 41 (header[21]), after its step 40"));
        for v in [f32::NAN, f32::INFINITY, -1.0] {
            let mut bad = good.clone();
            bad[4 * 22..4 * 23].copy_from_slice(&v.to_le_bytes());
            assert!(
                err(&bad).contains(&format!("best validation loss (header[22]) is {v}")),
                "{v}"
            );
        }
        // a loss of 0 (a batch learnt to certainty: --overfit-batch) is a loss all the same
        let mut zero = good.clone();
        zero[4 * 22..4 * 23].copy_from_slice(&0f32.to_le_bytes());
        std::fs::write(&path, &zero).unwrap();
        let best = TrainStateFile::open(&path)
            .unwrap()
            .header
            .best_val
            .unwrap();
        assert_eq!((best.step, best.loss), (30, 0.0));
        let mut bad = good.clone();
        bad[4 * 23..4 * 24].copy_from_slice(&3i32.to_le_bytes()); // the settings' flag
        assert!(err(&bad).contains("optimizer settings (header[23]) is 3, must be 0 or 1"));
        let mut bad = good.clone();
        bad[4 * 26..4 * 27].copy_from_slice(&f32::INFINITY.to_le_bytes()); // eps
        assert!(err(&bad).contains("optimizer setting (header[26]) is inf"));
        let mut bad = good.clone();
        bad[4 * 29..4 * 30].copy_from_slice(&(-1i32).to_le_bytes()); // the fingerprint's flag
        assert!(err(&bad).contains("model fingerprint (header[29]) is -1, must be 0 or 1"));
        let mut bad = good.clone();
        bad[4 * 160..4 * 161].copy_from_slice(&7i32.to_le_bytes()); // the best model's flag
        assert!(err(&bad).contains("best model fingerprint (header[160]) is 7, must be 0 or 1"));
        // a state from before the windows, the best loss, the settings and the fingerprint
        // (zeros there) reads with empty windows and nothing else recorded
        let mut old = good.clone();
        old[4 * 17..4 * 163].fill(0);
        std::fs::write(&path, &old).unwrap();
        let h = TrainStateFile::open(&path).unwrap().header;
        assert_eq!(h.outliers, Outliers::default());
        assert_eq!(h.best_val, None);
        assert_eq!((h.optimizer, h.model_fingerprint), (None, None));
        // an array of the wrong length, or the engine's error, fails the write and leaves no file
        std::fs::remove_file(&path).unwrap();
        let e = write_train_state(&path, &state(false), |_| Ok(vec![0.0; 4])).unwrap_err();
        assert!(format!("{e:#}").contains("AdamW's m has 4 values, the model 5 parameters"));
        let e = write_train_state(&path, &state(false), |_| anyhow::bail!("no GPU")).unwrap_err();
        assert!(format!("{e:#}").contains("no GPU"));
        assert!(!path.exists() && !dir.join("state.bin.tmp").exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
