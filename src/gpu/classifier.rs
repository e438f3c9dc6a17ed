//! The fused classifier on the GPU (`kernels/classifier.cu`): softmax, cross-entropy and their
//! backward in one kernel. Its CPU twin is `cpu::classifier`'s softmax_forward +
//! crossentropy_forward + crossentropy_softmax_backward. Generic over the logits' storage type
//! `T` (f32 or bf16): the softmax and loss are fp32 from the widened logits, the losses are f32,
//! the dlogits are rounded once into T.

use anyhow::{bail, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, PushKernelArg};

use super::context::{check_len, dim, launched, Gpu};
use super::float::DeviceFloat;
use super::launch;

impl Gpu {
    /// For each row (b, t), with p = softmax(logits[b, t, ..V]): losses (B,T) [b, t] =
    /// -ln `p[target]`, and the logits are OVERWRITTEN by their gradient:
    /// `(p - onehot(target)) * dloss` in columns < V, 0 in the padding V..Vp. `dloss` is the
    /// gradient of the mean loss with respect to each position's loss, 1 / (B*T) for a mean.
    /// Targets must be < V; a bad target (on the device, where the host cannot check it cheaply)
    /// gives a NaN loss. `row_stats`: each row's softmax max and sum as [`Gpu::classifier_losses`]
    /// saved them for these same logits, which saves a pass over the logits (the same numbers);
    /// None computes them here.
    #[allow(clippy::too_many_arguments)]
    pub fn fused_classifier<T: DeviceFloat>(
        &self,
        logits: &mut CudaViewMut<'_, T>, // (B, T, Vp): logits in, dlogits out
        losses: &mut CudaViewMut<'_, f32>, // (B, T)
        dloss: f32,
        targets: &CudaView<'_, u32>, // (B, T)
        b: usize,
        t: usize,
        v: usize,
        vp: usize,
        row_stats: Option<&CudaView<'_, f32>>, // (B, T, 2)
    ) -> Result<()> {
        let stats = match row_stats {
            Some(st) => Stats::Read(st),
            None => Stats::None,
        };
        let len = logits.len();
        let (ptr, _in_use) = logits.device_ptr_mut(&self.stream);
        self.launch_classifier::<T>((ptr, len), losses, stats, Some(dloss), targets, b, t, v, vp)
    }

    /// The losses (B,T) alone: -ln `softmax(logits)[target]` per row, the logits left intact (the
    /// forward half of [`Gpu::fused_classifier`]: the same kernel, the same numbers). With
    /// `row_stats`, each row's softmax max and sum of exps go there, for the backward's
    /// [`Gpu::fused_classifier`].
    #[allow(clippy::too_many_arguments)]
    pub fn classifier_losses<T: DeviceFloat>(
        &self,
        logits: &CudaView<'_, T>,          // (B, T, Vp)
        losses: &mut CudaViewMut<'_, f32>, // (B, T)
        targets: &CudaView<'_, u32>,       // (B, T)
        b: usize,
        t: usize,
        v: usize,
        vp: usize,
        row_stats: Option<&mut CudaViewMut<'_, f32>>, // (B, T, 2)
    ) -> Result<()> {
        let stats = match row_stats {
            Some(st) => Stats::Write(st),
            None => Stats::None,
        };
        let (ptr, _in_use) = logits.device_ptr(&self.stream);
        self.launch_classifier::<T>(
            (ptr, logits.len()),
            losses,
            stats,
            None,
            targets,
            b,
            t,
            v,
            vp,
        )
    }

    /// Both launchers: checks the lengths and launches on the logits (device address, elements of
    /// T; the caller holds the view). With `dloss` the logits are overwritten by their gradient;
    /// None computes the losses only (the logits left intact).
    #[allow(clippy::too_many_arguments)]
    fn launch_classifier<T: DeviceFloat>(
        &self,
        (logits, logits_len): (CUdeviceptr, usize), // (B, T, Vp)
        losses: &mut CudaViewMut<'_, f32>,
        stats: Stats<'_, '_>,
        dloss: Option<f32>,
        targets: &CudaView<'_, u32>,
        b: usize,
        t: usize,
        v: usize,
        vp: usize,
    ) -> Result<()> {
        const K: &str = "fused_classifier";
        let Some((ni, vi, vpi)) = check(K, logits_len, losses, targets, b, t, v, vp)? else {
            return Ok(());
        };
        let stats_len = match &stats {
            Stats::None => None,
            Stats::Read(st) => Some(st.len()),
            Stats::Write(st) => Some(st.len()),
        };
        if let Some(len) = stats_len {
            check_len(K, "row_stats", len, 2 * b * t, "B*T*2")?;
        }
        let write_dlogits = dloss.is_some() as i32;
        let dloss = dloss.unwrap_or(0.0);
        let stats_given = matches!(stats, Stats::Read(_)) as i32;
        let null: CUdeviceptr = 0;
        let kernel = T::pick(&self.k.fused_classifier, &self.k.fused_classifier_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&logits).arg(losses);
        match stats {
            Stats::None => lb.arg(&null),
            Stats::Read(st) => lb.arg(st),
            Stats::Write(st) => lb.arg(st),
        };
        lb.arg(&dloss).arg(targets);
        lb.arg(&ni)
            .arg(&vi)
            .arg(&vpi)
            .arg(&write_dlogits)
            .arg(&stats_given);
        // SAFETY: the arguments match fused_classifier(_bf16) in kernels/classifier.cu (the
        // logits: the address of the caller's live view of B*T*Vp elements of T); one block per row of Vp elements
        // over N = B*T rows (lengths checked; a pack never crosses a row's end, Vp being a
        // multiple of it on the packed path); targets are bounds-checked in the kernel before use;
        // row_stats is B*T*2 floats (checked) or null and then untouched. With write_dlogits = 0
        // the kernel only reads the logits.
        launched(K, unsafe { lb.launch(launch::classifier(b * t).into()) })
    }
}

/// The classifier's per-row softmax statistics (B, T, 2): none, given (read), or to save (write).
enum Stats<'s, 'a> {
    None,
    Read(&'s CudaView<'a, f32>),
    Write(&'s mut CudaViewMut<'a, f32>),
}

/// Checks the classifier's lengths; Some((N, V, Vp)) as kernel ints, or None when N = 0.
#[allow(clippy::too_many_arguments)]
fn check(
    k: &str,
    logits_len: usize,
    losses: &CudaViewMut<'_, f32>,
    targets: &CudaView<'_, u32>,
    b: usize,
    t: usize,
    v: usize,
    vp: usize,
) -> Result<Option<(i32, i32, i32)>> {
    if v == 0 || v > vp {
        bail!("{k}: need 0 < V <= Vp, got V = {v}, Vp = {vp}");
    }
    let n = b * t;
    check_len(k, "logits", logits_len, n * vp, "B*T*Vp")?;
    check_len(k, "losses", losses.len(), n, "B*T")?;
    check_len(k, "targets", targets.len(), n, "B*T")?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some((
        dim(k, "B*T", n)?,
        dim(k, "V", v)?,
        dim(k, "Vp", vp)?,
    )))
}
