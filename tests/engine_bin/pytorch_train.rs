//! `train` against PyTorch's training loop (tools/pytorch_train_reference.py): the recipe's flags,
//! the committed run's files, and the comparison of a run's log.jsonl with PyTorch's steps.

use std::path::Path;

use super::root;

/// The flags of the committed PyTorch run (tests/fixtures/README.md gives its command): ref_tiny's
/// model on a 700-token shard, 2 micro-batches of 2 x 8 per step (so its 43 chunks wrap into a
/// second epoch at step 22), warm-up, cosine decay, weight decay on the matrices, clipping; the
/// validation loss on 8 batches of a 300-token shard before step 1 and after steps 10, 20, 30.
pub fn recipe() -> Vec<String> {
    let fixtures = root().join("tests/fixtures");
    let f = |name: &str| fixtures.join(name).display().to_string();
    let mut args: Vec<String> = vec![
        "--model".into(),
        f("ref_tiny_model.bin"),
        "--train".into(),
        f("train_tiny_shard.bin"),
        "--val".into(),
        f("train_tiny_val.bin"),
    ];
    let rest = "--batch 2 --seq 8 --grad-accum 2 --steps 30 --lr 1e-3 --warmup 5 \
                --lr-final-frac 0.1 --weight-decay 0.1 --grad-clip 1 --val-every 10 \
                --val-batches 8 --no-state";
    args.extend(rest.split(' ').map(String::from));
    args
}

/// `args` with flag `flag`'s value replaced by `value`.
pub fn with_flag(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let at = args
        .iter()
        .position(|a| a == flag)
        .expect("a flag of the recipe");
    args[at + 1] = value.to_string();
    args
}

/// PyTorch's step of the committed run: loss, learning rate, gradient norm (before clipping).
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub loss: f32,
    pub lr: f32,
    pub norm: f32,
}

/// A run: its steps in order, and its validation losses with the steps done before each.
#[derive(Debug, Default)]
pub struct Run {
    pub steps: Vec<Step>,
    pub vals: Vec<(usize, f32)>,
}

/// A committed run, from `file` in tests/fixtures (train_tiny_steps.txt; with `--shuffle --seed
/// 1337`, train_tiny_shuffled_steps.txt): 30 lines `step S loss X lr L norm N` (S from 1), and
/// `val S loss X` after S steps.
pub fn expected(file: &str) -> Run {
    let text = std::fs::read_to_string(root().join("tests/fixtures").join(file)).unwrap();
    let mut run = Run::default();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| s.parse::<f32>().unwrap();
        match w.as_slice() {
            ["step", s, "loss", x, "lr", l, "norm", n] => {
                assert_eq!(s.parse::<usize>().unwrap(), run.steps.len() + 1, "{line}");
                run.steps.push(Step {
                    loss: num(x),
                    lr: num(l),
                    norm: num(n),
                });
            }
            ["val", s, "loss", x] => run.vals.push((s.parse().unwrap(), num(x))),
            _ => panic!("{file}: {line}"),
        }
    }
    assert_eq!(run.steps.len(), 30);
    run
}

/// The steps and validations a run's log.jsonl (in `out_dir`) records, in order.
pub fn logged(out_dir: &Path) -> Run {
    let text = std::fs::read_to_string(out_dir.join("log.jsonl")).unwrap();
    let mut run = Run::default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
        let step = v.get("step").and_then(|s| s.as_u64()).map(|s| s as usize);
        match (step, num("loss"), num("lr"), num("norm"), num("val_loss")) {
            (Some(_), Some(loss), Some(lr), Some(norm), _) => {
                run.steps.push(Step { loss, lr, norm })
            }
            (Some(s), _, _, _, Some(val)) => run.vals.push((s, val)),
            // (the run's other records: its start, its summary)
            _ => {}
        }
    }
    run
}

/// The largest relative error of a run's validation losses against PyTorch's (at the same steps),
/// each printed.
pub fn worst_val_error(got: &[(usize, f32)], want: &[(usize, f32)]) -> f64 {
    let at: Vec<usize> = got.iter().map(|v| v.0).collect();
    let want_at: Vec<usize> = want.iter().map(|v| v.0).collect();
    assert_eq!(at, want_at, "the steps validated after");
    let mut worst = 0.0f64;
    for (&(s, g), &(_, w)) in got.iter().zip(want) {
        let rel = rel(g, w);
        println!("val after {s}: {g} pytorch {w} rel {rel:.1e}");
        worst = worst.max(rel);
    }
    worst
}

/// `got`'s relative error against `want`, infinite where it is NaN (a NaN would pass under `max`
/// and `<=`).
fn rel(got: f32, want: f32) -> f64 {
    let r = ((got as f64 - want as f64) / want as f64).abs();
    if r.is_nan() {
        f64::INFINITY
    } else {
        r
    }
}

/// The largest relative errors (loss, lr, norm) of a run's steps against PyTorch's, each step
/// printed.
pub fn worst_errors(got: &[Step], want: &[Step]) -> (f64, f64, f64) {
    assert_eq!(got.len(), want.len(), "steps logged");
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (rel(g.loss, w.loss), rel(g.lr, w.lr), rel(g.norm, w.norm));
        println!(
            "step {}: {g:?} pytorch {w:?} rel {:.1e} {:.1e} {:.1e}",
            i + 1,
            e.0,
            e.1,
            e.2
        );
        worst = (worst.0.max(e.0), worst.1.max(e.1), worst.2.max(e.2));
    }
    worst
}
