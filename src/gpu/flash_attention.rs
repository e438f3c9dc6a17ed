//! Flash attention on the GPU (`kernels/flash_attention.cu`): causal multi-head self-attention
//! fused into one kernel per pass with an online softmax over key tiles, never materialising the
//! (B,NH,T,T) scores; twin of `cpu::flash_attention`. The forward writes `out` and the
//! log-sum-exp `lse` (B,NH,T) of every softmax row; the backward recomputes the probabilities
//! from `lse` and ACCUMULATES into `dqkv`, deterministically (no atomics: three launches, see the
//! kernel file). Generic over the storage type `T` (f32: CUDA-core FMA reference path; bf16:
//! tensor cores, mma.sync m16n8k16 with fp32 accumulators); softmax statistics are fp32 always.
//!
//! Head sizes: the kernels are compiled for HS = C/NH in [`FLASH_ATTENTION_HEAD_SIZES`]; any
//! other is an error. Every `T` buffer must be 16-byte aligned (device allocations are; a view
//! at an odd offset is an error). T may be anything >= 1; B*T == 0 is a no-op.

use anyhow::{bail, Result};
use cudarc::driver::{CudaFunction, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::context::{check_aligned16, check_len, dim, launched, ptr, Gpu};
use super::float::DeviceFloat;
use super::launch::{self, FlashQueries};
use crate::precision::Precision;

/// Head sizes the kernels are compiled for.
pub const FLASH_ATTENTION_HEAD_SIZES: [usize; 2] = [64, 128];

/// The largest grid y and z (NH and B).
const MAX_GRID_YZ: usize = 65535;

/// f32 elements of scratch flash_attention_backward needs: D = rowsum(dO*O), (B,NH,T).
pub fn flash_attention_backward_scratch_len(b: usize, t: usize, c: usize, nh: usize) -> usize {
    let _ = c;
    b * nh * t
}

/// The checked dimensions of one call.
struct Dims {
    b: i32,
    t: i32,
    nh: i32,
    hs: i32,
    /// B*T*C
    btc: usize,
    /// B*NH*T
    bnht: usize,
}

fn dims(kernel: &str, b: usize, t: usize, c: usize, nh: usize) -> Result<Dims> {
    if nh == 0 || !c.is_multiple_of(nh) {
        bail!("{kernel}: C = {c} is not divisible by NH = {nh}");
    }
    let hs = c / nh;
    if !FLASH_ATTENTION_HEAD_SIZES.contains(&hs) {
        bail!(
            "{kernel}: head size HS = C/NH = {c}/{nh} = {hs} is not supported (the kernels are \
             compiled for HS in {FLASH_ATTENTION_HEAD_SIZES:?})"
        );
    }
    dim(kernel, "B*T*3C", 3 * b * t * c)?;
    dim(kernel, "B*NH*T", b * nh * t)?;
    if nh > MAX_GRID_YZ || b > MAX_GRID_YZ {
        bail!("{kernel}: NH = {nh} and B = {b} must be at most {MAX_GRID_YZ} (grid y and z)");
    }
    Ok(Dims {
        b: dim(kernel, "B", b)?,
        t: dim(kernel, "T", t)?,
        nh: dim(kernel, "NH", nh)?,
        hs: dim(kernel, "HS", hs)?,
        btc: b * t * c,
        bnht: b * nh * t,
    })
}

impl Gpu {
    /// The chosen queries a warp of the forward and dQ kernels where they have a choice (bf16 at
    /// HS 64: the `_q32` kernels), None where only the 16-query kernels are compiled.
    pub(super) fn flash_choice<T: DeviceFloat>(&self, hs: usize) -> Option<FlashQueries> {
        (T::PRECISION == Precision::Bf16 && hs == 64).then_some(self.flash_queries)
    }

    /// The queries a warp of family `fam`'s kernel for head size `hs` and storage type `T` (the
    /// dK dV kernel has 16 keys a warp always).
    fn flash_queries_for<T: DeviceFloat>(&self, fam: Family, hs: i32) -> FlashQueries {
        match fam {
            Family::Forward | Family::Dq => self.flash_choice::<T>(hs as usize),
            Family::Dkdv => None,
        }
        .unwrap_or(FlashQueries::Q16)
    }

    /// The grid of family `fam`'s kernel (its blocks hold 64 or 128 rows).
    fn flash_grid<T: DeviceFloat>(&self, fam: Family, d: &Dims) -> LaunchConfig {
        let q = self.flash_queries_for::<T>(fam, d.hs);
        launch::flash_with(d.b as usize, d.t as usize, d.nh as usize, q).into()
    }

    /// The kernel of family `fam` (forward, dkdv, dq) for head size `hs` and storage type `T`.
    fn flash_kernel<T: DeviceFloat>(&self, fam: Family, hs: i32) -> &CudaFunction {
        let k = &self.k;
        match (fam, hs) {
            (Family::Forward, 64) => match self.flash_queries_for::<T>(fam, hs) {
                FlashQueries::Q32 => &k.flash_attention_forward_hs64_bf16_q32,
                FlashQueries::Q16 => T::pick(
                    &k.flash_attention_forward_hs64,
                    &k.flash_attention_forward_hs64_bf16,
                ),
            },
            (Family::Forward, _) => T::pick(
                &k.flash_attention_forward_hs128,
                &k.flash_attention_forward_hs128_bf16,
            ),
            (Family::Dkdv, 64) => T::pick(
                &k.flash_attention_backward_dkdv_hs64,
                &k.flash_attention_backward_dkdv_hs64_bf16,
            ),
            (Family::Dkdv, _) => T::pick(
                &k.flash_attention_backward_dkdv_hs128,
                &k.flash_attention_backward_dkdv_hs128_bf16,
            ),
            (Family::Dq, 64) => match self.flash_queries_for::<T>(fam, hs) {
                FlashQueries::Q32 => &k.flash_attention_backward_dq_hs64_bf16_q32,
                FlashQueries::Q16 => T::pick(
                    &k.flash_attention_backward_dq_hs64,
                    &k.flash_attention_backward_dq_hs64_bf16,
                ),
            },
            (Family::Dq, _) => T::pick(
                &k.flash_attention_backward_dq_hs128,
                &k.flash_attention_backward_dq_hs128_bf16,
            ),
        }
    }

    /// out (B,T,C) = causal softmax(q k^T / sqrt(HS)) v per head, and lse (B,NH,T) the natural
    /// log of each softmax row's denominator (of the scaled scores), from qkv (B,T,3C).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>,   // (B, T, C)
        lse: &mut CudaViewMut<'_, f32>, // (B, NH, T)
        qkv: &CudaView<'_, T>,          // (B, T, 3C)
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        const K: &str = "flash_attention_forward";
        let d = dims(K, b, t, c, nh)?;
        check_len(K, "out", out.len(), d.btc, "B*T*C")?;
        check_len(K, "lse", lse.len(), d.bnht, "B*NH*T")?;
        check_len(K, "qkv", qkv.len(), 3 * d.btc, "B*T*3C")?;
        if d.btc == 0 {
            return Ok(());
        }
        check_aligned16(K, "out", ptr(&self.stream, out))?;
        check_aligned16(K, "qkv", ptr(&self.stream, qkv))?;
        let mut lb = self
            .stream
            .launch_builder(self.flash_kernel::<T>(Family::Forward, d.hs));
        lb.arg(out).arg(lse).arg(qkv).arg(&d.b).arg(&d.t).arg(&d.nh);
        let grid = self.flash_grid::<T>(Family::Forward, &d);
        // SAFETY: the arguments match flash_attention_forward_hs{64,128}(_bf16)(_q32) (out, lse,
        // qkv, B, T, NH) in kernels/flash_attention.cu, compiled for this HS; out holds B*T*C,
        // lse B*NH*T and qkv B*T*3C elements (checked), 16-byte aligned (checked); the grid is
        // (ceil(T/rows), NH, B) blocks of 128 threads with the rows a block of the kernel picked
        // by the same choice (64, or 128 for _q32), as the kernel expects.
        launched(K, unsafe { lb.launch(grid) })
    }

    /// The backward of [`Gpu::flash_attention_forward`]: dqkv (B,T,3C) += the gradients of q, k, v,
    /// from dout (B,T,C), qkv, the forward's out and lse. `scratch`: at least
    /// [`flash_attention_backward_scratch_len`] floats, garbage on return. Deterministic.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_backward<T: DeviceFloat>(
        &self,
        dqkv: &mut CudaViewMut<'_, T>, // (B, T, 3C)
        dout: &CudaView<'_, T>,        // (B, T, C)
        qkv: &CudaView<'_, T>,         // (B, T, 3C)
        out: &CudaView<'_, T>,         // (B, T, C)
        lse: &CudaView<'_, f32>,       // (B, NH, T)
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        scratch: &mut CudaViewMut<'_, f32>, // (B, NH, T) at least
    ) -> Result<()> {
        const K: &str = "flash_attention_backward";
        let d = dims(K, b, t, c, nh)?;
        check_len(K, "dqkv", dqkv.len(), 3 * d.btc, "B*T*3C")?;
        check_len(K, "dout", dout.len(), d.btc, "B*T*C")?;
        check_len(K, "qkv", qkv.len(), 3 * d.btc, "B*T*3C")?;
        check_len(K, "out", out.len(), d.btc, "B*T*C")?;
        check_len(K, "lse", lse.len(), d.bnht, "B*NH*T")?;
        let need = flash_attention_backward_scratch_len(b, t, c, nh);
        if scratch.len() < need {
            bail!(
                "{K}: scratch has {} elements, needs B*NH*T = {need}",
                scratch.len()
            );
        }
        if d.btc == 0 {
            return Ok(());
        }
        check_aligned16(K, "dqkv", ptr(&self.stream, dqkv))?;
        check_aligned16(K, "dout", ptr(&self.stream, dout))?;
        check_aligned16(K, "qkv", ptr(&self.stream, qkv))?;
        check_aligned16(K, "out", ptr(&self.stream, out))?;
        let (mut dvec, _) = scratch.split_at_mut(need); // (B, NH, T)

        // 1. D = rowsum(dout * out), one warp per (b, t, h) row.
        let kernel = T::pick(
            &self.k.flash_attention_backward_d,
            &self.k.flash_attention_backward_d_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut dvec).arg(dout).arg(out);
        lb.arg(&d.b).arg(&d.t).arg(&d.nh).arg(&d.hs);
        // SAFETY: the arguments match flash_attention_backward_d(_bf16) (d, dout, out, B, T, NH,
        // HS); d holds B*NH*T floats (split from the checked scratch), dout and out B*T*C elements
        // (checked); one warp per row, rows < B*T*NH.
        launched("flash_attention_backward_d", unsafe {
            lb.launch(launch::warp_per_row(d.bnht).into())
        })?;

        // 2. dK, dV per key tile; 3. dQ per query tile. Each writes disjoint thirds of dqkv.
        let dvec = dvec.as_view();
        for (fam, name) in [
            (Family::Dkdv, "flash_attention_backward_dkdv"),
            (Family::Dq, "flash_attention_backward_dq"),
        ] {
            let mut lb = self
                .stream
                .launch_builder(self.flash_kernel::<T>(fam, d.hs));
            lb.arg(&mut *dqkv).arg(dout).arg(qkv).arg(lse).arg(&dvec);
            lb.arg(&d.b).arg(&d.t).arg(&d.nh);
            let grid = self.flash_grid::<T>(fam, &d);
            // SAFETY: the arguments match flash_attention_backward_{dkdv,dq}_hs{64,128}(_bf16)
            // (_q32) (dqkv, dout, qkv, lse, d, B, T, NH), compiled for this HS; dqkv and qkv hold
            // B*T*3C, dout B*T*C, lse and d B*NH*T elements (checked), the T buffers 16-byte
            // aligned (checked); the grid is (ceil(T/rows), NH, B) blocks of 128 threads with the
            // rows a block of the kernel picked by the same choice (64, or 128 for _q32).
            launched(name, unsafe { lb.launch(grid) })?;
        }
        Ok(())
    }
}

/// The fused kernels, for [`Gpu::flash_kernel`].
#[derive(Clone, Copy)]
enum Family {
    Forward,
    Dkdv,
    Dq,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits of one launch (32-bit ints, grid y and z), each at its exact edge (no GPU
    /// needed).
    #[test]
    fn dims_refuse_what_one_launch_cannot_cover() {
        let e = |r: Result<Dims>| format!("{}", r.err().expect("an error"));
        // B*T*3C with C = 64: T = 11184810 gives 2^31 - 128, one more 2^31 + 64
        assert!(dims("k", 1, 11_184_810, 64, 1).is_ok());
        assert!(e(dims("k", 1, 11_184_811, 64, 1)).contains("B*T*3C"));
        // B and NH: at most 65535 (grid z and y)
        assert!(dims("k", 65_535, 1, 64, 1).is_ok());
        assert!(e(dims("k", 65_536, 1, 64, 1)).contains("at most 65535"));
        assert!(dims("k", 1, 1, 64 * 65_535, 65_535).is_ok());
        assert!(e(dims("k", 1, 1, 64 * 65_536, 65_536)).contains("at most 65535"));
        assert!(e(dims("k", 1, 1, 96, 1)).contains("HS = C/NH = 96/1 = 96 is not supported"));
        assert!(e(dims("k", 1, 1, 128, 3)).contains("not divisible by NH = 3"));
        let d = dims("k", 2, 3, 256, 2).unwrap();
        assert_eq!(
            (d.b, d.t, d.nh, d.hs, d.btc, d.bnht),
            (2, 3, 2, 128, 1536, 12)
        );
    }
}
