//! LayerNorm on the GPU (`kernels/layernorm.cu`); twin of `cpu::layernorm`. Generic over the
//! storage type `T` (f32 or bf16) of the activations, parameters and gradients; mean and rstd are
//! fp32 in both, and so is all arithmetic (one rounding per T output).

use anyhow::Result;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, dim, launched, ptr, Gpu};
use super::float::DeviceFloat;
use super::launch;

impl Gpu {
    /// out (B,T,C) = (inp - mean) * rstd * weight + bias over each row's C channels (eps 1e-5);
    /// saves mean (B,T) and rstd (B,T) for the backward. One warp per row.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>,    // (B, T, C)
        mean: &mut CudaViewMut<'_, f32>, // (B, T)
        rstd: &mut CudaViewMut<'_, f32>, // (B, T)
        inp: &CudaView<'_, T>,           // (B, T, C)
        weight: &CudaView<'_, T>,        // (C)
        bias: &CudaView<'_, T>,          // (C)
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "layernorm_forward";
        let n = b * t;
        check_len(K, "out", out.len(), n * c, "B*T*C")?;
        check_len(K, "mean", mean.len(), n, "B*T")?;
        check_len(K, "rstd", rstd.len(), n, "B*T")?;
        check_len(K, "inp", inp.len(), n * c, "B*T*C")?;
        check_len(K, "weight", weight.len(), c, "C")?;
        check_len(K, "bias", bias.len(), c, "C")?;
        if n == 0 {
            return Ok(());
        }
        let (ni, ci) = (dim(K, "B*T", n)?, dim(K, "C", c)?);
        let kernel = T::pick(&self.k.layernorm_forward, &self.k.layernorm_forward_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(out)
            .arg(mean)
            .arg(rstd)
            .arg(inp)
            .arg(weight)
            .arg(bias);
        lb.arg(&ni).arg(&ci);
        // SAFETY: the arguments match layernorm_forward(_bf16) in kernels/layernorm.cu; every
        // buffer's length was checked against N = B*T and C, and the kernel touches rows < N only
        // (its packed path only when C is a multiple of the pack and the pointers are aligned).
        launched(K, unsafe { lb.launch(launch::warp_per_row(n).into()) })
    }

    /// dinp (B,T,C) += the input gradient; dweight (C) += sum of dout * norm; dbias (C) += sum of
    /// dout. The parameter gradients are reduced deterministically (per-chunk partial sums in a
    /// scratch buffer, then the chunks in order), without atomics.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaViewMut<'_, T>,    // (B, T, C)
        dweight: &mut CudaViewMut<'_, T>, // (C)
        dbias: &mut CudaViewMut<'_, T>,   // (C)
        dout: &CudaView<'_, T>,           // (B, T, C)
        inp: &CudaView<'_, T>,            // (B, T, C)
        weight: &CudaView<'_, T>,         // (C)
        mean: &CudaView<'_, f32>,         // (B, T)
        rstd: &CudaView<'_, f32>,         // (B, T)
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "layernorm_backward";
        let n = b * t;
        check_len(K, "dinp", dinp.len(), n * c, "B*T*C")?;
        check_len(K, "dweight", dweight.len(), c, "C")?;
        check_len(K, "dbias", dbias.len(), c, "C")?;
        check_len(K, "dout", dout.len(), n * c, "B*T*C")?;
        check_len(K, "inp", inp.len(), n * c, "B*T*C")?;
        check_len(K, "weight", weight.len(), c, "C")?;
        check_len(K, "mean", mean.len(), n, "B*T")?;
        check_len(K, "rstd", rstd.len(), n, "B*T")?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let (ni, ci) = (dim(K, "B*T", n)?, dim(K, "C", c)?);
        dim(K, "B*T*C", n * c)?;

        let kernel = T::pick(
            &self.k.layernorm_backward_dinp,
            &self.k.layernorm_backward_dinp_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(dinp)
            .arg(dout)
            .arg(inp)
            .arg(weight)
            .arg(mean)
            .arg(rstd);
        lb.arg(&ni).arg(&ci);
        // SAFETY: the arguments match layernorm_backward_dinp(_bf16) in kernels/layernorm.cu; all
        // lengths were checked against N and C; the kernel touches rows < N only (its packed
        // path, whole 16-byte packs of each row, only when C is a multiple of the pack and dinp,
        // dout, inp, weight are 16-byte aligned, which the kernel checks itself).
        launched("layernorm_backward_dinp", unsafe {
            lb.launch(launch::warp_per_row(n).into())
        })?;

        let (_, chunks, _) = launch::column_chunks(c, n);
        let mut partial = self.scratch(K, chunks * 2 * c)?; // (chunks, 2, C), fp32
                                                            // One thread per pack of channels when every row of partial, dout and inp can be read and
                                                            // written 16 bytes at a time, else one per channel (the same sums either way).
        let packed = launch::rows_packable::<T>(
            c,
            &[
                ptr(&self.stream, &partial),
                ptr(&self.stream, dout),
                ptr(&self.stream, inp),
            ],
        );
        let (cfg, _, rpc) = launch::layernorm_params_partial::<T>(c, n, packed);
        let rpci = dim(K, "rows per chunk", rpc)?;
        let chunksi = dim(K, "chunks", chunks)?;
        let packedi = packed as i32;
        let kernel = T::pick(
            &self.k.layernorm_backward_params_partial,
            &self.k.layernorm_backward_params_partial_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut partial).arg(dout).arg(inp).arg(mean).arg(rstd);
        lb.arg(&ni).arg(&ci).arg(&rpci).arg(&packedi);
        // SAFETY: the arguments match layernorm_backward_params_partial(_bf16); partial holds
        // chunks * 2C floats and the grid has exactly `chunks` rows of blocks. Scalar: a thread per
        // channel c < C writes its two entries; packed (C a multiple of the pack, partial, dout and
        // inp 16-byte aligned, as checked above): a thread per pack of channels c0 < C reads whole
        // 16-byte packs of dout and inp and writes its 2 * pack entries; either way all of partial
        // is written; rows stay below N.
        launched("layernorm_backward_params_partial", unsafe {
            lb.launch(cfg.into())
        })?;

        let kernel = T::pick(
            &self.k.layernorm_backward_params_reduce,
            &self.k.layernorm_backward_params_reduce_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(dweight)
            .arg(dbias)
            .arg(&partial)
            .arg(&chunksi)
            .arg(&ci);
        // SAFETY: the arguments match layernorm_backward_params_reduce(_bf16); partial was fully
        // written by the launch above (same stream, so in order); dweight and dbias hold C
        // elements.
        launched("layernorm_backward_params_reduce", unsafe {
            lb.launch(launch::per_element(c).into())
        })
    }
}
