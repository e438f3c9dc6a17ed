//! GELU (tanh approximation) on the GPU (`kernels/gelu.cu`); twin of `cpu::gelu`.

use anyhow::Result;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, grid_stride, launched, Gpu};

impl Gpu {
    /// out = gelu(inp), elementwise; any shape.
    pub fn gelu_forward(
        &self,
        out: &mut CudaViewMut<'_, f32>, // (N)
        inp: &CudaView<'_, f32>,        // (N)
    ) -> Result<()> {
        const K: &str = "gelu_forward";
        let n = out.len();
        check_len(K, "inp", inp.len(), n, "out's length")?;
        let mut lb = self.stream.launch_builder(&self.k.gelu_forward);
        lb.arg(out).arg(inp).arg(&n);
        // SAFETY: the arguments match gelu_forward in kernels/gelu.cu (n is a size_t); out and inp
        // both hold n floats.
        launched(K, unsafe { lb.launch(grid_stride(n)) })
    }

    /// dinp += gelu'(inp) * dout, elementwise.
    pub fn gelu_backward(
        &self,
        dinp: &mut CudaViewMut<'_, f32>, // (N)
        inp: &CudaView<'_, f32>,         // (N)
        dout: &CudaView<'_, f32>,        // (N)
    ) -> Result<()> {
        const K: &str = "gelu_backward";
        let n = dinp.len();
        check_len(K, "inp", inp.len(), n, "dinp's length")?;
        check_len(K, "dout", dout.len(), n, "dinp's length")?;
        let mut lb = self.stream.launch_builder(&self.k.gelu_backward);
        lb.arg(dinp).arg(inp).arg(dout).arg(&n);
        // SAFETY: the arguments match gelu_backward in kernels/gelu.cu; all three hold n floats.
        launched(K, unsafe { lb.launch(grid_stride(n)) })
    }
}
