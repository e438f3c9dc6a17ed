//! Allowances shared by the emulated kernel tests (tests/emulated_kernels.rs) and the GPU tests
//! (tests/gpu_layers.rs) (`mod tolerance;` in each), so that both state the same bound.

/// How far the fused classifier's loss (absolute) and its row sum (relative) may move from the
/// exact ones for a row whose maximum logit is `m`, beyond the fp32 tolerance. bf16 takes
/// exp(x - m) as 2^(x log2 e - base), base = m log2 e rounded (kernels/classifier.cu; likewise
/// for a thread's running maximum, before the merges): every term is off by a factor 2^r,
/// |r| <= ulp(|m| log2 e), the same for all. That cancels in p = term / sum, but moves the sum by
/// up to r ln 2 relative and so the loss log(sum) - (x - m) by r ln 2: 2e-5 at |m| = 240, 5e-7 at
/// |m| = 4. fp32 has no base (expf(x - m)): 0.
pub fn classifier_exp_base_slack(bf16: bool, m: f32) -> f32 {
    if !bf16 {
        return 0.0;
    }
    let base = (m * std::f32::consts::LOG2_E).abs();
    let ulp = f32::from_bits(base.to_bits() + 1) - base;
    std::f32::consts::LN_2 * ulp
}
