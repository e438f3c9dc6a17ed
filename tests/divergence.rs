//! The training loop when a step's loss or gradient norm is not finite: the CPU engine wrapped so
//! that chosen steps' losses or norms are NaN or inf (a real model cannot be made to diverge on
//! cue). Without `--skip-loss-z` / `--skip-norm-z` the run ends before the step's update; with
//! them the update is left out and the run goes on, until a third in a row; a run that ends so
//! first writes the checkpoint and state of its last good step, those of an unbroken run.

use anyhow::Result;
use clap::Parser;
use std::path::{Path, PathBuf};
use train_gpt2_cuda::checkpoints::Resume;
use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::cpu::adamw::AdamW;
use train_gpt2_cuda::engine::{create_engine, Engine, OptimizerArray};
use train_gpt2_cuda::formats::checkpoint::read_checkpoint;
use train_gpt2_cuda::train::{load_model, train, TrainArgs, TrainSummary};

/// The CPU engine with the loss or the gradient norm of chosen steps replaced, recording the
/// steps it updated.
struct Faulty {
    inner: Box<dyn Engine>,
    /// The step under way (zero_grad starts one: from 1, or from the resumed state's step + 1).
    step: usize,
    bad_loss: Vec<(usize, f32)>,
    bad_norm: Vec<(usize, f32)>,
    updated: Vec<usize>,
}

impl Engine for Faulty {
    fn config(&self) -> &GPT2Config {
        self.inner.config()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn forward(&mut self, x: &[u32], y: Option<&[u32]>, b: usize, t: usize) -> Result<Option<f32>> {
        let loss = self.inner.forward(x, y, b, t)?;
        let bad = self.bad_loss.iter().find(|(s, _)| *s == self.step);
        Ok(loss.map(|l| bad.map_or(l, |&(_, v)| v)))
    }
    fn zero_grad(&mut self) -> Result<()> {
        self.step += 1;
        self.inner.zero_grad()
    }
    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        self.inner.backward(loss_scale)
    }
    fn grad_norm(&mut self) -> Result<f32> {
        let norm = self.inner.grad_norm()?;
        let bad = self.bad_norm.iter().find(|(s, _)| *s == self.step);
        Ok(bad.map_or(norm, |&(_, v)| v))
    }
    fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) -> Result<()> {
        assert_eq!(step, self.step);
        self.updated.push(step);
        self.inner.update(hp, step, grad_scale)
    }
    fn params(&mut self) -> Result<Vec<f32>> {
        self.inner.params()
    }
    fn grads(&mut self) -> Result<Vec<f32>> {
        self.inner.grads()
    }
    fn has_master_weights(&self) -> bool {
        self.inner.has_master_weights()
    }
    fn optimizer_array(&mut self, which: OptimizerArray) -> Result<Vec<f32>> {
        self.inner.optimizer_array(which)
    }
    fn set_optimizer_array(&mut self, which: OptimizerArray, values: &[f32]) -> Result<()> {
        self.inner.set_optimizer_array(which, values)
    }
    fn logits(&mut self) -> Result<Vec<f32>> {
        self.inner.logits()
    }
    fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>> {
        self.inner.position_logits(bi, ti)
    }
    fn losses(&mut self) -> Result<Vec<f32>> {
        self.inner.losses()
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

/// A folder for this process's runs of [`faulty_run`].
fn faulty_dir() -> PathBuf {
    std::env::temp_dir().join(format!("faulty-runs-{}", std::process::id()))
}

/// Trains d1 for 5 steps with `flags` into `faulty_dir()/out`, the loss and the norm of some
/// steps replaced: the steps updated, and the run's summary or its error. With `--resume F` in
/// `flags`, from F's step, with the model checkpoint beside F (as `train` on the command line).
fn faulty_run(
    flags: &str,
    out: &str,
    bad_loss: &[(usize, f32)],
    bad_norm: &[(usize, f32)],
) -> (Vec<usize>, std::result::Result<TrainSummary, String>) {
    let line = format!(
        "train --device cpu --model d1 --batch 2 --seq 16 --steps 5 --val-every 0 \
         --val-batches 1 --sample-tokens 0 --out-dir {} {flags}",
        faulty_dir().join(out).display()
    );
    let args = Cli::parse_from(line.split_whitespace()).args;
    let resume = args
        .resume
        .as_ref()
        .map(|f| Resume::open(f, &args).unwrap());
    let (cfg, params) = match &resume {
        Some(r) => {
            let ck = read_checkpoint(&r.model_path).unwrap();
            (ck.config, ck.params)
        }
        None => load_model(&args.model, args.seed).unwrap(),
    };
    let inner = create_engine(&args.engine_options(), cfg, params, 2, 16).unwrap();
    let mut engine = Faulty {
        inner,
        step: resume.as_ref().map_or(0, |r| r.state.header.step),
        bad_loss: bad_loss.to_vec(),
        bad_norm: bad_norm.to_vec(),
        updated: Vec::new(),
    };
    let result = train(&args, &mut engine, resume).map_err(|e| format!("{e:#}"));
    (engine.updated, result)
}

#[test]
fn losses_and_norms_that_are_not_finite() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    // without skipping, the run ends before the update of the step
    let (updated, r) = faulty_run("--no-state", "plain", &[(2, nan)], &[]);
    assert_eq!(updated, [1]);
    let e = r.unwrap_err();
    assert!(
        e.contains(
            "the loss became NaN at step 2: training diverged; the weights that the update of \
             step 1 left give it: start again with a lower --lr (no training state of this run \
             before step 1 is on disk)"
        ),
        "{e}"
    );
    let (updated, r) = faulty_run("--no-state", "plain", &[], &[(3, nan)]);
    assert_eq!(updated, [1, 2]);
    let e = r.unwrap_err();
    assert!(
        e.contains("the gradient norm became NaN at step 3 (its loss "),
        "{e}"
    );
    // skipping the loss: the update of a NaN loss is left out, the run goes on
    let (updated, r) = faulty_run("--no-state --skip-loss-z 5", "plain", &[(2, nan)], &[]);
    assert_eq!(updated, [1, 3, 4, 5]);
    assert_eq!(r.unwrap().skipped, [2]);
    // ... but not a third in a row
    let (updated, r) = faulty_run(
        "--no-state --skip-loss-z 5",
        "plain",
        &[(2, inf), (3, nan), (4, nan)],
        &[],
    );
    assert_eq!(updated, [1]);
    let e = r.unwrap_err();
    assert!(
        e.contains("the loss became NaN at step 4, after 2 steps skipped in a row"),
        "{e}"
    );
    // the norm's flag skips a norm that is not finite, not a loss
    let (updated, r) = faulty_run("--no-state --skip-norm-z 5", "plain", &[], &[(3, inf)]);
    assert_eq!(updated, [1, 2, 4, 5]);
    assert_eq!(r.unwrap().skipped, [3]);
    let (_, r) = faulty_run("--no-state --skip-norm-z 5", "plain", &[(2, nan)], &[]);
    assert!(r.unwrap_err().contains("the loss became NaN at step 2"));
    // a step skipped for its loss is not judged on its norm
    let (updated, r) = faulty_run(
        "--no-state --skip-loss-z 5",
        "plain",
        &[(2, nan)],
        &[(2, nan)],
    );
    assert_eq!(updated, [1, 3, 4, 5]);
    assert_eq!(r.unwrap().skipped, [2]);
    // a run that diverges keeps what its earlier steps learned: the checkpoint and state of
    // step 2 (written only because step 3 diverged), the data put back to where step 2 left it
    // (the shuffled order), the windows without step 3's values: what an unbroken run writes at
    // step 2
    let (_, r) = faulty_run(
        "--shuffle --seed 5 --checkpoint-every 2",
        "unbroken",
        &[],
        &[],
    );
    r.unwrap();
    let unbroken = faulty_dir().join("unbroken");
    let same_step_2 = |run: &Path, unbroken: &Path, what: &str| {
        for f in ["model_000002.bin", "state_000002.bin"] {
            let same =
                std::fs::read(run.join(f)).unwrap() == std::fs::read(unbroken.join(f)).unwrap();
            assert!(same, "{what}: {f} differs");
        }
    };
    for (bad_loss, bad_norm) in [(vec![(3, nan)], vec![]), (vec![], vec![(3, inf)])] {
        let (updated, r) = faulty_run("--shuffle --seed 5", "diverged", &bad_loss, &bad_norm);
        assert_eq!(updated, [1, 2]);
        let e = r.unwrap_err();
        let out = faulty_dir().join("diverged");
        let hint = format!(
            "; the run after step 2 is saved too ({}): resuming from it gives step 3's batch to \
             the same weights again",
            out.join("state_000002.bin").display()
        );
        assert!(e.contains(&hint), "{e}");
        same_step_2(&out, &unbroken, &format!("{bad_loss:?} {bad_norm:?}"));
        std::fs::remove_dir_all(&out).unwrap();
    }
    // ... and an --overfit-batch run's, which serves no data, so puts none back
    let (_, r) = faulty_run(
        "--overfit-batch --checkpoint-every 2",
        "overfit-unbroken",
        &[],
        &[],
    );
    r.unwrap();
    let (updated, r) = faulty_run("--overfit-batch", "overfit-diverged", &[(3, nan)], &[]);
    assert_eq!(updated, [1, 2]);
    let e = r.unwrap_err();
    assert!(e.contains("; the run after step 2 is saved too ("), "{e}");
    same_step_2(
        &faulty_dir().join("overfit-diverged"),
        &faulty_dir().join("overfit-unbroken"),
        "--overfit-batch",
    );
    // a lower learning rate must start before the update that gave the weights which diverged:
    // from the newest checkpoint before it (step 2 when step 4 diverges; not step 3's)
    let (_, r) = faulty_run("--checkpoint-every 1", "back", &[(4, nan)], &[]);
    let e = r.unwrap_err();
    let back = format!(
        "the weights that the update of step 3 left give it: go back to an earlier checkpoint \
         with a lower --lr (--resume {}, step 2); the run after step 3 is saved too",
        faulty_dir().join("back/state_000002.bin").display()
    );
    assert!(e.contains(&back), "{e}");
    // ... and before the update actually taken: with steps 3 and 4 skipped (their checkpoints
    // hold step 2's weights), a divergence at step 5 goes back to step 1
    let (updated, r) = faulty_run(
        "--checkpoint-every 1 --skip-loss-z 5",
        "skipped",
        &[(3, nan), (4, nan), (5, nan)],
        &[],
    );
    assert_eq!(updated, [1, 2]);
    let e = r.unwrap_err();
    let back = format!(
        "the weights that the update of step 2 left give it (steps 3 and 4 skipped their \
         updates): go \
         back to an earlier checkpoint with a lower --lr (--resume {}, step 1)",
        faulty_dir().join("skipped/state_000001.bin").display()
    );
    assert!(e.contains(&back), "{e}");
    // with --no-state, the model; nothing when the first step diverges
    let (_, r) = faulty_run("--no-state", "model", &[(4, nan)], &[]);
    assert!(r
        .unwrap_err()
        .contains("; the model after step 3 is saved ("));
    assert!(faulty_dir().join("model/model_000003.bin").is_file());
    let (_, r) = faulty_run("", "first", &[(1, nan)], &[]);
    let e = r.unwrap_err();
    assert!(
        e.ends_with(
            "at step 1: training diverged; the model gives it before any update: check the \
             model (--model) and the training data"
        ),
        "{e}"
    );
    assert!(!faulty_dir().join("first/model_000000.bin").exists());
    // a resumed run goes back to the state it resumed from, but only to one from before the
    // update that gave the weights, and only while that file is there
    let (_, r) = faulty_run("--checkpoint-every 2", "whole", &[], &[]);
    r.unwrap();
    let whole = faulty_dir().join("whole");
    let from = whole.join("state_000002.bin");
    let resume = format!("--resume {}", from.display());
    // step 4 diverges: the update of step 3 gave the weights; back to the start, step 2
    let (updated, r) = faulty_run(&resume, "resumed-later", &[(4, nan)], &[]);
    assert_eq!(updated, [3]);
    let e = r.unwrap_err();
    let back = format!(
        "the weights that the update of step 3 left give it: go back to an earlier checkpoint \
         with a lower --lr (--resume {}, step 2)",
        from.display()
    );
    assert!(e.contains(&back), "{e}");
    // step 3 diverges: the state resumed from holds the weights that diverged
    let (updated, r) = faulty_run(&resume, "resumed-first", &[(3, nan)], &[]);
    assert!(updated.is_empty());
    let e = r.unwrap_err();
    let none = "the weights of the state resumed from (step 2) give it: start again with a lower \
                --lr (no training state of this run before step 2 is on disk)";
    assert!(e.contains(none), "{e}");
    // resumed in its own folder, whose --keep-checkpoints 1 removes it at step 3: not named
    let own = faulty_dir().join("own");
    std::fs::create_dir_all(&own).unwrap();
    for f in ["state_000002.bin", "model_000002.bin"] {
        std::fs::copy(whole.join(f), own.join(f)).unwrap();
    }
    let flags = format!(
        "--checkpoint-every 1 --keep-checkpoints 1 --resume {}",
        own.join("state_000002.bin").display()
    );
    let (updated, r) = faulty_run(&flags, "own", &[(4, nan)], &[]);
    assert_eq!(updated, [3]);
    assert!(!own.join("state_000002.bin").exists());
    let e = r.unwrap_err();
    let none = "the weights that the update of step 3 left give it: start again with a lower \
                --lr (no training state of this run before step 3 is on disk)";
    assert!(e.contains(none), "{e}");
    std::fs::remove_dir_all(faulty_dir()).ok();
}
