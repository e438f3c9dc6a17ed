//! What `train-gpt2-cuda` (training) takes: its flags ([`TrainArgs`]), their checks and what
//! they resolve to (`--epochs` to steps, the schedule, the engine asked for, notes on flags the
//! run will not use), and the model `--model` names ([`load_model`], [`model_config`]).

use crate::config::GPT2Config;
use crate::formats::hf_gpt2::hub_repo;
use crate::formats::read_model;
use crate::lr_schedule::{LrSchedule, LrShape};
use crate::precision::Precision;
use crate::text::{count, typed};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

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
    /// The model: a descriptor dN for a new one (llm.c's: N layers; d12 is GPT-2 124M, d24, d36
    /// and d48 GPT-2 medium, large and XL; other N from 1 to 256 have N heads of 64), or one to
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
    /// the run's other flags again (--steps may grow; --model, if given, must be the run's: only
    /// its shape is checked, the weights come from the state's checkpoint). The run goes on in
    /// that folder unless --out-dir names another; a state records the optimizer's settings (a
    /// note names any given otherwise) and its model's fingerprint (another model in that file's
    /// place is refused).
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
        // a decay of fewer than 2 steps does not fall (its first step runs at the peak): a final
        // rate, or a wsd decay fraction, that the user gave (other than the default) would pass
        // unseen
        let asked = self.lr_final_frac != DEFAULT_LR_FINAL_FRAC
            || (self.lr_schedule == LrShape::Wsd && self.lr_decay_frac != DEFAULT_LR_DECAY_FRAC);
        if asked
            && self.lr_schedule != LrShape::Constant
            && self.lr_final_frac < 1.0
            && self.steps > 0
            && self.warmup <= self.steps
            && self.schedule().at(self.steps - 1) == self.lr
        {
            notes.push(format!(
                "the learning rate never decays: the run's {} {} its decay fewer than 2 (a \
                 decay's first step runs at the peak), so --lr-final-frac {} is not reached",
                count(self.steps, "step", "steps"),
                if self.steps == 1 { "leaves" } else { "leave" },
                typed(self.lr_final_frac)
            ));
        }
        if let Some(n) = self.classifier_chunk.filter(|&n| n >= self.batch) {
            notes.push(format!(
                "--classifier-chunk {n} is not fewer than --batch {}: the classifier runs on the \
                 whole batch at once",
                self.batch
            ));
        }
        if self.warmup > self.steps {
            notes.push(format!(
                "--warmup {} is longer than the run's {}: the learning rate never reaches --lr \
                 (it ends at {:.2e})",
                self.warmup,
                count(self.steps, "step", "steps"),
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
        // (a training state counts the micro-batches served in 64 bits; --grad-accum and
        // --total-batch each allow steps of up to usize::MAX tokens)
        let micro = self.micro_batches() as u64;
        if (self.steps as u64).checked_mul(micro).is_none() {
            bail!(
                "{} of {micro} micro-batches each are too many to count (a training state \
                 counts the micro-batches served in 64 bits): fewer steps, or a smaller {}",
                count(self.steps, "step", "steps"),
                if self.total_batch.is_some() {
                    "--total-batch"
                } else {
                    "--grad-accum"
                }
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
        for (flag, beta) in [("--beta1", self.beta1), ("--beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("{flag} must be in [0, 1), got {}", typed(beta));
            }
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
        crate::cpu::adamw::check_grad_clip(self.grad_clip)?;
        for (flag, z) in [
            ("--skip-loss-z", self.skip_loss_z),
            ("--skip-norm-z", self.skip_norm_z),
        ] {
            if !not_negative(z) {
                bail!(
                    "{flag} must be a number of at least 0 (0: off), got {}",
                    typed(z)
                );
            }
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

#[cfg(test)]
impl TrainArgs {
    /// The training flags of a command line, words split at spaces (for the crate's tests).
    pub(crate) fn from_flags(flags: &str) -> TrainArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: TrainArgs,
        }
        let words = std::iter::once("train").chain(flags.split_whitespace());
        <Cli as clap::Parser>::parse_from(words).args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each range flag at its bounds: the ends the message calls allowed pass, a step past them
    /// is refused (a constant rate, --lr-final-frac 1, was refused by no test's account).
    #[test]
    fn range_flags_take_their_bounds() {
        let base = "--model d1 --batch 2 --seq 8";
        let check = |flags: &str| TrainArgs::from_flags(&format!("{base} {flags}")).validate();
        for ok in [
            "--lr-final-frac 0",
            "--lr-final-frac 1",
            "--lr-decay-frac 0",
            "--lr-decay-frac 1",
            "--beta1 0 --beta2 0",
            "--beta1 0.999999 --beta2 0.999999",
            "--weight-decay 0 --grad-clip 0 --skip-loss-z 0 --skip-norm-z 0",
            "--peak-tflops 1e-3",
            // one micro-batch of B x T = 2 x 8, the least --total-batch takes
            "--total-batch 16",
            "--grad-accum 1 --val-batches 1",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
        for (bad, needle) in [
            ("--lr-final-frac 1.001", "--lr-final-frac must be in [0, 1]"),
            (
                "--lr-final-frac=-0.001",
                "--lr-final-frac must be in [0, 1]",
            ),
            ("--lr-decay-frac 1.001", "--lr-decay-frac must be in [0, 1]"),
            // no micro-batch a step, or no validation batch: a mean loss of 0 / 0
            ("--grad-accum 0", "--grad-accum must be at least 1"),
            ("--val-batches 0", "--val-batches must be at least 1"),
            ("--beta1 1", "--beta1 must be in [0, 1), got 1"),
            ("--beta2 1", "--beta2 must be in [0, 1), got 1"),
            ("--beta2=-0.5", "--beta2 must be in [0, 1), got -0.5"),
            (
                "--skip-norm-z=-1",
                "--skip-norm-z must be a number of at least 0 (0: off), got -1",
            ),
            // a run of more micro-batches than 64 bits count, by either flag
            (
                "--steps 1000 --grad-accum 100000000000000000",
                "1000 steps of 100000000000000000 micro-batches each are too many to count",
            ),
            (
                "--steps 100 --total-batch 18446744073709551584",
                "100 steps of 1152921504606846974 micro-batches each are too many to count",
            ),
            (
                "--weight-decay=-0.001",
                "--weight-decay must be a number of at least 0",
            ),
            // MFU against an infinite peak would be 0% at any speed
            (
                "--peak-tflops inf",
                "--peak-tflops must be a positive number, got inf",
            ),
            (
                "--peak-tflops 0",
                "--peak-tflops must be a positive number, got 0",
            ),
            (
                "--peak-tflops NaN",
                "--peak-tflops must be a positive number, got NaN",
            ),
        ] {
            let e = check(bad).expect_err(bad).to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    /// `--model`'s text: a descriptor builds a model unless a model is stored under its name; a
    /// path that is there, a `.bin` that is not, or a hub repo is a model to read (so that a
    /// missing checkpoint is named as missing, not as a bad descriptor).
    #[test]
    fn a_model_is_read_unless_its_name_is_a_descriptor() {
        let dir = crate::test_dir("names-a-model");
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        assert!(
            !names_a_stored_model("d12"),
            "a descriptor (no folder of its name here)"
        );
        assert!(names_a_stored_model(&path("missing.bin")));
        assert!(
            names_a_stored_model(&dir.to_string_lossy()),
            "a folder, not a descriptor"
        );
        assert!(names_a_stored_model("openai-community/gpt2"), "a hub repo");
        let e = load_model(&path("missing.bin"), 1).unwrap_err();
        assert!(!format!("{e:#}").contains("descriptor"), "{e:#}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_warm_up_longer_than_the_run_says_where_the_rate_ends() {
        // step 1 of a 5-step warm-up: 1/5 of 1e-3; one step, singular
        assert_eq!(
            TrainArgs::from_flags("--steps 1 --warmup 5 --lr 1e-3").notes(),
            [
                "--warmup 5 is longer than the run's 1 step: the learning rate never reaches --lr \
              (it ends at 2.00e-4)"
            ]
        );
        // step 3 of 4: 3/4 of 1e-3
        assert_eq!(
            TrainArgs::from_flags("--steps 3 --warmup 4 --lr 1e-3").notes(),
            ["--warmup 4 is longer than the run's 3 steps: the learning rate never reaches --lr \
              (it ends at 7.50e-4)"]
        );
        assert!(TrainArgs::from_flags("--steps 3 --warmup 3")
            .notes()
            .is_empty());
    }

    #[test]
    fn a_decay_too_short_to_fall_says_that_the_final_rate_is_not_reached() {
        let note = |flags: &str| TrainArgs::from_flags(flags).notes();
        let never = "the learning rate never decays: the run's 4 steps leave its decay fewer than \
                     2 (a decay's first step runs at the peak), so --lr-final-frac 0.2 is not \
                     reached";
        // cosine after a warm-up of 3 of 4 steps: one decay step, at the peak
        assert_eq!(note("--steps 4 --warmup 3 --lr-final-frac 0.2"), [never]);
        // wsd deciding on a decay of under 2 steps
        assert_eq!(
            note("--steps 4 --lr-schedule wsd --lr-decay-frac 0.2 --lr-final-frac 0.2"),
            [never]
        );
        // a run of one step, which is its decay's first
        assert_eq!(
            note("--steps 1 --lr-final-frac 0.2"),
            ["the learning rate never decays: the run's 1 step leaves its decay fewer than 2 (a \
              decay's first step runs at the peak), so --lr-final-frac 0.2 is not reached"]
        );
        // two decay steps fall; the default final rate (0.1), or one of 1: no note
        assert!(note("--steps 5 --warmup 3 --lr-final-frac 0.2").is_empty());
        assert!(note("--steps 4 --warmup 3").is_empty());
        assert!(note("--steps 4 --warmup 3 --lr-final-frac 1").is_empty());
        // (a warm-up longer than the run has its own note)
        assert_eq!(note("--steps 2 --warmup 3 --lr-final-frac 0.2").len(), 1);
    }

    /// A fresh folder `name` holding one shard of 64 tokens, and `--train` of it.
    fn shard_of_64(name: &str) -> (std::path::PathBuf, String) {
        let dir = crate::test_dir(name);
        let shard = dir.join("train.bin");
        crate::formats::shard::write_shard(&shard, &[1; 64]).unwrap();
        (dir, format!("--train {}", shard.display()))
    }

    /// `--epochs` checks the other flags as a run of 1 step until the shards count its steps: a
    /// step of 2^63 micro-batches (1 step of them counts in 64 bits, 2 do not) is then less
    /// than one step of the epoch, not too many to count.
    #[test]
    fn epochs_are_checked_as_one_step_until_counted() {
        let (dir, train) = shard_of_64("epochs-one-step");
        let flags =
            format!("--batch 1 --seq 1 --epochs 1 --grad-accum 9223372036854775808 {train}");
        let e = TrainArgs::from_flags(&flags).resolved().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--epochs 1 is less than one step: an epoch of"),
            "{e:#}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_total_batch_is_counted_in_micro_batches() {
        let micro = |flags: &str| TrainArgs::from_flags(flags).micro_batches();
        assert_eq!(micro("--batch 4 --seq 16 --total-batch 192"), 3);
        // B x T = 1: every token a micro-batch
        assert_eq!(micro("--batch 1 --seq 1 --total-batch 4"), 4);
        assert_eq!(micro("--batch 1 --seq 1 --grad-accum 5"), 5);
    }

    #[test]
    fn epochs_are_counted_once() {
        let (dir, train) = shard_of_64("epochs-counted-once");
        let flags = format!("--batch 2 --seq 4 --epochs 1.5 {train}");
        // 63 / 8 = 7 batches an epoch, 1.5 epochs 10.5 steps
        let args = TrainArgs::from_flags(&flags).resolved().unwrap();
        assert_eq!(args.steps, 10);
        // counted flags are not counted again: the shards are not read a second time
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(args.resolved().unwrap().steps, 10);
    }

    #[test]
    fn a_classifier_chunk_of_the_whole_batch_or_more_says_so() {
        let note = |flags: &str| TrainArgs::from_flags(flags).notes();
        assert_eq!(
            note("--batch 4 --classifier-chunk 4"),
            ["--classifier-chunk 4 is not fewer than --batch 4: the classifier runs on the whole \
              batch at once"]
        );
        assert_eq!(note("--batch 4 --classifier-chunk 1000000").len(), 1);
        assert!(note("--batch 4 --classifier-chunk 3").is_empty());
    }
}
