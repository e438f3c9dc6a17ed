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
    let text = std::fs::read_to_string(fixture(&format!("ref_{name}_losses.txt"))).unwrap();
    let expected = verify::parse_losses(&text).unwrap();
    assert_eq!(expected.len(), 10);
    let mut model = Gpt2Cpu::new(cfg, ck.params, state.b, state.t).unwrap();
    let losses = verify::run_steps(&mut model, &state, expected.len()).unwrap();
    for (i, (got, want)) in losses.iter().zip(&expected).enumerate() {
        let rel = ((got - want) / want).abs() as f64;
        println!("step {i} loss {got} expected {want} rel {rel:.2e}");
        assert!(rel <= Tolerances::FP32.loss, "step {i}: {got} vs {want}");
    }
    // the trajectory must actually move, or the comparison above says nothing about AdamW
    assert!(expected[9] < expected[0] - 1e-3);
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
    }
}
