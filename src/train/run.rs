//! A training run under way ([`Run`]), in the order [`super::train`] calls it:
//! - [`Run::start`]: the data, `--hellaswag`'s examples, the run's folder (locked, another run's
//!   files set aside), the state it resumes, its log, and the lines that say what it will do;
//! - [`Run::between_steps`]: validation and a text sample when due, and a signal that came;
//! - [`Run::step`]: the micro-batches' gradient, the outlier check, the update, the step's line
//!   and record, and the checkpoint when due;
//! - [`Run::finish`]: what the run ends with (skipped updates, the best model, peak memory, the
//!   profile, the final sample).

use super::stopping::{
    divergence_advice, saved_before_bad_shard, saved_before_divergence, say_stopped,
    say_stopped_before_training,
};
use super::{evaluate, profiled_steps, TrainArgs, TrainSummary};
use crate::checkpoints::{checkpoint_name, keep_best, remove_checkpoint, save_checkpoint, Resume};
use crate::config::GPT2Config;
use crate::cpu::adamw::{clip_scale, AdamW, DecayOn};
use crate::data::DataLoader;
use crate::engine::Engine;
use crate::formats::folder_of;
use crate::interrupt::Stop;
use crate::lr_schedule::LrSchedule;
use crate::mfu::mfu;
use crate::outliers::{Outliers, StepVerdict};
use crate::run_log::{RunLog, StepOutliers, StepRecord};
use crate::sample::{generate, SampleOptions};
use crate::text::{count, typed};
use crate::tokenizer::Tokenizer;
use crate::{out, outln};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeSet;
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a step of many micro-batches says how far it has come.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// `loaded`, its error saying whose data it is where it is the bundled corpus's (`default`: no
/// `flag` given): a model of another vocabulary than GPT-2's, given no data of its own, meets the
/// corpus's token ids.
fn of_bundled_corpus(loaded: Result<DataLoader>, flag: &str, default: bool) -> Result<DataLoader> {
    if !default {
        return loaded;
    }
    loaded.with_context(|| {
        format!(
            "the default {flag} (the bundled Shakespeare corpus, in GPT-2's vocabulary; give \
             {flag} for data of your own)"
        )
    })
}

/// The data a run trains and validates on.
struct Data {
    /// `--train`'s pattern, or the bundled corpus's.
    train_pattern: String,
    /// `--val`'s pattern, or the bundled corpus's.
    val_pattern: String,
    train: DataLoader,
    val: DataLoader,
    /// The batches of a validation: `--val-batches`, or all the validation data holds.
    val_batches: usize,
    /// `--overfit-batch`: the first training batch, (inputs, targets), each (B*T,).
    overfit: Option<(Vec<u32>, Vec<u32>)>,
}

impl Data {
    /// Opens `args`' training and validation data for a model of `cfg`, with notes on data that
    /// does not measure what the user may think.
    fn open(args: &TrainArgs, cfg: &GPT2Config) -> Result<Data> {
        let (b, t) = (args.batch, args.seq);
        let train_pattern = args.train_pattern();
        let val_pattern = args
            .val
            .clone()
            .unwrap_or_else(crate::data::default_val_pattern);
        // (the bundled corpus measures a model trained on other data by text it has not learnt)
        if args.train.is_some() && args.val.is_none() {
            crate::errln!(
                "note: --train without --val: the validation loss is measured on the bundled \
                 Shakespeare corpus ({val_pattern}), not on your data"
            );
        }
        let shuffle = args.shuffle.then_some(args.seed);
        let train = DataLoader::new(&train_pattern, b, t, cfg.vocab_size, shuffle);
        let mut train = of_bundled_corpus(train, "--train", args.train.is_none())?;
        // --overfit-batch: the loader's first batch, every time (the loader, whose place a
        // training state records, is put back at its start)
        let overfit = if args.overfit_batch {
            let (x, y) = train.next_batch()?;
            let first = (x.to_vec(), y.to_vec());
            train.reset()?;
            Some(first)
        } else {
            None
        };
        let val = DataLoader::new(&val_pattern, b, t, cfg.vocab_size, None);
        let val = of_bundled_corpus(val, "--val", args.val.is_none())?;
        // an easy slip: prepro writes train.bin and val.bin side by side, and 'dir/*.bin' takes
        // both
        for shared in shared_files(train.files(), val.files()) {
            crate::errln!(
                "note: {} is a validation shard and a training shard too (--train \
                 '{train_pattern}'): the validation loss is measured on data the model trains on",
                shared.display()
            );
        }
        let val_batches = args.val_batches.min(val.num_batches().max(1));
        if val_batches < args.val_batches {
            crate::errln!(
                "note: the validation data holds {} of {b}x{t}: each validation averages {}, not \
                 --val-batches {}",
                count(val_batches, "batch", "batches"),
                if val_batches == 1 { "it" } else { "those" },
                args.val_batches
            );
        }
        Ok(Data {
            train_pattern,
            val_pattern,
            train,
            val,
            val_batches,
            overfit,
        })
    }

    /// The micro-batch to train on next: the training data's next, or `--overfit-batch`'s.
    fn next_batch(&mut self) -> Result<(&[u32], &[u32])> {
        match &self.overfit {
            Some((x, y)) => Ok((&x[..], &y[..])),
            None => self.train.next_batch(),
        }
    }

    /// The micro-batches to put the training data back by when a step's `served` are undone
    /// (none with `--overfit-batch`, which serves no data).
    fn rewind(&self, served: usize) -> usize {
        if self.overfit.is_some() {
            0
        } else {
            served
        }
    }
}

/// The files of `val` that are also files of `train` (the same file, by its canonical path).
fn shared_files<'a>(train: &[PathBuf], val: &'a [PathBuf]) -> Vec<&'a PathBuf> {
    let canonical = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let train: std::collections::HashSet<PathBuf> = train.iter().map(canonical).collect();
    val.iter()
        .filter(|v| train.contains(&canonical(v)))
        .collect()
}

/// `--hellaswag`'s examples, ready to score.
struct Hellaswag {
    examples: Vec<crate::hellaswag::Rendered>,
    /// The rows' length.
    t: usize,
    /// Examples a forward.
    per_batch: usize,
}

impl Hellaswag {
    /// `--hellaswag`'s examples for a model of `cfg` (None without the flag).
    fn load(args: &TrainArgs, cfg: &GPT2Config) -> Result<Option<Hellaswag>> {
        let Some(path) = &args.hellaswag else {
            return Ok(None);
        };
        let (examples, t) =
            crate::hellaswag::load(path, args.hellaswag_examples, cfg, args.seq, "--seq")
                .context("--hellaswag")?;
        Ok(Some(Hellaswag {
            examples,
            t,
            per_batch: args.batch / crate::hellaswag::ENDINGS,
        }))
    }
}

/// Where a run starts: at step 0, or where the state it resumes left off.
struct Started {
    /// The steps done before this run.
    start: usize,
    outliers: Outliers,
    summary: TrainSummary,
    /// The state resumed from.
    resumed_from: Option<PathBuf>,
    /// The run's log, continuing a resumed run's.
    log: RunLog,
    /// The step of the state resumed, for a run resumed in its own folder.
    resumed_here: Option<usize>,
}

/// How a step's micro-batches ended.
enum Gradient {
    /// All served and their gradients summed: the step's loss (their mean).
    Whole(f32),
    /// A signal came after `served` of them.
    Stopped { signal: Stop, served: usize },
    /// A shard failed to load after `served` of them.
    BadData { error: anyhow::Error, served: usize },
}

/// A training run under way.
pub(super) struct Run<'a> {
    args: &'a TrainArgs,
    cfg: GPT2Config,
    /// The micro-batches of a step (`--grad-accum`, or `--total-batch` over B x T).
    micro: usize,
    data: Data,
    hellaswag: Option<Hellaswag>,
    /// GPT-2's tokenizer, for a run that samples text (and whose model has its vocabulary).
    tokenizer: Option<Tokenizer>,
    schedule: LrSchedule,
    /// The device's peak TFLOP/s, for MFU (None: unknown).
    peak: Option<f64>,
    /// The steps (from 0) whose kernel families `--profile` times.
    profiled: Range<usize>,
    /// The steps done before this run: 0, or the resumed state's.
    pub(super) start: usize,
    /// The training state this run resumed from.
    resumed_from: Option<PathBuf>,
    /// The outlier windows of `--skip-loss-z` and `--skip-norm-z` (a resumed run's from its
    /// state).
    outliers: Outliers,
    /// The steps of this run's checkpoints on disk (for `--keep-checkpoints`, and where a run
    /// that diverges can go back to).
    on_disk: BTreeSet<usize>,
    log: RunLog,
    summary: TrainSummary,
    /// One run writes into a folder at a time (held until the run is dropped).
    _lock: crate::checkpoints::OutDirLock,
}

impl<'a> Run<'a> {
    /// Sets up the run of `args` on `engine` (resuming `resume`'s): its data, its folder and
    /// log, and what it says it will do.
    pub(super) fn start(
        args: &'a TrainArgs,
        engine: &mut dyn Engine,
        resume: Option<Resume>,
    ) -> Result<Run<'a>> {
        let cfg = *engine.config();
        let (b, t) = (args.batch, args.seq);
        crate::cpu::model::check_batch(&cfg, b, t)?;
        let mut data = Data::open(args, &cfg)?;
        // (before the run's folder is made, or anything said of the run)
        if let Some(r) = &resume {
            r.check_data(&data.train)?;
        }
        let micro = args.micro_batches();
        let hellaswag = Hellaswag::load(args, &cfg)?;
        crate::formats::make_folder("--out-dir", &args.out_dir)?;
        let _lock = crate::checkpoints::lock_out_dir(&args.out_dir)?;

        outln!(
            "model: {cfg} ({} parameters) on {}",
            crate::params::count_text(crate::params::num_parameters(&cfg)),
            engine.describe()
        );
        outln!(
            "data: train {} ({} of {b}x{t}), val {} ({}); {}{} of {}{}{}",
            data.train_pattern,
            count(data.train.num_batches(), "batch", "batches"),
            data.val_pattern,
            count(data.val.num_batches(), "batch", "batches"),
            count(args.steps, "step", "steps"),
            match args.epochs {
                Some(f) => format!(" (--epochs {})", typed(f)),
                None => String::new(),
            },
            count(b * t * micro, "token", "tokens"),
            if micro > 1 {
                format!(" ({micro} micro-batches of {b}x{t})")
            } else {
                String::new()
            },
            if data.overfit.is_some() {
                "; overfitting the first batch"
            } else {
                ""
            }
        );
        // (GPT-2's 0.5M-token batch, --total-batch 524288, is 1.8 times the bundled corpus)
        let held = data.train.num_batches();
        if micro > held && data.overfit.is_none() {
            crate::errln!(
                "note: a step's {micro} micro-batches are more than the {} the training data \
                 holds: each step reads it {:.1} times over (a smaller --total-batch or \
                 --grad-accum, or more data)",
                count(held, "batch", "batches"),
                micro as f64 / held as f64
            );
        }
        let Started {
            start,
            outliers,
            summary,
            resumed_from,
            log,
            resumed_here,
        } = take_the_folder(args, engine, resume, &mut data.train)?;
        let profiled = profiled(args, engine, start);
        if let (Some(hs), Some(path)) = (&hellaswag, &args.hellaswag) {
            outln!(
                "hellaswag: {} of {} at each validation, {}",
                crate::hellaswag::count_text(hs.examples.len()),
                path.display(),
                crate::hellaswag::batches_text(hs.per_batch, hs.t)
            );
        }
        let tokenizer = sample_tokenizer(args, &cfg)?;
        let schedule = args.schedule();
        // a resumed run given another --steps (or other schedule flags) than the run had: the
        // rates from here follow another curve than the run's (its log says which it had)
        if let Some(before) = log.resumed_lr().filter(|_| start > 0) {
            let now = schedule.at(start - 1);
            if now != before {
                crate::errln!(
                    "note: the learning rate of step {start} was {before:.3e} in the run \
                     resumed, {now:.3e} with these flags: the schedule has changed (--steps, \
                     --lr, --warmup or --lr-*), and the rates from here follow the new one"
                );
            }
        }
        // the steps of this run's checkpoints on disk: a run resumed in its folder counts those it
        // wrote before, or they would pile up over interrupted and resumed runs
        let on_disk = match resumed_here {
            Some(at) => crate::checkpoints::earlier_checkpoints(&args.out_dir, at)?
                .into_iter()
                .collect(),
            None => BTreeSet::new(),
        };
        Ok(Run {
            args,
            cfg,
            micro,
            data,
            hellaswag,
            tokenizer,
            schedule,
            peak: args.peak_tflops.or_else(|| engine.peak_tflops()),
            profiled,
            start,
            resumed_from,
            outliers,
            on_disk,
            log,
            summary,
            _lock,
        })
    }

    /// Before step `step + 1`: the validation and the text sample due, then a signal that came
    /// during them (or the set-up), which stops the run before it trains another step, which may
    /// take long (its checkpoint written, and how to go on said).
    pub(super) fn between_steps(
        &mut self,
        engine: &mut dyn Engine,
        step: usize,
    ) -> Result<Option<Stop>> {
        let args = self.args;
        if args.val_every > 0 && step.is_multiple_of(args.val_every) {
            self.validate(engine, step)?;
        }
        if args.sample_every > 0 && step > 0 && step.is_multiple_of(args.sample_every) {
            self.sample(engine, step)?;
        }
        let Some(signal) = crate::interrupt::requested() else {
            return Ok(None);
        };
        self.stop_before(engine, step, signal, None)?;
        Ok(Some(signal))
    }

    /// Trains step `step + 1` (`step` steps done): its line and record, the final validation
    /// after the last, and the checkpoint when due. Some(signal) when a signal stops the run: after
    /// this step (its checkpoint written), or before it when it came between its micro-batches.
    pub(super) fn step(&mut self, engine: &mut dyn Engine, step: usize) -> Result<Option<Stop>> {
        let args = self.args;
        let profile_this = self.profiled.contains(&step);
        let last = step + 1 == args.steps;
        let step_range = crate::gpu::nvtx::range(c"step");
        let clock = Instant::now();
        if profile_this {
            engine.profile_step_begin()?;
        }
        let loss = match self.gradient(engine, step)? {
            Gradient::Whole(loss) => loss,
            Gradient::Stopped { signal, served } => {
                // the weights are still those after step `step`: the part of a gradient is
                // dropped and the data put back, so the run stops as between steps
                let rewind = self.data.rewind(served);
                self.stop_before(engine, step, signal, Some(rewind))?;
                return Ok(Some(signal));
            }
            Gradient::BadData { error, served } => {
                // nothing of this run's earlier steps is lost (a shard may be hours into a
                // corpus)
                let saved = self
                    .save_for_error(engine, step, served)
                    .map_or_else(|said| said, |_| saved_before_bad_shard(args, step));
                return Err(anyhow!("step {}: {error:#}{saved}", step + 1));
            }
        };
        // --skip-loss-z, --skip-norm-z: an outlier's update is left out (crate::outliers)
        let norm = engine.grad_norm()?;
        let (loss_z, norm_z) = args.skip_thresholds();
        let verdict = self.outliers.judge_step(loss, norm, loss_z, norm_z);
        if let Some(what) = verdict.diverged(step + 1) {
            return Err(self.diverged(engine, step, &what));
        }
        let skipped = verdict.skipped().is_some();
        let lr = self.update(engine, step, norm, skipped)?;
        let secs = clock.elapsed().as_secs_f64();
        if profile_this && skipped {
            // its times lack the update's: kept out of the averages
            engine.profile_step_discard()?;
            self.summary.profile_discarded += 1;
        } else if profile_this {
            // after the step's clock: the wait for the device does not count in its line
            engine.profile_step_end()?;
        }
        drop(step_range);
        self.report(step, (loss, lr, norm), secs, &verdict);

        // the final validation, before the last checkpoint: its state then holds the best loss
        // that --keep-best's model has
        if last {
            self.validate(engine, args.steps)?;
        }
        // Ctrl-C or SIGTERM (crate::interrupt): this step's checkpoint, then stop
        let stop = crate::interrupt::requested();
        let due = args.checkpoint_every > 0 && (step + 1).is_multiple_of(args.checkpoint_every);
        if due || last || stop.is_some() {
            self.checkpoint_after(engine, step)?;
        }
        if let Some(signal) = stop {
            say_stopped(args, signal, step + 1, last);
        }
        Ok(stop)
    }

    /// The summary of a run that `signal` stopped.
    pub(super) fn stopped_by(mut self, signal: Stop) -> TrainSummary {
        self.summary.interrupted = Some(signal);
        self.summary
    }

    /// The end of a run that trained all its steps: notes on its log, the updates it skipped, its
    /// best model, peak memory, the profile's table, and the final sample.
    pub(super) fn finish(mut self, engine: &mut dyn Engine) -> Result<TrainSummary> {
        let args = self.args;
        if let Some(note) = lost_records_note(self.log.path(), self.log.records_lost()) {
            crate::errln!("{note}");
        }
        self.say_skipped();
        if let (true, Some(best)) = (args.keep_best, self.summary.best_val) {
            outln!(
                "best val loss {:.4} after step {}: {}",
                best.loss,
                best.step,
                args.out_dir.join(crate::checkpoints::BEST_MODEL).display()
            );
        }
        if let Some(bytes) = engine.peak_memory_bytes() {
            outln!("peak memory: {:.1} MiB", bytes as f64 / (1 << 20) as f64);
        }
        if !self.profiled.is_empty() {
            self.say_profile(engine);
        }

        if args.sample_tokens > 0 {
            self.summary.sample = self.sample(engine, args.steps)?;
            // a signal during the sample cut it short: the run is done, and says it was stopped
            if let Some(signal) = crate::interrupt::requested() {
                crate::console::write_or_stderr(format_args!(
                    "interrupted ({}) during the final sample: the run's checkpoint is written, \
                     nothing is left to train\n",
                    signal.name()
                ));
                self.summary.interrupted = Some(signal);
            }
        }
        Ok(self.summary)
    }

    // ---- between steps

    /// The validation loss after `step` steps, and HellaSwag's accuracy when asked for; with
    /// `--keep-best`, the model when it is the best so far.
    fn validate(&mut self, engine: &mut dyn Engine, step: usize) -> Result<()> {
        let val = evaluate(engine, &mut self.data.val, self.data.val_batches)?;
        outln!("val loss {val:.4}");
        self.summary.val_losses.push((step, val));
        if self.args.keep_best {
            keep_best(self.args, engine, &mut self.summary.best_val, step, val)?;
        }
        let mut acc_norm = None;
        if let Some(hs) = &self.hellaswag {
            let (total, _) =
                crate::hellaswag::evaluate(engine, &hs.examples, hs.per_batch, hs.t, |_| {})?;
            outln!(
                "hellaswag acc_norm {:.4} ({}/{}){}",
                total.acc_norm(),
                total.correct_norm,
                total.examples,
                total.non_finite_note()
            );
            self.summary.hellaswag.push((step, total.acc_norm()));
            acc_norm = Some(total.acc_norm());
        }
        self.log.validation(step, val, acc_norm);
        Ok(())
    }

    /// A text sample after `step` steps (the same seed each time: only the model changes); empty
    /// without a tokenizer, or when a signal cuts it short (its text so far is printed, not kept).
    fn sample(&mut self, engine: &mut dyn Engine, step: usize) -> Result<String> {
        let Some(tok) = &self.tokenizer else {
            return Ok(String::new());
        };
        let args = self.args;
        let opts = SampleOptions {
            top_k: 40,
            ..Default::default()
        };
        outln!(
            "sample after step {step} ({}, top-k 40):\n---",
            count(args.sample_tokens, "token", "tokens")
        );
        let window = args.seq.min(self.cfg.max_seq_len);
        // printed as it comes (a long sample is progress to watch)
        let mut text = tok.decoder().stream();
        let ids = generate(
            engine,
            &[tok.eot()],
            args.sample_tokens,
            window,
            &opts,
            args.seed,
            |id| {
                out!("{}", text.push(id));
                // (Ctrl-C or SIGTERM cuts the sample short: it can take minutes on a large model)
                match crate::interrupt::requested() {
                    Some(_) => ControlFlow::Break(()),
                    None => ControlFlow::Continue(()),
                }
            },
        )?;
        out!("{}", text.finish()?);
        if ids.len() < args.sample_tokens {
            outln!(
                "\n(the sample is cut short after {} of {})\n---",
                ids.len(),
                count(args.sample_tokens, "token", "tokens")
            );
            return Ok(String::new());
        }
        outln!("\n---");
        self.log.sample(step, text.text());
        Ok(text.text().to_string())
    }

    /// Stops the run by `signal` before step `step + 1`: with the run after `step` steps saved
    /// (unless its checkpoint is on disk already), the training data put back `rewind`
    /// micro-batches (None: between steps, where it is in place), and how to go on said. A run
    /// stopped before its first step saves nothing.
    fn stop_before(
        &mut self,
        engine: &mut dyn Engine,
        step: usize,
        signal: Stop,
        rewind: Option<usize>,
    ) -> Result<()> {
        if step == self.start {
            say_stopped_before_training(self.args, signal, self.start);
            return Ok(());
        }
        if !self.on_disk.contains(&step) {
            let path = match rewind {
                None => {
                    let record = (&self.outliers, self.summary.best_val);
                    save_checkpoint(self.args, engine, &self.data.train, record, step)?
                }
                Some(rewind) => self.save_run_so_far(engine, step, rewind)?,
            };
            self.summary.checkpoint = Some(path);
            self.keep_checkpoints(step);
        }
        say_stopped(self.args, signal, step, false);
        Ok(())
    }

    // ---- a step

    /// Zeroes the gradient and sums that of the step's micro-batches into it (each scaled by
    /// 1/micro), saying how far it has come on a long step, and stopping for a signal between
    /// micro-batches (a step of many may take long: a large --total-batch on a small machine, and
    /// its end may come after a scheduler's SIGKILL).
    fn gradient(&mut self, engine: &mut dyn Engine, step: usize) -> Result<Gradient> {
        let (b, t, micro) = (self.args.batch, self.args.seq, self.micro);
        engine.zero_grad()?;
        let mut loss = 0.0f32;
        let mut noted = Instant::now();
        for served in 0..micro {
            // a shard that turns out bad when it is loaded (a token id out of range, a file
            // changed since the start)
            let (x, y) = match self.data.next_batch() {
                Ok(xy) => xy,
                Err(error) => return Ok(Gradient::BadData { error, served }),
            };
            let l = engine.forward(x, Some(y), b, t)?.expect("targets given");
            engine.backward(1.0 / micro as f32)?;
            loss += l / micro as f32;
            if served + 1 < micro {
                if let Some(signal) = crate::interrupt::requested() {
                    let served = served + 1;
                    return Ok(Gradient::Stopped { signal, served });
                }
            }
            if served + 1 < micro && noted.elapsed() >= PROGRESS_EVERY {
                outln!(
                    "{}",
                    micro_progress_text(step, self.args.steps, served, micro)
                );
                noted = Instant::now();
            }
        }
        Ok(Gradient::Whole(loss))
    }

    /// The error of step `step + 1`, whose loss or norm diverged (`what`): where to go back to,
    /// and the run so far, saved.
    fn diverged(&mut self, engine: &mut dyn Engine, step: usize, what: &str) -> anyhow::Error {
        let args = self.args;
        // the update that left the weights that diverged: the newest not skipped (the log of a
        // resumed run records the earlier skips too), and where to go back to: the newest
        // checkpoint before it (the checkpoints after it hold the same weights)
        let update = (1..=step)
            .rev()
            .find(|s| !self.summary.skipped.contains(s))
            .unwrap_or(0);
        let back = match self.on_disk.range(..update).next_back() {
            _ if args.no_state => None,
            Some(&k) => Some((k, args.out_dir.join(checkpoint_name("state", k)))),
            // (unless --keep-checkpoints has removed it since)
            None => self
                .resumed_from
                .clone()
                .filter(|p| self.start < update && p.exists())
                .map(|p| (self.start, p)),
        };
        let back = back.as_ref().map(|(k, p)| (*k, &**p));
        let advice = divergence_advice(step, self.start, update, back);
        // nothing of this run's earlier steps is lost
        let rewind = self.data.rewind(self.micro);
        let saved = self.save_for_error(engine, step, rewind).map_or_else(
            |said| said,
            |path| saved_before_divergence(args, step, &path),
        );
        anyhow!("{what}: training diverged; {advice}{saved}")
    }

    /// AdamW's update of step `step + 1` with the gradient of norm `norm` (clipped to
    /// `--grad-clip`), or none when the step is `skipped` as an outlier. Returns its learning
    /// rate.
    fn update(
        &mut self,
        engine: &mut dyn Engine,
        step: usize,
        norm: f32,
        skipped: bool,
    ) -> Result<f32> {
        let args = self.args;
        let grad_scale = clip_scale(args.grad_clip, norm);
        let lr = self.schedule.at(step);
        let hp = AdamW {
            lr,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
            decay_on: DecayOn::Matrices,
        };
        if skipped {
            self.summary.skipped.push(step + 1);
        } else {
            engine.update(&hp, step + 1, grad_scale)?;
        }
        Ok(lr)
    }

    /// The line and log record of step `step + 1`: its (loss, learning rate, gradient norm), its
    /// time `secs` and speed, and the outlier check's `verdict`.
    fn report(
        &mut self,
        step: usize,
        (loss, lr, norm): (f32, f32, f32),
        secs: f64,
        verdict: &StepVerdict,
    ) {
        let args = self.args;
        let tokens_per_step = args.batch * args.seq * self.micro;
        let step_mfu = self
            .peak
            .map(|p| mfu(&self.cfg, args.seq, tokens_per_step, secs, p));
        let mfu = match step_mfu {
            Some(m) => format!("{:.1}%", 100.0 * m),
            None => "-".to_string(),
        };
        // (--overfit-batch serves no data)
        let train = &self.data.train;
        let epoch = self
            .data
            .overfit
            .is_none()
            .then(|| train.batches_served() as f64 / train.num_batches().max(1) as f64);
        let tokens_per_s = tokens_per_step as f64 / secs;
        outln!(
            "step {:>5}/{} | loss {loss:.4} | lr {lr:.2e} | norm {norm:.3} | {:.1} ms | {:.0} tok/s | MFU {mfu}{}{}",
            step + 1,
            args.steps,
            secs * 1e3,
            tokens_per_s,
            // a run counted in epochs shows where it is in them
            match (args.epochs, epoch) {
                (Some(_), Some(e)) => format!(" | epoch {e:.2}"),
                _ => String::new(),
            },
            verdict.line_suffix()
        );
        self.summary.losses.push(loss);
        let skipped = verdict.skipped().is_some();
        self.log.step(&StepRecord {
            step: step + 1,
            loss,
            lr,
            norm,
            ms: secs * 1e3,
            tokens_per_s,
            mfu: step_mfu,
            epoch,
            outliers: verdict.judging().then(|| {
                let (loss_z, norm_z) = verdict.z_scores();
                StepOutliers {
                    loss_z,
                    norm_z,
                    skipped,
                    outlier: verdict.outlier(),
                }
            }),
        });
    }

    // ---- checkpoints

    /// Writes the checkpoint after step `step + 1`; when that fails, the error says which state
    /// on disk the run can go on from.
    fn checkpoint_after(&mut self, engine: &mut dyn Engine, step: usize) -> Result<()> {
        let record = (&self.outliers, self.summary.best_val);
        let path = save_checkpoint(self.args, engine, &self.data.train, record, step + 1).map_err(
            |e| {
                anyhow!(
                    "{e:#}; the run stops after step {}, unsaved: {}",
                    step + 1,
                    match self.newest_state() {
                        Some((k, state)) => format!(
                            "free the space (or mend the folder) and continue from the newest \
                             state on disk with --resume {} (step {k})",
                            state.display()
                        ),
                        None => "no training state of this run is on disk".to_string(),
                    }
                )
            },
        )?;
        self.summary.checkpoint = Some(path);
        self.keep_checkpoints(step + 1);
        Ok(())
    }

    /// Records the checkpoint of `step` just written among those on disk, and removes those that
    /// `--keep-checkpoints N` no longer keeps: the newest N stay, and older ones `--keep-every`
    /// keeps.
    fn keep_checkpoints(&mut self, step: usize) {
        let args = self.args;
        self.on_disk.insert(step);
        if args.keep_checkpoints == 0 {
            return;
        }
        let old: Vec<usize> = self
            .on_disk
            .iter()
            .rev()
            .skip(args.keep_checkpoints)
            .filter(|&&s| args.keep_every.is_none_or(|n| !s.is_multiple_of(n)))
            .copied()
            .collect();
        for s in old {
            remove_checkpoint(&args.out_dir, s);
            self.on_disk.remove(&s);
        }
    }

    /// The checkpoint of the run after `step` steps, when the next step cannot be completed (it
    /// diverged, or a shard it loaded is bad, or a signal came between its micro-batches), with
    /// the training data put back `rewind` batches to where step `step` left it (a resumed run
    /// serves that next step's batches again). Returns the model checkpoint's path.
    fn save_run_so_far(
        &mut self,
        engine: &mut dyn Engine,
        step: usize,
        rewind: usize,
    ) -> Result<PathBuf> {
        let loader = &mut self.data.train;
        // (always from the start: a shard that failed to load leaves the loader part-way into
        // the next shard, or the next epoch's order)
        let served = loader.batches_served() - rewind;
        loader.reset()?;
        loader.skip_batches(served as u64)?;
        let record = (&self.outliers, self.summary.best_val);
        save_checkpoint(self.args, engine, &self.data.train, record, step)
    }

    /// [`Run::save_run_so_far`] for a run that stops with an error at step `step + 1`: Ok(the
    /// model checkpoint's path; one on disk already is not written again), or Err(what the error
    /// says instead: nothing when the run had done no step, or why the save failed).
    fn save_for_error(
        &mut self,
        engine: &mut dyn Engine,
        step: usize,
        rewind: usize,
    ) -> std::result::Result<PathBuf, String> {
        if step == self.start {
            return Err(String::new());
        }
        if self.on_disk.contains(&step) {
            return Ok(self.args.out_dir.join(checkpoint_name("model", step)));
        }
        self.save_run_so_far(engine, step, rewind)
            .map_err(|e| format!("; saving the run after step {step} failed: {e:#}"))
    }

    /// The newest training state of this run on disk, with its step: its newest checkpoint's, or
    /// the state it resumed from; None with `--no-state`.
    fn newest_state(&self) -> Option<(usize, PathBuf)> {
        if self.args.no_state {
            return None;
        }
        match self.on_disk.iter().next_back() {
            Some(&k) => Some((k, self.args.out_dir.join(checkpoint_name("state", k)))),
            None => self
                .resumed_from
                .as_deref()
                .filter(|p| p.exists())
                .map(|p| (self.start, p.to_path_buf())),
        }
    }

    // ---- the run's end

    /// The updates skipped as outliers over the whole run (a resumed one's too), whenever
    /// skipping is on or some were.
    fn say_skipped(&self) {
        let skipped = &self.summary.skipped;
        let skipping = self.args.skip_thresholds() != (None, None);
        if !skipping && skipped.is_empty() {
            return;
        }
        outln!("{}", skipped_text(skipped, self.args.steps));
    }

    /// `--profile`'s table of the steps timed (those whose update was skipped left out).
    fn say_profile(&mut self, engine: &mut dyn Engine) {
        let Some(profile) = engine.profile() else {
            return;
        };
        let left_out = self.summary.profile_discarded;
        if let Some(note) = left_out_note(profile.steps as usize, left_out) {
            outln!("{note}");
        }
        out!("{}", profile.table());
        self.summary.profile = Some(profile);
    }
}

/// Takes `--out-dir` for the run of `args`: restores the state it resumes (`resume`) into
/// `engine` and `train`, sets another run's files aside (and, for a run resumed in its own
/// folder, an abandoned attempt's later checkpoints), puts the resumed run's best model back,
/// and opens the run's log.
fn take_the_folder(
    args: &TrainArgs,
    engine: &mut dyn Engine,
    resume: Option<Resume>,
    train: &mut DataLoader,
) -> Result<Started> {
    // the log a resumed run continues: the one beside its state
    let mut earlier_log = None;
    // where a run that diverges can go back to: the state it resumed from, and (later) the
    // checkpoints it has written and not removed
    let mut resumed_from = None;
    let (start, outliers, mut best_val) = match resume {
        Some(r) => {
            resumed_from = Some(r.state.path.clone());
            let h = &r.state.header;
            earlier_log = Some(folder_of(&r.state.path).join(crate::run_log::LOG_FILE));
            outln!(
                "resume: {} at step {} ({} of the training data served), model {}",
                r.state.path.display(),
                h.step,
                count(h.data.batches_served, "batch", "batches"),
                r.model_path.display()
            );
            r.restore(engine, train)?
        }
        None => (0, Outliers::default(), None),
    };
    // a run resumed in its own folder: the checkpoints it wrote before are this run's too
    let resumed_here = resumed_from
        .as_deref()
        .filter(|p| crate::checkpoints::same_dir(folder_of(p), &args.out_dir))
        .map(|_| start);
    // (a fresh run may not start from one of the files set aside)
    let start_model = Path::new(&args.model);
    let start_model = (args.resume.is_none() && start_model.is_file()).then_some(start_model);
    // (the files a run resumed here rewrites, read-only, are refused before anything is moved,
    // and a resumed run's model_best.bin now, not at a validation later)
    if resumed_here.is_some() {
        crate::run_log::check_replaceable(&args.out_dir).context("cannot write the run's log")?;
    }
    if args.keep_best {
        crate::checkpoints::check_best_replaceable(&args.out_dir)?;
    }
    crate::checkpoints::set_aside_earlier_run(&args.out_dir, resumed_here, start_model)?;
    if args.keep_best {
        if let Some(from) = &resumed_from {
            crate::checkpoints::restore_best_model(&args.out_dir, folder_of(from), &mut best_val)?;
        }
    }
    let log = RunLog::create(&args.out_dir, earlier_log.as_deref().map(|p| (p, start)))?;
    outln!("log: {}", log.path().display());
    let summary = TrainSummary {
        best_val,
        // (a resumed run's, from the log it continues)
        skipped: log.skipped_steps().to_vec(),
        ..TrainSummary::default()
    };
    Ok(Started {
        start,
        outliers,
        summary,
        resumed_from,
        log,
        resumed_here,
    })
}

/// The line of a long step `step + 1` (of `steps`) once micro-batch `served` (from 0) of its
/// `micro` is done; indented, since parsers of the log take the lines that start with "step".
fn micro_progress_text(step: usize, steps: usize, served: usize, micro: usize) -> String {
    format!(
        "  (step {}/{steps}: {} of {micro} micro-batches)",
        step + 1,
        served + 1
    )
}

/// The note at the end of a run whose log at `path` lacks `lost` records, which could not be
/// written (the first was noted when it was lost); None when none was.
fn lost_records_note(path: &Path, lost: usize) -> Option<String> {
    (lost > 0).then(|| {
        format!(
            "note: {} lacks {lost} of this run's records, which could not be written",
            path.display()
        )
    })
}

/// The run's line on the updates `skipped` as outliers (their steps, from 1) of its `steps`: the
/// first 20 steps named (the log has every one).
fn skipped_text(skipped: &[usize], steps: usize) -> String {
    let shown: Vec<String> = skipped.iter().take(20).map(|s| s.to_string()).collect();
    let more = skipped.len() - shown.len();
    format!(
        "updates skipped (outliers): {} of {steps} steps{}",
        skipped.len(),
        match (shown.len(), more) {
            (0, _) => String::new(),
            (1, 0) => format!(" (step {})", shown[0]),
            (_, 0) => format!(" (steps {})", shown.join(", ")),
            (_, _) => format!(" (steps {}, and {more} more)", shown.join(", ")),
        }
    )
}

/// `--profile`'s line on the `left_out` steps it timed but leaves out of its table of `kept`
/// (their updates were skipped as outliers); None when there are none.
fn left_out_note(kept: usize, left_out: usize) -> Option<String> {
    (left_out > 0).then(|| {
        format!(
            "profile: {left_out} of the {} timed left out: {} (outliers)",
            count(kept + left_out, "step", "steps"),
            if left_out == 1 {
                "its update was skipped"
            } else {
                "their updates were skipped"
            }
        )
    })
}

/// The steps (from 0) whose kernel families `--profile` times, on an engine that can, of a run
/// that starts at `start` (none without the flag).
fn profiled(args: &TrainArgs, engine: &dyn Engine, start: usize) -> Range<usize> {
    if !args.profile {
        return 0..0;
    }
    let Some(method) = engine.profile_method() else {
        outln!(
            "profile: {} has no kernel timers (--profile times kernel families on the CUDA \
             engine only); training without a profile",
            engine.describe()
        );
        return 0..0;
    };
    let steps = profiled_steps(start, args.steps);
    outln!(
        "profile: timing the kernel families of steps {} to {} by {method}",
        steps.start + 1,
        steps.end
    );
    steps
}

/// GPT-2's tokenizer, built once for a run that samples text, and only for a model of its
/// vocabulary (a model of another, a test fixture say, trains on its own token ids).
fn sample_tokenizer(args: &TrainArgs, cfg: &GPT2Config) -> Result<Option<Tokenizer>> {
    if args.sample_tokens == 0 {
        return Ok(None);
    }
    let tok = Tokenizer::gpt2()?;
    if tok.vocab_size() != cfg.vocab_size {
        crate::errln!(
            "note: no text samples: the model's vocabulary has {} tokens, the GPT-2 tokenizer {} \
             (--sample-tokens 0 says so without this note)",
            cfg.vocab_size,
            tok.vocab_size()
        );
        return Ok(None);
    }
    Ok(Some(tok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_step_says_how_many_of_its_micro_batches_are_done() {
        assert_eq!(
            micro_progress_text(0, 10, 0, 512),
            "  (step 1/10: 1 of 512 micro-batches)"
        );
        assert_eq!(
            micro_progress_text(9, 10, 510, 512),
            "  (step 10/10: 511 of 512 micro-batches)"
        );
    }

    #[test]
    fn a_run_that_lost_log_records_says_how_many_at_its_end() {
        let log = Path::new("out/log.jsonl");
        assert_eq!(lost_records_note(log, 0), None);
        assert_eq!(
            lost_records_note(log, 1).unwrap(),
            "note: out/log.jsonl lacks 1 of this run's records, which could not be written"
        );
        assert!(lost_records_note(log, 7).unwrap().contains(" lacks 7 of "));
    }

    #[test]
    fn the_skipped_updates_line_names_the_first_20_steps() {
        let line = |n: usize| skipped_text(&(101..101 + n).collect::<Vec<_>>(), 200);
        assert_eq!(line(0), "updates skipped (outliers): 0 of 200 steps");
        assert_eq!(
            line(1),
            "updates skipped (outliers): 1 of 200 steps (step 101)"
        );
        assert_eq!(
            line(2),
            "updates skipped (outliers): 2 of 200 steps (steps 101, 102)"
        );
        let steps = |n: usize| (101..101 + n).map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            line(20),
            format!(
                "updates skipped (outliers): 20 of 200 steps (steps {})",
                steps(20).join(", ")
            )
        );
        assert_eq!(
            line(21),
            format!(
                "updates skipped (outliers): 21 of 200 steps (steps {}, and 1 more)",
                steps(20).join(", ")
            )
        );
    }

    #[test]
    fn the_profile_says_which_timed_steps_it_leaves_out() {
        assert_eq!(left_out_note(9, 0), None);
        assert_eq!(
            left_out_note(8, 1).unwrap(),
            "profile: 1 of the 9 steps timed left out: its update was skipped (outliers)"
        );
        assert_eq!(
            left_out_note(1, 2).unwrap(),
            "profile: 2 of the 3 steps timed left out: their updates were skipped (outliers)"
        );
    }
}
