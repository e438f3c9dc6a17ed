//! The `train-gpt2-cuda` command line: training (the default), `prepro`, `sample`, `eval`,
//! `verify`, `convert` (any model to an llm.c checkpoint or a Hugging Face folder) and `tokenizer`
//! (writes llm.c's gpt2_tokenizer.bin). Every error is printed with its causes and
//! exits with status 1, except a usage error that the command-line parser catches (a value that
//! does not parse or that its type cannot hold, two flags that conflict), which exits with clap's
//! status 2; nothing the user
//! types makes it panic.

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use train_gpt2_cuda::engine::{create_engine, EngineOptions, Kernels, Recompute};
use train_gpt2_cuda::formats::{
    check_folder, check_replaceable_by, checkpoint, debug_state, make_folder, make_folder_of,
    read_model,
};
use train_gpt2_cuda::out_of_memory::{for_command, Knobs};
use train_gpt2_cuda::precision::Precision;
use train_gpt2_cuda::sample::{generate, SampleOptions};
use train_gpt2_cuda::text::count;
use train_gpt2_cuda::tokenizer::Tokenizer;
use train_gpt2_cuda::train::{self, Device, TrainArgs};
use train_gpt2_cuda::verify::{self, Tolerances};
use train_gpt2_cuda::{out, outln};

#[derive(Parser, Debug)]
#[command(
    name = "train-gpt2-cuda",
    version,
    about = "Train GPT-2 on an NVIDIA GPU (or the CPU reference path)",
    args_conflicts_with_subcommands = true,
    // (so that `--lr -1` is refused by its check, with its message, not as an unknown flag)
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Tokenize text files into train and val token shards (llm.c format).
    #[command(allow_negative_numbers = true)]
    Prepro(PreproArgs),
    /// Generate text from a checkpoint.
    #[command(allow_negative_numbers = true)]
    Sample(SampleArgs),
    /// The loss (and perplexity) of a model on token shards, without training.
    #[command(allow_negative_numbers = true)]
    Eval(EvalArgs),
    /// Compare forward and backward with a debug state (PyTorch or llm.c) tensor by tensor.
    #[command(allow_negative_numbers = true)]
    Verify(VerifyArgs),
    /// Write a model (a Hugging Face GPT-2, or an llm.c checkpoint) as an llm.c checkpoint or as
    /// a Hugging Face GPT-2.
    #[command(allow_negative_numbers = true)]
    Convert(ConvertArgs),
    /// Write the GPT-2 vocabulary as llm.c's gpt2_tokenizer.bin.
    Tokenizer {
        /// The file to write.
        #[arg(long, default_value = "gpt2_tokenizer.bin")]
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct PreproArgs {
    /// Text files (one document each) and JSON Lines files (`*.jsonl`, `*.json`, `*.ndjson`: one
    /// document per line, its "text" field), either compressed with gzip (`*.txt.gz`, `*.jsonl.gz`) or zstd
    /// (`*.txt.zst`, `*.jsonl.zst`); Parquet files (`*.parquet`: one document per row, its "text"
    /// column).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The folder that receives train.bin and val.bin.
    #[arg(long, default_value = "data/custom")]
    out_dir: PathBuf,
    /// How many of the files (the last ones) go to the validation shard.
    #[arg(long, default_value_t = 1)]
    val_files: usize,
    /// Instead: this fraction of all tokens (the end of the stream) goes to the validation shard.
    #[arg(value_parser = train_gpt2_cuda::text::flag_number::<f64>, long, conflicts_with = "val_files")]
    val_fraction: Option<f64>,
    /// The most tokens of a shard: a larger part goes into numbered shards (train_000000.bin,
    /// ...; `--train 'DIR/train_??????.bin'`).
    #[arg(long, default_value_t = train_gpt2_cuda::prepro::DEFAULT_SHARD_TOKENS)]
    shard_tokens: usize,
    /// The field of each JSON Lines record, or the column of a Parquet file, that holds the text.
    #[arg(long, default_value = "text")]
    text_field: String,
}

#[derive(clap::Args, Debug)]
struct ConvertArgs {
    /// The model: a Hugging Face GPT-2 (a directory with config.json and model.safetensors), or an
    /// llm.c checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// What to write: an llm.c checkpoint file, or (--format hf) a folder.
    #[arg(long)]
    out: PathBuf,
    /// llmc: an llm.c checkpoint; hf: a Hugging Face GPT-2 folder (config.json and
    /// model.safetensors, as save_pretrained writes them).
    #[arg(long, value_enum, default_value = "llmc")]
    format: ModelFormat,
    /// How the parameters are stored: fp32, or bf16 (half the size).
    #[arg(long, value_parser = train_gpt2_cuda::precision::values(
        "4 bytes a parameter (an llm.c checkpoint of version 3; F32 safetensors)",
        "2 bytes a parameter, rounded to nearest even (an llm.c checkpoint of version 5; BF16 \
         safetensors)",
    ), default_value = "fp32")]
    precision: Precision,
}

/// `--precision` of the commands that only run forwards (`sample`, `eval`), which keep no
/// gradients or AdamW moments.
fn forwards_precision() -> impl clap::builder::TypedValueParser<Value = Precision> {
    train_gpt2_cuda::precision::values(
        "32-bit floats (the reference, and the only precision the CPU engine computes in)",
        "bfloat16 weights and activations, with fp32 sums (GPU only)",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModelFormat {
    Llmc,
    Hf,
}

#[derive(clap::Args, Debug)]
struct SampleArgs {
    /// The model: an llm.c checkpoint (fp32 or bf16), or a Hugging Face GPT-2 (a directory with
    /// config.json and model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Text to continue (default: start from the end-of-text token).
    #[arg(allow_hyphen_values = true, long, default_value = "")]
    prompt: String,
    /// How many tokens to generate.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Divides the logits before sampling: below 1 sharper, above 1 flatter (must be positive;
    /// --top-k 1 takes the most likely token).
    #[arg(value_parser = train_gpt2_cuda::text::flag_number::<f32>, long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Then among the most likely tokens whose probabilities first add up to P (nucleus
    /// sampling; 1: all).
    #[arg(value_parser = train_gpt2_cuda::text::flag_number::<f32>, long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the draws: the same seed, model and flags give the same text.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// The context the model sees (default: the model's maxT).
    #[arg(long)]
    window: Option<usize>,
    /// Where to run: auto (the GPU if there is one), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// fp32 or bf16 (GPU only); default: bf16 on GPUs that have it, fp32 elsewhere.
    #[arg(long, value_parser = forwards_precision())]
    precision: Option<Precision>,
}

#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// The model: an llm.c checkpoint, or a Hugging Face GPT-2 (a directory with config.json and
    /// model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Token shards (a glob such as 'dir/val_*.bin'); default: the bundled Shakespeare val shard.
    #[arg(long)]
    data: Option<String>,
    /// B: the sequences of each forward pass (with --hellaswag a multiple of 4: an example is 4
    /// sequences).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The sequence length (default: the model's maxT, at most 1024; not with --hellaswag, whose
    /// rows fit its longest example).
    #[arg(long, conflicts_with = "hellaswag")]
    seq: Option<usize>,
    /// Evaluate this many batches (default: every whole batch of the data; not with
    /// --hellaswag, which has --examples).
    #[arg(long, conflicts_with = "hellaswag")]
    batches: Option<usize>,
    /// Instead of a loss: HellaSwag accuracy on this file (hellaswag_val.jsonl, as llm.c's
    /// dev/data/hellaswag.py downloads it).
    #[arg(long, conflicts_with = "data")]
    hellaswag: Option<PathBuf>,
    /// With --hellaswag: only the first N examples.
    #[arg(long, requires = "hellaswag")]
    examples: Option<usize>,
    /// Where to run: auto (the GPU if there is one), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// fp32 or bf16 (GPU only); default: bf16 on GPUs that have it, fp32 elsewhere.
    #[arg(long, value_parser = forwards_precision())]
    precision: Option<Precision>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum VerifyDevice {
    /// The CPU engine against the reference.
    Cpu,
    /// The GPU engine against the reference.
    Cuda,
    /// Both, each against the reference and against each other.
    Both,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The model the state was made with: an llm.c checkpoint, or a Hugging Face GPT-2.
    #[arg(long)]
    model: PathBuf,
    /// The debug state: batch, logits, loss and gradients.
    #[arg(long)]
    state: PathBuf,
    /// The engine to check: cpu, cuda, or both (each against the reference, and the GPU against
    /// the CPU).
    #[arg(long, value_enum, default_value = "cpu")]
    device: VerifyDevice,
    /// Then run this many AdamW steps on the same batch, printing `step I loss X`.
    #[arg(long, default_value_t = 0)]
    steps: usize,
    /// Clip each step's gradients to this global norm, as `train --grad-clip` does (0: no
    /// clipping, the default here).
    #[arg(value_parser = train_gpt2_cuda::text::flag_number::<f32>, long, value_name = "X", default_value_t = 0.0)]
    grad_clip: f32,
    /// Compare the steps' losses (and gradient norms, where the file gives them) with this file
    /// of `step I loss X [norm N]` lines.
    #[arg(long)]
    expect_losses: Option<PathBuf>,
    /// Write the engine's own x, y, logits, loss and gradients as a debug state.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// The GPU's precision: fp32 (the default here: checked against fp32 tolerances) or bf16
    /// (checked against the bf16 tolerances; the CPU side always computes in fp32).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// Use TF32 tensor cores for the GPU's fp32 matrix products (checked against the TF32
    /// tolerances).
    #[arg(long)]
    tf32: bool,
    /// The GPU's kernels: fused or plain (default: fused in bf16 where the shapes allow).
    #[arg(long, value_enum)]
    kernels: Option<Kernels>,
    /// Launch every GPU kernel from the host instead of replaying CUDA graphs.
    #[arg(long)]
    no_cuda_graphs: bool,
    /// What the GPU's backward pass computes again instead of keeping it (gelu: GELU's output).
    #[arg(long, value_enum, value_name = "WHAT", default_value = "none")]
    recompute: Recompute,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // (--model's default is no model to check a resumed run's against)
    let given = |flag| matches.value_source(flag) == Some(clap::parser::ValueSource::CommandLine);
    let (model_given, out_dir_given) = (given("model"), given("out_dir"));
    if let Some(Command::Eval(a)) = &cli.command {
        check_eval_flags(a);
    }
    let result = match cli.command {
        None => run_train(&cli.train, model_given, out_dir_given),
        Some(Command::Prepro(a)) => run_prepro(&a),
        Some(Command::Sample(a)) => run_sample(&a),
        Some(Command::Eval(a)) => run_eval(&a),
        Some(Command::Verify(a)) => run_verify(&a),
        Some(Command::Convert(a)) => run_convert(&a),
        Some(Command::Tokenizer { out }) => run_tokenizer(&out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            train_gpt2_cuda::errln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exits with a usage error where clap lets a flag of `eval` through that does nothing: clap
/// leaves `requires` unchecked when a flag that conflicts with the required one is given (clap
/// issue 4520), so `--examples N --batches M` ran a loss eval, the examples unused.
fn check_eval_flags(a: &EvalArgs) {
    if a.examples.is_some() && a.hellaswag.is_none() {
        let mut cli = Cli::command();
        cli.build(); // (names the subcommand's usage "train-gpt2-cuda eval")
        let eval = cli.find_subcommand_mut("eval").cloned();
        eval.unwrap_or(cli)
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--examples counts HellaSwag examples: it needs --hellaswag <HELLASWAG>",
            )
            .exit();
    }
}

/// Trains; `model_given`: whether the command line gave --model (with --resume, it must be the
/// resumed run's); `out_dir_given`: whether it gave --out-dir (else a resumed run goes on in
/// its own folder).
fn run_train(args: &TrainArgs, model_given: bool, out_dir_given: bool) -> Result<ExitCode> {
    let mut args = args.clone();
    if let (Some(resume), false) = (&args.resume, out_dir_given) {
        args.out_dir = train_gpt2_cuda::checkpoints::folder_of_resumed(resume);
    }
    // (--epochs becomes --steps here: a resumed run is checked against them)
    let args = &args.resolved()?;
    // a folder where another run is live is refused before the model loads (train() takes the
    // lock again once it has made the folder; held here until the run ends)
    let _lock = if args.out_dir.is_dir() {
        Some(train_gpt2_cuda::checkpoints::lock_out_dir(&args.out_dir)?)
    } else {
        None
    };
    // --resume: the model is the checkpoint written with the training state
    let resume = match &args.resume {
        Some(path) => Some(train_gpt2_cuda::checkpoints::Resume::open(path, args)?),
        None => None,
    };
    let (cfg, params) = match &resume {
        Some(r) => {
            let ck = checkpoint::read_checkpoint(&r.model_path)?;
            train_gpt2_cuda::formats::check_finite(&r.model_path, &ck)?;
            r.check_weights(&ck.params)?;
            if model_given {
                r.check_model(&args.model, &ck.config)?;
            }
            (ck.config, ck.params)
        }
        None => {
            // a new model for the CPU that cannot fit is refused before its weights are drawn
            // (minutes for a large one); the engine checks again, exactly
            let on_cpu = match args.device {
                Device::Cpu => true,
                Device::Cuda => false,
                Device::Auto => !train_gpt2_cuda::gpu::may_have_a_gpu(),
            };
            if on_cpu && train_gpt2_cuda::config::GPT2Config::from_descriptor(&args.model).is_ok() {
                let cfg = train::model_config(&args.model)?;
                train_gpt2_cuda::cpu::model::check_fits(&cfg, args.batch, args.seq)?;
            }
            train::load_model(&args.model, args.seed)?
        }
    };
    let mut engine = create_engine(&args.engine_options(), cfg, params, args.batch, args.seq)?;
    // Ctrl-C or SIGTERM from here on: finish the step, write its checkpoint and state, exit 130
    // or 143 (a second one ends the process at once)
    train_gpt2_cuda::interrupt::catch_ctrl_c();
    let summary = train::train(args, engine.as_mut(), resume)?;
    Ok(match summary.interrupted {
        Some(signal) => ExitCode::from(signal.exit_status()),
        None => ExitCode::SUCCESS,
    })
}

fn run_prepro(a: &PreproArgs) -> Result<ExitCode> {
    use train_gpt2_cuda::prepro::{prepro_with, PreproOptions, ValSplit};
    let split = match a.val_fraction {
        Some(f) => ValSplit::Fraction(f),
        None => ValSplit::LastFiles(a.val_files),
    };
    let opts = PreproOptions {
        shard_tokens: a.shard_tokens,
        text_field: a.text_field.clone(),
        ..PreproOptions::default()
    };
    // Ctrl-C from here on: the shards written so far are removed, the folder left as it was (a
    // second Ctrl-C ends the process at once; the next prepro removes what that leaves)
    train_gpt2_cuda::interrupt::catch_ctrl_c();
    let existed = a.out_dir.exists();
    let result = prepro_with(&a.inputs, &a.out_dir, split, &opts);
    if result.is_err() && !existed {
        // (the folder it made, if empty: remove_dir leaves one that holds anything)
        let _ = std::fs::remove_dir(&a.out_dir);
    }
    if let (Err(_), Some(stop)) = (&result, train_gpt2_cuda::interrupt::requested()) {
        train_gpt2_cuda::errln!(
            "prepro: interrupted ({}): {} is as it was",
            stop.name(),
            a.out_dir.display()
        );
        return Ok(ExitCode::from(stop.exit_status()));
    }
    let s = result?;
    outln!(
        "{}: {} -> {}, {} -> {}",
        count(s.documents, "document", "documents"),
        count(s.train_tokens, "train token", "train tokens"),
        s.train_path.display(),
        count(s.val_tokens, "val token", "val tokens"),
        s.val_path.display()
    );
    if s.train_shards.len() > 1 || s.val_shards.len() > 1 {
        outln!(
            "train on them with --train '{}' --val '{}'",
            s.train_path.display(),
            s.val_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Ok unless stdout failed other than by a closed pipe (`| head`, the reader's choice): a command
/// whose output is its result (`what`) must not exit 0 when a full disk lost it.
fn output_complete(what: &str) -> Result<()> {
    match train_gpt2_cuda::console::failure() {
        Some(kind) if kind != std::io::ErrorKind::BrokenPipe => {
            bail!("{what} could not be written to standard output ({kind})")
        }
        _ => Ok(()),
    }
}

fn run_sample(a: &SampleArgs) -> Result<ExitCode> {
    let opts = SampleOptions {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
    };
    opts.validate()?;
    let ck = read_model(&a.model)?;
    let cfg = ck.config;
    let window = a.window.unwrap_or(cfg.max_seq_len);
    if window == 0 || window > cfg.max_seq_len {
        bail!(
            "--window must be in 1..={} (the model's maxT), got {window}",
            cfg.max_seq_len
        );
    }
    let tok = Tokenizer::gpt2()?;
    if cfg.vocab_size != tok.vocab_size() {
        bail!(
            "{}: the model's vocabulary has {} tokens, the GPT-2 tokenizer {}: cannot decode its samples",
            a.model.display(),
            cfg.vocab_size,
            tok.vocab_size()
        );
    }
    let mut prompt = vec![tok.eot()];
    prompt.extend(tok.encode(&a.prompt));
    let engine_opts = EngineOptions::on(a.device, a.precision).for_forwards();
    let mut engine = create_engine(&engine_opts, cfg, ck.params, 1, window)
        .map_err(|e| for_command(e, Knobs::Sample))?;
    out!("{}", a.prompt);
    // Print whole characters as they come. The text is all sample makes: when stdout closes
    // (`sample ... | head`), it stops, and that is success.
    let mut text = tok.decoder().stream();
    generate(
        engine.as_mut(),
        &prompt,
        a.tokens,
        window,
        &opts,
        a.seed,
        |id| {
            out!("{}", text.push(id));
            if train_gpt2_cuda::console::is_closed() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    )?;
    out!("{}", text.finish()?);
    output_complete("the sample")?;
    outln!();
    Ok(ExitCode::SUCCESS)
}

fn run_eval(a: &EvalArgs) -> Result<ExitCode> {
    use train_gpt2_cuda::data::{default_val_pattern, DataLoader};
    if let Some(path) = &a.hellaswag {
        return run_hellaswag(a, path);
    }
    let ck = read_model(&a.model)?;
    let cfg = ck.config;
    let t = a.seq.unwrap_or(cfg.max_seq_len.min(1024));
    if a.batch == 0 || t == 0 || t > cfg.max_seq_len {
        bail!(
            "--batch must be at least 1 and --seq in 1..={} (the model's maxT); got B={}, T={t}",
            cfg.max_seq_len,
            a.batch
        );
    }
    let pattern = a.data.clone().unwrap_or_else(default_val_pattern);
    let mut loader = DataLoader::new(&pattern, a.batch, t, cfg.vocab_size, None)?;
    let all = loader.num_batches();
    let n = a.batches.unwrap_or(all);
    if n == 0 || n > all {
        bail!(
            "--batches must be in 1..={all} (the data's whole batches of {}x{t}); got {n}",
            a.batch
        );
    }
    let mut engine =
        eval_engine(a, cfg, ck.params, (a.batch, t)).map_err(|e| for_command(e, Knobs::Eval))?;
    outln!(
        "eval: {} ({cfg}) on {} on {pattern}: {n} of {} of {}x{t}",
        a.model.display(),
        engine.describe(),
        count(all, "batch", "batches"),
        a.batch
    );
    // a progress line about every tenth of the way
    let every = n.div_ceil(10).max(1);
    let loss = train::evaluate_with(engine.as_mut(), &mut loader, n, |done, so_far| {
        if done % every == 0 && done < n {
            outln!("eval: {done}/{n} batches, loss so far {so_far:.6}");
        }
    })?;
    outln!(
        "loss {loss:.6} (perplexity {}) over {}",
        // (from 1e6 in exponent form: a diverged model's is dozens of digits)
        train_gpt2_cuda::text::magnitude((loss as f64).exp(), 3),
        count(n * a.batch * t, "token", "tokens")
    );
    output_complete("the loss")?;
    if !loss.is_finite() {
        bail!(
            "the loss is not finite: the forward overflowed on some batch{}",
            overflow_hint(engine.precision())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine `eval` asks for, with arenas for batches of B x T.
fn eval_engine(
    a: &EvalArgs,
    cfg: train_gpt2_cuda::config::GPT2Config,
    params: Vec<f32>,
    (b, t): (usize, usize),
) -> Result<Box<dyn train_gpt2_cuda::engine::Engine>> {
    create_engine(
        &EngineOptions::on(a.device, a.precision).for_forwards(),
        cfg,
        params,
        b,
        t,
    )
}

/// What may help when an evaluation's loss is not finite (the model's parameters are finite:
/// `read_model` checks them).
fn overflow_hint(precision: Precision) -> &'static str {
    match precision {
        Precision::Fp32 => "",
        Precision::Bf16 => " (in bf16: --precision fp32 may avoid the overflow)",
    }
}

fn run_hellaswag(a: &EvalArgs, path: &std::path::Path) -> Result<ExitCode> {
    use train_gpt2_cuda::hellaswag::{evaluate, load, ENDINGS};
    if a.batch == 0 || !a.batch.is_multiple_of(ENDINGS) {
        bail!(
            "with --hellaswag, --batch must be a positive multiple of {ENDINGS} (each example is \
             {ENDINGS} sequences, one per ending); got {}",
            a.batch
        );
    }
    let ck = read_model(&a.model)?;
    let cfg = ck.config;
    let (rendered, t) =
        load(path, a.examples, &cfg, cfg.max_seq_len, "the model's maxT").context("--hellaswag")?;
    let n = rendered.len();
    // (no larger than the examples: arenas for a --batch beyond them would be memory unused)
    let per_batch = (a.batch / ENDINGS).min(n);
    let mut engine = eval_engine(a, cfg, ck.params, (per_batch * ENDINGS, t))
        .map_err(|e| for_command(e, Knobs::Hellaswag))?;
    outln!(
        "hellaswag: {} ({cfg}) on {} on {}: {}, {}",
        a.model.display(),
        engine.describe(),
        path.display(),
        train_gpt2_cuda::hellaswag::count_text(n),
        train_gpt2_cuda::hellaswag::batches_text(per_batch, t)
    );
    // a progress line about every tenth of the way
    let every = n.div_ceil(10).max(1);
    let mut next = every;
    let (total, _) = evaluate(engine.as_mut(), &rendered, per_batch, t, |so_far| {
        if so_far.examples >= next && so_far.examples < n {
            outln!(
                "hellaswag: {}/{n} examples, acc_norm {:.4}",
                so_far.examples,
                so_far.acc_norm()
            );
            while next <= so_far.examples {
                next += every;
            }
        }
    })?;
    outln!(
        "hellaswag: acc_norm {:.4} ({}/{n}), acc {:.4} ({}/{n}){}",
        total.acc_norm(),
        total.correct_norm,
        total.acc(),
        total.correct_sum,
        total.non_finite_note()
    );
    output_complete("the accuracies")?;
    if total.non_finite > 0 {
        bail!(
            "the model's loss was not finite (NaN or inf) on {}: the accuracies count them as \
             wrong{}",
            total.non_finite_share(),
            overflow_hint(engine.precision())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_convert(a: &ConvertArgs) -> Result<ExitCode> {
    train_gpt2_cuda::console::keep_stdout_for(&a.out);
    let mut written = vec![a.out.clone()];
    match a.format {
        ModelFormat::Llmc => check_out_file("--out", &a.out)?,
        ModelFormat::Hf => {
            check_folder("--out", &a.out, &a.out)?;
            written.extend(["model.safetensors", "config.json"].map(|f| a.out.join(f)))
        }
    }
    check_not_an_input(
        "--out",
        &a.out,
        &written,
        &[("the model being converted", &a.model)],
    )?;
    // (after the inputs: a file the convert reads is named as such, whatever it holds)
    if a.format == ModelFormat::Llmc {
        check_replaceable_by("--out", &a.out, checkpoint::CHECKPOINT_MAGIC)?;
    }
    // (--out itself, for llmc, was checked with check_out_file; the folder's other files, written
    // with them, are checked again as they are written)
    for file in &written[1..] {
        train_gpt2_cuda::formats::check_replaceable(file)?;
    }
    let ck = read_model(&a.model)?;
    let precision = a.precision.into();
    match a.format {
        ModelFormat::Llmc => {
            // (as --format hf makes its folder, and prepro its --out-dir)
            make_folder_of("--out", &a.out)?;
            checkpoint::write_checkpoint(&a.out, &ck.config, &ck.params, precision)?
        }
        ModelFormat::Hf => {
            use train_gpt2_cuda::formats::hf_gpt2::{write_hf_gpt2, TokenIds};
            // (a Hugging Face model's own, as transformers' save_pretrained keeps them)
            let ids = TokenIds::of_model(&a.model, &ck.config)?;
            make_folder("--out", &a.out)?;
            write_hf_gpt2(&a.out, &ck, precision, ids)?
        }
    }
    outln!(
        "wrote {} ({} parameters, {}: {})",
        a.out.display(),
        ck.params.len(),
        a.precision.name(),
        ck.config
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks that `flag`'s `out` names a file that may be replaced, before any work: a directory
/// there is an error, not a temporary file written beside it, and so is a read-only file, or a
/// folder to write it in that cannot be made. (A file of another kind than the one written is
/// refused by [`check_replaceable_by`], after the inputs are checked.)
fn check_out_file(flag: &str, out: &std::path::Path) -> Result<()> {
    if out.is_dir() {
        bail!("{} is a directory: {flag} takes a file name", out.display());
    }
    if out.as_os_str().to_string_lossy().ends_with('/') {
        bail!(
            "{} names a folder (it ends in '/'): {flag} takes a file name",
            out.display()
        );
    }
    check_folder(flag, train_gpt2_cuda::formats::folder_of(out), out)?;
    train_gpt2_cuda::formats::check_replaceable(out)
}

/// Checks, before any work, that a command writes none of the files it reads: none of `written`
/// (the files that `flag` `out` makes) is one of `inputs` (what each is, and its path), nor a file
/// in an input that is a folder (a Hugging Face model): it would be replaced by the output, or by
/// half of it where the write fails.
fn check_not_an_input(
    flag: &str,
    out: &std::path::Path,
    written: &[std::path::PathBuf],
    inputs: &[(&str, &std::path::Path)],
) -> Result<()> {
    for &(what, input) in inputs {
        let Ok(m) = std::fs::canonicalize(input) else {
            continue; // (its reader says what is missing)
        };
        let mut read = vec![m.clone()];
        if let Ok(entries) = std::fs::read_dir(&m) {
            // each file as named, and where it links to (a Hugging Face hub cache's snapshot
            // folder is links into its blobs)
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                read.extend(std::fs::canonicalize(&path).ok());
                read.push(path);
            }
        }
        if written.iter().any(|w| read.contains(&resolved(w))) {
            bail!(
                "{flag} {} would overwrite {what} ({}): give another {flag}",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// `path` with its folder resolved (`canonicalize`), and the file too where it exists: a file to
/// be written compares with the files read.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let folder = train_gpt2_cuda::formats::folder_of(path);
    match (std::fs::canonicalize(folder), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

fn run_tokenizer(out: &std::path::Path) -> Result<ExitCode> {
    use train_gpt2_cuda::formats::tokenizer_file::TOKENIZER_MAGIC;
    train_gpt2_cuda::console::keep_stdout_for(out);
    check_out_file("--out", out)?;
    check_replaceable_by("--out", out, TOKENIZER_MAGIC)?;
    make_folder_of("--out", out)?;
    let tok = Tokenizer::gpt2()?;
    let tokens = tok.decoder().all_token_bytes();
    train_gpt2_cuda::formats::tokenizer_file::write_tokenizer_file(out, tokens, tok.eot())?;
    outln!(
        "wrote {} ({} tokens, EOT {})",
        out.display(),
        tokens.len(),
        tok.eot()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_verify(a: &VerifyArgs) -> Result<ExitCode> {
    if let Some(dump) = &a.dump {
        train_gpt2_cuda::console::keep_stdout_for(dump);
    }
    // the flags, before any work. Those that choose what is checked on the GPU are errors with
    // --device cpu (its default), not notes as in training: the CPU alone would pass, and
    // "all tensors pass" would claim bf16, the kernels or the recomputation checked.
    if a.precision == Precision::Bf16 && a.device == VerifyDevice::Cpu {
        bail!("--precision bf16 needs --device cuda or both: the CPU engine computes in fp32 only");
    }
    if a.kernels.is_some() && a.device == VerifyDevice::Cpu {
        bail!("--kernels chooses the GPU's kernels: it needs --device cuda or both");
    }
    if a.recompute != Recompute::None && a.device == VerifyDevice::Cpu {
        bail!(
            "--recompute changes the GPU's backward pass: it needs --device cuda or both (the \
             CPU keeps every activation, so it would pass without checking the recomputation)"
        );
    }
    if a.expect_losses.is_some() && a.steps == 0 {
        bail!("--expect-losses checks the losses of AdamW steps: it needs --steps N (N > 0)");
    }
    train_gpt2_cuda::cpu::adamw::check_grad_clip(a.grad_clip)?;
    if a.grad_clip > 0.0 && a.steps == 0 {
        bail!("--grad-clip clips the gradients of AdamW steps: it needs --steps N (N > 0)");
    }
    // (the dump is written at the end)
    if let Some(dump) = &a.dump {
        check_out_file("--dump", dump)?;
        let mut inputs = vec![
            ("the model", a.model.as_path()),
            ("the reference state", &a.state),
        ];
        if let Some(losses) = &a.expect_losses {
            inputs.push(("the expected losses", losses));
        }
        check_not_an_input("--dump", dump, std::slice::from_ref(dump), &inputs)?;
        check_replaceable_by("--dump", dump, debug_state::DEBUG_STATE_MAGIC)?;
    }
    // the expected losses, read before any work (a missing or bad file was found after the
    // comparison)
    let expected = match &a.expect_losses {
        Some(p) => {
            let l = verify::read_losses(p)?;
            if l.len() < a.steps {
                bail!(
                    "{}: holds {}, fewer than --steps {}",
                    p.display(),
                    count(l.len(), "step", "steps"),
                    a.steps
                );
            }
            if l.len() > a.steps {
                train_gpt2_cuda::errln!(
                    "note: {} holds {}: --steps {} checks the first {}",
                    p.display(),
                    count(l.len(), "step", "steps"),
                    a.steps,
                    a.steps
                );
            }
            Some(l)
        }
        None => None,
    };
    // (a note for each of these given, by name)
    if a.device == VerifyDevice::Cpu && a.tf32 {
        train_gpt2_cuda::errln!(
            "note: --tf32 does nothing with --device cpu (the CPU's products are plain fp32)"
        );
    }
    if a.device == VerifyDevice::Cpu && a.no_cuda_graphs {
        train_gpt2_cuda::errln!("note: --no-cuda-graphs does nothing with --device cpu");
    }
    let ck = read_model(&a.model)?;
    let cfg = ck.config;
    let state = debug_state::read_debug_state(&a.state, &cfg)?;
    outln!(
        "verify: {} with {} (B={} T={} {cfg})",
        a.model.display(),
        a.state.display(),
        state.b,
        state.t
    );
    let devices: &[Device] = match a.device {
        VerifyDevice::Cpu => &[Device::Cpu],
        VerifyDevice::Cuda => &[Device::Cuda],
        VerifyDevice::Both => &[Device::Cpu, Device::Cuda],
    };
    let reference = verify::Outputs::expected(&state);
    // the CPU always runs fp32; the GPU in --precision
    let options = |dev: Device| EngineOptions {
        device: dev,
        precision: Some(if dev == Device::Cpu {
            Precision::Fp32
        } else {
            a.precision
        }),
        tf32: a.tf32 && dev != Device::Cpu,
        kernels: if dev == Device::Cpu { None } else { a.kernels },
        cuda_graphs: !a.no_cuda_graphs || dev == Device::Cpu,
        classifier_chunk: None,
        recompute: if dev == Device::Cpu {
            Recompute::None
        } else {
            a.recompute
        },
        forwards_only: false,
    };
    // each engine against the fp32 reference by its own precision; GPU vs CPU by the GPU's
    let tol_of = |dev: Device| match dev {
        Device::Cpu => Tolerances::FP32,
        _ => Tolerances::for_engine(a.precision, a.tf32),
    };
    let mut all_pass = true;
    let mut results = Vec::new();
    // every engine made before any runs: with --device both, a GPU that is not there (or too
    // small) is an error before the CPU's check, not after it
    let engines = devices
        .iter()
        .map(|&dev| {
            let engine = create_engine(&options(dev), cfg, ck.params.clone(), state.b, state.t);
            Ok((dev, engine.map_err(|e| for_command(e, Knobs::Verify))?))
        })
        .collect::<Result<Vec<_>>>()?;
    for (dev, mut engine) in engines {
        let name = engine.describe();
        let out = verify::run_engine(engine.as_mut(), &state)?;
        let rows = verify::compare_outputs(&cfg, &out, &reference, &tol_of(dev));
        all_pass &= rows.iter().all(|r| r.pass);
        out!(
            "{}",
            verify::format_table(&format!("\n{name} vs {}", a.state.display()), &rows)
        );
        results.push((dev, name, out));
    }
    if let [(_, n0, o0), (_, n1, o1)] = results.as_slice() {
        let rows = verify::compare_outputs(&cfg, o1, o0, &tol_of(Device::Cuda));
        all_pass &= rows.iter().all(|r| r.pass);
        out!(
            "{}",
            verify::format_table(&format!("\n{n1} vs {n0}"), &rows)
        );
    }
    if let Some(path) = &a.dump {
        let (_, name, out) = results.last().expect("one engine at least");
        let dumped = debug_state::DebugState {
            b: state.b,
            t: state.t,
            x: state.x.clone(),
            y: state.y.clone(),
            logits: out.logits.clone(),
            loss: out.loss,
            grads: out.grads.clone(),
        };
        make_folder_of("--dump", path)?;
        debug_state::write_debug_state(path, &cfg, &dumped)?;
        outln!("\nwrote {} ({name})", path.display());
    }
    if a.steps > 0 {
        for (dev, name, _) in &results {
            // a fresh engine from the checkpoint's parameters (the first ones were dropped)
            let mut engine =
                create_engine(&options(*dev), cfg, ck.params.clone(), state.b, state.t)
                    .map_err(|e| for_command(e, Knobs::Verify))?;
            outln!(
                "\n{name}: {} (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.01{})",
                count(a.steps, "AdamW step", "AdamW steps"),
                if a.grad_clip > 0.0 {
                    format!(
                        ", gradients clipped to norm {}",
                        train_gpt2_cuda::text::typed(a.grad_clip)
                    )
                } else {
                    String::new()
                }
            );
            let tol = tol_of(*dev);
            if let Some(path) = &a.expect_losses {
                outln!(
                    "against {}: losses within {:e} relative, norms within {:e}",
                    path.display(),
                    tol.steps,
                    tol.norms
                );
            }
            let mut steps_pass = true;
            // (each line as its step is done: a long run shows its progress)
            verify::run_steps_with(engine.as_mut(), &state, a.steps, a.grad_clip, |i, got| {
                let want = expected.as_ref().map(|e| e[i]);
                let (line, pass) = verify::step_line(i, got, want, &tol);
                steps_pass &= pass;
                outln!("{line}");
            })?;
            all_pass &= steps_pass;
            let with_norms = expected.as_ref().is_some_and(|e| e[0].norm.is_some());
            if !steps_pass && with_norms && a.grad_clip == 0.0 {
                outln!(
                    "note: these steps ran without --grad-clip; a file of clipped steps (as \
                     ref_tiny_clip_losses.txt) passes only with the --grad-clip it was made with"
                );
            }
        }
    }
    outln!(
        "\n{}",
        if all_pass {
            "verify: all tensors pass"
        } else {
            "verify: FAILED"
        }
    );
    Ok(if all_pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
