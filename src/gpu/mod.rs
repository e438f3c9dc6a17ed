//! The CUDA engine (placeholder until the kernels land).

/// Whether a CUDA GPU can be used by this build on this machine.
pub fn cuda_available() -> anyhow::Result<()> {
    anyhow::bail!("this build has no CUDA engine")
}
