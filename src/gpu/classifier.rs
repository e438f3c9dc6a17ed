//! The fused classifier on the GPU (`kernels/classifier.cu`): softmax, cross-entropy and their
//! backward in one kernel. Its CPU twin is `cpu::classifier`'s softmax_forward +
//! crossentropy_forward + crossentropy_softmax_backward.

use anyhow::{bail, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, dim, grid_1d, launched, Gpu};

/// Threads per row (one block per row).
const CLASSIFIER_THREADS: u32 = 1024;

impl Gpu {
    /// For each row (b, t), with p = softmax(logits[b, t, ..V]): losses (B,T) [b, t] =
    /// -ln p[target], and the logits are OVERWRITTEN by their gradient:
    /// `(p - onehot(target)) * dloss` in columns < V, 0 in the padding V..Vp. `dloss` is the
    /// gradient of the mean loss with respect to each position's loss, 1 / (B*T) for a mean.
    /// Targets must be < V; a bad target (on the device, where the host cannot check it cheaply)
    /// gives a NaN loss.
    #[allow(clippy::too_many_arguments)]
    pub fn fused_classifier(
        &self,
        logits: &mut CudaViewMut<'_, f32>, // (B, T, Vp): logits in, dlogits out
        losses: &mut CudaViewMut<'_, f32>, // (B, T)
        dloss: f32,
        targets: &CudaView<'_, u32>, // (B, T)
        b: usize,
        t: usize,
        v: usize,
        vp: usize,
    ) -> Result<()> {
        const K: &str = "fused_classifier";
        if v == 0 || v > vp {
            bail!("{K}: need 0 < V <= Vp, got V = {v}, Vp = {vp}");
        }
        let n = b * t;
        check_len(K, "logits", logits.len(), n * vp, "B*T*Vp")?;
        check_len(K, "losses", losses.len(), n, "B*T")?;
        check_len(K, "targets", targets.len(), n, "B*T")?;
        if n == 0 {
            return Ok(());
        }
        let (ni, vi, vpi) = (dim(K, "B*T", n)?, dim(K, "V", v)?, dim(K, "Vp", vp)?);
        let mut lb = self.stream.launch_builder(&self.k.fused_classifier);
        lb.arg(logits).arg(losses).arg(&dloss).arg(targets);
        lb.arg(&ni).arg(&vi).arg(&vpi);
        // SAFETY: the arguments match fused_classifier in kernels/classifier.cu; one block per row
        // of Vp floats over N = B*T rows (lengths checked); targets are bounds-checked in the
        // kernel before use.
        launched(K, unsafe { lb.launch(grid_1d(n, CLASSIFIER_THREADS)) })
    }
}
