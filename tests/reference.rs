//! The CPU path against the independent PyTorch GPT-2 (tools/pytorch_reference.py): logits, loss
//! and all 16 gradients of the committed fixtures, and the 10-step AdamW loss trajectory. The
//! tolerances are `verify::Tolerances::FP32` (justified there and in docs/verification.md).

use std::path::PathBuf;
use train_gpt2_cuda::cpu::model::Gpt2Cpu;
use train_gpt2_cuda::formats::checkpoint::read_checkpoint;
use train_gpt2_cuda::formats::debug_state::read_debug_state;
use train_gpt2_cuda::verify::{self, Tolerances};

fn fixture(name: &str) -> PathBuf {
    let root =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(root).join("tests/fixtures").join(name)
}

fn check_fixture(name: &str) {
    let ck = read_checkpoint(&fixture(&format!("ref_{name}_model.bin"))).unwrap();
    let cfg = ck.config;
    let state = read_debug_state(&fixture(&format!("ref_{name}_state.bin")), &cfg).unwrap();
    let mut model = Gpt2Cpu::new(cfg, ck.params.clone(), state.b, state.t).unwrap();
    let out = verify::run_engine(&mut model, &state).unwrap();
    let want = verify::Outputs::expected(&state);
    let rows = verify::compare_outputs(&cfg, &out, &want, &Tolerances::FP32);
    let table = verify::format_table(&format!("cpu vs {name}"), &rows);
    println!("{table}");
    assert!(rows.iter().all(|r| r.pass), "{table}");

    // the AdamW trajectory on the same batch, from the same start
    let expected = expected_steps(&format!("ref_{name}_losses.txt"));
    let mut model = Gpt2Cpu::new(cfg, ck.params, state.b, state.t).unwrap();
    let steps = verify::run_steps(&mut model, &state, expected.len(), 0.0).unwrap();
    assert_within_fp32(&steps, &expected);
    // the trajectory must actually move, or the comparison above says nothing about AdamW
    assert!(expected[9].loss < expected[0].loss - 1e-3);
}

/// The 10 steps of a committed losses file, each with its gradient norm.
fn expected_steps(file: &str) -> Vec<verify::ExpectedStep> {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let expected = verify::parse_losses(&text).unwrap();
    assert_eq!(expected.len(), 10);
    assert!(
        expected.iter().all(|s| s.norm.is_some()),
        "{file} gives norms"
    );
    expected
}

/// The largest relative errors of the steps' losses and norms against the file's, each step
/// printed.
fn worst_step_errors(steps: &[verify::Step], expected: &[verify::ExpectedStep]) -> (f64, f64) {
    assert_eq!(steps.len(), expected.len());
    let (mut loss, mut norm) = (0.0f64, 0.0f64);
    for (i, (&got, &want)) in steps.iter().zip(expected).enumerate() {
        let any = Tolerances {
            steps: f64::INFINITY,
            norms: f64::INFINITY,
            ..Tolerances::FP32
        };
        let c = verify::check_step(got, want, &any);
        println!("step {i} {got:?} expected {want:?} rel {c:?}");
        assert!(c.pass(), "step {i}: not finite");
        loss = loss.max(c.loss_rel);
        norm = norm.max(c.norm_rel.unwrap_or(0.0));
    }
    (loss, norm)
}

/// Every step's loss and norm within the fp32 tolerances of the file's.
fn assert_within_fp32(steps: &[verify::Step], expected: &[verify::ExpectedStep]) {
    let (loss, norm) = worst_step_errors(steps, expected);
    let tol = Tolerances::FP32;
    assert!(loss <= tol.steps, "worst loss error {loss:.2e}");
    assert!(norm <= tol.norms, "worst norm error {norm:.2e}");
}

/// Gradient clipping against PyTorch's `clip_grad_norm_`: ref_tiny's 10 steps with the gradients
/// clipped to norm 1, `train --grad-clip 1`'s rule (`cpu::adamw::clip_scale`). Every step's norm
/// is about 2, so every step is clipped; AdamW is nearly blind to a constant scale, but the norm
/// falls by 8% over the 10 steps, enough to move the losses by 5e-5 relative, 50 times the fp32
/// tolerance: the same steps unclipped must miss the file by far, or it does not test clipping.
#[test]
fn cpu_matches_pytorch_with_gradient_clipping() {
    let ck = read_checkpoint(&fixture("ref_tiny_model.bin")).unwrap();
    let cfg = ck.config;
    let state = read_debug_state(&fixture("ref_tiny_state.bin"), &cfg).unwrap();
    let expected = expected_steps("ref_tiny_clip_losses.txt");
    assert!(
        expected.iter().all(|s| s.norm.unwrap() > 1.5),
        "every step clipped"
    );
    let run = |clip| {
        let mut model = Gpt2Cpu::new(cfg, ck.params.clone(), state.b, state.t).unwrap();
        verify::run_steps(&mut model, &state, expected.len(), clip).unwrap()
    };
    assert_within_fp32(&run(1.0), &expected);
    let (unclipped, _) = worst_step_errors(&run(0.0), &expected);
    assert!(
        unclipped > 20.0 * Tolerances::FP32.steps,
        "unclipped steps miss the clipped file by only {unclipped:.2e}"
    );
}

/// Head size 64 (C=64, NH=1) and T=72: the shapes the fused bf16 path (flash attention) runs.
#[test]
fn cpu_matches_pytorch_hs64() {
    check_fixture("hs64");
}

#[test]
fn cpu_matches_pytorch_tiny() {
    check_fixture("tiny");
}

#[test]
fn cpu_matches_pytorch_sharp_attention() {
    check_fixture("sharp");
}

#[test]
fn cpu_matches_pytorch_gpt2_vocab() {
    check_fixture("gpt2vocab");
}

/// The bf16 tolerances' budget: rounding the weights to bf16 (the first of the bf16 engine's
/// roundings, and one it cannot avoid) and nothing else, the CPU path must stay within half of
/// every `Tolerances::BF16` bound against PyTorch, leaving the other half for the rounding of
/// activations and gradients. If this fails, the bf16 bounds are too tight for any bf16 engine.
#[test]
fn bf16_weight_rounding_uses_at_most_half_the_bf16_tolerances() {
    for name in ["tiny", "sharp", "gpt2vocab", "hs64"] {
        let ck = read_checkpoint(&fixture(&format!("ref_{name}_model.bin"))).unwrap();
        let cfg = ck.config;
        let state = read_debug_state(&fixture(&format!("ref_{name}_state.bin")), &cfg).unwrap();
        let rounded: Vec<f32> = ck
            .params
            .iter()
            .map(|&p| half::bf16::from_f32(p).to_f32())
            .collect();
        assert_ne!(rounded, ck.params);
        let mut model = Gpt2Cpu::new(cfg, rounded, state.b, state.t).unwrap();
        let out = verify::run_engine(&mut model, &state).unwrap();
        let want = verify::Outputs::expected(&state);
        let rows = verify::compare_outputs(&cfg, &out, &want, &half_of(Tolerances::BF16));
        let table = verify::format_table(&format!("cpu, bf16-rounded weights, vs {name}"), &rows);
        println!("{table}");
        assert!(rows.iter().all(|r| r.pass), "{table}");
        // and the rounding is visible: the fp32 bounds do not hold any more
        let strict = verify::compare_outputs(&cfg, &out, &want, &Tolerances::FP32);
        assert!(
            strict.iter().any(|r| !r.pass),
            "bf16 weights changed nothing on {name}"
        );
    }
}

/// The bf16 engine's storage emulated on the CPU (`Gpt2Cpu::emulating_bf16_storage`: the weights
/// and every stored activation and gradient rounded to bf16, fp32 arithmetic) against PyTorch:
/// what bf16 storage alone costs, measured. It must stay within `Tolerances::BF16` with room to
/// spare (at most half of each bound), or the bounds would fail a correct bf16 engine.
#[test]
fn bf16_storage_emulation_uses_at_most_half_the_bf16_tolerances() {
    for name in ["tiny", "sharp", "gpt2vocab", "hs64"] {
        let ck = read_checkpoint(&fixture(&format!("ref_{name}_model.bin"))).unwrap();
        let cfg = ck.config;
        let state = read_debug_state(&fixture(&format!("ref_{name}_state.bin")), &cfg).unwrap();
        let mut model = Gpt2Cpu::new(cfg, ck.params.clone(), state.b, state.t)
            .unwrap()
            .emulating_bf16_storage();
        let out = verify::run_engine(&mut model, &state).unwrap();
        // every logit and gradient the emulation reports is a bf16 value
        let is_bf16 = |x: &f32| half::bf16::from_f32(*x).to_f32() == *x;
        assert!(out.logits.iter().all(is_bf16) && out.grads.iter().all(is_bf16));
        let want = verify::Outputs::expected(&state);
        let rows = verify::compare_outputs(&cfg, &out, &want, &half_of(Tolerances::BF16));
        let table = verify::format_table(&format!("cpu, bf16 storage emulated, vs {name}"), &rows);
        println!("{table}");
        assert!(rows.iter().all(|r| r.pass), "{table}");
    }
}

fn half_of(t: Tolerances) -> Tolerances {
    Tolerances {
        logits: t.logits / 2.0,
        loss: t.loss / 2.0,
        grads: t.grads.map(|g| g / 2.0),
        steps: t.steps / 2.0,
        norms: t.norms / 2.0,
    }
}
