//! The AdamW update and the global gradient norm on the GPU (`kernels/adamw.cu`,
//! `kernels/global_norm.cu`); twin of `cpu::adamw`. [`Gpu::adamw_update`] updates fp32 parameters
//! in place; [`Gpu::adamw_update_mixed`] is the bf16 mixed-precision variant (fp32 master weights
//! and moments, bf16 parameters written with stochastic rounding, see `crate::precision`).
//! [`Gpu::global_norm`] is generic over the gradients' storage type (fp32 accumulation).

use anyhow::{bail, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use super::common::AdamWParams;
use super::context::{check_len, grid_1d, grid_stride, launched, Gpu};
use super::float::DeviceFloat;
use super::launch::{pack, NORM_BLOCKS, NORM_THREADS};
use crate::cpu::adamw::AdamW;

/// The f64 with the same shortest decimal representation as `x` (0.9f32 -> 0.9f64), as the CPU
/// reference widens its hyperparameters.
fn decimal_f64(x: f32) -> f64 {
    format!("{x}").parse::<f64>().unwrap_or(x as f64)
}

/// The kernel's coefficients for one step, derived exactly as `cpu::adamw::adamw_update` derives
/// them (f64, rounded once), so that the GPU update is bitwise the CPU's.
pub fn adamw_params(hp: &AdamW, step: usize, grad_scale: f32) -> AdamWParams {
    let lr = decimal_f64(hp.lr);
    let beta1 = decimal_f64(hp.beta1);
    let beta2 = decimal_f64(hp.beta2);
    let wd = decimal_f64(hp.weight_decay);
    AdamWParams {
        grad_scale,
        decay: (1.0 - lr * wd) as f32,
        one_minus_beta1: (1.0 - beta1) as f32,
        beta2: beta2 as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        neg_step_size: (-(lr / (1.0 - beta1.powf(step as f64)))) as f32,
        beta2_correction_sqrt: (1.0 - beta2.powf(step as f64)).sqrt() as f32,
        eps: hp.eps,
    }
}

// SAFETY: AdamWParams is the #[repr(C)] bindgen twin of the C struct in kernels/common.h (its
// layout is asserted at compile time by the generated code): eight floats, no padding, no pointers,
// so its bytes can be passed by value as a kernel parameter.
unsafe impl cudarc::driver::DeviceRepr for AdamWParams {}

impl Gpu {
    /// One AdamW step in place on params, m, v (any shape, same length); grads are multiplied by
    /// grad_scale first. `step` counts from 1. Bitwise the CPU twin's result.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_update(
        &self,
        params: &mut CudaViewMut<'_, f32>, // (N)
        grads: &CudaView<'_, f32>,         // (N)
        m: &mut CudaViewMut<'_, f32>,      // (N)
        v: &mut CudaViewMut<'_, f32>,      // (N)
        hp: &AdamW,
        step: usize,
        grad_scale: f32,
    ) -> Result<()> {
        const K: &str = "adamw_update";
        let n = params.len();
        check_len(K, "grads", grads.len(), n, "params' length")?;
        check_len(K, "m", m.len(), n, "params' length")?;
        check_len(K, "v", v.len(), n, "params' length")?;
        if step == 0 {
            bail!("{K}: step counts from 1, got 0");
        }
        let p = adamw_params(hp, step, grad_scale);
        let mut lb = self.stream.launch_builder(&self.k.adamw_kernel);
        lb.arg(params).arg(grads).arg(m).arg(v).arg(&n).arg(&p);
        // SAFETY: the arguments match adamw_kernel in kernels/adamw.cu (n a size_t, the params
        // struct by value); all four buffers hold n floats (packed path: whole packs below n, then
        // the scalar tail; the grid-stride loops cover everything with any grid).
        launched("adamw_kernel", unsafe {
            lb.launch(grid_stride(n.div_ceil(pack::<f32>())))
        })
    }

    /// One mixed-precision AdamW step: the fp32 update of [`Gpu::adamw_update`] on the fp32
    /// master weights `master` (with m, v), from the bf16 gradients widened to fp32 (bitwise
    /// `cpu::adamw::adamw_update` on those widened gradients), then
    /// `params[i] = round_bf16_stochastic(master[i], rounding_bits(seed, first + i))` (the host
    /// twins are in `crate::precision`): `first` is the index of element 0 in the whole parameter
    /// buffer, so that an update cut into ranges rounds as one over the whole buffer. `step`
    /// counts from 1; first + N must be at most 2^32 (the rounding counter).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_update_mixed(
        &self,
        params: &mut CudaViewMut<'_, bf16>, // (N), written
        master: &mut CudaViewMut<'_, f32>,  // (N), fp32 master weights, updated
        grads: &CudaView<'_, bf16>,         // (N)
        m: &mut CudaViewMut<'_, f32>,       // (N)
        v: &mut CudaViewMut<'_, f32>,       // (N)
        hp: &AdamW,
        step: usize,
        grad_scale: f32,
        seed: u32,
        first: usize,
    ) -> Result<()> {
        const K: &str = "adamw_update_mixed";
        let n = params.len();
        check_len(K, "master", master.len(), n, "params' length")?;
        check_len(K, "grads", grads.len(), n, "params' length")?;
        check_len(K, "m", m.len(), n, "params' length")?;
        check_len(K, "v", v.len(), n, "params' length")?;
        if step == 0 {
            bail!("{K}: step counts from 1, got 0");
        }
        let first_u32 = match u32::try_from(first) {
            Ok(f) if n as u64 + first as u64 <= 1 << 32 => f,
            _ => bail!(
                "{K}: elements {first}..{} of the parameters; the stochastic rounding counter \
                 needs them below 2^32",
                first as u64 + n as u64
            ),
        };
        let p = adamw_params(hp, step, grad_scale);
        let mut lb = self.stream.launch_builder(&self.k.adamw_mixed_kernel);
        lb.arg(params).arg(master).arg(grads).arg(m).arg(v);
        lb.arg(&n).arg(&p).arg(&seed).arg(&first_u32);
        // SAFETY: the arguments match adamw_mixed_kernel in kernels/adamw.cu (bf16 params, f32
        // master, bf16 grads, f32 m and v, n a size_t, the params struct by value, seed and first
        // u32s); all five buffers hold n elements (checked); packed path: whole packs of 8 below
        // n, then the scalar tail; first + n <= 2^32 so the 32-bit element indexes do not wrap.
        launched("adamw_mixed_kernel", unsafe {
            lb.launch(grid_stride(n.div_ceil(pack::<bf16>())))
        })
    }

    /// sqrt(sum of grads^2), deterministic (a fixed two-stage reduction in fp32, whatever T, its
    /// order fixed by N, the alignment of grads and the NORM_BLOCKS x NORM_THREADS launch; 128-bit
    /// loads when grads is 16-byte aligned); reads the total back to the host (waits for the
    /// stream).
    pub fn global_norm<T: DeviceFloat>(&self, grads: &CudaView<'_, T>) -> Result<f32> {
        const K: &str = "global_norm";
        let n = grads.len();
        let mut partial = self.scratch(K, NORM_BLOCKS)?;
        let mut total = self.scratch(K, 1)?;
        let kernel = T::pick(
            &self.k.global_norm_partial,
            &self.k.global_norm_partial_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut partial).arg(grads).arg(&n);
        // SAFETY: the arguments match global_norm_partial(_bf16) in kernels/global_norm.cu; the
        // grid has NORM_BLOCKS blocks, each writing partial[block] (so all of partial is written);
        // the grid-stride loops read grads[0..n): whole 16-byte packs below n / pack (only when
        // grads is 16-byte aligned, which the kernel checks), then the scalar rest.
        launched("global_norm_partial", unsafe {
            lb.launch(grid_1d(NORM_BLOCKS, NORM_THREADS))
        })?;
        let nb = NORM_BLOCKS as i32;
        let mut lb = self.stream.launch_builder(&self.k.global_norm_final);
        lb.arg(&mut total).arg(&partial).arg(&nb);
        // SAFETY: the arguments match global_norm_final; one block reads the NORM_BLOCKS partials
        // written above (same stream) and writes total[0].
        launched("global_norm_final", unsafe {
            lb.launch(grid_1d(1, NORM_THREADS))
        })?;
        let sum = self.download(&total)?;
        Ok(sum[0].sqrt())
    }
}
