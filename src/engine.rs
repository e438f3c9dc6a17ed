//! What the trainer, the sampler and `verify` need from a GPT-2 implementation, so that the CPU
//! reference and the CUDA engine are driven by the same code. Host-side vectors cross this
//! boundary only where a user needs numbers (the loss, a gradient norm, logits to sample from,
//! checkpoints and verification).

use crate::config::GPT2Config;
use crate::cpu::adamw::AdamW;
use crate::cpu::decode::Decoder;
use crate::cpu::model::Gpt2Cpu;
use crate::precision::Precision;
use anyhow::Result;

/// One of AdamW's arrays (num_parameters f32 each, checkpoint order), in the order a training
/// state (`formats::train_state`) stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerArray {
    /// The first moment.
    M,
    /// The second moment.
    V,
    /// The fp32 master weights of an engine with bf16 weights.
    Master,
}

impl OptimizerArray {
    /// "m", "v" or "master weights", for messages.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerArray::M => "m",
            OptimizerArray::V => "v",
            OptimizerArray::Master => "master weights",
        }
    }
}

/// An error unless `values` holds one value per parameter (`n`).
pub fn check_optimizer_array(which: OptimizerArray, values: &[f32], n: usize) -> Result<()> {
    if values.len() != n {
        anyhow::bail!(
            "AdamW's {} has {} values, the model {n} parameters",
            which.name(),
            values.len()
        );
    }
    Ok(())
}

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
    /// Whether the engine keeps fp32 master weights beside lower-precision weights (bf16).
    fn has_master_weights(&self) -> bool;
    /// One of AdamW's arrays, copied to the host (the master weights: an error for an engine
    /// without them).
    fn optimizer_array(&mut self, which: OptimizerArray) -> Result<Vec<f32>>;
    /// Sets one of AdamW's arrays, to continue a run. Master weights given to an engine without
    /// them become its weights (a bf16 run continued in fp32); an engine with master weights that
    /// is not given them keeps its own: the fp32 parameters it was built with (an fp32 run
    /// continued in bf16).
    fn set_optimizer_array(&mut self, which: OptimizerArray, values: &[f32]) -> Result<()>;
    /// The logits (B, T, Vp) of the last forward (call before backward).
    fn logits(&mut self) -> Result<Vec<f32>>;
    /// The logits (Vp) at batch row `bi`, position `ti` of the last forward.
    fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>>;
    /// The losses (B, T) of the last forward, which must have had targets: each position's
    /// cross-entropy of its target (the mean loss is their mean).
    fn losses(&mut self) -> Result<Vec<f32>>;
    /// A generation cache over this engine's model for contexts of up to `window` tokens, where
    /// the engine has one: the CPU engine (`cpu::decode`, whose logits are the full forward's).
    /// None elsewhere: `sample::generate` then runs a full forward of the context for each token,
    /// which costs the GPU engine little.
    fn decoder(&self, _window: usize) -> Result<Option<Decoder<'_>>> {
        Ok(None)
    }
    /// The precision the engine computes in (the CPU engine: fp32).
    fn precision(&self) -> Precision {
        Precision::Fp32
    }
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
    /// Ends the step begun by `profile_step_begin` without adding it to the totals: a step whose
    /// update was skipped (an outlier), whose times would lack the update's.
    fn profile_step_discard(&mut self) -> Result<()> {
        Ok(())
    }
    /// The totals of the steps profiled so far; None when the engine cannot profile.
    fn profile(&self) -> Option<crate::profile::Profile> {
        None
    }
}

/// The CPU engine's [`Engine::describe`]: "cpu (1 thread)", "cpu (2 threads)".
fn threads_text(n: usize) -> String {
    format!("cpu ({})", crate::text::count(n, "thread", "threads"))
}

impl Engine for Gpt2Cpu {
    fn config(&self) -> &GPT2Config {
        &self.config
    }
    fn describe(&self) -> String {
        threads_text(rayon::current_num_threads())
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
    // (the calls that train allocate training's arenas first, in a model made for inference)
    fn zero_grad(&mut self) -> Result<()> {
        self.prepare_training()?;
        Gpt2Cpu::zero_grad(self);
        Ok(())
    }
    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        self.prepare_training()?;
        Gpt2Cpu::backward(self, loss_scale);
        Ok(())
    }
    fn grad_norm(&mut self) -> Result<f32> {
        self.prepare_training()?;
        Ok(Gpt2Cpu::grad_norm(self))
    }
    fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) -> Result<()> {
        self.prepare_training()?;
        Gpt2Cpu::update(self, hp, step, grad_scale);
        Ok(())
    }
    fn params(&mut self) -> Result<Vec<f32>> {
        Ok(self.params.clone())
    }
    fn grads(&mut self) -> Result<Vec<f32>> {
        self.prepare_training()?;
        Ok(self.grads.clone())
    }
    fn has_master_weights(&self) -> bool {
        Gpt2Cpu::has_master_weights(self)
    }
    fn optimizer_array(&mut self, which: OptimizerArray) -> Result<Vec<f32>> {
        self.prepare_training()?;
        Gpt2Cpu::optimizer_array(self, which)
    }
    fn set_optimizer_array(&mut self, which: OptimizerArray, values: &[f32]) -> Result<()> {
        self.prepare_training()?;
        Gpt2Cpu::set_optimizer_array(self, which, values)
    }
    fn logits(&mut self) -> Result<Vec<f32>> {
        Ok(Gpt2Cpu::logits(self).to_vec())
    }
    fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>> {
        let (t, vp) = (self.t, self.config.padded_vocab_size);
        let row = bi * t + ti;
        Ok(Gpt2Cpu::logits(self)[row * vp..(row + 1) * vp].to_vec())
    }
    fn losses(&mut self) -> Result<Vec<f32>> {
        Gpt2Cpu::losses(self).map(<[f32]>::to_vec)
    }
    fn decoder(&self, window: usize) -> Result<Option<Decoder<'_>>> {
        Decoder::new(self, window).map(Some)
    }
    fn peak_memory_bytes(&self) -> Option<u64> {
        crate::host_memory::peak_rss_bytes()
    }
}

/// Which kernels the CUDA engine runs a layer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernels {
    /// Flash attention, cuBLASLt products with bias and GELU epilogues, residual add fused with
    /// the next layernorm (head sizes 64 and 128, C and Vp multiples of 8).
    Fused,
    /// One kernel per layer as on the CPU: the reference path, any shape.
    Plain,
}

/// What the CUDA engine's backward pass computes again instead of storing it in the forward
/// (llm.c's `-r`): memory for a little more work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Recompute {
    /// Keep every activation the backward pass reads.
    #[default]
    None,
    /// Keep one layer's GELU output, not all L: the backward computes each layer's again from
    /// GELU's input, one kernel per layer (llm.c's -r 1; see `gpu::ModelOptions::recompute`).
    Gelu,
}

/// How to build an engine: where it runs and in which precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    pub device: crate::train::Device,
    /// None: bf16 on a GPU that has bf16 tensor cores (sm_80 or newer), fp32 otherwise (and always
    /// on the CPU). bf16 is refused on `--device cpu`; where `Device::Auto` finds no GPU it gets a
    /// note and the CPU's fp32.
    pub precision: Option<Precision>,
    /// TF32 tensor cores for the fp32 matrix products (GPU, fp32 only).
    pub tf32: bool,
    /// The CUDA engine's kernels; None: fused in bf16 where the model's shapes allow, plain
    /// otherwise. Refused on `--device cpu` (the CPU engine has one path).
    pub kernels: Option<Kernels>,
    /// Whether the CUDA engine replays its forward and backward passes as CUDA graphs (see
    /// `gpu::graphs`); the CPU engine has none.
    pub cuda_graphs: bool,
    /// The CUDA engine's classifier in chunks of this many sequences, so that the logits never
    /// exist for more (`gpu::ModelOptions::classifier_chunk`); None: the whole batch at once. Refused
    /// on `--device cpu`.
    pub classifier_chunk: Option<usize>,
    /// What the CUDA engine's backward pass computes again instead of keeping it; the CPU engine
    /// keeps everything.
    pub recompute: Recompute,
    /// Whether the engine is built for forwards (`eval`, `sample`): it then leaves out the
    /// arenas only training needs (gradients, AdamW's moments, master weights, activation
    /// gradients). The CPU engine allocates them if it is asked to train after all
    /// (`Gpt2Cpu::for_inference`); to the CUDA engine that is an error
    /// (`gpu::ModelOptions::forwards_only`).
    pub forwards_only: bool,
}

impl EngineOptions {
    /// The CPU reference engine (fp32).
    pub fn cpu() -> EngineOptions {
        EngineOptions::on(crate::train::Device::Cpu, Some(Precision::Fp32))
    }

    /// The engine `device` picks, in `precision` (None: the device's default), with the default
    /// kernels: what `sample` and `eval` run.
    pub fn on(device: crate::train::Device, precision: Option<Precision>) -> EngineOptions {
        EngineOptions {
            device,
            precision,
            tf32: false,
            kernels: None,
            cuda_graphs: true,
            classifier_chunk: None,
            recompute: Recompute::None,
            forwards_only: false,
        }
    }

    /// These options for an engine that is built for forwards (see
    /// [`forwards_only`](Self::forwards_only)).
    pub fn for_forwards(self) -> EngineOptions {
        EngineOptions {
            forwards_only: true,
            ..self
        }
    }

    /// The CUDA engine in `precision`, TF32 off.
    pub fn cuda(precision: Precision) -> EngineOptions {
        EngineOptions::on(crate::train::Device::Cuda, Some(precision))
    }
}

/// The precision an engine runs in: `requested`, or the default when None, for a GPU of compute
/// capability `gpu` (major, minor), or for the CPU when `gpu` is None. bf16 needs the GPU and
/// bf16 tensor cores (sm_80, Ampere, or newer); the CPU engine computes in fp32 only.
pub fn resolve_precision(
    requested: Option<Precision>,
    gpu: Option<(i32, i32)>,
) -> Result<Precision> {
    match (requested, gpu) {
        (None | Some(Precision::Fp32), None) => Ok(Precision::Fp32),
        (Some(Precision::Bf16), None) => anyhow::bail!(
            "--precision bf16 needs the CUDA engine: the CPU engine computes in fp32 only (use \
             --precision fp32, or --device cuda on a machine with an NVIDIA GPU)"
        ),
        (None, Some((major, _))) => Ok(if major >= 8 {
            Precision::Bf16
        } else {
            Precision::Fp32
        }),
        (Some(Precision::Bf16), Some((major, minor))) if major < 8 => anyhow::bail!(
            "--precision bf16 needs bf16 tensor cores (sm_80, Ampere, or newer); this GPU is \
             sm_{major}{minor}: use --precision fp32"
        ),
        (Some(p), Some(_)) => Ok(p),
    }
}

/// Builds the engine `opts` describe with the given parameters, its arenas sized for batches up to
/// max_b x max_t. `Device::Auto` takes the GPU when one can be used and the CPU otherwise (with a
/// note on stderr saying why; a requested bf16 then gets a note too, and the engine computes in
/// fp32, where `--device cpu` refuses it); once a GPU was found, an error in building the GPU
/// engine (e.g. not enough GPU memory) is reported, not replaced by the CPU.
pub fn create_engine(
    opts: &EngineOptions,
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
) -> Result<Box<dyn Engine>> {
    use crate::train::Device;
    crate::cpu::model::check_batch(&cfg, max_b, max_t)?;
    // (`precision`: what the CPU is asked for, an error unless fp32)
    let cpu = |params, precision| -> Result<Box<dyn Engine>> {
        resolve_precision(precision, None)?;
        // (flags for the GPU that cannot change a CPU run's numbers: a note, not an error, so
        // that one command runs on either)
        if opts.tf32 {
            crate::errln!(
                "note: --tf32 does nothing on the CPU engine (its products are plain fp32)"
            );
        }
        if !opts.cuda_graphs {
            crate::errln!("note: --no-cuda-graphs does nothing on the CPU engine");
        }
        if opts.recompute != Recompute::None {
            crate::errln!(
                "note: --recompute does nothing on the CPU engine (it keeps every activation)"
            );
        }
        // (with --device cpu these two are errors, below; here the GPU was not found)
        if opts.kernels.is_some() {
            crate::errln!("note: --kernels does nothing on the CPU engine (it has one path)");
        }
        if opts.classifier_chunk.is_some() {
            crate::errln!(
                "note: --classifier-chunk does nothing on the CPU engine (it has one path)"
            );
        }
        Ok(Box::new(if opts.forwards_only {
            Gpt2Cpu::for_inference(cfg, params, max_b, max_t)?
        } else {
            Gpt2Cpu::new(cfg, params, max_b, max_t)?
        }))
    };
    match opts.device {
        Device::Cpu if opts.kernels.is_some() => anyhow::bail!(
            "--kernels chooses the CUDA engine's kernels; the CPU engine has one path (drop \
             --kernels, or use --device cuda)"
        ),
        Device::Cpu if opts.classifier_chunk.is_some() => anyhow::bail!(
            "--classifier-chunk splits the CUDA engine's classifier; the CPU engine has one path \
             (drop --classifier-chunk, or use --device cuda)"
        ),
        Device::Cpu => cpu(params, opts.precision),
        Device::Cuda => {
            let gpu = crate::gpu::Gpu::new()?;
            gpu_engine_on(gpu, cfg, params, max_b, max_t, opts)
        }
        Device::Auto => match crate::gpu::Gpu::new() {
            Ok(gpu) => gpu_engine_on(gpu, cfg, params, max_b, max_t, opts),
            Err(why) => {
                crate::errln!("note: running on the CPU ({why:#})");
                // (as for the GPU's other flags: one command runs on either; with --device cpu
                // it is an error)
                if opts.precision == Some(Precision::Bf16) {
                    crate::errln!(
                        "note: --precision bf16 needs the GPU: the CPU engine computes in fp32, \
                         and so does this run"
                    );
                }
                cpu(params, Some(Precision::Fp32))
            }
        },
    }
}

/// The CUDA engine on device 0 (`Gpt2Gpu`) in `precision`, TF32 matmuls on or off; an error when
/// this build has no kernels, the machine no GPU (or no bf16 tensor cores for bf16), or the GPU
/// not enough memory.
pub fn create_gpu_engine(
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
    precision: Precision,
    tf32: bool,
) -> Result<Box<dyn Engine>> {
    let opts = EngineOptions {
        tf32,
        ..EngineOptions::cuda(precision)
    };
    create_engine(&opts, cfg, params, max_b, max_t)
}

/// The CUDA engine on `gpu`.
#[cfg(has_cuda)]
fn gpu_engine_on(
    mut gpu: crate::gpu::Gpu,
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
    opts: &EngineOptions,
) -> Result<Box<dyn Engine>> {
    let precision = resolve_precision(opts.precision, Some(gpu.compute_capability()?))?;
    // TF32 is a mode of fp32 products: bf16 has none, and cuBLAS's TF32 mode would let its bf16
    // products reduce partial sums in bf16 (`Gpu::set_tf32`)
    let tf32 = opts.tf32 && precision == Precision::Fp32;
    if opts.tf32 && !tf32 {
        crate::errln!("note: --tf32 does nothing in bf16 (it is a mode of the fp32 products)");
    }
    gpu.set_tf32(tf32)?;
    use crate::gpu::Gpt2Gpu;
    use crate::gpu::ModelOptions;
    let model_opts = ModelOptions {
        kernels: opts.kernels,
        classifier_chunk: opts.classifier_chunk,
        recompute: opts.recompute,
        forwards_only: opts.forwards_only,
    };
    // Under Nsight Systems the timeline should show each kernel inside its NVTX ranges, which a
    // replayed graph does not have (its ranges were recorded once, at the capture).
    let graphs = opts.cuda_graphs && !crate::gpu::nvtx::tool_attached();
    if opts.cuda_graphs && !graphs {
        crate::errln!(
            "note: an NVTX tool (nsys) is attached: CUDA graphs off, so that the timeline shows \
             every kernel in its NVTX ranges"
        );
    }
    Ok(match precision {
        Precision::Fp32 => {
            let mut model =
                Gpt2Gpu::<f32>::new_with_options(gpu, cfg, params, max_b, max_t, model_opts)?;
            model.set_cuda_graphs(graphs);
            Box::new(model)
        }
        Precision::Bf16 => {
            let mut model = Gpt2Gpu::<half::bf16>::new_with_options(
                gpu, cfg, params, max_b, max_t, model_opts,
            )?;
            model.set_cuda_graphs(graphs);
            Box::new(model)
        }
    })
}

/// A build without kernels has no `Gpu` to run on (`Gpu::new` always fails there).
#[cfg(not(has_cuda))]
fn gpu_engine_on(
    gpu: crate::gpu::Gpu,
    cfg: GPT2Config,
    params: Vec<f32>,
    max_b: usize,
    max_t: usize,
    opts: &EngineOptions,
) -> Result<Box<dyn Engine>> {
    let _ = (gpu, cfg, params, max_b, max_t, opts);
    anyhow::bail!("{}", crate::gpu::NO_CUDA_BUILD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_engine_counts_its_threads_in_words() {
        let cfg = GPT2Config::from_descriptor("d1").unwrap();
        let params = crate::params::init_params(&cfg, 1);
        let engine = Gpt2Cpu::for_inference(cfg, params, 1, 1).unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(one.install(|| engine.describe()), "cpu (1 thread)");
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert_eq!(two.install(|| engine.describe()), "cpu (2 threads)");
    }

    #[test]
    fn precision_defaults_and_refusals() {
        let (fp32, bf16) = (Some(Precision::Fp32), Some(Precision::Bf16));
        // the CPU: fp32 only
        assert_eq!(resolve_precision(None, None).unwrap(), Precision::Fp32);
        assert_eq!(resolve_precision(fp32, None).unwrap(), Precision::Fp32);
        let e = resolve_precision(bf16, None).unwrap_err().to_string();
        assert!(e.contains("CPU engine computes in fp32 only"), "{e}");
        // GPUs: bf16 by default from sm_80 (A100, H100), fp32 before
        assert_eq!(
            resolve_precision(None, Some((9, 0))).unwrap(),
            Precision::Bf16
        );
        assert_eq!(
            resolve_precision(None, Some((8, 0))).unwrap(),
            Precision::Bf16
        );
        assert_eq!(
            resolve_precision(None, Some((7, 5))).unwrap(),
            Precision::Fp32
        );
        assert_eq!(
            resolve_precision(fp32, Some((9, 0))).unwrap(),
            Precision::Fp32
        );
        // asked for: from sm_80 on (Ampere has bf16 tensor cores), refused before
        assert_eq!(
            resolve_precision(bf16, Some((8, 6))).unwrap(),
            Precision::Bf16
        );
        let e = resolve_precision(bf16, Some((7, 0)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("this GPU is sm_70"), "{e}");
    }

    /// One position's logits are that row of the whole (B, T, Vp) logits.
    #[test]
    fn position_logits_are_a_row_of_the_logits() {
        let cfg = GPT2Config::from_descriptor("d2").unwrap();
        let params = crate::params::init_params(&cfg, 1);
        let mut cpu = create_engine(&EngineOptions::cpu(), cfg, params, 2, 3).unwrap();
        let inputs = [1, 2, 3, 4, 5, 6];
        cpu.forward(&inputs, None, 2, 3).unwrap();
        let (all, vp) = (cpu.logits().unwrap(), cfg.padded_vocab_size);
        for (bi, ti) in [(0, 0), (0, 2), (1, 0), (1, 2)] {
            let row = bi * 3 + ti;
            let got = cpu.position_logits(bi, ti).unwrap();
            assert!(got == all[row * vp..(row + 1) * vp], "({bi}, {ti})");
        }
    }

    /// A batch no engine can hold is the error, whatever the device and its flags: it is checked
    /// before the GPU is looked for and before a flag for the other engine is refused.
    #[test]
    fn a_bad_batch_is_refused_before_the_device_and_its_flags() {
        use crate::train::Device;
        let cfg = GPT2Config::from_descriptor("d1").unwrap();
        let params = crate::params::init_params(&cfg, 1);
        let cpu_with_kernels = EngineOptions {
            kernels: Some(Kernels::Plain),
            ..EngineOptions::cpu()
        };
        let cuda = EngineOptions::on(Device::Cuda, None);
        let auto = EngineOptions::on(Device::Auto, None);
        for opts in [cpu_with_kernels, cuda, auto] {
            for (b, t, says) in [
                (
                    0,
                    8,
                    "batch size B=0 and sequence length T=8 must both be at least 1",
                ),
                (
                    1,
                    1025,
                    "sequence length T=1025 exceeds the model's maximum",
                ),
            ] {
                let e = create_engine(&opts, cfg, params.clone(), b, t)
                    .err()
                    .expect("a bad batch is an error");
                let e = format!("{e:#}");
                assert!(e.starts_with(says), "{:?}: {e}", opts.device);
            }
        }
    }

    #[test]
    fn cpu_engine_refuses_bf16_clearly() {
        let cfg = GPT2Config::from_descriptor("d2").unwrap();
        let params = crate::params::init_params(&cfg, 1);
        let opts = EngineOptions {
            precision: Some(Precision::Bf16),
            ..EngineOptions::cpu()
        };
        let e = create_engine(&opts, cfg, params.clone(), 1, 8)
            .err()
            .expect("bf16 on the CPU is an error");
        assert!(format!("{e:#}").contains("--precision bf16 needs the CUDA engine"));
        let cpu = create_engine(&EngineOptions::cpu(), cfg, params.clone(), 1, 8).unwrap();
        assert_eq!(cpu.precision(), Precision::Fp32);
        let opts = EngineOptions {
            kernels: Some(Kernels::Plain),
            ..EngineOptions::cpu()
        };
        let e = create_engine(&opts, cfg, params, 1, 8)
            .err()
            .expect("--kernels on the CPU is an error");
        assert!(
            format!("{e:#}").contains("the CPU engine has one path"),
            "{e:#}"
        );
    }
}
