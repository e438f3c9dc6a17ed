//! The matmul on the GPU: cuBLAS for the products, `kernels/matmul.cu` for the bias (add in the
//! forward, deterministic column sums in the backward); twin of `cpu::matmul`.
//!
//! Generic over the storage type `T`: f32 runs cublasSgemm (full fp32 unless TF32 is on), bf16
//! runs cublasGemmEx on CUDA_R_16BF matrices with CUBLAS_COMPUTE_32F (fp32 accumulation, each
//! output rounded once; with beta = 1 cuBLAS reads the old bf16 value, adds in fp32, rounds once).
//! [`Gpu::gemm`] and [`Gpu::gemm_strided_batched`] are that dispatch, shared with attention.
//!
//! cuBLAS is column-major; a row-major (R, K) buffer read column-major with leading dimension K is
//! its transpose. So out (BT,OC) = inp (BT,C) @ W(OC,C)^T is computed as the column-major
//! out^T (OC,BT) = W (OC,C) . inp^T (C,BT): A = weight with op T, B = inp with op N.
//! Full fp32 unless [`Gpu::set_tf32`] turned TF32 tensor cores on.

use anyhow::{anyhow, bail, Result};
use cudarc::cublas::result::{self as blas, CublasError};
use cudarc::cublas::sys::cublasOperation_t::{self, CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
use cudarc::cublas::{GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, PushKernelArg};

use super::context::{check_len, dim, grid_stride, launched, Gpu};
use super::float::DeviceFloat;
use super::gemm_plan::{self, GemmPlan, Operand::*};
use super::launch;
use crate::precision::Precision;

impl Gpu {
    /// C = alpha op(A) op(B) + beta C, column-major, on T matrices: cublasSgemm for f32 (exactly
    /// what cudarc's `Gemm<f32>` calls), cublasGemmEx with CUDA_R_16BF and CUBLAS_COMPUTE_32F for
    /// bf16. alpha and beta are fp32 in both.
    ///
    /// # Safety
    /// The dimensions and leading dimensions of `cfg` must address memory inside `a`, `b`, `c`.
    pub(super) unsafe fn gemm<T: DeviceFloat>(
        &self,
        cfg: GemmConfig<f32>,
        a: &impl DevicePtr<T>,
        b: &impl DevicePtr<T>,
        c: &mut impl DevicePtrMut<T>,
    ) -> Result<(), CublasError> {
        let handle = *self.blas.handle();
        let (pa, _ra) = a.device_ptr(&self.stream);
        let (pb, _rb) = b.device_ptr(&self.stream);
        let (pc, _rc) = c.device_ptr_mut(&self.stream);
        let GemmConfig {
            transa,
            transb,
            m,
            n,
            k,
            alpha,
            lda,
            ldb,
            beta,
            ldc,
        } = cfg;
        match T::PRECISION {
            // SAFETY (both arms): the caller guarantees the dimensions stay inside the buffers;
            // alpha and beta are host f32 (the handle's default pointer mode); the pointers are
            // live device buffers of T on the handle's stream.
            Precision::Fp32 => unsafe {
                blas::sgemm(
                    handle,
                    transa,
                    transb,
                    m,
                    n,
                    k,
                    &alpha,
                    pa as *const f32,
                    lda,
                    pb as *const f32,
                    ldb,
                    &beta,
                    pc as *mut f32,
                    ldc,
                )
            },
            Precision::Bf16 => unsafe {
                blas::gemm_ex(
                    handle,
                    transa,
                    transb,
                    m,
                    n,
                    k,
                    (&alpha) as *const f32 as *const _,
                    pa as *const _,
                    cudaDataType_t::CUDA_R_16BF,
                    lda,
                    pb as *const _,
                    cudaDataType_t::CUDA_R_16BF,
                    ldb,
                    (&beta) as *const f32 as *const _,
                    pc as *mut _,
                    cudaDataType_t::CUDA_R_16BF,
                    ldc,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            },
        }
    }

    /// [`Gpu::gemm`] batched with strides: cublasSgemmStridedBatched for f32,
    /// cublasGemmStridedBatchedEx (CUDA_R_16BF, CUBLAS_COMPUTE_32F) for bf16.
    ///
    /// # Safety
    /// The dimensions, leading dimensions, strides and batch size of `cfg` must address memory
    /// inside `a`, `b`, `c`.
    pub(super) unsafe fn gemm_strided_batched<T: DeviceFloat>(
        &self,
        cfg: StridedBatchedConfig<f32>,
        a: &impl DevicePtr<T>,
        b: &impl DevicePtr<T>,
        c: &mut impl DevicePtrMut<T>,
    ) -> Result<(), CublasError> {
        let handle = *self.blas.handle();
        let (pa, _ra) = a.device_ptr(&self.stream);
        let (pb, _rb) = b.device_ptr(&self.stream);
        let (pc, _rc) = c.device_ptr_mut(&self.stream);
        let g = cfg.gemm;
        match T::PRECISION {
            // SAFETY (both arms): as in gemm, with the caller's strides and batch size.
            Precision::Fp32 => unsafe {
                blas::sgemm_strided_batched(
                    handle,
                    g.transa,
                    g.transb,
                    g.m,
                    g.n,
                    g.k,
                    &g.alpha,
                    pa as *const f32,
                    g.lda,
                    cfg.stride_a,
                    pb as *const f32,
                    g.ldb,
                    cfg.stride_b,
                    &g.beta,
                    pc as *mut f32,
                    g.ldc,
                    cfg.stride_c,
                    cfg.batch_size,
                )
            },
            Precision::Bf16 => unsafe {
                blas::gemm_strided_batched_ex(
                    handle,
                    g.transa,
                    g.transb,
                    g.m,
                    g.n,
                    g.k,
                    (&g.alpha) as *const f32 as *const _,
                    pa as *const _,
                    cudaDataType_t::CUDA_R_16BF,
                    g.lda,
                    cfg.stride_a,
                    pb as *const _,
                    cudaDataType_t::CUDA_R_16BF,
                    g.ldb,
                    cfg.stride_b,
                    (&g.beta) as *const f32 as *const _,
                    pc as *mut _,
                    cudaDataType_t::CUDA_R_16BF,
                    g.ldc,
                    cfg.stride_c,
                    cfg.batch_size,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            },
        }
    }
}

/// cuBLAS's transpose flag.
fn op(trans: bool) -> cublasOperation_t {
    if trans {
        CUBLAS_OP_T
    } else {
        CUBLAS_OP_N
    }
}

/// The cuBLAS configuration of an unbatched plan (its batch and strides are ignored), every
/// dimension checked to fit a 32-bit int.
pub(super) fn gemm_config(kernel: &str, p: &GemmPlan) -> Result<GemmConfig<f32>> {
    Ok(GemmConfig {
        transa: op(p.transa),
        transb: op(p.transb),
        m: dim(kernel, "m", p.m)?,
        n: dim(kernel, "n", p.n)?,
        k: dim(kernel, "k", p.k)?,
        alpha: p.alpha,
        lda: dim(kernel, "lda", p.lda)?,
        ldb: dim(kernel, "ldb", p.ldb)?,
        beta: p.beta,
        ldc: dim(kernel, "ldc", p.ldc)?,
    })
}

/// The cuBLAS configuration of a strided-batched plan.
pub(super) fn strided_batched_config(
    kernel: &str,
    p: &GemmPlan,
) -> Result<StridedBatchedConfig<f32>> {
    let stride = |what: &str, x: usize| {
        i64::try_from(x).map_err(|_| anyhow!("{kernel}: {what} = {x} does not fit a 64-bit int"))
    };
    Ok(StridedBatchedConfig {
        gemm: gemm_config(kernel, p)?,
        batch_size: dim(kernel, "batch", p.batch)?,
        stride_a: stride("stride_a", p.stride_a)?,
        stride_b: stride("stride_b", p.stride_b)?,
        stride_c: stride("stride_c", p.stride_c)?,
    })
}

impl Gpu {
    /// out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T + bias (OC) (bias optional). In bf16 the
    /// product is rounded to bf16, then the bias added in fp32 and rounded again.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>,   // (B, T, OC)
        inp: &CudaView<'_, T>,          // (B, T, C)
        weight: &CudaView<'_, T>,       // (OC, C)
        bias: Option<&CudaView<'_, T>>, // (OC)
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
        dim(K, "B*T", n)?;
        dim(K, "C", c)?;
        let oci = dim(K, "OC", oc)?;
        let plan = gemm_plan::matmul_forward(n, c, oc);
        plan.check_operands(K, (Weight, Inp, Out))
            .map_err(|e| anyhow!(e))?;
        let cfg = gemm_config(K, &plan)?;
        // SAFETY: the plan is column-major out^T (OC x BT, ld OC) = op_T(weight: C x OC, ld C) .
        // inp^T (C x BT, ld C), beta 0; the buffers hold exactly OC*C, BT*C and BT*OC elements
        // (checked), which these dimensions and leading dimensions address (tests/gemm_plans.rs
        // runs the plan on host buffers of exactly these lengths and refuses any access outside).
        unsafe { self.gemm(cfg, weight, inp, out) }
            .map_err(|e| anyhow!("{K}: cuBLAS gemm failed: {e}"))?;
        if let Some(bias) = bias {
            let total = n * oc;
            let kernel = T::pick(&self.k.add_bias, &self.k.add_bias_bf16);
            let mut lb = self.stream.launch_builder(kernel);
            lb.arg(out).arg(bias).arg(&total).arg(&oci);
            // SAFETY: the arguments match add_bias(_bf16) in kernels/matmul.cu; out holds
            // total = B*T*OC elements and bias OC (checked); the kernel reads bias[i % OC].
            launched("add_bias", unsafe { lb.launch(grid_stride(total)) })?;
        }
        Ok(())
    }

    /// dinp (B,T,C) += dout @ weight; dweight (OC,C) += dout^T @ inp; dbias (OC) += dout summed
    /// over B*T (deterministic: per-chunk partial sums, then the chunks in order).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaViewMut<'_, T>,          // (B, T, C)
        dweight: &mut CudaViewMut<'_, T>,       // (OC, C)
        dbias: Option<&mut CudaViewMut<'_, T>>, // (OC)
        dout: &CudaView<'_, T>,                 // (B, T, OC)
        inp: &CudaView<'_, T>,                  // (B, T, C)
        weight: &CudaView<'_, T>,               // (OC, C)
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
        dim(K, "B*T", n)?;
        dim(K, "C", c)?;
        dim(K, "OC", oc)?;
        // dinp^T (C x BT, ld C) += weight^T (C x OC, ld C) . dout^T (OC x BT, ld OC), beta 1
        let plan = gemm_plan::matmul_backward_dinp(n, c, oc);
        plan.check_operands(K, (Weight, Dout, Dinp))
            .map_err(|e| anyhow!(e))?;
        let cfg = gemm_config(K, &plan)?;
        // SAFETY: the plan's dimensions address exactly the checked lengths of weight (OC*C),
        // dout (BT*OC) and dinp (BT*C) (checked on the host by tests/gemm_plans.rs).
        unsafe { self.gemm(cfg, weight, dout, dinp) }
            .map_err(|e| anyhow!("{K}: cuBLAS gemm (dinp) failed: {e}"))?;
        // dweight^T (C x OC, ld C) += inp^T (C x BT, ld C) . op_T(dout^T: OC x BT, ld OC), beta 1
        let plan = gemm_plan::matmul_backward_dweight(n, c, oc);
        plan.check_operands(K, (Inp, Dout, Dweight))
            .map_err(|e| anyhow!(e))?;
        let cfg = gemm_config(K, &plan)?;
        // SAFETY: the plan's dimensions address exactly the checked lengths of inp (BT*C),
        // dout (BT*OC) and dweight (OC*C) (checked on the host by tests/gemm_plans.rs).
        unsafe { self.gemm(cfg, inp, dout, dweight) }
            .map_err(|e| anyhow!("{K}: cuBLAS gemm (dweight) failed: {e}"))?;
        if let Some(dbias) = dbias {
            self.bias_backward(dbias, dout, n, oc)?;
        }
        Ok(())
    }

    /// dbias (OC) += the column sums of dout (N,OC), deterministically.
    fn bias_backward<T: DeviceFloat>(
        &self,
        dbias: &mut CudaViewMut<'_, T>, // (OC)
        dout: &CudaView<'_, T>,         // (N, OC)
        n: usize,
        oc: usize,
    ) -> Result<()> {
        const K: &str = "matmul_backward";
        let (cfg, chunks, rpc) = launch::column_chunks(oc, n);
        let mut partial = self.scratch(K, chunks * oc)?;
        let (ni, oci) = (dim(K, "B*T", n)?, dim(K, "OC", oc)?);
        let (rpci, chunksi) = (dim(K, "rows per chunk", rpc)?, dim(K, "chunks", chunks)?);
        let kernel = T::pick(
            &self.k.bias_backward_partial,
            &self.k.bias_backward_partial_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut partial).arg(dout).arg(&ni).arg(&oci).arg(&rpci);
        // SAFETY: the arguments match bias_backward_partial(_bf16) in kernels/matmul.cu; partial
        // holds chunks*OC floats, all written (one thread per (chunk, o)); dout holds N*OC
        // (checked).
        launched("bias_backward_partial", unsafe { lb.launch(cfg.into()) })?;
        let kernel = T::pick(&self.k.column_sum_reduce, &self.k.column_sum_reduce_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(dbias).arg(&partial).arg(&chunksi).arg(&oci);
        // SAFETY: the arguments match column_sum_reduce(_bf16); partial is (chunks, OC) fp32,
        // fully written above on the same stream; dbias holds OC elements (checked).
        launched("column_sum_reduce", unsafe {
            lb.launch(launch::per_element(oc).into())
        })
    }
}
