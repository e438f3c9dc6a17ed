//! [`Gpu`]: the CUDA context, its stream, the cuBLAS and cuBLASLt handles and every kernel, set up
//! once; plus host <-> device copies and the small checks every launcher shares.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::{sys as cublas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaViewMut, DevicePtr,
    DevicePtrMut, DeviceRepr, DriverError, LaunchConfig, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::launch::{self, FlashQueries};
use super::matmul_lt::CublasLt;
use super::ptx::{self, PtxFile};

/// Declares [`Kernels`], one `CudaFunction` field per kernel, and its loader: one module per
/// kernel file, each function looked up by its `extern "C"` name.
macro_rules! kernels {
    ($($file:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        /// Every kernel, by its name in `kernels/*.cu`.
        pub(super) struct Kernels {
            $($(pub(super) $name: CudaFunction,)*)*
        }

        impl Kernels {
            fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
                $(
                    let module = load_module(ctx, &ptx::$file)?;
                    $(let $name = load_function(&module, &ptx::$file, stringify!($name))?;)*
                )*
                Ok(Kernels { $($($name,)*)* })
            }
        }
    };
}

kernels! {
    ADAMW: [adamw_kernel, adamw_mixed_kernel],
    ATTENTION: [
        attention_permute,
        attention_permute_bf16,
        attention_permute_backward,
        attention_permute_backward_bf16,
        attention_unpermute,
        attention_unpermute_bf16,
        attention_unpermute_backward,
        attention_unpermute_backward_bf16,
        attention_softmax_forward,
        attention_softmax_forward_bf16,
        attention_softmax_backward,
        attention_softmax_backward_bf16,
    ],
    CLASSIFIER: [fused_classifier, fused_classifier_bf16],
    ENCODER: [
        encoder_forward,
        encoder_forward_bf16,
        encoder_backward_wpe,
        encoder_backward_wpe_bf16,
        encoder_backward_wte,
        encoder_backward_wte_bf16,
    ],
    FLASH_ATTENTION: [
        flash_attention_forward_hs64,
        flash_attention_forward_hs64_bf16,
        flash_attention_forward_hs64_bf16_q32,
        flash_attention_forward_hs128,
        flash_attention_forward_hs128_bf16,
        flash_attention_backward_d,
        flash_attention_backward_d_bf16,
        flash_attention_backward_dkdv_hs64,
        flash_attention_backward_dkdv_hs64_bf16,
        flash_attention_backward_dkdv_hs128,
        flash_attention_backward_dkdv_hs128_bf16,
        flash_attention_backward_dq_hs64,
        flash_attention_backward_dq_hs64_bf16,
        flash_attention_backward_dq_hs64_bf16_q32,
        flash_attention_backward_dq_hs128,
        flash_attention_backward_dq_hs128_bf16,
    ],
    GELU: [
        gelu_forward,
        gelu_forward_bf16,
        gelu_backward,
        gelu_backward_bf16,
    ],
    GLOBAL_NORM: [
        global_norm_partial,
        global_norm_partial_bf16,
        global_norm_final,
    ],
    FUSED_RESIDUAL_LAYERNORM: [residual_layernorm_forward, residual_layernorm_forward_bf16],
    LAYERNORM: [
        layernorm_forward,
        layernorm_forward_bf16,
        layernorm_backward_dinp,
        layernorm_backward_dinp_bf16,
        layernorm_backward_params_partial,
        layernorm_backward_params_partial_bf16,
        layernorm_backward_params_reduce,
        layernorm_backward_params_reduce_bf16,
    ],
    MATMUL: [
        add_bias,
        add_bias_bf16,
        bias_backward_partial,
        bias_backward_partial_bf16,
        column_sum_reduce,
        column_sum_reduce_bf16,
    ],
    RESIDUAL: [
        residual_forward,
        residual_forward_bf16,
        residual_backward,
        residual_backward_bf16,
    ],
}

fn load_module(ctx: &Arc<CudaContext>, f: &PtxFile) -> Result<Arc<CudaModule>> {
    let text = f.text().map_err(|e| anyhow!(e))?;
    ctx.load_module(Ptx::from_src(text)).with_context(|| {
        format!(
            "loading the PTX of {} failed (built for {} by nvcc {}): the driver may be older than \
             that nvcc, or the GPU older than that architecture",
            f.file,
            super::CUDA_ARCH.unwrap_or("?"),
            super::NVCC_VERSION.unwrap_or("?"),
        )
    })
}

fn load_function(module: &Arc<CudaModule>, f: &PtxFile, name: &str) -> Result<CudaFunction> {
    module
        .load_function(name)
        .with_context(|| format!("kernel {name} not found in the PTX of {}", f.file))
}

/// Runs `f`, turning a panic (cudarc panics when a driver symbol is missing, e.g. a driver older
/// than CUDA 13) into an error.
fn no_panic<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(anyhow!("{e}")),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(anyhow!("{msg}"))
        }
    }
}

/// Keeps the memory freed on the stream (the launchers' scratch, `Gpu::scratch`) in the device's
/// pool for the next step, rather than giving it back to the system at every synchronize (the
/// pool's default release threshold, 0): a step launched eagerly (`--no-cuda-graphs`,
/// `--profile`) would otherwise map its scratch afresh each time.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool = std::ptr::null_mut();
    // SAFETY: writes the device's default pool handle into `pool`.
    let rc = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        bail!("cuDeviceGetDefaultMemPool failed: {rc:?}");
    }
    let mut threshold = u64::MAX;
    // SAFETY: the pool is the device's (it lives as long as the device); the attribute's value
    // is a u64 (cuuint64_t), read during the call.
    let rc = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    };
    if rc != sys::CUresult::CUDA_SUCCESS {
        bail!("setting the memory pool's release threshold failed: {rc:?}");
    }
    Ok(())
}

/// The CUDA engine: one device, one stream, one cuBLAS handle, every kernel loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    /// cuBLAS's workspace (`cublasSetWorkspace`), held as long as the handle: see `Gpu::new_on`.
    _blas_workspace: CudaSlice<u8>,
    /// cuBLASLt: handle, workspace, chosen algorithms (`matmul_lt.rs`).
    pub(super) lt: CublasLt,
    pub(super) k: Kernels,
    tf32: bool,
    /// queries a warp of the bf16 HS 64 flash attention forward and dQ (`launch::FlashQueries::ENV`)
    pub(super) flash_queries: FlashQueries,
}

impl Gpu {
    /// The engine on device 0. See [`Gpu::new_on`].
    pub fn new() -> Result<Gpu> {
        Gpu::new_on(0)
    }

    /// The engine on device `ordinal`: creates the context and a stream, loads cuBLAS and every
    /// kernel. Errors (never panics) when there is no driver, no device, no cuBLAS, or the PTX
    /// does not load; a missing GPU gives an error starting with "no CUDA GPU available".
    pub fn new_on(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only tries to dlopen the driver library under its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!(
                "no CUDA GPU available: the CUDA driver library (libcuda.so) could not be loaded; \
                 is the NVIDIA driver installed?"
            );
        }
        let count = no_panic(CudaContext::device_count)
            .map_err(|e| anyhow!("no CUDA GPU available: the CUDA driver failed: {e}"))?;
        if count <= 0 {
            bail!("no CUDA GPU available: the CUDA driver sees no device");
        }
        if ordinal >= count as usize {
            bail!("no CUDA GPU available: device {ordinal} requested, the driver sees {count}");
        }
        let ctx = no_panic(|| CudaContext::new(ordinal)).map_err(|e| {
            anyhow!("no CUDA GPU available: could not open CUDA device {ordinal}: {e}")
        })?;
        // SAFETY: called before any buffer exists. The engine runs everything on its one stream,
        // so there is no cross-stream use for cudarc's per-buffer events to order.
        unsafe { ctx.disable_event_tracking() };
        if ctx.has_async_alloc() {
            keep_freed_memory(&ctx)?;
        }
        let stream = ctx
            .new_stream()
            .context("creating the CUDA stream failed")?;
        // SAFETY: only tries to dlopen libcublas under its usual names.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!(
                "cuBLAS could not be loaded (libcublas.so.13 not found): install the CUDA 13 \
                 cuBLAS (e.g. `pip install nvidia-cublas` and add its lib folder to \
                 LD_LIBRARY_PATH)"
            );
        }
        let blas = no_panic(|| CudaBlas::new(stream.clone()))
            .context("creating the cuBLAS handle failed")?;
        // cuBLAS's workspace, ours rather than its own: the same memory for a product launched
        // eagerly and one captured in a CUDA graph (where cuBLAS would otherwise allocate one per
        // graph), as cuBLASLt has (`matmul_lt::WORKSPACE_BYTES`, the size NVIDIA recommends)
        // SAFETY: uninitialised bytes are fine for a workspace, which cuBLAS only writes first.
        let blas_workspace = unsafe { stream.alloc::<u8>(super::matmul_lt::WORKSPACE_BYTES) }
            .context("allocating the cuBLAS workspace failed")?;
        {
            let (ptr, _record) = blas_workspace.device_ptr(&stream);
            // SAFETY: the handle is live; the workspace is a device allocation of the size given,
            // kept (in the Gpu) as long as the handle.
            let status = unsafe {
                cublas_sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    super::matmul_lt::WORKSPACE_BYTES,
                )
            };
            if status != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                bail!("cublasSetWorkspace failed: {status:?}");
            }
        }
        // SAFETY: only tries to dlopen libcublasLt under its usual names.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            bail!(
                "cuBLASLt could not be loaded (libcublasLt.so.13 not found): install the CUDA 13 \
                 cuBLAS (e.g. `pip install nvidia-cublas` and add its lib folder to \
                 LD_LIBRARY_PATH)"
            );
        }
        let lt =
            no_panic(|| CublasLt::new(&stream)).context("creating the cuBLASLt handle failed")?;
        let flash_queries = FlashQueries::parse(std::env::var(FlashQueries::ENV).ok().as_deref())
            .map_err(|e| anyhow!(e))?;
        let k = Kernels::load(&ctx)?;
        let mut gpu = Gpu {
            ctx,
            stream,
            blas,
            _blas_workspace: blas_workspace,
            lt,
            k,
            tf32: false,
            flash_queries,
        };
        gpu.set_tf32(false)?;
        Ok(gpu)
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> Result<String> {
        self.ctx.name().context("querying the device name failed")
    }

    /// The device's compute capability (major, minor).
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.ctx
            .compute_capability()
            .context("querying the compute capability failed")
    }

    /// The device memory's peak bandwidth in GB/s, from the memory clock and bus width the
    /// driver reports (None when it reports neither).
    pub fn peak_bandwidth_gbps(&self) -> Option<f64> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let clock = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            .ok()?;
        let bus = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            .ok()?;
        crate::mfu::peak_bandwidth_gbps(clock, bus)
    }

    /// The context (for allocations beyond the helpers here).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launcher runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether the cuBLAS matmuls may use TF32 tensor cores (10-bit mantissa inputs).
    pub fn tf32(&self) -> bool {
        self.tf32
    }

    /// Queries a warp of the bf16 HS 64 flash attention forward and dQ kernels (from
    /// `TRAIN_GPT2_FLASH_QUERIES` at start-up; see [`FlashQueries`]).
    pub fn flash_queries(&self) -> FlashQueries {
        self.flash_queries
    }

    /// Chooses the queries a warp (16 or 32) of the bf16 HS 64 flash attention forward and dQ.
    pub fn set_flash_queries(&mut self, q: FlashQueries) {
        self.flash_queries = q;
    }

    /// Lets cuBLAS use TF32 tensor cores for the fp32 matmuls (`CUBLAS_TF32_TENSOR_OP_MATH`), or
    /// not (full fp32: the default, what the CPU comparison needs). Off, the mode is
    /// `CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION` (the default math plus that flag, which
    /// changes nothing for fp32 gemms, whose output type is the compute type): the bf16 gemms
    /// (fp32 compute) then also keep split-K partial sums in fp32 rather than bf16. The Rust enum
    /// cannot carry TF32 and the flag together, so with TF32 on cuBLAS may reduce bf16 gemms'
    /// partial sums in bf16.
    pub fn set_tf32(&mut self, on: bool) -> Result<()> {
        let mode = if on {
            cublas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublas_sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
        };
        // SAFETY: the handle is live (owned by self.blas); the call only sets a mode flag on it.
        let status = unsafe { cublas_sys::cublasSetMathMode(*self.blas.handle(), mode) };
        if status != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            bail!("cublasSetMathMode({mode:?}) failed: {status:?}");
        }
        self.tf32 = on;
        Ok(())
    }

    /// Waits for every launched kernel and copy; reports any asynchronous error (a kernel fault
    /// surfaces here, not at its launch).
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .context("CUDA error while running the GPU work queued on the stream")
    }

    /// A new device buffer holding a copy of `host`.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .with_context(|| format!("copying {} elements to the GPU failed", host.len()))
    }

    /// Copies `host` into the device buffer `dst` (same length).
    pub fn upload_into<T: DeviceRepr>(
        &self,
        host: &[T],
        dst: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        if host.len() != dst.len() {
            bail!(
                "upload_into: host has {} elements, the device buffer {}",
                host.len(),
                dst.len()
            );
        }
        self.stream
            .memcpy_htod(host, dst)
            .with_context(|| format!("copying {} elements to the GPU failed", host.len()))
    }

    /// A host copy of a device buffer (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, dev: &impl DevicePtr<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .with_context(|| format!("copying {} elements from the GPU failed", dev.len()))
    }

    /// A new zero-filled device buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(n)
            .with_context(|| format!("allocating {n} elements on the GPU failed"))
    }

    /// Sets a device buffer to zero (all bits zero: +0.0 in f32 and bf16).
    pub fn memset_zero<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        dst: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        self.stream
            .memset_zeros(dst)
            .context("zero-filling a GPU buffer failed")
    }

    /// A scratch buffer of `n` floats, stream-ordered (freed on the stream when dropped). Its
    /// contents are undefined: every launcher that takes one writes each element before reading.
    pub(super) fn scratch(&self, kernel: &str, n: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: the memory is uninitialised, but the callers write every element before any read
        // (each caller's kernels cover the whole buffer).
        unsafe { self.stream.alloc::<f32>(n) }
            .with_context(|| format!("{kernel}: allocating {n} floats of scratch failed"))
    }
}

/// `x` as a kernel's int argument, or an error naming the kernel and the dimension.
pub(super) fn dim(kernel: &str, what: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow!("{kernel}: {what} = {x} does not fit a 32-bit int"))
}

/// A view's device address.
pub(super) fn ptr<T>(stream: &CudaStream, v: &impl DevicePtr<T>) -> u64 {
    v.device_ptr(stream).0
}

/// A mutable view's device address.
pub(super) fn ptr_mut<T>(stream: &CudaStream, v: &mut impl DevicePtrMut<T>) -> u64 {
    v.device_ptr_mut(stream).0
}

/// An error unless the device address `ptr` of `what` is 16-byte aligned, as the kernels' 128-bit
/// loads and cuBLASLt's vectorised kernels want.
pub(super) fn check_aligned16(kernel: &str, what: &str, ptr: u64) -> Result<()> {
    if !ptr.is_multiple_of(16) {
        bail!(
            "{kernel}: {what} is not 16-byte aligned (device address {ptr:#x}): pass a view that \
             starts at a multiple of 16 bytes"
        );
    }
    Ok(())
}

/// An error unless the buffer `what` has exactly `expected` elements.
pub(super) fn check_len(
    kernel: &str,
    what: &str,
    len: usize,
    expected: usize,
    shape: &str,
) -> Result<()> {
    if len != expected {
        bail!("{kernel}: {what} has {len} elements, expected {shape} = {expected}");
    }
    Ok(())
}

impl From<launch::Grid> for LaunchConfig {
    fn from(g: launch::Grid) -> LaunchConfig {
        LaunchConfig {
            grid_dim: g.grid,
            block_dim: g.block,
            shared_mem_bytes: g.shared_bytes,
        }
    }
}

/// [`launch::grid_stride`] as a cudarc launch.
pub(super) fn grid_stride(n: usize) -> LaunchConfig {
    launch::grid_stride(n).into()
}

/// [`launch::grid_1d`] as a cudarc launch.
pub(super) fn grid_1d(blocks: usize, threads: u32) -> LaunchConfig {
    launch::grid_1d(blocks, threads).into()
}

/// A launch result with the kernel named in its error.
pub(super) fn launched<T>(kernel: &str, r: Result<T, DriverError>) -> Result<()> {
    r.map(|_| ())
        .map_err(|e| anyhow!("{kernel} launch failed: {e}"))
}
