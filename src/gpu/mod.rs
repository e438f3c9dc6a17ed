//! The CUDA engine: hand-written kernels (`kernels/*.cu`, compiled to PTX by build.rs) and cuBLAS,
//! driven through cudarc. [`Gpu`] owns the context, the stream, the cuBLAS handle and every kernel
//! (loaded once, at start-up); its launchers carry the CPU twins' names and argument order
//! (`crate::cpu::*`), with device views in place of slices, and return `anyhow::Result`s that name
//! the kernel. As on the CPU, backward launchers ACCUMULATE into gradient outputs, except where a
//! launcher's doc says otherwise (attention's `datt`/`dpreatt` scratch, the fused classifier).
//!
//! Everything that needs the PTX exists only in builds with `--cfg has_cuda` (nvcc was found when
//! the crate was built; see build.rs). Without it, [`Gpu::new`] still exists and returns an error
//! that says how to get a CUDA build. Where the crate has kernels but the machine has no GPU (or
//! no CUDA driver library), [`Gpu::new`] returns a "no CUDA GPU available: ..." error, never a panic.
//!
//! Files: `context.rs` (Gpu, start-up, upload/download), then one file per layer family, as in
//! `cpu/`: encoder, layernorm, matmul, attention (and flash_attention, the fused causal attention), gelu, residual, classifier, adamw (with the
//! global norm); `model/` composes them into GPT-2 ([`Gpt2Gpu`], the CUDA `Engine`: its forward pass, backward pass and footprint in files of their own). `ptx.rs`
//! embeds the PTX. `nvtx.rs`: NVTX ranges for Nsight Systems (in every build; no-ops without the
//! NVTX headers); `profile.rs`: the CUDA-event timing behind `--profile`. `launch.rs` (the kernels' launch
//! geometry) and `gemm_plan.rs` (the cuBLAS/cuBLASLt products' parameters) are plain numbers,
//! compiled in every build and checked on the CPU (`tests/emulated_kernels.rs`,
//! `tests/gemm_plans.rs`).

/// Whether this build has the CUDA kernels (nvcc was found when it was built).
pub const HAS_CUDA: bool = cfg!(has_cuda);

/// Whether a GPU could run here at all: this build has the kernels and the CUDA driver library
/// loads (a device may still be missing). Without either, `--device auto` runs on the CPU.
pub fn may_have_a_gpu() -> bool {
    // SAFETY: only tries to dlopen the driver library under its usual names.
    HAS_CUDA && unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The nvcc that compiled the kernels (the PTX test finds ptxas next to it); None without CUDA.
pub const BUILD_NVCC: Option<&str> = option_env!("TRAIN_GPT2_NVCC");

/// nvcc's "Cuda compilation tools, release ..." line; None without CUDA.
pub const NVCC_VERSION: Option<&str> = option_env!("TRAIN_GPT2_NVCC_VERSION");

/// The virtual architecture the PTX targets (e.g. `compute_80`); None without CUDA.
pub const CUDA_ARCH: Option<&str> = option_env!("TRAIN_GPT2_CUDA_ARCH");

#[cfg(has_cuda)]
mod adamw;
#[cfg(has_cuda)]
mod attention;
#[cfg(has_cuda)]
mod classifier;
#[cfg(has_cuda)]
mod context;
#[cfg(has_cuda)]
mod encoder;
#[cfg(has_cuda)]
pub mod flash_attention;
#[cfg(has_cuda)]
pub mod float;
#[cfg(has_cuda)]
mod fused_residual_layernorm;
#[cfg(has_cuda)]
mod gelu;
pub mod gemm_plan;
#[cfg(has_cuda)]
mod graphs;
pub mod launch;
#[cfg(has_cuda)]
mod layernorm;
#[cfg(has_cuda)]
mod matmul;
#[cfg(has_cuda)]
mod matmul_lt;
#[cfg(has_cuda)]
mod model;
pub mod nvtx;
#[cfg(has_cuda)]
mod profile;
#[cfg(has_cuda)]
pub mod ptx;
#[cfg(has_cuda)]
mod residual;

#[cfg(has_cuda)]
pub use adamw::adamw_params;
#[cfg(has_cuda)]
pub use attention::{attention_backward_scratch_len, attention_forward_scratch_len};
#[cfg(has_cuda)]
pub use context::Gpu;
#[cfg(has_cuda)]
pub use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
#[cfg(has_cuda)]
pub use flash_attention::{flash_attention_backward_scratch_len, FLASH_ATTENTION_HEAD_SIZES};
#[cfg(has_cuda)]
pub use float::DeviceFloat;
#[cfg(has_cuda)]
pub use model::{Gpt2Gpu, ModelFloat, ModelOptions};

/// The AdamW coefficients shared with `kernels/adamw.cu` (bindgen of `kernels/common.h`).
#[cfg(has_cuda)]
pub mod common {
    #![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
    include!(concat!(env!("OUT_DIR"), "/common.rs"));
}

/// The error every GPU entry point gives in a build without kernels.
pub const NO_CUDA_BUILD: &str = "this build has no CUDA kernels: nvcc was not found when it was \
     built; run tools/setup-cuda.sh (installs nvcc 13.0 from PyPI) and rebuild, or set NVCC or \
     CUDA_HOME";

/// The CUDA engine in a build without kernels: it cannot be created.
#[cfg(not(has_cuda))]
#[derive(Debug)]
pub struct Gpu {
    _private: (),
}

#[cfg(not(has_cuda))]
impl Gpu {
    /// Always an error: this build has no kernels (see [`NO_CUDA_BUILD`]).
    pub fn new() -> anyhow::Result<Gpu> {
        anyhow::bail!("{NO_CUDA_BUILD}")
    }

    /// Always an error: this build has no kernels (see [`NO_CUDA_BUILD`]).
    pub fn new_on(_ordinal: usize) -> anyhow::Result<Gpu> {
        anyhow::bail!("{NO_CUDA_BUILD}")
    }
}
