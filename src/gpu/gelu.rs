//! GELU (tanh approximation) on the GPU (`kernels/gelu.cu`); twin of `cpu::gelu`. Generic over
//! the storage type `T` (f32 or bf16; fp32 arithmetic, one rounding per output).

use anyhow::Result;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, grid_stride, launched, Gpu};
use super::float::DeviceFloat;
use super::launch::pack;

impl Gpu {
    /// out = gelu(inp), elementwise; any shape.
    pub fn gelu_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>, // (N)
        inp: &CudaView<'_, T>,        // (N)
    ) -> Result<()> {
        const K: &str = "gelu_forward";
        let n = out.len();
        check_len(K, "inp", inp.len(), n, "out's length")?;
        let kernel = T::pick(&self.k.gelu_forward, &self.k.gelu_forward_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(out).arg(inp).arg(&n);
        // SAFETY: the arguments match gelu_forward(_bf16) in kernels/gelu.cu (n is a size_t); out
        // and inp both hold n elements of T (packed path: whole packs below n, then the tail).
        launched(K, unsafe {
            lb.launch(grid_stride(n.div_ceil(pack::<T>())))
        })
    }

    /// dinp += gelu'(inp) * dout, elementwise.
    pub fn gelu_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaViewMut<'_, T>, // (N)
        inp: &CudaView<'_, T>,         // (N)
        dout: &CudaView<'_, T>,        // (N)
    ) -> Result<()> {
        const K: &str = "gelu_backward";
        let n = dinp.len();
        check_len(K, "inp", inp.len(), n, "dinp's length")?;
        check_len(K, "dout", dout.len(), n, "dinp's length")?;
        let kernel = T::pick(&self.k.gelu_backward, &self.k.gelu_backward_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(dinp).arg(inp).arg(dout).arg(&n);
        // SAFETY: the arguments match gelu_backward(_bf16) in kernels/gelu.cu; all three hold n
        // elements of T (packed path: whole packs below n, then the scalar tail).
        launched(K, unsafe {
            lb.launch(grid_stride(n.div_ceil(pack::<T>())))
        })
    }
}
