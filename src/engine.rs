//! What the trainer, the sampler and `verify` need from a GPT-2 implementation, so that the CPU
//! reference and the CUDA engine are driven by the same code. Host-side vectors cross this
//! boundary only where a user needs numbers (the loss, a gradient norm, logits to sample from,
//! checkpoints and verification).

use crate::config::GPT2Config;
use crate::cpu::adamw::AdamW;
use crate::cpu::model::Gpt2Cpu;
use anyhow::Result;

pub trait Engine {
    /// The model's dimensions.
    fn config(&self) -> &GPT2Config;
    /// A line naming the device, e.g. "cpu (2 threads)".
    fn describe(&self) -> String;
    /// Forward pass on inputs (B, T); with targets, returns the mean loss.
    fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<f32>>;
    /// Zeroes the parameter gradients.
    fn zero_grad(&mut self) -> Result<()>;
    /// Adds the gradient of loss_scale * (the last forward's mean loss) to the gradients.
    fn backward(&mut self, loss_scale: f32) -> Result<()>;
    /// The global L2 norm of the gradients.
    fn grad_norm(&mut self) -> Result<f32>;
    /// One AdamW step (step from 1), gradients multiplied by grad_scale first.
    fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) -> Result<()>;
    /// The parameters, on the host, in checkpoint order.
    fn params(&mut self) -> Result<Vec<f32>>;
    /// The parameter gradients, on the host, in checkpoint order.
    fn grads(&mut self) -> Result<Vec<f32>>;
    /// The logits (B, T, Vp) of the last forward (call before backward).
    fn logits(&mut self) -> Result<Vec<f32>>;
    /// The logits (Vp) at batch row `bi`, position `ti` of the last forward.
    fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>>;
    /// The device's peak TFLOP/s in the precision in use, when known (for MFU).
    fn peak_tflops(&self) -> Option<f64> {
        None
    }
    /// The most memory this engine has held on its device, in bytes, when known.
    fn peak_memory_bytes(&self) -> Option<u64> {
        None
    }
    /// How `--profile` times this engine's kernel families (e.g. "CUDA events around each
    /// kernel-family call"), or None when it cannot (the default: the other profile methods are
    /// then no-ops).
    fn profile_method(&self) -> Option<&'static str> {
        None
    }
    /// Starts timing one step's kernel families: from here to `profile_step_end`.
    fn profile_step_begin(&mut self) -> Result<()> {
        Ok(())
    }
    /// Ends the step begun by `profile_step_begin` (waits for the device) and adds its times to
    /// the totals.
    fn profile_step_end(&mut self) -> Result<()> {
        Ok(())
    }
    /// The totals of the steps profiled so far; None when the engine cannot profile.
    fn profile(&self) -> Option<crate::profile::Profile> {
        None
    }
}

impl Engine for Gpt2Cpu {
    fn config(&self) -> &GPT2Config {
        &self.config
    }
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<f32>> {
        Gpt2Cpu::forward(self, inputs, targets, b, t)
    }
    fn zero_grad(&mut self) -> Result<()> {
        Gpt2Cpu::zero_grad(self);
        Ok(())
    }
    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        Gpt2Cpu::backward(self, loss_scale);
        Ok(())
    }
    fn grad_norm(&mut self) -> Result<f32> {
        Ok(Gpt2Cpu::grad_norm(self))
    }
    fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) -> Result<()> {
        Gpt2Cpu::update(self, hp, step, grad_scale);
        Ok(())
    }
    fn params(&mut self) -> Result<Vec<f32>> {
        Ok(self.params.clone())
    }
    fn grads(&mut self) -> Result<Vec<f32>> {
        Ok(self.grads.clone())
    }
    fn logits(&mut self) -> Result<Vec<f32>> {
        Ok(Gpt2Cpu::logits(self).to_vec())
    }
    fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>> {
        let (t, vp) = (self.t, self.config.padded_vocab_size);
        let row = bi * t + ti;
        Ok(Gpt2Cpu::logits(self)[row * vp..(row + 1) * vp].to_vec())
    }
    fn peak_memory_bytes(&self) -> Option<u64> {
        host_peak_rss_bytes()
    }
}

/// The process's peak resident memory (VmHWM in /proc/self/status), where Linux reports it.
pub fn host_peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Builds the engine for `device` with the given parameters, its arenas sized for batches up to
/// max_b x max_t. `Device::Auto` takes the GPU when one can be used and the CPU otherwise (with a
/// note on stderr saying why); once a GPU was found, an error in building the GPU engine (e.g. not
/// enough GPU memory) is reported, not replaced by the CPU.
pub fn create_engine(
    device: crate::train::Device,
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
    tf32: bool,
) -> Result<Box<dyn Engine>> {
    use crate::train::Device;
    crate::cpu::model::check_batch(&cfg, max_b, max_t)?;
    match device {
        Device::Cpu => Ok(Box::new(Gpt2Cpu::new(cfg, params, max_b, max_t)?)),
        Device::Cuda => create_gpu_engine(cfg, params, max_b, max_t, tf32),
        Device::Auto => match crate::gpu::Gpu::new() {
            Ok(gpu) => gpu_engine_on(gpu, cfg, params, max_b, max_t, tf32),
            Err(why) => {
                eprintln!("note: running on the CPU ({why:#})");
                Ok(Box::new(Gpt2Cpu::new(cfg, params, max_b, max_t)?))
            }
        },
    }
}

/// The CUDA engine on device 0 (`Gpt2Gpu`), TF32 matmuls on or off; an error when this build has
/// no kernels, the machine no GPU, or the GPU not enough memory.
pub fn create_gpu_engine(
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
    tf32: bool,
) -> Result<Box<dyn Engine>> {
    let gpu = crate::gpu::Gpu::new()?;
    gpu_engine_on(gpu, cfg, params, max_b, max_t, tf32)
}

/// The CUDA engine on `gpu`.
#[cfg(has_cuda)]
fn gpu_engine_on(
    mut gpu: crate::gpu::Gpu,
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
    tf32: bool,
) -> Result<Box<dyn Engine>> {
    gpu.set_tf32(tf32)?;
    Ok(Box::new(crate::gpu::Gpt2Gpu::new(
        gpu, cfg, params, max_b, max_t,
    )?))
}

/// A build without kernels has no `Gpu` to run on (`Gpu::new` always fails there).
#[cfg(not(has_cuda))]
fn gpu_engine_on(
    gpu: crate::gpu::Gpu,
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
    tf32: bool,
) -> Result<Box<dyn Engine>> {
    let _ = (gpu, cfg, params, max_b, max_t, tf32);
    anyhow::bail!("{}", crate::gpu::NO_CUDA_BUILD)
}
