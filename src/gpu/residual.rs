//! The residual connection on the GPU (`kernels/residual.cu`); twin of `cpu::residual`.

use anyhow::Result;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, grid_stride, launched, Gpu};

impl Gpu {
    /// out = inp1 + inp2, elementwise.
    pub fn residual_forward(
        &self,
        out: &mut CudaViewMut<'_, f32>, // (N)
        inp1: &CudaView<'_, f32>,       // (N)
        inp2: &CudaView<'_, f32>,       // (N)
    ) -> Result<()> {
        const K: &str = "residual_forward";
        let n = out.len();
        check_len(K, "inp1", inp1.len(), n, "out's length")?;
        check_len(K, "inp2", inp2.len(), n, "out's length")?;
        let mut lb = self.stream.launch_builder(&self.k.residual_forward);
        lb.arg(out).arg(inp1).arg(inp2).arg(&n);
        // SAFETY: the arguments match residual_forward in kernels/residual.cu; all hold n floats.
        launched(K, unsafe { lb.launch(grid_stride(n)) })
    }

    /// dinp1 += dout; dinp2 += dout.
    pub fn residual_backward(
        &self,
        dinp1: &mut CudaViewMut<'_, f32>, // (N)
        dinp2: &mut CudaViewMut<'_, f32>, // (N)
        dout: &CudaView<'_, f32>,         // (N)
    ) -> Result<()> {
        const K: &str = "residual_backward";
        let n = dout.len();
        check_len(K, "dinp1", dinp1.len(), n, "dout's length")?;
        check_len(K, "dinp2", dinp2.len(), n, "dout's length")?;
        let mut lb = self.stream.launch_builder(&self.k.residual_backward);
        lb.arg(dinp1).arg(dinp2).arg(dout).arg(&n);
        // SAFETY: the arguments match residual_backward in kernels/residual.cu; all hold n floats.
        launched(K, unsafe { lb.launch(grid_stride(n)) })
    }
}
