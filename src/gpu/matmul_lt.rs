//! Matmuls through cuBLASLt with fused epilogues, in fp32 or bf16 (`T: DeviceFloat`): the bias add
//! (`CUBLASLT_EPILOGUE_BIAS`), bias + GELU keeping the GELU input for the backward
//! (`GELU_AUX_BIAS`), and the GELU gradient fused into the input-gradient product (`DGELU`). Twins
//! of `cpu::matmul` (and, fused, `cpu::gelu`).
//!
//! Layouts are llm.c's: inp (B*T, C) row-major, weight (OC, C) row-major, out (B*T, OC) =
//! inp . weight^T + bias. cuBLASLt is column-major, so each product is computed transposed, as in
//! `gpu::matmul`: out^T (OC x BT, ld OC) = op_T(weight: C x OC, ld C) . inp^T (C x BT, ld C);
//! dinp^T (C x BT) = weight (C x OC, ld C) . dout^T (OC x BT, ld OC); dweight^T (C x OC) +=
//! inp^T (C x BT, ld C) . op_T(dout^T: OC x BT, ld OC). Data type CUDA_R_32F or CUDA_R_16BF (A, B,
//! C, D, bias and the GELU aux all in T), scale type fp32, compute CUBLAS_COMPUTE_32F (fp32
//! accumulation), or CUBLAS_COMPUTE_32F_FAST_TF32 for fp32 data when [`Gpu::tf32`] is on.
//!
//! GELU: the cuBLASLt header (cublasLt.h, CUDA 13) says only "GELU"; it is the tanh approximation
//! `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, GPT-2's and `cpu::gelu`'s: PyTorch routes
//! `_addmm_activation(use_gelu=True)` to this epilogue and, where the epilogue is unavailable,
//! applies `gelu(approximate="tanh")` instead. tests/gpu_matmul_lt.rs checks it against
//! `cpu::gelu` at a tolerance well below the tanh/erf difference (up to 4.7e-4, at |x| = 2.7).
//! The GELU input ("aux", the pre-activation) is stored in T with leading dimension
//! `CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD`, which the header requires to be divisible by 8 and at
//! least the rows of D: here it is OC (forward) or C (backward), so those must be multiples of 8.
//! `DGELU` computes D = (A . B) * gelu'(aux) and overwrites D (beta must be 0).
//!
//! Bias gradient: cuBLASLt's `BGRADB` epilogue (the column sums of B, fused into the dweight
//! product) OVERWRITES the bias gradient and stores it in T, while the gradients here accumulate
//! across micro-batches (as every backward launcher in `gpu`). Using it would need a scratch
//! vector and an add (two roundings in bf16, an extra kernel per precision), or the caller's
//! promise that the gradient is fresh. Instead dbias is a second, tiny cuBLASLt product:
//! dbias (OC x 1) = beta * dbias + dout^T (OC x BT) . ones (BT x 1), beta 1. It accumulates, works
//! for both precisions, rounds once, is deterministic (cuBLASLt with a fixed algorithm and no
//! atomics), and costs one extra read of dout (B*T*OC elements, next to the 2*B*T*C*OC flops of
//! the two products). The existing `bias_backward` kernels are fp32-only and private to
//! `gpu::matmul`. The ones vector is kept per precision and grown on demand (the shorter ones kept
//! alive for the CUDA graphs that captured them).
//!
//! Checks before any launch (errors name the launcher): buffer lengths against B, T, C, OC; every
//! device pointer 16-byte aligned (the algorithm is chosen once per shape, and cuBLASLt picks it
//! from the pointers' alignment; 16 bytes is what its vectorised kernels want, and what every
//! fresh allocation has); in bf16 C and OC multiples of 8 (whole 16-byte rows for the tensor
//! cores); with a GELU epilogue the aux leading dimension a multiple of 8 (see above). The
//! algorithm comes from `cublasLtMatmulAlgoGetHeuristic` (best one, 16-byte alignment preferences,
//! the 32 MiB workspace) once per (type, compute, transposes, m, n, k, leading dimensions,
//! epilogue), then from a cache.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr};

use super::context::{check_aligned16, check_len, ptr, ptr_mut, Gpu};
use super::float::DeviceFloat;
use super::gemm_plan::{self, Epilogue, GemmPlan, Operand, Operand::*};
use crate::precision::Precision;

/// The cuBLASLt workspace: 32 MiB, NVIDIA's recommendation for Hopper (4 MiB before it; more
/// never hurts but memory).
pub(super) const WORKSPACE_BYTES: usize = 32 << 20;

/// Alignment required of every pointer handed to cuBLASLt here.
const ALIGN: u64 = 16;

/// The cuBLASLt state of a [`Gpu`]: its handle, its workspace, the algorithms chosen so far (per
/// shape and epilogue) and the ones vectors of the bias gradient (per precision).
pub(super) struct CublasLt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    cache: Mutex<HashMap<AlgoKey, sys::cublasLtMatmulAlgo_t>>,
    /// Per precision: every ones vector made so far, the longest last (see `Gpu::lt_ones`).
    ones: Mutex<HashMap<Precision, Vec<CudaSlice<u8>>>>,
}

// SAFETY: the handle is only used through &self with the stream it was made for; cuBLASLt handles
// may be shared between threads (the library keeps no per-call state in them), and the mutable
// state here is behind mutexes. cudarc's own CudaBlasLT is Send + Sync on the same grounds.
unsafe impl Send for CublasLt {}
// SAFETY: as for Send.
unsafe impl Sync for CublasLt {}

impl CublasLt {
    /// Creates the handle and allocates the workspace on `stream`. The caller checks first that
    /// libcublasLt loads (`cudarc::cublaslt::sys::is_culib_present`).
    pub(super) fn new(stream: &Arc<CudaStream>) -> Result<CublasLt> {
        let handle = lt::create_handle().map_err(|e| anyhow!("cublasLtCreate failed: {e}"))?;
        // SAFETY: uninitialised bytes are fine for a workspace, which cuBLASLt only writes first.
        let workspace = match unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: the handle was just created and is not used elsewhere.
                unsafe { lt::destroy_handle(handle) }.ok();
                bail!("allocating the {WORKSPACE_BYTES}-byte cuBLASLt workspace failed: {e}");
            }
        };
        Ok(CublasLt {
            handle,
            workspace,
            cache: Mutex::new(HashMap::new()),
            ones: Mutex::new(HashMap::new()),
        })
    }
}

impl Drop for CublasLt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by cublasLtCreate and is destroyed once, here.
        unsafe { lt::destroy_handle(self.handle) }.ok();
    }
}

/// What identifies a matmul to the heuristic (pointers aside: all are 16-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AlgoKey {
    /// The data's type.
    data: Precision,
    tf32: bool,
    transa: bool,
    transb: bool,
    m: u64,
    n: u64,
    k: u64,
    lda: usize,
    ldb: usize,
    ldd: usize,
    epilogue: Epilogue,
    aux_ld: usize,
}

/// A column-major product of a [`GemmPlan`] (D = alpha op(A) op(B) + beta D, then the epilogue),
/// with its operands as raw device addresses, taken from checked views by the launchers.
struct Product<'p> {
    plan: &'p GemmPlan,
    a: u64,
    b: u64,
    d: u64,
    bias: Option<u64>,
    aux: Option<u64>,
}

/// The cuBLASLt product of `plan` (unbatched: its batch and strides are ignored), with the device
/// address of each operand it names from `addr` (the launcher's buffers; an error names a missing
/// one).
fn product<'p>(
    kernel: &str,
    plan: &'p GemmPlan,
    addr: impl Fn(Operand) -> Option<u64>,
) -> Result<Product<'p>> {
    let get = |what: &str, op: Operand| {
        addr(op).ok_or_else(|| {
            anyhow!("{kernel}: the plan's {what} is {op:?}, which this launcher lacks")
        })
    };
    Ok(Product {
        plan,
        a: get("A", plan.a)?,
        b: get("B", plan.b)?,
        d: get("D", plan.c)?,
        bias: plan.bias.map(|op| get("bias", op)).transpose()?,
        aux: plan.aux.map(|(op, _)| get("aux", op)).transpose()?,
    })
}

/// cuBLASLt's name of an epilogue.
fn lt_epilogue(e: Epilogue) -> sys::cublasLtEpilogue_t {
    use sys::cublasLtEpilogue_t as E;
    match e {
        Epilogue::Default => E::CUBLASLT_EPILOGUE_DEFAULT,
        Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
        Epilogue::GeluAuxBias => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
        Epilogue::DGelu => E::CUBLASLT_EPILOGUE_DGELU,
    }
}

/// Owns a cublasLtMatmulDesc_t.
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate, destroyed once.
        unsafe { lt::destroy_matmul_desc(self.0) }.ok();
    }
}

/// Owns a cublasLtMatrixLayout_t.
struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed once.
        unsafe { lt::destroy_matrix_layout(self.0) }.ok();
    }
}

/// Owns a cublasLtMatmulPreference_t.
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate, destroyed once.
        unsafe { lt::destroy_matmul_pref(self.0) }.ok();
    }
}

/// Sets one attribute of a matmul descriptor from a plain value (errors name `kernel`).
fn set_desc<V: Copy>(
    kernel: &str,
    desc: &Desc,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &V,
) -> Result<()> {
    // SAFETY: value points at size_of::<V>() readable bytes; the caller passes the type the
    // attribute expects (int32 for the transposes, uint32 for the epilogue, pointers as u64
    // device addresses, int64 for leading dimensions).
    unsafe {
        lt::set_matmul_desc_attribute(
            desc.0,
            attr,
            value as *const V as *const c_void,
            size_of::<V>(),
        )
    }
    .map_err(|e| anyhow!("{kernel}: cublasLtMatmulDescSetAttribute({attr:?}) failed: {e}"))
}

/// The cudaDataType of T.
fn data_type<T: DeviceFloat>() -> sys::cudaDataType {
    match T::PRECISION {
        Precision::Fp32 => sys::cudaDataType_t::CUDA_R_32F,
        Precision::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
    }
}

/// The dimension rules of the cuBLASLt launchers: positive sizes that fit cuBLASLt's types, in
/// bf16 C and OC multiples of 8, with a GELU epilogue the aux leading dimension (`aux_ld`, OC or
/// C) a multiple of 8.
fn check_dims(
    kernel: &str,
    precision: Precision,
    n: usize,
    c: usize,
    oc: usize,
    aux_ld: Option<(&str, usize)>,
) -> Result<()> {
    for (what, x) in [("B*T", n), ("C", c), ("OC", oc)] {
        if i32::try_from(x).is_err() {
            bail!("{kernel}: {what} = {x} does not fit a 32-bit int");
        }
    }
    if precision == Precision::Bf16 {
        for (what, x) in [("C", c), ("OC", oc)] {
            if !x.is_multiple_of(8) {
                bail!(
                    "{kernel}: in bf16 {what} must be a multiple of 8 (whole 16-byte rows for \
                     the tensor cores), got {x}"
                );
            }
        }
    }
    if let Some((what, ld)) = aux_ld {
        if !ld.is_multiple_of(8) {
            bail!(
                "{kernel}: the GELU epilogue's aux leading dimension ({what} = {ld}) must be a \
                 multiple of 8 (cuBLASLt's CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD rule)"
            );
        }
    }
    Ok(())
}

impl Gpu {
    /// Runs one product on the stream, choosing its algorithm on first use.
    fn lt_matmul<T: DeviceFloat>(&self, kernel: &str, p: &Product) -> Result<()> {
        let plan = p.plan;
        let tf32 = T::PRECISION == Precision::Fp32 && self.tf32();
        let compute = if tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let err = |what: &str, e: lt::CublasError| anyhow!("{kernel}: {what} failed: {e}");

        let desc = Desc(
            lt::create_matmul_desc(compute, sys::cudaDataType_t::CUDA_R_32F)
                .map_err(|e| err("cublasLtMatmulDescCreate", e))?,
        );
        let epilogue = lt_epilogue(plan.epilogue);
        use sys::cublasLtMatmulDescAttributes_t as A;
        set_desc(
            kernel,
            &desc,
            A::CUBLASLT_MATMUL_DESC_TRANSA,
            &(plan.transa as i32),
        )?;
        set_desc(
            kernel,
            &desc,
            A::CUBLASLT_MATMUL_DESC_TRANSB,
            &(plan.transb as i32),
        )?;
        set_desc(
            kernel,
            &desc,
            A::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &(epilogue as u32),
        )?;
        if let Some(bias) = p.bias {
            set_desc(kernel, &desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
        }
        if let (Some(aux), Some((_, aux_ld))) = (p.aux, plan.aux) {
            set_desc(
                kernel,
                &desc,
                A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                &aux,
            )?;
            set_desc(
                kernel,
                &desc,
                A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                &(aux_ld as i64),
            )?;
        }

        let (m, n, k) = (plan.m as u64, plan.n as u64, plan.k as u64);
        let (a_rows, a_cols) = if plan.transa { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if plan.transb { (n, k) } else { (k, n) };
        let layout = |rows: u64, cols: u64, ld: usize| {
            lt::create_matrix_layout(data_type::<T>(), rows, cols, ld as i64)
                .map(Layout)
                .map_err(|e| err("cublasLtMatrixLayoutCreate", e))
        };
        let a_layout = layout(a_rows, a_cols, plan.lda)?;
        let b_layout = layout(b_rows, b_cols, plan.ldb)?;
        let d_layout = layout(m, n, plan.ldc)?;

        let key = AlgoKey {
            data: T::PRECISION,
            tf32,
            transa: plan.transa,
            transb: plan.transb,
            m,
            n,
            k,
            lda: plan.lda,
            ldb: plan.ldb,
            ldd: plan.ldc,
            epilogue: plan.epilogue,
            aux_ld: plan.aux.map_or(0, |(_, ld)| ld),
        };
        let algo = self.lt_algorithm::<T>(kernel, key, &desc, [&a_layout, &b_layout, &d_layout])?;

        let (alpha, beta) = (plan.alpha, plan.beta);
        let lt_state = &self.lt;
        let (ws_ptr, _ws_record) = lt_state.workspace.device_ptr(&self.stream);
        // SAFETY: A (a_rows x a_cols, ld lda), B and D (m x n, ld ldd) are device buffers the
        // launcher checked to hold exactly what these layouts address (they come from a
        // `gemm_plan` plan, which tests/gemm_plans.rs runs on host buffers of those lengths),
        // 16-byte aligned, in T (the layouts' data type); the bias (m elements of T) and aux
        // (ld x n of T) likewise;
        // alpha and beta are fp32 host scalars (the scale type); the algorithm was chosen for this
        // very descriptor and layouts (the cache key covers them) with at most WORKSPACE_BYTES of
        // workspace, which the workspace buffer holds; the stream is the engine's.
        unsafe {
            lt::matmul(
                lt_state.handle,
                desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                p.a as *const c_void,
                a_layout.0,
                p.b as *const c_void,
                b_layout.0,
                p.d as *const c_void,
                d_layout.0,
                p.d as *mut c_void,
                d_layout.0,
                &algo,
                ws_ptr as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| anyhow!("{kernel}: cublasLtMatmul failed: {e}"))
    }

    /// The algorithm for the product `key` describes (`desc` and the layouts of A, B and D): from
    /// the cache, or cuBLASLt's best by its heuristic (16-byte aligned operands, at most the
    /// workspace), then cached.
    fn lt_algorithm<T: DeviceFloat>(
        &self,
        kernel: &str,
        key: AlgoKey,
        desc: &Desc,
        [a_layout, b_layout, d_layout]: [&Layout; 3],
    ) -> Result<sys::cublasLtMatmulAlgo_t> {
        let cache = || {
            self.lt
                .cache
                .lock()
                .map_err(|_| anyhow!("{kernel}: the cuBLASLt algorithm cache is poisoned"))
        };
        if let Some(&algo) = cache()?.get(&key) {
            return Ok(algo);
        }
        let pref = Pref(
            lt::create_matmul_pref()
                .map_err(|e| anyhow!("{kernel}: cublasLtMatmulPreferenceCreate failed: {e}"))?,
        );
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let set = |attr: P, value: *const c_void, size: usize| {
            // SAFETY: value points at `size` readable bytes of the type the attribute expects
            // (uint64 workspace bytes, uint32 alignments), alive for the call.
            unsafe { lt::set_matmul_pref_attribute(pref.0, attr, value, size) }.map_err(|e| {
                anyhow!("{kernel}: cublasLtMatmulPreferenceSetAttribute({attr:?}) failed: {e}")
            })
        };
        let ws = WORKSPACE_BYTES as u64;
        set(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const u64 as *const c_void,
            size_of::<u64>(),
        )?;
        let align = ALIGN as u32;
        for attr in [
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        ] {
            set(
                attr,
                &align as *const u32 as *const c_void,
                size_of::<u32>(),
            )?;
        }
        // SAFETY: every descriptor is live and describes the product (the heuristic reads the
        // bias/aux pointers' values, never their memory); D is also C.
        let heuristic = unsafe {
            lt::get_matmul_algo_heuristic(
                self.lt.handle,
                desc.0,
                a_layout.0,
                b_layout.0,
                d_layout.0,
                d_layout.0,
                pref.0,
            )
        }
        .map_err(|e| {
            anyhow!(
                "{kernel}: cuBLASLt has no algorithm for this product ({:?} data, epilogue {:?}, \
                 m={} n={} k={}): {e}",
                T::PRECISION,
                key.epilogue,
                key.m,
                key.n,
                key.k
            )
        })?;
        if heuristic.workspaceSize > WORKSPACE_BYTES {
            bail!(
                "{kernel}: cuBLASLt's algorithm wants {} bytes of workspace, more than the \
                 {WORKSPACE_BYTES} offered",
                heuristic.workspaceSize
            );
        }
        cache()?.insert(key, heuristic.algo);
        Ok(heuristic.algo)
    }

    /// out (B,T,OC) = inp (B,T,C) . weight (OC,C)^T + bias (OC) (bias optional), through cuBLASLt
    /// with the bias fused (`CUBLASLT_EPILOGUE_BIAS`, or `DEFAULT` without bias). Overwrites out.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_lt<T: DeviceFloat>(
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
        let k = "matmul_forward_lt";
        self.forward_lt(k, (out, "out"), None, inp, weight, bias, b, t, c, oc)
    }

    /// pre_gelu (B,T,OC) = inp . weight^T + bias and out_gelu (B,T,OC) = gelu(pre_gelu) (the tanh
    /// approximation, see the file doc) in one cuBLASLt call (`CUBLASLT_EPILOGUE_GELU_AUX_BIAS`,
    /// pre_gelu written as the aux for [`Gpu::matmul_backward_dgelu_lt`]). Overwrites both. OC
    /// must be a multiple of 8 (the aux leading dimension).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_gelu_lt<T: DeviceFloat>(
        &self,
        out_gelu: &mut CudaViewMut<'_, T>, // (B, T, OC)
        pre_gelu: &mut CudaViewMut<'_, T>, // (B, T, OC)
        inp: &CudaView<'_, T>,             // (B, T, C)
        weight: &CudaView<'_, T>,          // (OC, C)
        bias: &CudaView<'_, T>,            // (OC)
        b: usize,
        t: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let k = "matmul_forward_gelu_lt";
        let out = (out_gelu, "out_gelu");
        self.forward_lt(k, out, Some(pre_gelu), inp, weight, Some(bias), b, t, c, oc)
    }

    /// `matmul_forward_lt` and, with `pre_gelu`, `matmul_forward_gelu_lt`: the checks of both,
    /// then the product (`out`: the buffer and its name in errors).
    #[allow(clippy::too_many_arguments)]
    fn forward_lt<T: DeviceFloat>(
        &self,
        kernel: &str,
        (out, out_name): (&mut CudaViewMut<'_, T>, &str), // (B, T, OC)
        pre_gelu: Option<&mut CudaViewMut<'_, T>>,        // (B, T, OC)
        inp: &CudaView<'_, T>,                            // (B, T, C)
        weight: &CudaView<'_, T>,                         // (OC, C)
        bias: Option<&CudaView<'_, T>>,                   // (OC)
        b: usize,
        t: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let k = kernel;
        let n = b * t;
        check_len(k, out_name, out.len(), n * oc, "B*T*OC")?;
        if let Some(pre) = &pre_gelu {
            check_len(k, "pre_gelu", pre.len(), n * oc, "B*T*OC")?;
        }
        check_len(k, "inp", inp.len(), n * c, "B*T*C")?;
        check_len(k, "weight", weight.len(), oc * c, "OC*C")?;
        if let Some(bias) = bias {
            check_len(k, "bias", bias.len(), oc, "OC")?;
        }
        let aux_ld = pre_gelu.as_ref().map(|_| ("OC", oc));
        check_dims(k, T::PRECISION, n, c, oc, aux_ld)?;
        if n == 0 || oc == 0 {
            return Ok(());
        }
        if c == 0 {
            bail!("{k}: C must be positive");
        }
        let s = &self.stream;
        let d_out = ptr_mut(s, out);
        let d_pre = pre_gelu.map(|v| ptr_mut(s, v));
        let (d_inp, d_w) = (ptr(s, inp), ptr(s, weight));
        let d_bias = bias.map(|v| ptr(s, v));
        check_aligned16(k, out_name, d_out)?;
        if let Some(p) = d_pre {
            check_aligned16(k, "pre_gelu", p)?;
        }
        for (what, p) in [("inp", d_inp), ("weight", d_w)] {
            check_aligned16(k, what, p)?;
        }
        if let Some(p) = d_bias {
            check_aligned16(k, "bias", p)?;
        }
        // out^T (OC x BT, ld OC) = op_T(weight: C x OC, ld C) . inp^T (C x BT, ld C) + bias; the
        // GELU aux (pre_gelu^T, OC x BT) has leading dimension OC.
        let plan = gemm_plan::lt_forward(n, c, oc, d_bias.is_some(), d_pre.is_some());
        let p = product(k, &plan, |op| match op {
            Weight => Some(d_w),
            Inp => Some(d_inp),
            Out => Some(d_out),
            Bias => d_bias,
            PreGelu => d_pre,
            _ => None,
        })?;
        self.lt_matmul::<T>(k, &p)
    }

    /// The device address of the bias gradient's ones vector in T, at least `n` long. A longer
    /// one is made when needed; the shorter ones are kept, never freed, since a captured CUDA graph
    /// (`gpu::graphs`) may still hold their addresses.
    fn lt_ones<T: DeviceFloat>(&self, kernel: &str, n: usize) -> Result<u64> {
        let mut ones = self
            .lt
            .ones
            .lock()
            .map_err(|_| anyhow!("{kernel}: the cuBLASLt ones cache is poisoned"))?;
        let made = ones.entry(T::PRECISION).or_default();
        let bytes = n * size_of::<T>();
        if made.last().is_none_or(|o| o.len() < bytes) {
            let host = vec![T::from_f32(1.0); n];
            // SAFETY: T is f32 or bf16: plain bytes, no padding; the slice covers exactly the
            // vector's n * size_of::<T>() bytes, alive until the copy below returns.
            let host_bytes =
                unsafe { std::slice::from_raw_parts(host.as_ptr() as *const u8, bytes) };
            let dev = self
                .upload(host_bytes)
                .with_context(|| format!("{kernel}: uploading the ones vector"))?;
            made.push(dev);
        }
        let longest = made.last().expect("a ones vector was just made");
        Ok(ptr(&self.stream, longest))
    }

    /// dinp (B,T,C) = (or += when `accumulate`) dout . weight; dweight (OC,C) += dout^T . inp
    /// (ACCUMULATES); dbias (OC) += dout summed over B*T (ACCUMULATES; optional; a product with a
    /// ones vector, see the file doc), all through cuBLASLt.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_lt<T: DeviceFloat>(
        &self,
        dinp: &mut CudaViewMut<'_, T>,          // (B, T, C)
        accumulate: bool,                       // dinp += (true) or = (false)
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
        let k = "matmul_backward_lt";
        let dinp = (dinp, "dinp", accumulate);
        self.backward_lt(
            k, dinp, dweight, dbias, dout, inp, weight, None, b, t, c, oc,
        )
    }

    /// The GELU-fused backward of a matmul whose input was gelu(pre_gelu):
    /// dpre (B,T,C) = (dout . weight) * gelu'(pre_gelu) (OVERWRITES: cuBLASLt's `DGELU` epilogue
    /// takes beta 0), i.e. this matmul's dinp followed by `gelu_backward` into a zeroed buffer;
    /// dweight (OC,C) += dout^T . inp (ACCUMULATES; inp = gelu(pre_gelu), the forward's input);
    /// dbias (OC) += dout summed over B*T (ACCUMULATES; optional). C must be a multiple of 8 (the
    /// aux leading dimension).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_dgelu_lt<T: DeviceFloat>(
        &self,
        dpre: &mut CudaViewMut<'_, T>,          // (B, T, C)
        dweight: &mut CudaViewMut<'_, T>,       // (OC, C)
        dbias: Option<&mut CudaViewMut<'_, T>>, // (OC)
        dout: &CudaView<'_, T>,                 // (B, T, OC)
        inp: &CudaView<'_, T>,                  // (B, T, C)
        weight: &CudaView<'_, T>,               // (OC, C)
        pre_gelu: &CudaView<'_, T>,             // (B, T, C)
        b: usize,
        t: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let k = "matmul_backward_dgelu_lt";
        let dpre = (dpre, "dpre", false);
        let pre = Some(pre_gelu);
        self.backward_lt(k, dpre, dweight, dbias, dout, inp, weight, pre, b, t, c, oc)
    }

    /// `matmul_backward_lt` and, with `pre_gelu`, `matmul_backward_dgelu_lt`: the checks of both,
    /// then the input-gradient product (`dinp`: the buffer, its name in errors, whether it
    /// accumulates) and the weight and bias gradients.
    #[allow(clippy::too_many_arguments)]
    fn backward_lt<T: DeviceFloat>(
        &self,
        kernel: &str,
        (dinp, dinp_name, accumulate): (&mut CudaViewMut<'_, T>, &str, bool), // (B, T, C)
        dweight: &mut CudaViewMut<'_, T>,                                     // (OC, C)
        dbias: Option<&mut CudaViewMut<'_, T>>,                               // (OC)
        dout: &CudaView<'_, T>,                                               // (B, T, OC)
        inp: &CudaView<'_, T>,                                                // (B, T, C)
        weight: &CudaView<'_, T>,                                             // (OC, C)
        pre_gelu: Option<&CudaView<'_, T>>,                                   // (B, T, C)
        b: usize,
        t: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let k = kernel;
        let n = b * t;
        check_len(k, dinp_name, dinp.len(), n * c, "B*T*C")?;
        check_len(k, "dweight", dweight.len(), oc * c, "OC*C")?;
        if let Some(dbias) = &dbias {
            check_len(k, "dbias", dbias.len(), oc, "OC")?;
        }
        check_len(k, "dout", dout.len(), n * oc, "B*T*OC")?;
        check_len(k, "inp", inp.len(), n * c, "B*T*C")?;
        check_len(k, "weight", weight.len(), oc * c, "OC*C")?;
        if let Some(pre) = pre_gelu {
            check_len(k, "pre_gelu", pre.len(), n * c, "B*T*C")?;
        }
        let aux_ld = pre_gelu.map(|_| ("C", c));
        check_dims(k, T::PRECISION, n, c, oc, aux_ld)?;
        if oc == 0 && !accumulate && n * c > 0 {
            match pre_gelu {
                Some(_) => bail!(
                    "{k}: OC must be positive (dpre would be all zeros, which DGELU cannot write)"
                ),
                None => bail!("{k}: OC must be positive to overwrite dinp (it would be all zeros)"),
            }
        }
        if n == 0 || oc == 0 || c == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let d_dinp = ptr_mut(s, dinp);
        let (d_dout, d_inp, d_w) = (ptr(s, dout), ptr(s, inp), ptr(s, weight));
        let d_pre = pre_gelu.map(|v| ptr(s, v));
        for (what, p) in [
            (dinp_name, d_dinp),
            ("dout", d_dout),
            ("inp", d_inp),
            ("weight", d_w),
        ] {
            check_aligned16(k, what, p)?;
        }
        if let Some(p) = d_pre {
            check_aligned16(k, "pre_gelu", p)?;
        }
        let d_dw = ptr_mut(s, dweight);
        check_aligned16(k, "dweight", d_dw)?;
        let d_db = match dbias {
            Some(v) => {
                let p = ptr_mut(s, v);
                check_aligned16(k, "dbias", p)?;
                Some(p)
            }
            None => None,
        };
        self.lt_dinp::<T>(k, d_dinp, accumulate, d_dout, d_w, d_pre, n, c, oc)?;
        self.lt_dweight_dbias::<T>(k, d_dw, d_db, d_dout, d_inp, n, c, oc)
    }

    /// dinp^T (C x BT, ld C) = [beta dinp^T +] weight (C x OC, ld C) . dout^T (OC x BT, ld OC);
    /// with `aux` (pre_gelu^T, C x BT, ld C) the DGELU epilogue multiplies by gelu'(aux), beta 0.
    #[allow(clippy::too_many_arguments)]
    fn lt_dinp<T: DeviceFloat>(
        &self,
        kernel: &str,
        d_dinp: u64,
        accumulate: bool,
        d_dout: u64,
        d_w: u64,
        aux: Option<u64>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let plan = gemm_plan::lt_dinp(n, c, oc, accumulate, aux.is_some());
        let p = product(kernel, &plan, |op| match op {
            Weight => Some(d_w),
            Dout => Some(d_dout),
            Dinp => Some(d_dinp),
            PreGelu => aux,
            _ => None,
        })?;
        self.lt_matmul::<T>(kernel, &p)
    }

    /// dweight^T (C x OC, ld C) += inp^T (C x BT, ld C) . op_T(dout^T: OC x BT, ld OC); then, with
    /// dbias, dbias (OC x 1) += dout^T (OC x BT, ld OC) . ones (BT x 1).
    #[allow(clippy::too_many_arguments)]
    fn lt_dweight_dbias<T: DeviceFloat>(
        &self,
        kernel: &str,
        d_dw: u64,
        d_db: Option<u64>,
        d_dout: u64,
        d_inp: u64,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let plan = gemm_plan::matmul_backward_dweight(n, c, oc);
        let p = product(kernel, &plan, |op| match op {
            Inp => Some(d_inp),
            Dout => Some(d_dout),
            Dweight => Some(d_dw),
            _ => None,
        })?;
        self.lt_matmul::<T>(kernel, &p)?;
        if let Some(d_db) = d_db {
            // ones vectors are never freed while the Gpu lives: the address stays valid
            let d_ones = self.lt_ones::<T>(kernel, n)?;
            check_aligned16(kernel, "the ones vector", d_ones)?;
            let plan = gemm_plan::lt_dbias(n, oc);
            let p = product(kernel, &plan, |op| match op {
                Dout => Some(d_dout),
                Ones => Some(d_ones),
                Dbias => Some(d_db),
                _ => None,
            })?;
            self.lt_matmul::<T>(kernel, &p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_rules() {
        let k = "matmul_forward_gelu_lt";
        assert!(check_dims(k, Precision::Fp32, 74, 100, 131, None).is_ok());
        assert!(check_dims(k, Precision::Bf16, 74, 64, 192, Some(("OC", 192))).is_ok());
        let e = check_dims(k, Precision::Bf16, 74, 100, 192, None).unwrap_err();
        assert_eq!(
            format!("{e}"),
            "matmul_forward_gelu_lt: in bf16 C must be a multiple of 8 (whole 16-byte rows for \
             the tensor cores), got 100"
        );
        let e = check_dims(k, Precision::Bf16, 74, 64, 131, None).unwrap_err();
        assert!(
            format!("{e}").contains("in bf16 OC must be a multiple of 8"),
            "{e}"
        );
        let e = check_dims(k, Precision::Fp32, 74, 64, 131, Some(("OC", 131))).unwrap_err();
        assert!(
            format!("{e}").contains("aux leading dimension (OC = 131) must be a multiple of 8"),
            "{e}"
        );
        let e = check_dims(k, Precision::Fp32, 1 << 31, 64, 64, None).unwrap_err();
        assert!(
            format!("{e}").contains("B*T = 2147483648 does not fit"),
            "{e}"
        );
    }

    #[test]
    fn alignment_rule() {
        assert!(check_aligned16("matmul_forward_lt", "inp", 0x7f00_0000_0100).is_ok());
        let e = check_aligned16("matmul_forward_lt", "inp", 0x7f00_0000_0104).unwrap_err();
        assert!(
            format!("{e}").starts_with("matmul_forward_lt: inp is not 16-byte aligned"),
            "{e}"
        );
    }
}
