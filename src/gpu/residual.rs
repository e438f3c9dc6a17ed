//! The residual connection on the GPU (`kernels/residual.cu`); twin of `cpu::residual`. Generic
//! over the storage type `T` (f32 or bf16; fp32 arithmetic, one rounding per output).

use anyhow::Result;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, grid_stride, launched, Gpu};
use super::float::DeviceFloat;
use super::launch::pack;

impl Gpu {
    /// out = inp1 + inp2, elementwise.
    pub fn residual_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>, // (N)
        inp1: &CudaView<'_, T>,       // (N)
        inp2: &CudaView<'_, T>,       // (N)
    ) -> Result<()> {
        const K: &str = "residual_forward";
        let n = out.len();
        check_len(K, "inp1", inp1.len(), n, "out's length")?;
        check_len(K, "inp2", inp2.len(), n, "out's length")?;
        let kernel = T::pick(&self.k.residual_forward, &self.k.residual_forward_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(out).arg(inp1).arg(inp2).arg(&n);
        // SAFETY: the arguments match residual_forward(_bf16) in kernels/residual.cu; all three
        // hold n elements of T; the packed path reads whole packs below n only (then the scalar
        // tail), and its grid-stride loops cover everything with any grid.
        launched(K, unsafe {
            lb.launch(grid_stride(n.div_ceil(pack::<T>())))
        })
    }

    /// dinp1 += dout; dinp2 += dout.
    pub fn residual_backward<T: DeviceFloat>(
        &self,
        dinp1: &mut CudaViewMut<'_, T>, // (N)
        dinp2: &mut CudaViewMut<'_, T>, // (N)
        dout: &CudaView<'_, T>,         // (N)
    ) -> Result<()> {
        const K: &str = "residual_backward";
        let n = dout.len();
        check_len(K, "dinp1", dinp1.len(), n, "dout's length")?;
        check_len(K, "dinp2", dinp2.len(), n, "dout's length")?;
        let kernel = T::pick(&self.k.residual_backward, &self.k.residual_backward_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(dinp1).arg(dinp2).arg(dout).arg(&n);
        // SAFETY: the arguments match residual_backward(_bf16) in kernels/residual.cu; all three
        // hold n elements of T (packed path: whole packs below n, then the scalar tail).
        launched(K, unsafe {
            lb.launch(grid_stride(n.div_ceil(pack::<T>())))
        })
    }
}
