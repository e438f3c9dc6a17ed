//! What a run that stops before its end says: how a run stopped by a signal goes on, what the
//! error of a step that diverged or met a bad shard adds once the run so far is saved, and where
//! a run that diverged can go back to.

use super::TrainArgs;
use crate::checkpoints::checkpoint_name;
use std::path::Path;

/// Says how a run stopped by `signal` after `steps` steps (its checkpoint written) goes on;
/// `last`: those were all the run's steps.
pub(super) fn say_stopped(
    args: &TrainArgs,
    signal: crate::interrupt::Stop,
    steps: usize,
    last: bool,
) {
    let text = stopped_text(args, steps, last);
    crate::console::write_or_stderr(format_args!("interrupted ({}) {text}\n", signal.name()));
}

/// [`say_stopped`]'s line after "interrupted (signal) ".
fn stopped_text(args: &TrainArgs, steps: usize, last: bool) -> String {
    // (the exact state: the folder may hold a later one from an earlier attempt)
    let state = args.out_dir.join(checkpoint_name("state", steps));
    if last {
        format!(
            "at the run's last step ({steps}): its checkpoint is written, nothing is left to \
             train{}",
            if args.sample_tokens > 0 {
                " (the final sample is left out)"
            } else {
                ""
            }
        )
    } else if args.no_state {
        format!(
            "after step {steps}: the model is saved; without a training state (--no-state) the \
             run cannot be resumed"
        )
    } else if let Some(r) = args.resume.as_ref().filter(|r| resumes_the_newest(r, args)) {
        // (the same command line: its --resume finds this state)
        format!(
            "after step {steps}: continue with the same command (its --resume {} finds {})",
            r.display(),
            state.display()
        )
    } else {
        format!(
            "after step {steps}: continue with the same flags and --resume {}{}",
            state.display(),
            in_place_of_resume(args)
        )
    }
}

/// Says that a run stopped by `signal` before its first step (`start`: the steps its state had
/// done) trained nothing, and so saved nothing.
pub(super) fn say_stopped_before_training(
    args: &TrainArgs,
    signal: crate::interrupt::Stop,
    start: usize,
) {
    let text = stopped_before_training_text(args, start);
    crate::console::write_or_stderr(format_args!("interrupted ({}) {text}\n", signal.name()));
}

/// [`say_stopped_before_training`]'s line after "interrupted (signal) ".
fn stopped_before_training_text(args: &TrainArgs, start: usize) -> String {
    match &args.resume {
        Some(r) => format!(
            "before step {}: nothing more is trained; --resume {} continues from where it did",
            start + 1,
            r.display()
        ),
        None => "before the first step: nothing is trained, nothing saved".to_string(),
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

/// What the error of a step whose shard was bad adds once the run after `step` steps is saved.
pub(super) fn saved_before_bad_shard(args: &TrainArgs, step: usize) -> String {
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

/// What the error of a step that diverged adds once the run after `step` steps is saved, its
/// model checkpoint at `path`.
pub(super) fn saved_before_divergence(args: &TrainArgs, step: usize, path: &Path) -> String {
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

/// What to do after step `step + 1` (from 1) diverged, `step` steps done, the run having started
/// at step `start`: its loss or norm came from the weights that the update of step `update` left
/// (`step`, or earlier when the updates after it were skipped as outliers; 0: none yet), so a
/// lower learning rate must start before that update, from `back` (the step and state of the
/// newest checkpoint before it), or from the start.
pub(super) fn divergence_advice(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_run_says_how_it_goes_on() {
        let dir = crate::test_dir("stopping");
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let run = dir.join("run");
        let out = format!("--out-dir {}", run.display());
        let state = |k: usize| run.join(checkpoint_name("state", k)).display().to_string();
        let text = |flags: &str, steps, last| {
            stopped_text(
                &TrainArgs::from_flags(&format!("{out} {flags}")),
                steps,
                last,
            )
        };
        // the last step: only a run that samples has a sample to leave out
        let last =
            "at the run's last step (8): its checkpoint is written, nothing is left to train";
        assert_eq!(text("--sample-tokens 0", 8, true), last);
        assert_eq!(
            text("--sample-tokens 16", 8, true),
            format!("{last} (the final sample is left out)")
        );
        assert_eq!(
            text("--no-state", 3, false),
            "after step 3: the model is saved; without a training state (--no-state) the run \
             cannot be resumed"
        );
        assert_eq!(
            text("", 3, false),
            format!(
                "after step 3: continue with the same flags and --resume {}",
                state(3)
            )
        );
        // resumed by its own folder: the same command finds the state; by a state file (or
        // another folder), the state to give in its place
        assert_eq!(
            text(&format!("--resume {}", run.display()), 5, false),
            format!(
                "after step 5: continue with the same command (its --resume {} finds {})",
                run.display(),
                state(5)
            )
        );
        assert_eq!(
            text(&format!("--resume {}", state(3)), 5, false),
            format!(
                "after step 5: continue with the same flags and --resume {} (in place of \
                 --resume {})",
                state(5),
                state(3)
            )
        );
        std::fs::create_dir_all(dir.join("other")).unwrap();
        let other = dir.join("other").display().to_string();
        assert_eq!(
            text(&format!("--resume {other}"), 5, false),
            format!(
                "after step 5: continue with the same flags and --resume {} (in place of \
                 --resume {other})",
                state(5)
            )
        );
        // before the first step of the run: a resumed one goes on from its state's step
        let before = |flags: &str, start| {
            stopped_before_training_text(&TrainArgs::from_flags(&format!("{out} {flags}")), start)
        };
        assert_eq!(
            before("", 0),
            "before the first step: nothing is trained, nothing saved"
        );
        assert_eq!(
            before(&format!("--resume {}", state(3)), 3),
            format!(
                "before step 4: nothing more is trained; --resume {} continues from where it did",
                state(3)
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
}
