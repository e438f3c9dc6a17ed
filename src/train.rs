//! The training loop shared by both engines: data, learning-rate schedule
//! ([`crate::lr_schedule`]), gradient accumulation and clipping, skipping outlier steps
//! ([`crate::outliers`]), AdamW, progress lines, validation, checkpoints, and text samples (every
//! `--sample-every` steps and at the end). With `--profile`, the engine times its kernel families
//! over the steps after the first (see [`profiled_steps`]) and the run ends with their table
//! (`crate::profile`).

use crate::checkpoints::{checkpoint_name, keep_best, remove_checkpoint, save_checkpoint, Resume};
use crate::config::GPT2Config;
use crate::cpu::adamw::{AdamW, DecayOn};
use crate::data::DataLoader;
use crate::engine::Engine;
use crate::formats::hf_gpt2::hub_repo;
use crate::formats::{folder_of, read_model};
use crate::lr_schedule::{LrSchedule, LrShape};
use crate::mfu::mfu;
use crate::outliers::Outliers;
use crate::precision::Precision;
use crate::run_log::{RunLog, StepOutliers, StepRecord};
use crate::sample::{generate, SampleOptions};
use crate::text::{count, typed};
use crate::tokenizer::Tokenizer;
use crate::{out, outln};
use anyhow::{bail, Context, Result};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which device runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The GPU when one is there, else the CPU.
    Auto,
    /// The CPU reference path.
    Cpu,
    /// A CUDA GPU (an error when none is there).
    Cuda,
}

/// `--lr-final-frac`'s default.
const DEFAULT_LR_FINAL_FRAC: f32 = 0.1;
/// `--lr-decay-frac`'s default: llm.c's fixed fraction for `wsd`.
const DEFAULT_LR_DECAY_FRAC: f32 = 0.2;

// The headings of `train-gpt2-cuda --help`.
const MODEL_AND_DATA: &str = "Model and data";
const OPTIMIZATION: &str = "Steps and optimizer";
const EVALUATION: &str = "Validation and samples";
const CHECKPOINTS: &str = "Checkpoints";
const GPU: &str = "GPU";

/// Everything `train-gpt2-cuda` (training) takes.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Where to run: auto (GPU if there is one), cpu or cuda.
    #[arg(help_heading = MODEL_AND_DATA, long, value_enum, default_value = "auto")]
    pub device: Device,
    /// The model: a descriptor dN (N from 1 to 256: L=N, NH=N, C=64N; d12 is GPT-2 124M) for a new one, or one to
    /// continue from (finetune): an llm.c checkpoint, or a Hugging Face GPT-2 (a directory with
    /// config.json and model.safetensors).
    #[arg(help_heading = MODEL_AND_DATA, long, default_value = "d12")]
    pub model: String,
    /// Training shards (a glob such as 'dir/train_*.bin'); default: the bundled Shakespeare corpus.
    #[arg(help_heading = MODEL_AND_DATA, long, value_name = "GLOB")]
    pub train: Option<String>,
    /// Validation shards (a glob); default: the bundled Shakespeare corpus.
    #[arg(help_heading = MODEL_AND_DATA, long, value_name = "GLOB")]
    pub val: Option<String>,
    /// B: sequences per micro-batch.
    #[arg(help_heading = MODEL_AND_DATA, long, value_name = "B", short = 'b', default_value_t = 4)]
    pub batch: usize,
    /// T: tokens per sequence.
    #[arg(help_heading = MODEL_AND_DATA, long, value_name = "T", short = 't', default_value_t = 64)]
    pub seq: usize,
    /// Micro-batches accumulated into each step (or --total-batch instead).
    #[arg(help_heading = MODEL_AND_DATA, long, value_name = "K", default_value_t = 1)]
    pub grad_accum: usize,
    /// Instead of --grad-accum: the tokens of each step (llm.c's `-d`, e.g. 524288 for GPT-2's
    /// 0.5M), a multiple of B x T; the micro-batches accumulated are that over B x T.
    #[arg(help_heading = MODEL_AND_DATA, long, value_name = "TOKENS", conflicts_with = "grad_accum")]
    pub total_batch: Option<usize>,
    /// Optimizer steps.
    #[arg(help_heading = OPTIMIZATION, long, value_name = "N", default_value_t = 100)]
    pub steps: usize,
    /// Instead of --steps: F passes over the training data (llm.c's `-x -1` is --epochs 1); the
    /// steps are F x an epoch's batches over a step's micro-batches, rounded down.
    #[arg(value_parser = crate::text::flag_number::<f64>, help_heading = OPTIMIZATION, long, value_name = "F", conflicts_with = "steps")]
    pub epochs: Option<f64>,
    /// Whether `steps` was counted from `epochs` already ([`TrainArgs::resolved`]).
    #[arg(skip)]
    pub steps_from_epochs: bool,
    /// Peak learning rate.
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, value_name = "LR", default_value_t = 3e-4)]
    pub lr: f32,
    /// Linear warm-up steps.
    #[arg(help_heading = OPTIMIZATION, long, value_name = "N", default_value_t = 0)]
    pub warmup: usize,
    /// The learning rate after the warm-up (llm.c's `-k`).
    #[arg(help_heading = OPTIMIZATION, long, value_enum, default_value = "cosine")]
    pub lr_schedule: LrShape,
    /// The decay ends, on the last step, at this fraction of the peak learning rate (a decay of
    /// fewer than two steps stays at the peak).
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, value_name = "F", default_value_t = DEFAULT_LR_FINAL_FRAC)]
    pub lr_final_frac: f32,
    /// With --lr-schedule wsd: the fraction of the steps, at the end, over which the rate decays.
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, value_name = "F", default_value_t = DEFAULT_LR_DECAY_FRAC)]
    pub lr_decay_frac: f32,
    /// AdamW weight decay, on the matrices and embeddings only (not biases and LayerNorm
    /// parameters), as GPT-2, llm.c and nanoGPT.
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, value_name = "WD", default_value_t = 0.0)]
    pub weight_decay: f32,
    /// AdamW's beta1: the decay of its first moment (the gradient's running mean).
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, default_value_t = 0.9)]
    pub beta1: f32,
    /// AdamW's beta2: the decay of its second moment (the squared gradient's running mean).
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, default_value_t = 0.999)]
    pub beta2: f32,
    /// AdamW's epsilon, added to the second moment's square root.
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, default_value_t = 1e-8)]
    pub eps: f32,
    /// Clip the global gradient norm to this (0 turns clipping off).
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, value_name = "X", default_value_t = 1.0)]
    pub grad_clip: f32,
    /// Skip the update of a step whose loss is more than Z standard deviations above the mean of
    /// the last 64 steps' (llm.c's `-sl`; 0: off). A loss that is not finite is skipped too; at
    /// most two steps in a row are skipped.
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, value_name = "Z", default_value_t = 0.0)]
    pub skip_loss_z: f32,
    /// The same for the gradient norm before clipping (llm.c's `-sg`; 0: off).
    #[arg(value_parser = crate::text::flag_number::<f32>, help_heading = OPTIMIZATION, long, value_name = "Z", default_value_t = 0.0)]
    pub skip_norm_z: f32,
    /// Validate every this many steps (0: only at the end).
    #[arg(help_heading = EVALUATION, long, value_name = "N", default_value_t = 25)]
    pub val_every: usize,
    /// Batches averaged for a validation loss.
    #[arg(help_heading = EVALUATION, long, value_name = "N", default_value_t = 8)]
    pub val_batches: usize,
    /// At each validation, also HellaSwag's accuracy on this file (hellaswag_val.jsonl), as
    /// llm.c's `-h 1`: needs --batch of at least 4 and --seq as long as its longest row.
    #[arg(help_heading = EVALUATION, long, value_name = "FILE")]
    pub hellaswag: Option<PathBuf>,
    /// With --hellaswag: only its first N examples.
    #[arg(help_heading = EVALUATION, long, value_name = "N", requires = "hellaswag")]
    pub hellaswag_examples: Option<usize>,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[arg(help_heading = CHECKPOINTS, long, value_name = "N", default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Keep only this run's last N checkpoints (model and state), removing older ones as new ones
    /// are written (0: keep all; a resumed run counts those it wrote before).
    #[arg(help_heading = CHECKPOINTS, long, value_name = "N", default_value_t = 0)]
    pub keep_checkpoints: usize,
    /// With --keep-checkpoints: also keep every checkpoint whose step is a multiple of this
    /// (llm.c's -nm: "major" checkpoints, never removed).
    #[arg(help_heading = CHECKPOINTS, long, value_name = "N")]
    pub keep_every: Option<usize>,
    /// At each validation whose loss is the run's lowest so far, write the model as
    /// model_best.bin in --out-dir (kept whatever --keep-checkpoints removes; a resumed run
    /// remembers the best from its training state).
    #[arg(help_heading = CHECKPOINTS, long)]
    pub keep_best: bool,
    /// Where checkpoints and the log go: one run's (another run's files there are first moved
    /// into a new subfolder, earlier_run_N). Default: out, or with --resume the resumed run's
    /// folder.
    #[arg(help_heading = CHECKPOINTS, long, value_name = "DIR", default_value = "out")]
    pub out_dir: PathBuf,
    /// Continue a run exactly where its last checkpoint left it: from a training state
    /// (state_NNNNNN.bin, written beside each model_NNNNNN.bin) or the latest one in a folder. The
    /// model, AdamW's moments, the step and the place in the training data come from there; give
    /// the run's other flags again (--steps may grow; --model, if given, must be the run's). The
    /// run goes on in that folder unless --out-dir names another; a state records the optimizer's
    /// settings (a note names any given otherwise) and its model's fingerprint (another model
    /// in that file's place is refused).
    #[arg(help_heading = CHECKPOINTS, long, value_name = "STATE_OR_DIR")]
    pub resume: Option<PathBuf>,
    /// Write no training state beside the checkpoints (it is 2 or 3 times the fp32 model's size:
    /// AdamW's moments, and the fp32 master weights of a bf16 run); the run then cannot be resumed.
    #[arg(help_heading = CHECKPOINTS, long)]
    pub no_state: bool,
    /// Tokens of each text sample: at the end, and with --sample-every during training (0: none).
    #[arg(help_heading = EVALUATION, long, value_name = "N", default_value_t = 64)]
    pub sample_tokens: usize,
    /// Also sample every this many steps during training (llm.c's `-s`; 0: only at the end). Each
    /// sample draws with --seed, so they differ only by what the model has learned.
    #[arg(help_heading = EVALUATION, long, value_name = "N", default_value_t = 0)]
    pub sample_every: usize,
    /// Train on the first batch of the training data over and over (llm.c's `-a 1`): the loss
    /// should fall towards zero; a check that a model change still learns.
    #[arg(help_heading = MODEL_AND_DATA, long)]
    pub overfit_batch: bool,
    /// Seed of the initialisation, the data order and the sample.
    #[arg(help_heading = MODEL_AND_DATA, long, value_name = "SEED", default_value_t = 1337)]
    pub seed: u64,
    /// Shuffle the training data (seeded).
    #[arg(help_heading = MODEL_AND_DATA, long)]
    pub shuffle: bool,
    /// fp32 or bf16 (GPU only). Default: bf16 on GPUs with bf16 tensor cores (sm_80+), fp32
    /// elsewhere.
    #[arg(help_heading = GPU, long, value_enum)]
    pub precision: Option<Precision>,
    /// Use TF32 tensor cores for fp32 matrix products on the GPU.
    #[arg(help_heading = GPU, long)]
    pub tf32: bool,
    /// The GPU's kernels: fused (flash attention, cuBLASLt epilogues, residual + layernorm; head
    /// sizes 64 and 128) or plain. Default: fused in bf16 where the model allows, plain otherwise.
    #[arg(help_heading = GPU, long, value_enum)]
    pub kernels: Option<crate::engine::Kernels>,
    /// Launch every kernel from the host instead of replaying the forward and backward passes as
    /// CUDA graphs (slower for small models; shows each kernel on an nsys timeline).
    #[arg(help_heading = GPU, long)]
    pub no_cuda_graphs: bool,
    /// The GPU's classifier in chunks of this many sequences: the logits (B, T, Vp) then never
    /// exist for more than that many at once, at the cost of computing every chunk's logits but the
    /// last twice (forward and backward). For batches whose logits do not fit; default: the whole batch.
    #[arg(help_heading = GPU, long, value_name = "SEQUENCES")]
    pub classifier_chunk: Option<usize>,
    /// What the GPU's backward pass computes again instead of keeping it from the forward, for
    /// less memory: gelu saves (L - 1) x B x T x 4C activations (1.03 GiB for d12 at B=16,
    /// T=1024 in bf16) for one GELU kernel per layer.
    #[arg(help_heading = GPU, long, value_enum, value_name = "WHAT", default_value = "none")]
    pub recompute: crate::engine::Recompute,
    /// The device's peak TFLOP/s for the MFU column (default: from a table of A100, H100, H200).
    #[arg(value_parser = crate::text::flag_number::<f64>, help_heading = GPU, long, value_name = "TFLOPS")]
    pub peak_tflops: Option<f64>,
    /// Time each kernel family (CUDA events, on the GPU engine) over the steps after the first
    /// and print where a step's time goes: calls, ms and % of the step, GB/s or TFLOP/s.
    #[arg(help_heading = GPU, long)]
    pub profile: bool,
}

/// The steps (from 0) that `--profile` times out of `steps`: all but the first (which pays for
/// warm-up: cuBLAS heuristics, first-touch allocations), or the only one of a 1-step run.
pub fn profiled_steps(steps: usize) -> std::ops::Range<usize> {
    if steps <= 1 {
        0..steps
    } else {
        1..steps
    }
}

impl TrainArgs {
    /// The micro-batches of a step: --grad-accum, or --total-batch over B x T (checked by
    /// [`TrainArgs::validate`]).
    pub fn micro_batches(&self) -> usize {
        match self.total_batch {
            Some(tokens) => tokens / self.batch.saturating_mul(self.seq).max(1),
            None => self.grad_accum,
        }
    }

    /// The optimizer settings a training state records (see [`OptimizerSettings`]).
    ///
    /// [`OptimizerSettings`]: crate::formats::train_state::OptimizerSettings
    pub fn optimizer_settings(&self) -> crate::formats::train_state::OptimizerSettings {
        crate::formats::train_state::OptimizerSettings {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
        }
    }

    /// These flags with `--epochs` turned into `--steps`, from the training shards' headers (the
    /// flags themselves when there is no `--epochs`), checked. Resolved flags are not counted
    /// again (`train` resolves what `main` resolved, for callers that did not).
    pub fn resolved(&self) -> Result<TrainArgs> {
        let mut args = self.clone();
        if let (Some(f), false) = (self.epochs, self.steps_from_epochs) {
            // (1e-300 and 1e300 as typed, not their 300 digits)
            let typed = crate::text::typed(f);
            if !(f > 0.0 && f.is_finite()) {
                bail!("--epochs must be a positive number, got {typed}");
            }
            // (validate() checks --steps: 1 until it is known)
            args.steps = 1;
            args.validate()?;
            let pattern = self.train_pattern();
            let batches = crate::data::epoch_batches(&pattern, self.batch, self.seq)?;
            let micro = self.micro_batches();
            // (nudged up by a millionth of a step: 0.29 x 100 batches is 28.999999999999996 in
            // f64, whose error is far below that for any count of steps a state can hold)
            let steps = (f * batches as f64 / micro as f64 + 1e-6).floor();
            if steps < 1.0 {
                bail!(
                    "--epochs {typed} is less than one step: an epoch of '{pattern}' is {} of \
                     {}x{}, a step {}",
                    count(batches, "batch", "batches"),
                    self.batch,
                    self.seq,
                    count(micro, "batch", "batches")
                );
            }
            if steps > i32::MAX as f64 {
                bail!(
                    "--epochs {typed} makes {steps:.3e} steps: at most {} (a training state \
                     records the step in 32 bits)",
                    i32::MAX
                );
            }
            args.steps = steps as usize;
            args.steps_from_epochs = true;
        }
        args.validate()?;
        Ok(args)
    }

    /// What these flags ask for that the run will not do: notes for the user (flags that the
    /// schedule ignores, a run that is all warm-up).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.lr_decay_frac != DEFAULT_LR_DECAY_FRAC && self.lr_schedule != LrShape::Wsd {
            use clap::ValueEnum;
            let shape = self
                .lr_schedule
                .to_possible_value()
                .expect("every shape is a value");
            notes.push(format!(
                "--lr-decay-frac is for --lr-schedule wsd; the {} schedule ignores it",
                shape.get_name()
            ));
        }
        if self.lr_final_frac != DEFAULT_LR_FINAL_FRAC && self.lr_schedule == LrShape::Constant {
            notes.push("--lr-final-frac does nothing with --lr-schedule constant".into());
        }
        if self.overfit_batch && self.epochs.is_some() {
            notes.push(
                "--epochs counts passes over the training data, but --overfit-batch trains on \
                 its first batch only"
                    .into(),
            );
        }
        if self.keep_every.is_some() && self.keep_checkpoints == 0 {
            notes.push(
                "--keep-every does nothing without --keep-checkpoints (every checkpoint is kept)"
                    .into(),
            );
        }
        if self.keep_best && self.val_every == 0 {
            notes.push(
                "--keep-best with --val-every 0: the run validates only at its end, so \
                 model_best.bin is the final model"
                    .into(),
            );
        }
        if self.warmup > self.steps {
            notes.push(format!(
                "--warmup {} is longer than the run's {} steps: the learning rate never reaches \
                 --lr (it ends at {:.2e})",
                self.warmup,
                self.steps,
                self.schedule().at(self.steps - 1)
            ));
        }
        notes
    }

    /// `--train`, or the bundled corpus's training shard.
    pub fn train_pattern(&self) -> String {
        self.train
            .clone()
            .unwrap_or_else(crate::data::default_train_pattern)
    }

    /// The learning-rate schedule of these flags.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            shape: self.lr_schedule,
            lr: self.lr,
            steps: self.steps,
            warmup: self.warmup,
            final_frac: self.lr_final_frac,
            decay_frac: self.lr_decay_frac,
        }
    }

    /// `--skip-loss-z` and `--skip-norm-z` as thresholds (None: off).
    pub fn skip_thresholds(&self) -> (Option<f32>, Option<f32>) {
        let on = |z: f32| (z > 0.0).then_some(z);
        (on(self.skip_loss_z), on(self.skip_norm_z))
    }

    /// The engine these flags ask for.
    pub fn engine_options(&self) -> crate::engine::EngineOptions {
        crate::engine::EngineOptions {
            device: self.device,
            precision: self.precision,
            tf32: self.tf32,
            kernels: self.kernels,
            cuda_graphs: !self.no_cuda_graphs,
            classifier_chunk: self.classifier_chunk,
            recompute: self.recompute,
            forwards_only: false,
        }
    }

    /// Checks the flags before any work starts.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.seq == 0 {
            bail!(
                "--batch and --seq must be at least 1 (got B={}, T={})",
                self.batch,
                self.seq
            );
        }
        if self.grad_accum == 0 {
            bail!("--grad-accum must be at least 1");
        }
        let Some(bt) = self.batch.checked_mul(self.seq) else {
            bail!("B x T = {} x {} is too large", self.batch, self.seq);
        };
        if bt.checked_mul(self.grad_accum).is_none() {
            bail!(
                "a step of B x T x --grad-accum = {} x {} x {} tokens is too large",
                self.batch,
                self.seq,
                self.grad_accum
            );
        }
        if let Some(tokens) = self.total_batch {
            if tokens == 0 {
                bail!("--total-batch must be at least one micro-batch's B x T = {bt} tokens");
            }
            if tokens < bt || tokens % bt != 0 {
                // (the multiples around it; at least one micro-batch; none past the largest)
                let below = (tokens / bt).max(1) * bt;
                let tries = match below.checked_add(bt) {
                    Some(above) => format!("{below} or {above}"),
                    None => below.to_string(),
                };
                bail!(
                    "--total-batch {tokens} is not a multiple of a micro-batch's B x T = {} x {} \
                     = {bt} tokens (try {tries})",
                    self.batch,
                    self.seq,
                );
            }
        }
        if self.hellaswag.is_some() && self.batch < crate::hellaswag::ENDINGS {
            bail!(
                "--hellaswag needs --batch of at least {0} (an example is {0} sequences), got {1}",
                crate::hellaswag::ENDINGS,
                self.batch
            );
        }
        if self.keep_every == Some(0) {
            bail!("--keep-every must be at least 1 step");
        }
        if self.classifier_chunk == Some(0) {
            bail!("--classifier-chunk must be at least 1 sequence");
        }
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        // (a training state records the step in 32 bits)
        if self.steps > i32::MAX as usize {
            bail!(
                "--steps {} is too many: at most {} (a training state records the step in 32 \
                 bits)",
                self.steps,
                i32::MAX,
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", typed(self.lr));
        }
        if !(0.0..=1.0).contains(&self.lr_final_frac) {
            bail!(
                "--lr-final-frac must be in [0, 1], got {}",
                typed(self.lr_final_frac)
            );
        }
        if !(0.0..=1.0).contains(&self.lr_decay_frac) {
            bail!(
                "--lr-decay-frac must be in [0, 1], got {}",
                typed(self.lr_decay_frac)
            );
        }
        if self.sample_every > 0 && self.sample_tokens == 0 {
            bail!("--sample-every needs --sample-tokens of at least 1");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            bail!("--beta1 and --beta2 must be in [0, 1)");
        }
        let positive = |x: f32| x > 0.0 && x.is_finite();
        let not_negative = |x: f32| x >= 0.0 && x.is_finite();
        if !positive(self.eps) {
            bail!("--eps must be a positive number, got {}", typed(self.eps));
        }
        if !not_negative(self.weight_decay) {
            bail!(
                "--weight-decay must be a number of at least 0, got {}",
                typed(self.weight_decay)
            );
        }
        if !not_negative(self.grad_clip) {
            bail!(
                "--grad-clip must be a number of at least 0 (0: no clipping), got {}",
                typed(self.grad_clip)
            );
        }
        if !not_negative(self.skip_loss_z) || !not_negative(self.skip_norm_z) {
            bail!(
                "--skip-loss-z and --skip-norm-z must be numbers of at least 0 (0: off), got {} \
                 and {}",
                typed(self.skip_loss_z),
                typed(self.skip_norm_z)
            );
        }
        if let Some(p) = self.peak_tflops {
            if !(p > 0.0 && p.is_finite()) {
                bail!("--peak-tflops must be a positive number, got {}", typed(p));
            }
        }
        if self.val_batches == 0 {
            bail!("--val-batches must be at least 1");
        }
        Ok(())
    }
}

/// Resolves `--model`: a descriptor builds a fresh seeded model, a path loads a checkpoint (llm.c's,
/// or a Hugging Face GPT-2: [`read_model`]).
pub fn load_model(model: &str, seed: u64) -> Result<(GPT2Config, Vec<f32>)> {
    let path = Path::new(model);
    if names_a_stored_model(model) {
        let ck = read_model(path)?;
        return Ok((ck.config, ck.params));
    }
    let cfg = GPT2Config::from_descriptor(model)?;
    Ok((cfg, crate::params::try_init_params(&cfg, seed)?))
}

/// Whether `--model`'s text names a model to read (a file, a Hugging Face folder or repo) rather
/// than a descriptor dN. A descriptor wins over a folder of its name that holds no model: the
/// run folder of `--model d12 --out-dir d12`, when that command runs again or resumes.
fn names_a_stored_model(model: &str) -> bool {
    let path = Path::new(model);
    let folder_without_model = path.is_dir() && !path.join("config.json").exists();
    if GPT2Config::from_descriptor(model).is_ok() && (!path.exists() || folder_without_model) {
        return false;
    }
    path.exists() || model.ends_with(".bin") || hub_repo(model).is_some()
}

/// The dimensions of the model `--model` names, as [`load_model`] would load it, without its
/// weights where the file allows (an llm.c checkpoint's header).
pub fn model_config(model: &str) -> Result<GPT2Config> {
    let path = Path::new(model);
    if names_a_stored_model(model) {
        if path.is_file() && !crate::formats::hf_gpt2::is_hf_model(path) {
            return Ok(crate::formats::checkpoint::read_checkpoint_config(path)?.0);
        }
        return Ok(read_model(path)?.config);
    }
    GPT2Config::from_descriptor(model)
}

/// Records the checkpoint of `step` just written among those `on_disk`, and removes those that
/// `--keep-checkpoints N` no longer keeps: the newest N stay, and older ones `--keep-every` keeps.
fn keep_checkpoints(
    args: &TrainArgs,
    on_disk: &mut std::collections::BTreeSet<usize>,
    step: usize,
) {
    on_disk.insert(step);
    if args.keep_checkpoints == 0 {
        return;
    }
    let old: Vec<usize> = on_disk
        .iter()
        .rev()
        .skip(args.keep_checkpoints)
        .filter(|&&s| args.keep_every.is_none_or(|n| !s.is_multiple_of(n)))
        .copied()
        .collect();
    for s in old {
        remove_checkpoint(&args.out_dir, s);
        on_disk.remove(&s);
    }
}

/// Says how a run stopped by `signal` after `steps` steps (its checkpoint written) goes on;
/// `last`: those were all the run's steps.
fn say_stopped(args: &TrainArgs, signal: crate::interrupt::Stop, steps: usize, last: bool) {
    if last {
        crate::console::write_or_stderr(format_args!(
            "interrupted ({}) at the run's last step ({steps}): its checkpoint is written, \
             nothing is left to train (the final sample is left out)\n",
            signal.name(),
        ));
    } else if args.no_state {
        crate::console::write_or_stderr(format_args!(
            "interrupted ({}) after step {steps}: the model is saved; without a training state \
             (--no-state) the run cannot be resumed\n",
            signal.name(),
        ));
    } else if let Some(r) = args.resume.as_ref().filter(|r| resumes_the_newest(r, args)) {
        // (the same command line: its --resume finds this state)
        crate::console::write_or_stderr(format_args!(
            "interrupted ({}) after step {steps}: continue with the same command (its --resume \
             {} finds {})\n",
            signal.name(),
            r.display(),
            args.out_dir.join(checkpoint_name("state", steps)).display()
        ));
    } else {
        // (the exact state: the folder may hold a later one from an earlier attempt)
        let state = args.out_dir.join(checkpoint_name("state", steps));
        crate::console::write_or_stderr(format_args!(
            "interrupted ({}) after step {steps}: continue with the same flags and --resume \
             {}{}\n",
            signal.name(),
            state.display(),
            in_place_of_resume(args)
        ));
    }
}

/// Says that a run stopped by `signal` before its first step (`start`: the steps its state had
/// done) trained nothing, and so saved nothing.
fn say_stopped_before_training(args: &TrainArgs, signal: crate::interrupt::Stop, start: usize) {
    match &args.resume {
        Some(r) => crate::console::write_or_stderr(format_args!(
            "interrupted ({}) before step {}: nothing more is trained; --resume {} continues \
             from where it did\n",
            signal.name(),
            start + 1,
            r.display()
        )),
        None => crate::console::write_or_stderr(format_args!(
            "interrupted ({}) before the first step: nothing is trained, nothing saved\n",
            signal.name()
        )),
    }
}

/// " (in place of --resume R)" where the run was resumed from a state file, or from another
/// folder: that --resume would not find this run's newest state.
fn in_place_of_resume(args: &TrainArgs) -> String {
    match &args.resume {
        Some(r) if !resumes_the_newest(r, args) => {
            format!(" (in place of --resume {})", r.display())
        }
        _ => String::new(),
    }
}

/// Whether `--resume r` names the run's own folder, where it finds the newest state the run
/// writes (a state file, or another folder, names another).
fn resumes_the_newest(r: &Path, args: &TrainArgs) -> bool {
    r.is_dir() && crate::checkpoints::same_dir(r, &args.out_dir)
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
    let cfg = *engine.config();
    let (b, t) = (args.batch, args.seq);
    crate::cpu::model::check_batch(&cfg, b, t)?;
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
    let mut train_loader = DataLoader::new(&train_pattern, b, t, cfg.vocab_size, shuffle)?;
    // --overfit-batch: the loader's first batch, every time (the loader, whose place a training
    // state records, is put back at its start)
    let overfit = if args.overfit_batch {
        let (x, y) = train_loader.next_batch()?;
        let first = (x.to_vec(), y.to_vec());
        train_loader.reset()?;
        Some(first)
    } else {
        None
    };
    let micro = args.micro_batches();
    let mut val_loader = DataLoader::new(&val_pattern, b, t, cfg.vocab_size, None)?;
    // an easy slip: prepro writes train.bin and val.bin side by side, and 'dir/*.bin' takes both
    for shared in shared_files(train_loader.files(), val_loader.files()) {
        crate::errln!(
            "note: {} is a validation shard and a training shard too (--train '{train_pattern}'): \
             the validation loss is measured on data the model trains on",
            shared.display()
        );
    }
    let val_batches = args.val_batches.min(val_loader.num_batches().max(1));
    if val_batches < args.val_batches {
        crate::errln!(
            "note: the validation data holds {} of {b}x{t}: each validation averages {}, not \
             --val-batches {}",
            count(val_batches, "batch", "batches"),
            if val_batches == 1 { "it" } else { "those" },
            args.val_batches
        );
    }
    let hellaswag = match &args.hellaswag {
        Some(path) => {
            let (examples, hs_t) =
                crate::hellaswag::load(path, args.hellaswag_examples, &cfg, t, "--seq")
                    .context("--hellaswag")?;
            Some(Hellaswag {
                examples,
                t: hs_t,
                per_batch: b / crate::hellaswag::ENDINGS,
            })
        }
        None => None,
    };
    crate::formats::make_folder("--out-dir", &args.out_dir)?;
    // one run writes into a folder at a time (held until this function returns)
    let _lock = crate::checkpoints::lock_out_dir(&args.out_dir)?;

    outln!(
        "model: {cfg} ({} parameters) on {}",
        crate::params::count_text(crate::params::num_parameters(&cfg)),
        engine.describe()
    );
    outln!(
        "data: train {} ({} of {b}x{t}), val {} ({}); {}{} of {}{}{}",
        train_pattern,
        count(train_loader.num_batches(), "batch", "batches"),
        val_pattern,
        count(val_loader.num_batches(), "batch", "batches"),
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
        if overfit.is_some() {
            "; overfitting the first batch"
        } else {
            ""
        }
    );
    // the log a resumed run continues: the one beside its state
    let mut earlier_log = None;
    // where a run that diverges can go back to: the state it resumed from, and (below) the
    // checkpoints it has written and not removed
    let mut resumed_from = None;
    let (start, mut outliers, mut best_val) = match resume {
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
            r.restore(engine, &mut train_loader)?
        }
        None => (0, Outliers::default(), None),
    };
    // a run resumed in its own folder: the checkpoints it wrote before are this run's too
    let resumed_here = resumed_from
        .as_deref()
        .filter(|p| crate::checkpoints::same_dir(folder_of(p), &args.out_dir))
        .map(|_| start);
    // one run a folder: another run's files are set aside (and an abandoned attempt's later
    // checkpoints, when resuming in the run's own folder)
    // (a fresh run may not start from one of those files)
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
    let mut log = RunLog::create(&args.out_dir, earlier_log.as_deref().map(|p| (p, start)))?;
    outln!("log: {}", log.path().display());

    let mut summary = TrainSummary {
        best_val,
        // (a resumed run's, from the log it continues)
        skipped: log.skipped_steps().to_vec(),
        ..TrainSummary::default()
    };
    let tokens_per_step = (b * t * micro) as f64;
    let peak = args.peak_tflops.or_else(|| engine.peak_tflops());
    let profiled = if !args.profile {
        0..0
    } else if let Some(method) = engine.profile_method() {
        let steps = profiled_steps(args.steps - start);
        let steps = start + steps.start..start + steps.end;
        outln!(
            "profile: timing the kernel families of steps {} to {} by {method}",
            steps.start + 1,
            steps.end
        );
        steps
    } else {
        outln!(
            "profile: {} has no kernel timers (--profile times kernel families on the CUDA \
             engine only); training without a profile",
            engine.describe()
        );
        0..0
    };
    if let (Some(hs), Some(path)) = (&hellaswag, &args.hellaswag) {
        outln!(
            "hellaswag: {} of {} at each validation, {}",
            crate::hellaswag::count_text(hs.examples.len()),
            path.display(),
            crate::hellaswag::batches_text(hs.per_batch, hs.t)
        );
    }
    // the validation loss, and HellaSwag's accuracy when asked for
    let mut validate = |engine: &mut dyn Engine,
                        step: usize,
                        summary: &mut TrainSummary,
                        log: &mut RunLog|
     -> Result<()> {
        let val = evaluate(engine, &mut val_loader, val_batches)?;
        outln!("val loss {val:.4}");
        summary.val_losses.push((step, val));
        if args.keep_best {
            keep_best(args, engine, &mut summary.best_val, step, val)?;
        }
        let mut acc_norm = None;
        if let Some(hs) = &hellaswag {
            let (total, _) =
                crate::hellaswag::evaluate(engine, &hs.examples, hs.per_batch, hs.t, |_| {})?;
            outln!(
                "hellaswag acc_norm {:.4} ({}/{}){}",
                total.acc_norm(),
                total.correct_norm,
                total.examples,
                total.non_finite_note()
            );
            summary.hellaswag.push((step, total.acc_norm()));
            acc_norm = Some(total.acc_norm());
        }
        log.validation(step, val, acc_norm);
        Ok(())
    };
    // a text sample after `step` steps (the same seed each time: only the model changes)
    // (GPT-2's tokenizer is built once, for a run that samples at all)
    let tokenizer = match args.sample_tokens {
        0 => None,
        _ => Some(Tokenizer::gpt2()?),
    };
    // (a model of another vocabulary, a test fixture say, trains on its own token ids)
    let tokenizer = tokenizer.filter(|tok| {
        let same = tok.vocab_size() == cfg.vocab_size;
        if !same {
            crate::errln!(
                "note: no text samples: the model's vocabulary has {} tokens, the GPT-2 tokenizer \
                 {} (--sample-tokens 0 says so without this note)",
                cfg.vocab_size,
                tok.vocab_size()
            );
        }
        same
    });
    let sample = |engine: &mut dyn Engine, step: usize, log: &mut RunLog| -> Result<String> {
        let Some(tok) = &tokenizer else {
            return Ok(String::new());
        };
        let opts = SampleOptions {
            top_k: 40,
            ..Default::default()
        };
        outln!(
            "sample after step {step} ({}, top-k 40):\n---",
            count(args.sample_tokens, "token", "tokens")
        );
        let window = t.min(cfg.max_seq_len);
        let ids = generate(
            engine,
            &[tok.eot()],
            args.sample_tokens,
            window,
            &opts,
            args.seed,
            // (Ctrl-C or SIGTERM cuts the sample short: it can take minutes on a large model)
            |_| match crate::interrupt::requested() {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            },
        )?;
        if ids.len() < args.sample_tokens {
            outln!("(the sample is cut short)\n---");
            return Ok(String::new());
        }
        let text = tok.decode(&ids)?;
        outln!("{text}\n---");
        log.sample(step, &text);
        Ok(text)
    };
    let schedule = args.schedule();
    // a resumed run given another --steps (or other schedule flags) than the run had: the rates
    // from here follow another curve than the run's (its log says which it had)
    if let Some(before) = log.resumed_lr().filter(|_| start > 0) {
        let now = schedule.at(start - 1);
        if now != before {
            crate::errln!(
                "note: the learning rate of step {start} was {before:.3e} in the run resumed, \
                 {now:.3e} with these flags: the schedule has changed (--steps, --lr, --warmup or \
                 --lr-*), and the rates from here follow the new one"
            );
        }
    }
    // the steps of this run's checkpoints on disk (for --keep-checkpoints, and where a run that
    // diverges can go back to): a run resumed in its folder counts those it wrote before, or
    // they would pile up over interrupted and resumed runs
    let mut on_disk: std::collections::BTreeSet<usize> = match resumed_here {
        Some(at) => crate::checkpoints::earlier_checkpoints(&args.out_dir, at)?
            .into_iter()
            .collect(),
        None => Default::default(),
    };
    for step in start..args.steps {
        let profile_this = profiled.contains(&step);
        let last = step + 1 == args.steps;
        if args.val_every > 0 && step % args.val_every == 0 {
            validate(engine, step, &mut summary, &mut log)?;
        }
        if args.sample_every > 0 && step > 0 && step % args.sample_every == 0 {
            sample(engine, step, &mut log)?;
        }
        // Ctrl-C or SIGTERM during that validation or sample (or the start-up): stop before
        // training another step, which may take long
        if let Some(signal) = crate::interrupt::requested() {
            if step == start {
                say_stopped_before_training(args, signal, start);
            } else {
                if !on_disk.contains(&step) {
                    let record = (&outliers, summary.best_val);
                    let path = save_checkpoint(args, engine, &train_loader, record, step)?;
                    summary.checkpoint = Some(path);
                    keep_checkpoints(args, &mut on_disk, step);
                }
                say_stopped(args, signal, step, false);
            }
            summary.interrupted = Some(signal);
            return Ok(summary);
        }

        let step_range = crate::gpu::nvtx::range(c"step");
        let clock = Instant::now();
        if profile_this {
            engine.profile_step_begin()?;
        }
        engine.zero_grad()?;
        let mut loss = 0.0f32;
        // a shard that turns out bad when it is loaded (a token id out of range, a file changed
        // since the start): its error, and the micro-batches this step had served before it
        let mut bad_data = None;
        // Ctrl-C or SIGTERM between micro-batches: the signal, and the micro-batches served
        let mut stopped = None;
        let mut noted = Instant::now();
        for served in 0..micro {
            let batch = match &overfit {
                Some((x, y)) => Ok((&x[..], &y[..])),
                None => train_loader.next_batch(),
            };
            let (x, y) = match batch {
                Ok(xy) => xy,
                Err(e) => {
                    bad_data = Some((e, served));
                    break;
                }
            };
            let l = engine.forward(x, Some(y), b, t)?.expect("targets given");
            engine.backward(1.0 / micro as f32)?;
            loss += l / micro as f32;
            // a step of many micro-batches may take long (a large --total-batch on a small
            // machine): a signal stops it here, not at its end, which may come after a
            // scheduler's SIGKILL
            if served + 1 < micro {
                if let Some(signal) = crate::interrupt::requested() {
                    stopped = Some((signal, served + 1));
                    break;
                }
            }
            // ... and it shows that it is under way
            if served + 1 < micro && noted.elapsed() >= PROGRESS_EVERY {
                // (indented: parsers of the log take the lines that start with "step")
                outln!(
                    "  (step {}/{}: {} of {micro} micro-batches)",
                    step + 1,
                    args.steps,
                    served + 1
                );
                noted = Instant::now();
            }
        }
        if let Some((signal, served)) = stopped {
            // the weights are still those after step `step`: the part of a gradient is dropped
            // and the data put back, so the run stops as between steps
            if step == start {
                say_stopped_before_training(args, signal, start);
            } else {
                if !on_disk.contains(&step) {
                    let rewind = if overfit.is_some() { 0 } else { served };
                    let record = (&outliers, summary.best_val);
                    let path =
                        save_run_so_far(args, engine, &mut train_loader, record, step, rewind)?;
                    summary.checkpoint = Some(path);
                    keep_checkpoints(args, &mut on_disk, step);
                }
                say_stopped(args, signal, step, false);
            }
            summary.interrupted = Some(signal);
            return Ok(summary);
        }
        if let Some((e, served)) = bad_data {
            // nothing of this run's earlier steps is lost (a shard may be hours into a corpus)
            let record = (&outliers, summary.best_val);
            let steps = (start, step, &on_disk);
            let saved = save_for_error(args, engine, &mut train_loader, record, steps, served)
                .map_or_else(|said| said, |_| saved_before_bad_shard(args, step));
            bail!("step {}: {e:#}{saved}", step + 1);
        }
        // --skip-loss-z, --skip-norm-z: an outlier's update is left out (crate::outliers)
        let norm = engine.grad_norm()?;
        let (loss_z, norm_z) = args.skip_thresholds();
        let verdict = outliers.judge_step(loss, norm, loss_z, norm_z);
        if let Some(what) = verdict.diverged(step + 1) {
            // the update that left the weights that diverged: the newest not skipped (the log
            // of a resumed run records the earlier skips too), and where to go back to: the
            // newest checkpoint before it (the checkpoints after it hold the same weights)
            let update = (1..=step)
                .rev()
                .find(|s| !summary.skipped.contains(s))
                .unwrap_or(0);
            let back = match on_disk.range(..update).next_back() {
                _ if args.no_state => None,
                Some(&k) => Some((k, args.out_dir.join(checkpoint_name("state", k)))),
                // (unless --keep-checkpoints has removed it since)
                None => resumed_from
                    .clone()
                    .filter(|p| start < update && p.exists())
                    .map(|p| (start, p)),
            };
            let back = back.as_ref().map(|(k, p)| (*k, &**p));
            let advice = divergence_advice(step, start, update, back);
            // nothing of this run's earlier steps is lost
            let rewind = if overfit.is_some() { 0 } else { micro };
            let record = (&outliers, summary.best_val);
            let steps = (start, step, &on_disk);
            let saved = save_for_error(args, engine, &mut train_loader, record, steps, rewind)
                .map_or_else(
                    |said| said,
                    |path| saved_before_divergence(args, step, &path),
                );
            bail!("{what}: training diverged; {advice}{saved}");
        }
        let skipped = verdict.skipped().is_some();
        let grad_scale = if args.grad_clip > 0.0 && norm > args.grad_clip {
            args.grad_clip / norm
        } else {
            1.0
        };
        let lr = schedule.at(step);
        let hp = AdamW {
            lr,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
            decay_on: DecayOn::Matrices,
        };
        if skipped {
            summary.skipped.push(step + 1);
        } else {
            engine.update(&hp, step + 1, grad_scale)?;
        }
        let secs = clock.elapsed().as_secs_f64();
        if profile_this && skipped {
            // its times lack the update's: kept out of the averages
            engine.profile_step_discard()?;
            summary.profile_discarded += 1;
        } else if profile_this {
            // after the step's clock: the wait for the device does not count in its line
            engine.profile_step_end()?;
        }
        drop(step_range);
        let step_mfu = peak.map(|p| mfu(&cfg, t, tokens_per_step as usize, secs, p));
        let mfu = match step_mfu {
            Some(m) => format!("{:.1}%", 100.0 * m),
            None => "-".to_string(),
        };
        // (--overfit-batch serves no data)
        let epoch = overfit.is_none().then(|| {
            train_loader.batches_served() as f64 / train_loader.num_batches().max(1) as f64
        });
        outln!(
            "step {:>5}/{} | loss {loss:.4} | lr {lr:.2e} | norm {norm:.3} | {:.1} ms | {:.0} tok/s | MFU {mfu}{}{}",
            step + 1,
            args.steps,
            secs * 1e3,
            tokens_per_step / secs,
            // a run counted in epochs shows where it is in them
            match (args.epochs, epoch) {
                (Some(_), Some(e)) => format!(" | epoch {e:.2}"),
                _ => String::new(),
            },
            verdict.line_suffix()
        );
        summary.losses.push(loss);
        log.step(&StepRecord {
            step: step + 1,
            loss,
            lr,
            norm,
            ms: secs * 1e3,
            tokens_per_s: tokens_per_step / secs,
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

        // the final validation, before the last checkpoint: its state then holds the best loss
        // that --keep-best's model has
        if last {
            validate(engine, args.steps, &mut summary, &mut log)?;
        }
        let ckpt_due = args.checkpoint_every > 0 && (step + 1) % args.checkpoint_every == 0;
        // Ctrl-C or SIGTERM (crate::interrupt): this step's checkpoint, then stop
        let stop = crate::interrupt::requested();
        if ckpt_due || last || stop.is_some() {
            let record = (&outliers, summary.best_val);
            let path =
                save_checkpoint(args, engine, &train_loader, record, step + 1).map_err(|e| {
                    let back = newest_state(args, &on_disk, resumed_from.as_deref(), start);
                    anyhow::anyhow!(
                        "{e:#}; the run stops after step {}, unsaved: {}",
                        step + 1,
                        match back {
                            Some((k, state)) => format!(
                                "free the space (or mend the folder) and continue from the \
                                 newest state on disk with --resume {} (step {k})",
                                state.display()
                            ),
                            None => "no training state of this run is on disk".to_string(),
                        }
                    )
                })?;
            summary.checkpoint = Some(path);
            keep_checkpoints(args, &mut on_disk, step + 1);
        }
        if let Some(signal) = stop {
            say_stopped(args, signal, step + 1, last);
            summary.interrupted = Some(signal);
            return Ok(summary);
        }
    }
    if log.records_lost() > 0 {
        crate::errln!(
            "note: {} lacks {} of this run's records, which could not be written",
            log.path().display(),
            log.records_lost()
        );
    }
    // the whole run's (a resumed one's too), whenever skipping is on
    let skipping = args.skip_thresholds() != (None, None);
    if skipping || !summary.skipped.is_empty() {
        // (the first 20 steps: the log has every one)
        let shown: Vec<String> = summary
            .skipped
            .iter()
            .take(20)
            .map(|s| s.to_string())
            .collect();
        let more = summary.skipped.len() - shown.len();
        outln!(
            "updates skipped (outliers): {} of {} steps{}",
            summary.skipped.len(),
            args.steps,
            match (shown.len(), more) {
                (0, _) => String::new(),
                (1, 0) => format!(" (step {})", shown[0]),
                (_, 0) => format!(" (steps {})", shown.join(", ")),
                (_, _) => format!(" (steps {}, and {more} more)", shown.join(", ")),
            }
        );
    }

    if let (true, Some(best)) = (args.keep_best, summary.best_val) {
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
    if !profiled.is_empty() {
        if let Some(profile) = engine.profile() {
            let left_out = summary.profile_discarded;
            if left_out > 0 {
                outln!(
                    "profile: {left_out} of the {} timed left out: {} (outliers)",
                    count(profile.steps as usize + left_out, "step", "steps"),
                    if left_out == 1 {
                        "its update was skipped"
                    } else {
                        "their updates were skipped"
                    }
                );
            }
            out!("{}", profile.table());
            summary.profile = Some(profile);
        }
    }

    if args.sample_tokens > 0 {
        summary.sample = sample(engine, args.steps, &mut log)?;
        // a signal during the sample cut it short: the run is done, and says it was stopped
        if let Some(signal) = crate::interrupt::requested() {
            crate::console::write_or_stderr(format_args!(
                "interrupted ({}) during the final sample: the run's checkpoint is written, \
                 nothing is left to train\n",
                signal.name()
            ));
            summary.interrupted = Some(signal);
        }
    }
    Ok(summary)
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

/// The checkpoint of the run after `step` steps, when the next step cannot be completed (it
/// diverged, or a shard it loaded is bad), with the training data put back `rewind` batches to
/// where step `step` left it (a resumed run serves that next step's batches again). Returns the
/// model checkpoint's path.
fn save_run_so_far(
    args: &TrainArgs,
    engine: &mut dyn Engine,
    loader: &mut DataLoader,
    record: (&Outliers, Option<crate::formats::train_state::BestVal>),
    step: usize,
    rewind: usize,
) -> Result<PathBuf> {
    // (always from the start: a shard that failed to load leaves the loader part-way into the
    // next shard, or the next epoch's order)
    let served = loader.batches_served() - rewind;
    loader.reset()?;
    loader.skip_batches(served as u64)?;
    save_checkpoint(args, engine, loader, record, step)
}

/// [`save_run_so_far`] for a run that stops with an error at step `step + 1`, having started at
/// `start`, its checkpoints `on_disk` (`steps` = (start, step, on_disk)): Ok(the model
/// checkpoint's path; one on disk already is not written again), or Err(what the error says
/// instead: nothing when the run had done no step, or why the save failed).
fn save_for_error(
    args: &TrainArgs,
    engine: &mut dyn Engine,
    loader: &mut DataLoader,
    record: (&Outliers, Option<crate::formats::train_state::BestVal>),
    (start, step, on_disk): (usize, usize, &std::collections::BTreeSet<usize>),
    rewind: usize,
) -> std::result::Result<PathBuf, String> {
    if step == start {
        return Err(String::new());
    }
    if on_disk.contains(&step) {
        return Ok(args.out_dir.join(checkpoint_name("model", step)));
    }
    save_run_so_far(args, engine, loader, record, step, rewind)
        .map_err(|e| format!("; saving the run after step {step} failed: {e:#}"))
}

/// What the error of a step whose shard was bad adds once [`save_run_so_far`] saved the run
/// after `step` steps.
fn saved_before_bad_shard(args: &TrainArgs, step: usize) -> String {
    if args.no_state {
        format!(
            "; the model after step {step} is saved (without a training state, --no-state, the \
             run cannot be resumed)"
        )
    } else {
        format!(
            "; the run after step {step} is saved: with the shard mended (its tokens as many as \
             before), --resume {} continues it",
            args.out_dir.join(checkpoint_name("state", step)).display()
        )
    }
}

/// What the error of a step that diverged adds once [`save_run_so_far`] saved the run after
/// `step` steps into the model checkpoint `path`.
fn saved_before_divergence(args: &TrainArgs, step: usize, path: &Path) -> String {
    if args.no_state {
        format!(
            "; the model after step {step} is saved ({})",
            path.display()
        )
    } else {
        format!(
            "; the run after step {step} is saved too ({}): resuming from it gives step {}'s \
             batch to the same weights again, which helps against a bad batch (with \
             --skip-loss-z or --skip-norm-z) or a bf16 overflow (with --precision fp32), not \
             against too high a learning rate",
            args.out_dir.join(checkpoint_name("state", step)).display(),
            step + 1
        )
    }
}

/// The newest training state of this run on disk, with its step: its newest checkpoint's, or the
/// state it resumed from; None with `--no-state`.
fn newest_state(
    args: &TrainArgs,
    on_disk: &std::collections::BTreeSet<usize>,
    resumed_from: Option<&Path>,
    start: usize,
) -> Option<(usize, PathBuf)> {
    if args.no_state {
        return None;
    }
    match on_disk.iter().next_back() {
        Some(&k) => Some((k, args.out_dir.join(checkpoint_name("state", k)))),
        None => resumed_from
            .filter(|p| p.exists())
            .map(|p| (start, p.to_path_buf())),
    }
}

/// How often a step of many micro-batches says how far it has come.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The files of `val` that are also files of `train` (the same file, by its canonical path).
fn shared_files<'a>(train: &[PathBuf], val: &'a [PathBuf]) -> Vec<&'a PathBuf> {
    let canonical = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let train: std::collections::HashSet<PathBuf> = train.iter().map(canonical).collect();
    val.iter()
        .filter(|v| train.contains(&canonical(v)))
        .collect()
}

/// What to do after step `step + 1` (from 1) diverged, `step` steps done, the run having started
/// at step `start`: its loss or norm came from the weights that the update of step `update` left
/// (`step`, or earlier when the updates after it were skipped as outliers; 0: none yet), so a
/// lower learning rate must start before that update, from `back` (the step and state of the
/// newest checkpoint before it), or from the start.
fn divergence_advice(
    step: usize,
    start: usize,
    update: usize,
    back: Option<(usize, &Path)>,
) -> String {
    if update == 0 {
        return "the model gives it before any update: check the model (--model) and the \
                training data"
            .to_string();
    }
    let skipped = match step - update {
        0 => String::new(),
        1 => format!(" (step {step} skipped its update)"),
        2 => format!(" (steps {} and {step} skipped their updates)", update + 1),
        _ => format!(" (steps {} to {step} skipped their updates)", update + 1),
    };
    let weights = if step == start && update == step {
        format!("the weights of the state resumed from (step {step}) give it")
    } else {
        format!("the weights that the update of step {update} left give it{skipped}")
    };
    match back {
        Some((k, state)) => format!(
            "{weights}: go back to an earlier checkpoint with a lower --lr (--resume {}, \
             step {k})",
            state.display()
        ),
        None => format!(
            "{weights}: start again with a lower --lr (no training state of this run before \
             step {update} is on disk)"
        ),
    }
}

/// `--hellaswag`'s examples, ready to score.
struct Hellaswag {
    examples: Vec<crate::hellaswag::Rendered>,
    /// The rows' length.
    t: usize,
    /// Examples a forward.
    per_batch: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_advice_goes_back_before_the_update_that_diverged() {
        let state = Path::new("out/state_000040.bin");
        let first = "the model gives it before any update";
        assert!(divergence_advice(0, 0, 0, None).starts_with(first));
        // every update so far skipped: still the model's own weights
        assert!(divergence_advice(2, 0, 0, None).starts_with(first));
        // a run resumed at step 50 that diverges at its first step: the state it resumed from
        // gave it; back to step 40
        assert_eq!(
            divergence_advice(50, 50, 50, Some((40, state))),
            "the weights of the state resumed from (step 50) give it: go back to an earlier \
             checkpoint with a lower --lr (--resume out/state_000040.bin, step 40)"
        );
        assert_eq!(
            divergence_advice(60, 50, 60, None),
            "the weights that the update of step 60 left give it: start again with a lower --lr \
             (no training state of this run before step 60 is on disk)"
        );
        // skipped updates: the weights are older than the step
        assert_eq!(
            divergence_advice(60, 50, 59, None),
            "the weights that the update of step 59 left give it (step 60 skipped its update): \
             start again with a lower --lr (no training state of this run before step 59 is on \
             disk)"
        );
        assert!(divergence_advice(60, 50, 58, None)
            .contains("step 58 left give it (steps 59 and 60 skipped their updates)"));
        assert_eq!(
            divergence_advice(50, 50, 45, Some((40, state))),
            "the weights that the update of step 45 left give it (steps 46 to 50 skipped their \
             updates): go back to an earlier checkpoint with a lower --lr (--resume \
             out/state_000040.bin, step 40)"
        );
    }

    #[test]
    fn profile_skips_the_first_step_unless_it_is_the_only_one() {
        assert_eq!(profiled_steps(10), 1..10);
        assert_eq!(profiled_steps(2), 1..2);
        assert_eq!(profiled_steps(1), 0..1);
        assert_eq!(profiled_steps(0), 0..0);
    }
}
