//! A run's checkpoints on disk: writing one (the model, then the training state that `--resume`
//! continues from), keeping only the last N (`--keep-checkpoints`), and finding and restoring a
//! run to resume. File names: `model_NNNNNN.bin` (an llm.c checkpoint) and `state_NNNNNN.bin`
//! (`formats::train_state`), NNNNNN the steps done; and `model_best.bin`, the model of the
//! lowest validation loss so far (`--keep-best`).

use crate::data::DataLoader;
use crate::engine::Engine;
use crate::formats::checkpoint::{write_checkpoint, CheckpointPrecision};
use crate::formats::train_state::{
    write_train_state, BestVal, DataPosition, TrainState, TrainStateFile,
};
use crate::outliers::Outliers;
use crate::outln;
use crate::train::TrainArgs;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// A checkpoint's file name: `model_000040.bin`, `state_000040.bin`.
pub fn checkpoint_name(kind: &str, step: usize) -> String {
    format!("{kind}_{step:06}.bin")
}

/// The file name of `--keep-best`'s model.
pub const BEST_MODEL: &str = "model_best.bin";

/// A run to continue (`--resume`): its training state, checked against the flags given, and the
/// model checkpoint written with it.
#[derive(Debug)]
pub struct Resume {
    pub state: TrainStateFile,
    pub model_path: PathBuf,
}

impl Resume {
    /// Opens the training state `path` names (a state file, or the latest in a folder whose model
    /// checkpoint is there too), checks that `args` continue its run (the same batches and data
    /// order, and steps left) and finds the model checkpoint of its step beside it.
    pub fn open(path: &Path, args: &TrainArgs) -> Result<Resume> {
        let state_path = if path.is_dir() {
            latest_state(path)?
        } else {
            path.to_path_buf()
        };
        let state = TrainStateFile::open(&state_path)?;
        let (h, path) = (&state.header, state_path.display());
        let d = &h.data;
        if (d.batch, d.seq) != (args.batch, args.seq) {
            bail!(
                "{path}: the run trained on batches of B={} x T={}; resume it with --batch {} --seq \
                 {} (got --batch {} --seq {})",
                d.batch,
                d.seq,
                d.batch,
                d.seq,
                args.batch,
                args.seq
            );
        }
        let order = |seed: Option<u64>| match seed {
            Some(s) => format!("shuffled with seed {s} (--shuffle --seed {s})"),
            None => "in order (no --shuffle)".to_string(),
        };
        let shuffle = args.shuffle.then_some(args.seed);
        if d.shuffle_seed != shuffle {
            bail!(
                "{path}: the run read its training data {}; resume it the same way (got {})",
                order(d.shuffle_seed),
                order(shuffle)
            );
        }
        if h.step >= args.steps {
            bail!(
                "{path}: the run is at step {} and --steps is {}{}: nothing left to train (give a \
                 larger --steps)",
                h.step,
                args.steps,
                match args.epochs {
                    Some(f) => format!(" (--epochs {f})"),
                    None => String::new(),
                }
            );
        }
        let dir = state_path.parent().unwrap_or(Path::new("."));
        let model_path = dir.join(checkpoint_name("model", h.step));
        if !model_path.is_file() {
            bail!(
                "{path}: the model checkpoint of its step {} ({}) is missing",
                h.step,
                model_path.display()
            );
        }
        Ok(Resume { state, model_path })
    }

    /// Puts the run's optimizer state into `engine` and `loader` where the run left its
    /// training data (after checking it is the same data); returns the steps done, the run's
    /// outlier windows and its lowest validation loss so far.
    pub(crate) fn restore(
        self,
        engine: &mut dyn Engine,
        loader: &mut DataLoader,
    ) -> Result<(usize, Outliers, Option<BestVal>)> {
        let (h, path) = (&self.state.header, self.state.path.display().to_string());
        let (step, served, outliers) = (h.step, h.data.batches_served, h.outliers.clone());
        let best_val = h.best_val;
        let d = &h.data;
        let have = (loader.num_tokens() as u64, loader.files().len());
        if (d.tokens, d.shards) != have {
            bail!(
                "{path}: the run trained on {} shard(s) of {} tokens in all, --train '{}' has {} \
                 of {}: resume it with the same training data",
                d.shards,
                d.tokens,
                loader.pattern(),
                have.1,
                have.0
            );
        }
        let n = crate::params::num_parameters(engine.config());
        if h.num_parameters != n {
            bail!(
                "{path}: the state holds AdamW's arrays for {} parameters, the model has {n}",
                h.num_parameters
            );
        }
        self.state
            .read_arrays(|which, values| engine.set_optimizer_array(which, values))
            .with_context(|| format!("{path}: cannot resume"))?;
        loader.skip_batches(served)?;
        Ok((step, outliers, best_val))
    }
}

/// Writes the checkpoint of `step` (steps done) to `--out-dir`: the model and, unless
/// `--no-state`, the training state beside it (the data's position from `loader`, the run's
/// `outliers` and its lowest validation loss, `best_val`). Returns the model's path.
pub(crate) fn save_checkpoint(
    args: &TrainArgs,
    engine: &mut dyn Engine,
    loader: &DataLoader,
    (outliers, best_val): (&Outliers, Option<BestVal>),
    step: usize,
) -> Result<PathBuf> {
    let cfg = *engine.config();
    let path = args.out_dir.join(checkpoint_name("model", step));
    write_model(engine, &path)?;
    outln!("wrote {}", path.display());
    // after the model: a state is only ever found beside its model (see latest_state)
    if !args.no_state {
        let state = TrainState {
            step,
            data: DataPosition {
                batch: args.batch,
                seq: args.seq,
                shuffle_seed: args.shuffle.then_some(args.seed),
                batches_served: loader.batches_served() as u64,
                tokens: loader.num_tokens() as u64,
                shards: loader.files().len(),
            },
            num_parameters: crate::params::num_parameters(&cfg),
            master_weights: engine.has_master_weights(),
            outliers: outliers.clone(),
            best_val,
        };
        let state_path = args.out_dir.join(checkpoint_name("state", step));
        write_train_state(&state_path, &state, |which| engine.optimizer_array(which))?;
        outln!("wrote {}", state_path.display());
    }
    Ok(path)
}

/// Writes the engine's model to `path` as an llm.c checkpoint of the weights it computes with:
/// version 3 (fp32) from an fp32 engine, version 5 (bf16, exact) from a bf16 one.
fn write_model(engine: &mut dyn Engine, path: &Path) -> Result<()> {
    let cfg = *engine.config();
    let precision = CheckpointPrecision::from(engine.precision());
    write_checkpoint(path, &cfg, &engine.params()?, precision)
}

/// `--keep-best`: after a validation of loss `val` at `step` steps done, writes the model as
/// [`BEST_MODEL`] in `--out-dir` when `val` is the run's lowest so far (`best`, which it then
/// becomes). A loss that is not finite is never the best.
pub(crate) fn keep_best(
    args: &TrainArgs,
    engine: &mut dyn Engine,
    best: &mut Option<BestVal>,
    step: usize,
    val: f32,
) -> Result<()> {
    if !(val.is_finite() && best.is_none_or(|b| val < b.loss)) {
        return Ok(());
    }
    let path = args.out_dir.join(BEST_MODEL);
    write_model(engine, &path)?;
    outln!(
        "wrote {} (val loss {val:.4} after step {step}, the lowest so far{})",
        path.display(),
        match best {
            Some(b) => format!("; was {:.4} after step {}", b.loss, b.step),
            None => String::new(),
        }
    );
    *best = Some(BestVal { step, loss: val });
    Ok(())
}

/// Removes the model checkpoint and training state of `step` from `dir` (a warning where that
/// fails: training goes on).
pub(crate) fn remove_checkpoint(dir: &Path, step: usize) {
    for kind in ["model", "state"] {
        let path = dir.join(checkpoint_name(kind, step));
        match std::fs::remove_file(&path) {
            Ok(()) => outln!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: cannot remove {}: {e}", path.display()),
        }
    }
}

/// The training state of the highest step in `dir` whose model checkpoint is there too.
fn latest_state(dir: &Path) -> Result<PathBuf> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        // a state's canonical name (checkpoint_name), whose model is there too
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let step: Option<usize> = name
            .strip_prefix("state_")
            .and_then(|n| n.strip_suffix(".bin")?.parse().ok())
            .filter(|&step| name == checkpoint_name("state", step));
        if let Some(step) = step {
            let model = dir.join(checkpoint_name("model", step));
            if model.is_file() && best.as_ref().is_none_or(|(s, _)| step > *s) {
                best = Some((step, entry.path()));
            }
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        anyhow!(
            "{}: no training state to resume from (a run writes state_NNNNNN.bin beside each \
             model_NNNNNN.bin checkpoint, unless --no-state)",
            dir.display()
        )
    })
}
