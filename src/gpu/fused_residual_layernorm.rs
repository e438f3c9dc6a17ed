//! The residual add fused with the following LayerNorm, forward (`kernels/fused_residual_layernorm.cu`);
//! twin of `cpu::fused_residual_layernorm` (residual_forward, then layernorm_forward on its output).
//! One kernel reads inp1 and inp2 once instead of the residual kernel writing the sum and the
//! LayerNorm reading it back twice.

use anyhow::{bail, Result};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, PushKernelArg};

use super::context::{check_len, dim, launched, Gpu, BLOCK};
use super::float::DeviceFloat;

/// Most dynamic shared memory a block may use without opting in (48 KiB on every GPU since sm_70).
const MAX_DEFAULT_SHARED: usize = 48 * 1024;

/// The launch shape for rows of `c` channels: (rows per block, dynamic shared memory bytes,
/// cache_row). Keeps each warp's row in shared memory (one float per channel) with as many warps
/// per block as fit in 48 KiB, up to BLOCK / 32; when even one row does not fit (C > 12288), no
/// cache: the kernel re-reads the row it wrote from residual_out.
fn launch_shape(c: usize) -> (usize, usize, bool) {
    let max_rows = BLOCK as usize / 32;
    let row_bytes = c * std::mem::size_of::<f32>();
    if row_bytes == 0 || row_bytes > MAX_DEFAULT_SHARED {
        return (max_rows, 0, false);
    }
    let rows = (MAX_DEFAULT_SHARED / row_bytes).min(max_rows);
    (rows, rows * row_bytes, true)
}

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

        // 128-bit accesses need whole 16-byte chunks per row and 16-byte aligned buffers.
        let width = 16 / std::mem::size_of::<T>();
        let ptrs = [
            residual_out.device_ptr(&self.stream).0,
            ln_out.device_ptr(&self.stream).0,
            inp1.device_ptr(&self.stream).0,
            inp2.device_ptr(&self.stream).0,
            weight.device_ptr(&self.stream).0,
            bias.device_ptr(&self.stream).0,
        ];
        let vec = c.is_multiple_of(width) && ptrs.iter().all(|&p| p.is_multiple_of(16));

        let (rows_per_block, shared, cache_row) = launch_shape(c);
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
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (n.div_ceil(rows_per_block) as u32, 1, 1),
            block_dim: (rows_per_block as u32 * 32, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: the arguments match residual_layernorm_forward(_bf16) in
        // kernels/fused_residual_layernorm.cu (T picked to match); every length was checked against
        // N = B*T and C; the kernel touches rows < N only, channels < C (vec only when C is a
        // multiple of the vector width and every pointer 16-byte aligned, checked above), and with
        // cache_row its shared memory is rows_per_block * C floats, exactly what is requested.
        launched(K, unsafe { lb.launch(cfg) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_shape_fits_shared_memory() {
        // GPT-2 small: 4 warps of 768 floats would be 12 KiB; 8 fit.
        assert_eq!(launch_shape(768), (8, 8 * 768 * 4, true));
        // 1600 floats = 6400 bytes: 7 rows fit in 48 KiB.
        assert_eq!(launch_shape(1600), (7, 7 * 6400, true));
        // Exactly one row fits, then none.
        assert_eq!(launch_shape(12288), (1, 49152, true));
        assert_eq!(launch_shape(12289), (8, 0, false));
    }
}
