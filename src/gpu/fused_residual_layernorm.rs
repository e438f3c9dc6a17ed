//! The residual add fused with the following LayerNorm, forward (`kernels/fused_residual_layernorm.cu`);
//! twin of `cpu::fused_residual_layernorm` (residual_forward, then layernorm_forward on its output).
//! One kernel reads inp1 and inp2 once instead of the residual kernel writing the sum and the
//! LayerNorm reading it back twice.

use anyhow::{bail, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, dim, launched, ptr, Gpu};
use super::float::DeviceFloat;
use super::launch::{self, MAX_DEFAULT_SHARED};

impl Gpu {
    /// residual_out (B,T,C) = inp1 + inp2 (rounded to T); then ln_out (B,T,C) = (residual_out -
    /// mean) * rstd * weight + bias over each row's C channels (eps 1e-5), the statistics taken on
    /// the ROUNDED residual_out, exactly as `residual_forward` followed by `layernorm_forward`;
    /// saves mean (B,T) and rstd (B,T) in f32. One warp per row; 128-bit loads when C is a multiple
    /// of 16 bytes' worth of T and every buffer is 16-byte aligned, scalar otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_layernorm_forward<T: DeviceFloat>(
        &self,
        residual_out: &mut CudaViewMut<'_, T>, // (B, T, C)
        ln_out: &mut CudaViewMut<'_, T>,       // (B, T, C)
        mean: &mut CudaViewMut<'_, f32>,       // (B, T)
        rstd: &mut CudaViewMut<'_, f32>,       // (B, T)
        inp1: &CudaView<'_, T>,                // (B, T, C)
        inp2: &CudaView<'_, T>,                // (B, T, C)
        weight: &CudaView<'_, T>,              // (C)
        bias: &CudaView<'_, T>,                // (C)
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "residual_layernorm_forward";
        let n = b * t;
        check_len(K, "residual_out", residual_out.len(), n * c, "B*T*C")?;
        check_len(K, "ln_out", ln_out.len(), n * c, "B*T*C")?;
        check_len(K, "mean", mean.len(), n, "B*T")?;
        check_len(K, "rstd", rstd.len(), n, "B*T")?;
        check_len(K, "inp1", inp1.len(), n * c, "B*T*C")?;
        check_len(K, "inp2", inp2.len(), n * c, "B*T*C")?;
        check_len(K, "weight", weight.len(), c, "C")?;
        check_len(K, "bias", bias.len(), c, "C")?;
        // As the CPU twin: nothing to do without rows or channels (mean and rstd untouched).
        if n == 0 || c == 0 {
            return Ok(());
        }
        let (ni, ci) = (dim(K, "B*T", n)?, dim(K, "C", c)?);
        dim(K, "B*T*C", n * c)?;

        let ptrs = [
            ptr(&self.stream, residual_out),
            ptr(&self.stream, ln_out),
            ptr(&self.stream, inp1),
            ptr(&self.stream, inp2),
            ptr(&self.stream, weight),
            ptr(&self.stream, bias),
        ];
        let vec = launch::rows_packable::<T>(c, &ptrs);

        let (cfg, cache_row) = launch::residual_layernorm(n, c);
        let shared = cfg.shared_bytes as usize;
        if shared > MAX_DEFAULT_SHARED {
            bail!("{K}: {shared} bytes of shared memory requested (internal error)");
        }
        let (veci, cachei) = (vec as i32, cache_row as i32);
        let kernel = T::pick(
            &self.k.residual_layernorm_forward,
            &self.k.residual_layernorm_forward_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(residual_out)
            .arg(ln_out)
            .arg(mean)
            .arg(rstd)
            .arg(inp1)
            .arg(inp2)
            .arg(weight)
            .arg(bias);
        lb.arg(&ni).arg(&ci).arg(&veci).arg(&cachei);
        // SAFETY: the arguments match residual_layernorm_forward(_bf16) in
        // kernels/fused_residual_layernorm.cu (T picked to match); every length was checked against
        // N = B*T and C; the kernel touches rows < N only, channels < C (vec only when C is a
        // multiple of the vector width and every pointer 16-byte aligned, checked above), and with
        // cache_row its shared memory is rows_per_block * C floats, exactly what is requested.
        launched(K, unsafe { lb.launch(cfg.into()) })
    }
}
