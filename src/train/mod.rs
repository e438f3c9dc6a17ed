//! The training loop shared by both engines: data, learning-rate schedule
//! ([`crate::lr_schedule`]), gradient accumulation and clipping, skipping outlier steps
//! ([`crate::outliers`]), AdamW, progress lines, validation, checkpoints, and text samples (every
//! `--sample-every` steps and at the end). With `--profile`, the engine times its kernel families
//! over the steps after the first (see [`profiled_steps`]) and the run ends with their table
//! (`crate::profile`).
//!
//! Its parts, in the order a run meets them:
//! - `args`: the flags ([`TrainArgs`]), checked and resolved, and the model `--model` names;
//! - `run`: a run under way: its set-up, what comes between steps (validation, samples, a
//!   signal), one step, and the run's end;
//! - `stopping`: what a run that stops before its end says.

mod args;
mod run;
mod stopping;

pub use args::{load_model, model_config, Device, TrainArgs};

use crate::checkpoints::Resume;
use crate::data::DataLoader;
use crate::engine::Engine;
use anyhow::Result;
use run::Run;
use std::path::PathBuf;

/// Trains with `args` on `engine` (already holding the initial parameters: the resumed run's
/// model checkpoint, with `resume`).
pub fn train(
    args: &TrainArgs,
    engine: &mut dyn Engine,
    resume: Option<Resume>,
) -> Result<TrainSummary> {
    let args = &args.resolved()?;
    for note in args.notes() {
        crate::errln!("note: {note}");
    }
    let mut run = Run::start(args, engine, resume)?;
    for step in run.start..args.steps {
        // validation and a sample when due; a signal during them (or the set-up) stops the run
        if let Some(signal) = run.between_steps(engine, step)? {
            return Ok(run.stopped_by(signal));
        }
        // a signal during the step stops the run after it (or, between micro-batches, before it)
        if let Some(signal) = run.step(engine, step)? {
            return Ok(run.stopped_by(signal));
        }
    }
    run.finish(engine)
}

/// What a training run produced.
#[derive(Debug, Default)]
pub struct TrainSummary {
    /// The training loss of each step.
    pub losses: Vec<f32>,
    /// (step, validation loss).
    pub val_losses: Vec<(usize, f32)>,
    /// (step, HellaSwag's acc_norm), with --hellaswag.
    pub hellaswag: Vec<(usize, f64)>,
    pub checkpoint: Option<PathBuf>,
    pub sample: String,
    /// The kernel-family profile, with `--profile` on an engine that has one.
    pub profile: Option<crate::profile::Profile>,
    /// The signal (Ctrl-C, SIGTERM) that stopped the run, after it wrote the checkpoint of its
    /// last step.
    pub interrupted: Option<crate::interrupt::Stop>,
    /// The steps (from 1) whose update was skipped (`--skip-loss-z`, `--skip-norm-z`); a
    /// resumed run's include those its log records before it.
    pub skipped: Vec<usize>,
    /// How many of the steps `--profile` timed were left out of its table because their update
    /// was skipped.
    pub profile_discarded: usize,
    /// The run's lowest validation loss (with `--keep-best`; a resumed run's from its state).
    pub best_val: Option<crate::formats::train_state::BestVal>,
}

/// The steps (from 0) that `--profile` times in a run of steps `start..steps` (`start`: the
/// steps a resumed run's state had done): all but the first it runs (which pays for warm-up:
/// cuBLAS heuristics, first-touch allocations), or the only one of a 1-step run.
pub fn profiled_steps(start: usize, steps: usize) -> std::ops::Range<usize> {
    if steps <= start + 1 {
        start..steps.max(start)
    } else {
        start + 1..steps
    }
}

/// The average loss over `batches` batches of `loader` (from its start).
pub fn evaluate(engine: &mut dyn Engine, loader: &mut DataLoader, batches: usize) -> Result<f32> {
    evaluate_with(engine, loader, batches, |_, _| {})
}

/// [`evaluate`], calling `each(batches done, their average loss)` after every batch.
pub fn evaluate_with(
    engine: &mut dyn Engine,
    loader: &mut DataLoader,
    batches: usize,
    mut each: impl FnMut(usize, f32),
) -> Result<f32> {
    let _range = crate::gpu::nvtx::range(c"validation");
    loader.reset()?;
    let (b, t) = (loader.batch_size(), loader.seq_len());
    let mut sum = 0.0f64;
    for done in 1..=batches {
        let (x, y) = loader.next_batch()?;
        let loss = engine.forward(x, Some(y), b, t)?.expect("targets given");
        sum += loss as f64;
        each(done, (sum / done as f64) as f32);
    }
    Ok((sum / batches as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_skips_the_first_step_unless_it_is_the_only_one() {
        assert_eq!(profiled_steps(0, 10), 1..10);
        assert_eq!(profiled_steps(0, 2), 1..2);
        assert_eq!(profiled_steps(0, 1), 0..1);
        assert_eq!(profiled_steps(0, 0), 0..0);
        // a resumed run's: from its first step on
        assert_eq!(profiled_steps(4, 10), 5..10);
        assert_eq!(profiled_steps(9, 10), 9..10);
        assert_eq!(profiled_steps(10, 10), 10..10);
    }
}
