//! The matmul on the GPU: cuBLAS sgemm for the products, `kernels/matmul.cu` for the bias (add in
//! the forward, deterministic column sums in the backward); twin of `cpu::matmul`.
//!
//! cuBLAS is column-major; a row-major (R, K) buffer read column-major with leading dimension K is
//! its transpose. So out (BT,OC) = inp (BT,C) @ W(OC,C)^T is computed as the column-major
//! out^T (OC,BT) = W (OC,C) . inp^T (C,BT): A = weight with op T, B = inp with op N.
//! Full fp32 unless [`Gpu::set_tf32`] turned TF32 tensor cores on.

use anyhow::{anyhow, bail, Result};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::context::{check_len, dim, grid_1d, grid_stride, launched, Gpu, BLOCK};
use super::layernorm::rows_per_chunk;

impl Gpu {
    /// out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC) (bias optional).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward(
        &self,
        out: &mut CudaViewMut<'_, f32>,   // (B, T, OC)
        inp: &CudaView<'_, f32>,          // (B, T, C)
        weight: &CudaView<'_, f32>,       // (OC, C)
        bias: Option<&CudaView<'_, f32>>, // (OC)
        b: usize,
        t: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        const K: &str = "matmul_forward";
        let n = b * t;
        check_len(K, "out", out.len(), n * oc, "B*T*OC")?;
        check_len(K, "inp", inp.len(), n * c, "B*T*C")?;
        check_len(K, "weight", weight.len(), oc * c, "OC*C")?;
        if let Some(bias) = bias {
            check_len(K, "bias", bias.len(), oc, "OC")?;
        }
        if n == 0 || oc == 0 {
            return Ok(());
        }
        if c == 0 {
            bail!("{K}: C must be positive");
        }
        let (ni, ci, oci) = (dim(K, "B*T", n)?, dim(K, "C", c)?, dim(K, "OC", oc)?);
        let cfg = GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: oci,
            n: ni,
            k: ci,
            alpha: 1.0f32,
            lda: ci,
            ldb: ci,
            beta: 0.0f32,
            ldc: oci,
        };
        // SAFETY: column-major out^T (OC x BT) = op_T(weight: C x OC, ld C) . inp (C x BT, ld C);
        // the buffers hold exactly OC*C, BT*C and BT*OC floats (checked), which these dimensions
        // and leading dimensions address.
        unsafe { self.blas.gemm(cfg, weight, inp, out) }
            .map_err(|e| anyhow!("{K}: cublasSgemm failed: {e}"))?;
        if let Some(bias) = bias {
            let total = n * oc;
            let mut lb = self.stream.launch_builder(&self.k.add_bias);
            lb.arg(out).arg(bias).arg(&total).arg(&oci);
            // SAFETY: the arguments match add_bias in kernels/matmul.cu; out holds total = B*T*OC
            // floats and bias OC (checked); the kernel reads bias[i % OC].
            launched("add_bias", unsafe { lb.launch(grid_stride(total)) })?;
        }
        Ok(())
    }

    /// dinp (B,T,C) += dout @ weight; dweight (OC,C) += dout^T @ inp; dbias (OC) += dout summed
    /// over B*T (deterministic: per-chunk partial sums, then the chunks in order).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        &self,
        dinp: &mut CudaViewMut<'_, f32>,          // (B, T, C)
        dweight: &mut CudaViewMut<'_, f32>,       // (OC, C)
        dbias: Option<&mut CudaViewMut<'_, f32>>, // (OC)
        dout: &CudaView<'_, f32>,                 // (B, T, OC)
        inp: &CudaView<'_, f32>,                  // (B, T, C)
        weight: &CudaView<'_, f32>,               // (OC, C)
        b: usize,
        t: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        const K: &str = "matmul_backward";
        let n = b * t;
        check_len(K, "dinp", dinp.len(), n * c, "B*T*C")?;
        check_len(K, "dweight", dweight.len(), oc * c, "OC*C")?;
        if let Some(dbias) = &dbias {
            check_len(K, "dbias", dbias.len(), oc, "OC")?;
        }
        check_len(K, "dout", dout.len(), n * oc, "B*T*OC")?;
        check_len(K, "inp", inp.len(), n * c, "B*T*C")?;
        check_len(K, "weight", weight.len(), oc * c, "OC*C")?;
        if n == 0 || oc == 0 || c == 0 {
            return Ok(());
        }
        let (ni, ci, oci) = (dim(K, "B*T", n)?, dim(K, "C", c)?, dim(K, "OC", oc)?);
        // dinp^T (C x BT) += weight^T (C x OC, ld C) . dout^T (OC x BT, ld OC)
        let cfg = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_N,
            m: ci,
            n: ni,
            k: oci,
            alpha: 1.0f32,
            lda: ci,
            ldb: oci,
            beta: 1.0f32,
            ldc: ci,
        };
        // SAFETY: the dimensions above address exactly the checked lengths of weight (OC*C),
        // dout (BT*OC) and dinp (BT*C).
        unsafe { self.blas.gemm(cfg, weight, dout, dinp) }
            .map_err(|e| anyhow!("{K}: cublasSgemm (dinp) failed: {e}"))?;
        // dweight^T (C x OC) += inp^T (C x BT, ld C) . op_T(dout^T (OC x BT, ld OC))
        let cfg = GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_T,
            m: ci,
            n: oci,
            k: ni,
            alpha: 1.0f32,
            lda: ci,
            ldb: oci,
            beta: 1.0f32,
            ldc: ci,
        };
        // SAFETY: the dimensions above address exactly the checked lengths of inp (BT*C),
        // dout (BT*OC) and dweight (OC*C).
        unsafe { self.blas.gemm(cfg, inp, dout, dweight) }
            .map_err(|e| anyhow!("{K}: cublasSgemm (dweight) failed: {e}"))?;
        if let Some(dbias) = dbias {
            self.bias_backward(dbias, dout, n, oc)?;
        }
        Ok(())
    }

    /// dbias (OC) += the column sums of dout (N,OC), deterministically.
    fn bias_backward(
        &self,
        dbias: &mut CudaViewMut<'_, f32>, // (OC)
        dout: &CudaView<'_, f32>,         // (N, OC)
        n: usize,
        oc: usize,
    ) -> Result<()> {
        const K: &str = "matmul_backward";
        let rpc = rows_per_chunk(n);
        let chunks = n.div_ceil(rpc);
        let mut partial = self.scratch(K, chunks * oc)?;
        let (ni, oci) = (dim(K, "B*T", n)?, dim(K, "OC", oc)?);
        let (rpci, chunksi) = (dim(K, "rows per chunk", rpc)?, dim(K, "chunks", chunks)?);
        let mut lb = self.stream.launch_builder(&self.k.bias_backward_partial);
        lb.arg(&mut partial).arg(dout).arg(&ni).arg(&oci).arg(&rpci);
        let cfg = LaunchConfig {
            grid_dim: (oc.div_ceil(BLOCK as usize) as u32, chunks as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match bias_backward_partial in kernels/matmul.cu; partial holds
        // chunks*OC floats, all written (one thread per (chunk, o)); dout holds N*OC (checked).
        launched("bias_backward_partial", unsafe { lb.launch(cfg) })?;
        let mut lb = self.stream.launch_builder(&self.k.column_sum_reduce);
        lb.arg(dbias).arg(&partial).arg(&chunksi).arg(&oci);
        // SAFETY: the arguments match column_sum_reduce; partial is (chunks, OC), fully written
        // above on the same stream; dbias holds OC floats (checked).
        launched("column_sum_reduce", unsafe {
            lb.launch(grid_1d(oc.div_ceil(BLOCK as usize), BLOCK))
        })
    }
}
