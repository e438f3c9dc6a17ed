//! A run's checkpoints on disk: writing one (the model, then the training state that `--resume`
//! continues from), keeping only the last N (`--keep-checkpoints`), finding and restoring a run
//! to resume, and keeping one run to a folder (`set_aside_earlier_run`). File names: `model_NNNNNN.bin` (an llm.c checkpoint) and `state_NNNNNN.bin`
//! (`formats::train_state`), NNNNNN the steps done; and `model_best.bin`, the model of the
//! lowest validation loss so far (`--keep-best`).

use crate::data::DataLoader;
use crate::engine::Engine;
use crate::formats::checkpoint::{write_checkpoint, CheckpointPrecision};
use crate::formats::train_state::{weights_fingerprint, write_train_state, BestVal};
use crate::formats::train_state::{DataPosition, OptimizerSettings, TrainState, TrainStateFile};
use crate::outliers::Outliers;
use crate::outln;
use crate::text::count;
use crate::train::TrainArgs;
use anyhow::{bail, Context, Result};
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
        check_micro_batches(&path.to_string(), h.step, d.batches_served, args)?;
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
        optimizer_notes(&state_path, state.header.optimizer, args);
        Ok(Resume { state, model_path })
    }

    /// Checks that `params`, read from [`model_path`](Self::model_path), are the weights written
    /// with the state (where it recorded their fingerprint): another model in that file's place
    /// (copied over it, converted) would not continue the run the state's moments belong to.
    pub fn check_weights(&self, params: &[f32]) -> Result<()> {
        let Some(want) = self.state.header.model_fingerprint else {
            return Ok(());
        };
        if weights_fingerprint(params) != want {
            bail!(
                "{}: these are not the weights written with {} (their fingerprint differs): the \
                 file was replaced or changed since; resume from a state whose model is as it \
                 was written, or train from this model as a new run (--model {} without \
                 --resume)",
                self.model_path.display(),
                self.state.path.display(),
                self.model_path.display()
            );
        }
        Ok(())
    }

    /// With `--resume`, `--model` may be given too (the flags of the run, as the Ctrl-C line
    /// asks), but the model is the checkpoint's (`config`): `model` must describe the same one,
    /// a descriptor dN or a model file (or Hugging Face folder) of the same dimensions.
    pub fn check_model(&self, model: &str, config: &crate::config::GPT2Config) -> Result<()> {
        let given = crate::train::model_config(model)
            .with_context(|| format!("--model {model} (given with --resume)"))?;
        if given != *config {
            bail!(
                "--model {model} is {given}, but the run resumed from {} trained {config} ({}): \
                 give the run's own --model, or leave --model out (a resumed run's model is its \
                 checkpoint's)",
                self.state.path.display(),
                self.model_path.display()
            );
        }
        Ok(())
    }

    /// Checks that `loader` serves the training data the run trained on (as many shards and
    /// tokens): a run resumed on other data would not continue it.
    pub fn check_data(&self, loader: &DataLoader) -> Result<()> {
        let (d, path) = (&self.state.header.data, self.state.path.display());
        let have = (loader.num_tokens() as u64, loader.files().len());
        if (d.tokens, d.shards) != have {
            bail!(
                "{path}: the run trained on {} of {} in all, --train '{}' has {} of {}: resume it \
                 with the same training data",
                count(d.shards, "shard", "shards"),
                count(d.tokens, "token", "tokens"),
                loader.pattern(),
                count(have.1, "shard", "shards"),
                count(have.0, "token", "tokens")
            );
        }
        Ok(())
    }

    /// Puts the run's optimizer state into `engine` and `loader` where the run left its
    /// training data (which the run checked is the same data with [`Resume::check_data`] before
    /// it made its folder); returns the steps done, the run's outlier windows and its lowest
    /// validation loss so far.
    pub(crate) fn restore(
        self,
        engine: &mut dyn Engine,
        loader: &mut DataLoader,
    ) -> Result<(usize, Outliers, Option<BestVal>)> {
        let (h, path) = (&self.state.header, self.state.path.display().to_string());
        let (step, served, outliers) = (h.step, h.data.batches_served, h.outliers.clone());
        let best_val = h.best_val;
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

/// The folder of the run `--resume` names (a folder, or a state file in one): where a resumed
/// run goes on when no `--out-dir` is given.
pub fn folder_of_resumed(resume: &Path) -> PathBuf {
    if resume.is_dir() {
        return resume.to_path_buf();
    }
    match resume.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Notes each optimizer setting (`--beta1`, `--beta2`, `--eps`, `--weight-decay`,
/// `--grad-clip`) that `args` give another value than the run resumed from `path` took its steps
/// with (`recorded`; None: a state from before they were recorded, which cannot say). A run may
/// change them on purpose (a tighter clip after a spike), but then it no longer continues the
/// same run exactly, and the note says so.
fn optimizer_notes(path: &Path, recorded: Option<OptimizerSettings>, args: &TrainArgs) {
    let Some(before) = recorded else {
        return;
    };
    let now = args.optimizer_settings();
    for ((flag, was), (_, is)) in before.named().into_iter().zip(now.named()) {
        if was.to_bits() != is.to_bits() {
            crate::errln!(
                "note: the run resumed from {} took its steps with {flag} {}, these flags give {}: \
                 the steps from here use the new value",
                path.display(),
                crate::text::typed(was),
                crate::text::typed(is)
            );
        }
    }
}

/// Checks that a run resumed from the state at `path` (`step` steps done, `served` batches of
/// its training data served) takes the micro-batches a step it took: `--grad-accum` (or
/// `--total-batch`) and `--overfit-batch`, which the state does not record but its counts show. A
/// run serves every step's micro-batches (a skipped step's too; a divergence's checkpoint puts
/// back its step's), so `served` is `step` x the micro-batches, or 0 for `--overfit-batch`, which
/// trains on the first batch without moving on. A count that is neither (a state of a run that
/// was resumed with other flags) cannot say, and is let through.
fn check_micro_batches(path: &str, step: usize, served: u64, args: &TrainArgs) -> Result<()> {
    let (step, given) = (step as u64, args.micro_batches() as u64);
    if step == 0 || !served.is_multiple_of(step) {
        return Ok(());
    }
    let took = served / step;
    let (served, steps) = (
        count(served, "batch", "batches"),
        count(step, "step", "steps"),
    );
    if took == 0 && !args.overfit_batch {
        bail!(
            "{path}: the run trained on its first batch only (--overfit-batch: {served} of the \
             training data served in {steps}); resume it with --overfit-batch"
        );
    }
    if took > 0 && args.overfit_batch {
        bail!(
            "{path}: the run read its training data ({served} in {steps}), it did not overfit \
             one batch; resume it without --overfit-batch"
        );
    }
    if took > 0 && took != given {
        let (b, t) = (args.batch, args.seq);
        bail!(
            "{path}: the run took {} a step ({served} of {b}x{t} in {steps}); resume it with \
             --grad-accum {took} (or --total-batch {}), got {given}",
            count(took, "micro-batch", "micro-batches"),
            took as usize * b * t
        );
    }
    Ok(())
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
    let fingerprint = write_model(engine, &path)?;
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
            optimizer: Some(args.optimizer_settings()),
            model_fingerprint: Some(fingerprint),
        };
        let state_path = args.out_dir.join(checkpoint_name("state", step));
        write_train_state(&state_path, &state, |which| engine.optimizer_array(which))?;
        outln!("wrote {}", state_path.display());
    }
    Ok(path)
}

/// Writes the engine's model to `path` as an llm.c checkpoint of the weights it computes with:
/// version 3 (fp32) from an fp32 engine, version 5 (bf16, exact) from a bf16 one. Returns the
/// weights' [`weights_fingerprint`] (of the values the file gives back: bf16 ones are exact).
fn write_model(engine: &mut dyn Engine, path: &Path) -> Result<u64> {
    let cfg = *engine.config();
    let precision = CheckpointPrecision::from(engine.precision());
    let params = engine.params()?;
    write_checkpoint(path, &cfg, &params, precision)?;
    Ok(weights_fingerprint(&params))
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
    // (made read-only since the run began)
    check_best_replaceable(&args.out_dir)?;
    let model = Some(write_model(engine, &path)?);
    outln!(
        "wrote {} (val loss {val:.4} after step {step}, the lowest so far{})",
        path.display(),
        match best {
            Some(b) => format!("; was {:.4} after step {}", b.loss, b.step),
            None => String::new(),
        }
    );
    *best = Some(BestVal {
        step,
        loss: val,
        model,
    });
    Ok(())
}

/// `--keep-best` in a resumed run: makes [`BEST_MODEL`] in `out_dir` the model of the lowest
/// validation loss its state records (`best`), which the run compares its own with. Where the
/// file there is not that model (by the fingerprint the state records: an attempt past the
/// resume point wrote a later best over it, which [`set_aside_earlier_run`] copied aside; or the
/// run resumed from another folder, `resumed_dir`), it is copied from that folder's
/// [`BEST_MODEL`] or from the checkpoint of that step, in either folder. Where none is that
/// model, a note says so and the search for the lowest loss starts again (`best` None), so
/// that the end of the run never names a file that is not its best model. A state from before
/// the fingerprint was recorded trusts the file in `out_dir`, or copies `resumed_dir`'s.
pub(crate) fn restore_best_model(
    out_dir: &Path,
    resumed_dir: &Path,
    best: &mut Option<BestVal>,
) -> Result<()> {
    let Some(b) = *best else {
        return Ok(());
    };
    let target = out_dir.join(BEST_MODEL);
    let is_best = |path: &Path| {
        path.is_file()
            && b.model.is_none_or(|want| {
                crate::formats::checkpoint::read_checkpoint(path)
                    .is_ok_and(|ck| weights_fingerprint(&ck.params) == want)
            })
    };
    if is_best(&target) {
        return Ok(());
    }
    let at_step = checkpoint_name("model", b.step);
    let candidates = [
        resumed_dir.join(BEST_MODEL),
        resumed_dir.join(&at_step),
        out_dir.join(&at_step),
    ];
    let what = format!(
        "the model of the run's lowest validation loss ({:.4} after step {})",
        b.loss, b.step
    );
    match candidates
        .iter()
        .find(|c| !same_dir(c, &target) && is_best(c))
    {
        Some(from) => {
            let tmp = out_dir.join(format!("{BEST_MODEL}.tmp"));
            std::fs::copy(from, &tmp)
                .and_then(|_| std::fs::rename(&tmp, &target))
                .with_context(|| {
                    format!(
                        "{}: cannot copy {} there ({what}); copy it yourself, or drop --keep-best",
                        target.display(),
                        from.display()
                    )
                })?;
            outln!("copied {} to {} ({what})", from.display(), target.display());
        }
        None => {
            crate::errln!(
                "note: {what} is not on disk ({} is {}): --keep-best looks for the lowest loss \
                 again among this run's validations",
                target.display(),
                if target.exists() {
                    "another model"
                } else {
                    "not there"
                }
            );
            *best = None;
        }
    }
    Ok(())
}

/// An error where [`BEST_MODEL`] in `out_dir` is read-only, saying what to do: no flag names that
/// file, so another name is no way out.
pub(crate) fn check_best_replaceable(out_dir: &Path) -> Result<()> {
    crate::formats::check_replaceable_or(
        &out_dir.join(BEST_MODEL),
        "make it writable (chmod u+w), or drop --keep-best",
    )
}

/// Removes the model checkpoint and training state of `step` from `dir` (a warning where that
/// fails: training goes on).
pub(crate) fn remove_checkpoint(dir: &Path, step: usize) {
    for kind in ["model", "state"] {
        let path = dir.join(checkpoint_name(kind, step));
        match std::fs::remove_file(&path) {
            Ok(()) => outln!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::errln!("warning: cannot remove {}: {e}", path.display()),
        }
    }
}

/// The step of a checkpoint's file name of `kind` (`model_000040.bin`: 40), if it is one's
/// canonical name ([`checkpoint_name`]; `model_best.bin` and `state_000040.bin.tmp` are not).
fn checkpoint_step(kind: &str, name: &str) -> Option<usize> {
    let step: usize = name
        .strip_prefix(kind)?
        .strip_prefix('_')?
        .strip_suffix(".bin")?
        .parse()
        .ok()?;
    (name == checkpoint_name(kind, step)).then_some(step)
}

/// The steps of the checkpoints of `kind` among file `names`, oldest first.
fn checkpoint_steps(names: &[String], kind: &str) -> Vec<usize> {
    let mut steps: Vec<usize> = names
        .iter()
        .filter_map(|n| checkpoint_step(kind, n))
        .collect();
    steps.sort_unstable();
    steps
}

/// The file names in `dir` (those that are not UTF-8 are no run's).
fn file_names(dir: &Path) -> Result<Vec<String>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// The training state of the highest step in `dir`, which must have its model checkpoint beside
/// it. A newest state without its model is an error, not a reason to fall back on an older one:
/// the run would go on from further back than the user thinks and, step by step, write over the
/// newer state (a model removed by hand, or a copy that missed it). Naming the older state
/// explicitly says that is what is meant.
fn latest_state(dir: &Path) -> Result<PathBuf> {
    let names = file_names(dir)?;
    let (states, models) = (
        checkpoint_steps(&names, "state"),
        checkpoint_steps(&names, "model"),
    );
    let Some(&newest) = states.last() else {
        bail!(
            "{}: no training state to resume from (a run writes state_NNNNNN.bin beside each \
             model_NNNNNN.bin checkpoint, unless --no-state)",
            dir.display()
        );
    };
    if !models.contains(&newest) {
        let older = states
            .iter()
            .rev()
            .find(|s| models.contains(s))
            .map(|&s| {
                format!(
                    "; to go on from an older one, name it: --resume {}",
                    dir.join(checkpoint_name("state", s)).display()
                )
            })
            .unwrap_or_default();
        bail!(
            "{}: the newest training state, {}, has no model checkpoint beside it ({} is \
             missing), so it cannot be resumed{older}",
            dir.display(),
            checkpoint_name("state", newest),
            checkpoint_name("model", newest)
        );
    }
    Ok(dir.join(checkpoint_name("state", newest)))
}

/// Whether `a` and `b` name the same folder, or file (the same path, or both found and the
/// same once canonical).
pub(crate) fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(a), Ok(b)) if a == b
        )
}

/// A run's hold on its `--out-dir`: an exclusive lock on the folder itself (flock, so the system
/// releases it when the process ends, however it ends), kept for the run's duration. Two runs
/// writing into one folder at once, or a `--resume` of a run that is still going, would replace
/// each other's checkpoints without a word (one run's model beside the other's state), move the
/// live run's log aside, and interleave the log's lines.
///
/// The command takes it before it loads the model where the folder exists already (a second run
/// is refused at once, not after minutes of loading, nor with a GPU out of memory beside the live
/// run), and the run takes it again when it has made the folder: within one process a folder
/// locked already is not locked a second time (a second flock from this process would wait on
/// the first).
#[derive(Debug)]
pub struct OutDirLock {
    /// The folder held, while this lock is the one that took it.
    held: Option<(PathBuf, std::fs::File)>,
}

/// The folders this process holds locks on (canonical paths).
static LOCKED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Drop for OutDirLock {
    fn drop(&mut self) {
        if let Some((path, _)) = self.held.take() {
            let mut locked = LOCKED.lock().unwrap_or_else(|e| e.into_inner());
            locked.retain(|p| p != &path);
        }
    }
}

/// Takes the lock on `out_dir` (which exists), or an error when another process holds it. Where
/// the file system cannot lock (some network file systems), a note says so and the run goes on
/// unlocked.
pub fn lock_out_dir(out_dir: &Path) -> Result<OutDirLock> {
    let folder = std::fs::File::open(out_dir)
        .with_context(|| format!("{}: cannot open the output folder", out_dir.display()))?;
    let canonical = out_dir
        .canonicalize()
        .with_context(|| format!("{}: cannot open the output folder", out_dir.display()))?;
    let mut locked = LOCKED.lock().unwrap_or_else(|e| e.into_inner());
    if locked.contains(&canonical) {
        return Ok(OutDirLock { held: None });
    }
    match folder.try_lock() {
        Ok(()) => {
            locked.push(canonical.clone());
            Ok(OutDirLock {
                held: Some((canonical, folder)),
            })
        }
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another run is writing into this folder (it holds the folder's lock): wait for \
             it to end, or give this run another --out-dir",
            out_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            crate::console::write_err(format_args!(
                "note: {}: the output folder cannot be locked ({e}): nothing stops another run \
                 from writing into it at the same time\n",
                out_dir.display()
            ));
            Ok(OutDirLock { held: None })
        }
    }
}

/// Clears `--out-dir` of what another run left there, before a run writes to it: a fresh run
/// (`resumed_at` None) moves every file of a run (`model_NNNNNN.bin`, `state_NNNNNN.bin`,
/// `model_best.bin`, `log.jsonl`, and a `.tmp` of any of them) into a new subfolder
/// `earlier_run_N`; a run resumed from a state in this folder after `step` steps moves only the
/// checkpoints of steps after it (those of an attempt it replaces), and copies there the log and
/// `model_best.bin` when that attempt went past `step` (the resumed run drops the log's later
/// records, and may write a best model over the attempt's; the copy of the best model is a hard
/// link where the file system allows, since it is replaced, never written into).
///
/// Why move rather than refuse or overwrite: a fresh run that left the earlier run's files beside
/// its own mixed two runs in one folder: the log was replaced, and `--resume DIR` would later
/// pick the newest state, the other run's (of another model, or further along), without a word.
/// Refusing would break running the same command twice (the README's own, whose checkpoints go
/// to the default `out`), and removing would lose a run. A rename loses nothing, costs nothing,
/// and leaves the folder holding exactly one run; the earlier files are where the note says.
///
/// `start`: the model a fresh run starts from. One of those files (`--model out/model_000500.bin
/// --out-dir out`) is an error: moved, the same command could not run again nor follow its own
/// Ctrl-C hint; left, the run would write its own checkpoint of that step over it.
pub(crate) fn set_aside_earlier_run(
    out_dir: &Path,
    resumed_at: Option<usize>,
    start: Option<&Path>,
) -> Result<()> {
    let start = start.and_then(|k| k.canonicalize().ok());
    let is_start = |name: &str| {
        start
            .as_ref()
            .is_some_and(|k| out_dir.join(name).canonicalize().is_ok_and(|p| &p == k))
    };
    let earlier = |name: &str| -> bool {
        let name = name.strip_suffix(".tmp").unwrap_or(name);
        let step = checkpoint_step("model", name).or_else(|| checkpoint_step("state", name));
        match resumed_at {
            None => step.is_some() || name == BEST_MODEL || name == crate::run_log::LOG_FILE,
            Some(at) => step.is_some_and(|s| s > at),
        }
    };
    let mut names: Vec<String> = file_names(out_dir)?
        .into_iter()
        .filter(|n| earlier(n) && out_dir.join(n).is_file())
        .collect();
    if let Some(name) = names.iter().find(|n| is_start(n)) {
        bail!(
            "--model {} is a checkpoint of the run in {}, which a new run there would set aside \
             (or overwrite): continue that run with --resume, or give the new run another \
             --out-dir",
            out_dir.join(name).display(),
            out_dir.display()
        );
    }
    // the replaced attempt's log and best model, when it went past the resume point
    let copied: Vec<&str> = match resumed_at {
        Some(at)
            if !names.is_empty()
                || crate::run_log::logs_steps_after(
                    &out_dir.join(crate::run_log::LOG_FILE),
                    at,
                ) =>
        {
            [crate::run_log::LOG_FILE, BEST_MODEL]
                .into_iter()
                .filter(|n| out_dir.join(n).is_file())
                .collect()
        }
        _ => Vec::new(),
    };
    if names.is_empty() && copied.is_empty() {
        return Ok(());
    }
    names.sort();
    let aside = (1..)
        .map(|n| out_dir.join(format!("earlier_run_{n}")))
        .find(|p| !p.exists())
        .expect("a free name");
    std::fs::create_dir(&aside).with_context(|| {
        format!(
            "{}: cannot create it to move the files of an earlier run in {} into",
            aside.display(),
            out_dir.display()
        )
    })?;
    for name in &names {
        std::fs::rename(out_dir.join(name), aside.join(name)).with_context(|| {
            format!(
                "{}: cannot move it into {} (it is an earlier run's, and would mix with this \
                 run's files); move or remove it, or give another --out-dir",
                out_dir.join(name).display(),
                aside.display()
            )
        })?;
    }
    for name in &copied {
        let (from, to) = (out_dir.join(name), aside.join(name));
        std::fs::hard_link(&from, &to)
            .or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
            .with_context(|| {
                format!(
                    "{}: cannot copy it into {} (the attempt this run replaces wrote it); copy \
                     it yourself, or give another --out-dir",
                    from.display(),
                    aside.display()
                )
            })?;
    }
    let shown = shown_names(&names);
    let copies = copied.join(" and ");
    let (out, aside) = (out_dir.display(), aside.display());
    let forget = "remove that folder when you no longer need it";
    // (on stdout, with the run's other file lines: "wrote", "removed"; on stderr when stdout
    // has failed: where files went must not be lost)
    crate::console::write_or_stderr(format_args!(
        "{}\n",
        match resumed_at {
            None => format!(
                "{out} held the files of an earlier run ({shown}): moved to {aside} so that they \
                 do not mix with this run's ({forget})"
            ),
            Some(at) if names.is_empty() => format!(
                "{out} held the log of an attempt past step {at}, which this run replaces: its \
                 {copies} copied to {aside} ({forget})"
            ),
            Some(at) if copied.is_empty() => format!(
                "{out} held checkpoints after step {at}, of the attempt this run replaces \
                 ({shown}): moved to {aside} so that they do not mix with this run's ({forget})"
            ),
            Some(at) => format!(
                "{out} held checkpoints after step {at}, of the attempt this run replaces \
                 ({shown}): moved to {aside} so that they do not mix with this run's, and its \
                 {copies} copied there ({forget})"
            ),
        }
    ));
    Ok(())
}

/// The files set aside, as the note names them: all of them up to four, else the first three and
/// their count.
fn shown_names(names: &[String]) -> String {
    match names.len() {
        n if n > 4 => format!("{}, ... ({n} files)", names[..3].join(", ")),
        _ => names.join(", "),
    }
}

/// The steps, oldest first, of the checkpoints (models) up to `step` in `dir`:
/// what a run resumed there after `step` steps wrote before, for `--keep-checkpoints` to count
/// with its own. (The folder holds one run: see [`set_aside_earlier_run`].)
pub(crate) fn earlier_checkpoints(dir: &Path, step: usize) -> Result<Vec<usize>> {
    let mut steps = checkpoint_steps(&file_names(dir)?, "model");
    steps.retain(|&s| s <= step);
    Ok(steps)
}

/// The newest checkpoint (model) a training run wrote in `dir` (`model_NNNNNN.bin` of the
/// largest step), if it holds any: what `--model DIR` of a run's folder meant.
pub fn newest_model(dir: &Path) -> Option<PathBuf> {
    let step = *checkpoint_steps(&file_names(dir).ok()?, "model").last()?;
    Some(dir.join(checkpoint_name("model", step)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock on a run's folder: held while the run's lock lives (a second take within the
    /// process holds nothing of its own, and its end leaves the lock), released when it goes,
    /// and taken anew by a later run of the same process. Another open of the folder stands
    /// for another process (flock locks an open file, not a process).
    #[test]
    fn the_out_dir_lock_is_held_while_its_holder_lives_and_taken_anew_after() {
        let dir = crate::test_dir("out-dir-lock");
        let held = || match std::fs::File::open(&dir).unwrap().try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(e) => panic!("{e:?}"),
        };
        assert!(!held());
        let first = lock_out_dir(&dir).unwrap();
        assert!(held());
        drop(lock_out_dir(&dir).unwrap());
        assert!(held(), "the second take's end left the first's lock");
        drop(first);
        assert!(!held());
        let anew = lock_out_dir(&dir).unwrap();
        assert!(held(), "a later run of this process takes the lock again");
        drop(anew);
        assert!(!held());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// `--keep-best` does not replace a `model_best.bin` made read-only while the run went on
    /// (its write, a rename over the file, would): a new lowest loss is an error that says what
    /// to do, and the file is as it was; writable again, it is replaced.
    #[cfg(unix)]
    #[test]
    fn keep_best_leaves_a_best_model_made_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::test_dir("keep-best-ro");
        let args = TrainArgs::from_flags(&format!(
            "--device cpu --model d1 --batch 1 --seq 8 --keep-best --out-dir {}",
            dir.display()
        ));
        let (cfg, params) = crate::train::load_model("d1", 1).unwrap();
        let mut engine =
            crate::engine::create_engine(&args.engine_options(), cfg, params, 1, 8).unwrap();
        let best = dir.join(BEST_MODEL);
        std::fs::write(&best, b"kept").unwrap();
        let mode = |m: u32| std::fs::set_permissions(&best, std::fs::Permissions::from_mode(m));
        mode(0o444).unwrap();
        let mut lowest = None;
        let e = keep_best(&args, engine.as_mut(), &mut lowest, 1, 3.5).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("make it writable (chmod u+w), or drop --keep-best"),
            "{e}"
        );
        assert_eq!(std::fs::read(&best).unwrap(), b"kept");
        assert!(lowest.is_none());
        mode(0o644).unwrap();
        keep_best(&args, engine.as_mut(), &mut lowest, 1, 3.5).unwrap();
        assert_eq!(lowest.map(|b| (b.step, b.loss)), Some((1, 3.5)));
        assert_ne!(std::fs::read(&best).unwrap(), b"kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_canonical_names_are_checkpoints() {
        assert_eq!(checkpoint_step("state", "state_000040.bin"), Some(40));
        assert_eq!(checkpoint_step("model", "model_1234567.bin"), Some(1234567));
        for name in [
            "state_000040.bin.tmp",
            "state_40.bin",
            "model_best.bin",
            "model_000040.bin",
            "state_-00040.bin",
        ] {
            assert_eq!(checkpoint_step("state", name), None, "{name}");
        }
    }

    /// The same folder however it is spelt (`--resume out/state_x.bin --out-dir ./out`), and the
    /// same path even where nothing is there yet; another folder is not.
    #[test]
    fn the_same_folder_spelt_two_ways_is_the_same() {
        let dir = crate::test_dir("same-dir");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        assert!(same_dir(&dir, &dir));
        assert!(same_dir(&dir, &dir.join("sub").join("..")));
        assert!(same_dir(&dir.join("sub").join(".."), &dir));
        let absent = Path::new("no/such/folder");
        assert!(same_dir(absent, absent));
        assert!(!same_dir(&dir, &dir.join("sub")));
        assert!(!same_dir(absent, Path::new("no/such/other")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A state's micro-batches a step: an `--overfit-batch` run's (none served) resumes with
    /// `--overfit-batch` only; a run's that read its data without it, with its `--grad-accum`; a
    /// count that is no multiple of the steps cannot say, and is let through.
    #[test]
    fn a_resume_takes_the_runs_micro_batches() {
        let args = |flags: &[&str]| TrainArgs::from_flags(&flags.join(" "));
        let (overfit, plain, accum2) = (
            args(&["--overfit-batch"]),
            args(&[]),
            args(&["--grad-accum", "2"]),
        );
        let error = |r: Result<()>| r.unwrap_err().to_string();
        assert!(check_micro_batches("s", 4, 0, &overfit).is_ok());
        let e = error(check_micro_batches("s", 4, 0, &plain));
        assert!(e.contains("resume it with --overfit-batch"), "{e}");
        let e = error(check_micro_batches("s", 4, 4, &overfit));
        assert!(e.contains("resume it without --overfit-batch"), "{e}");
        assert!(check_micro_batches("s", 4, 8, &accum2).is_ok());
        let e = error(check_micro_batches("s", 4, 8, &plain));
        assert!(e.contains("resume it with --grad-accum 2"), "{e}");
        let e = error(check_micro_batches("s", 4, 4, &accum2));
        assert!(e.contains("resume it with --grad-accum 1"), "{e}");
        // 7 in 4 steps is not 1 a step, nor 2: neither flag is refused
        assert!(check_micro_batches("s", 4, 7, &plain).is_ok());
        assert!(check_micro_batches("s", 4, 7, &accum2).is_ok());
        // a state of no steps says nothing, whatever was served (and divides by nothing)
        assert!(check_micro_batches("s", 0, 7, &plain).is_ok());
        assert!(check_micro_batches("s", 0, 0, &plain).is_ok());
    }

    /// The note names up to four files set aside, and the first three of more.
    #[test]
    fn a_note_names_four_files_and_counts_more() {
        let names = |n: usize| -> Vec<String> { (1..=n).map(|i| format!("f{i}")).collect() };
        assert_eq!(shown_names(&names(1)), "f1");
        assert_eq!(shown_names(&names(4)), "f1, f2, f3, f4");
        assert_eq!(shown_names(&names(5)), "f1, f2, f3, ... (5 files)");
    }

    /// A fresh run sets aside every file of a run (a `.tmp` too) and nothing else; a resumed one
    /// only the checkpoints after its step; a second set-aside gets a folder of its own.
    #[test]
    fn earlier_runs_are_set_aside_not_lost() {
        let dir = crate::test_dir("set-aside");
        let files = |d: &Path| -> Vec<String> {
            let mut f = file_names(d).unwrap();
            f.sort();
            f
        };
        let put = |names: &[&str]| {
            for n in names {
                std::fs::write(dir.join(n), n).unwrap();
            }
        };
        put(&["model_000002.bin", "state_000002.bin", "model_000004.bin"]);
        put(&["state_000004.bin", "state_000006.bin.tmp", "train.bin"]);
        set_aside_earlier_run(&dir, Some(2), None).unwrap();
        assert_eq!(
            files(&dir.join("earlier_run_1")),
            [
                "model_000004.bin",
                "state_000004.bin",
                "state_000006.bin.tmp"
            ]
        );
        assert_eq!(earlier_checkpoints(&dir, 2).unwrap(), [2]);
        put(&["log.jsonl", "model_best.bin"]);
        set_aside_earlier_run(&dir, None, None).unwrap();
        assert_eq!(
            files(&dir.join("earlier_run_2")),
            [
                "log.jsonl",
                "model_000002.bin",
                "model_best.bin",
                "state_000002.bin"
            ]
        );
        assert_eq!(files(&dir), ["earlier_run_1", "earlier_run_2", "train.bin"]);
        // nothing to set aside: no new folder
        set_aside_earlier_run(&dir, None, None).unwrap();
        assert!(!dir.join("earlier_run_3").exists());
        // a resumed run replacing an attempt that went past its step: the attempt's log and best
        // model are copied aside too (the resumed run drops the log's later records, and may
        // write a best model over the attempt's); not when the attempt stopped at the step
        let record = |step: usize| format!("{{\"step\": {step}, \"loss\": 5.0}}\n");
        std::fs::write(dir.join("log.jsonl"), record(1) + &record(2)).unwrap();
        put(&["model_best.bin"]);
        set_aside_earlier_run(&dir, Some(2), None).unwrap();
        assert!(!dir.join("earlier_run_3").exists());
        std::fs::write(dir.join("log.jsonl"), record(2) + &record(3)).unwrap();
        set_aside_earlier_run(&dir, Some(2), None).unwrap();
        assert_eq!(
            files(&dir.join("earlier_run_3")),
            ["log.jsonl", "model_best.bin"]
        );
        put(&["state_000004.bin"]);
        std::fs::write(dir.join("log.jsonl"), record(2)).unwrap();
        set_aside_earlier_run(&dir, Some(2), None).unwrap();
        assert_eq!(
            files(&dir.join("earlier_run_4")),
            ["log.jsonl", "model_best.bin", "state_000004.bin"]
        );
        // copied, not moved: the resumed run continues the log and may keep the best model
        assert_eq!(
            files(&dir),
            [
                "earlier_run_1",
                "earlier_run_2",
                "earlier_run_3",
                "earlier_run_4",
                "log.jsonl",
                "model_best.bin",
                "train.bin"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
