//! The token + position embedding on the GPU (`kernels/encoder.cu`); twin of `cpu::encoder`.
//! Generic over the storage type `T` (f32 or bf16; fp32 arithmetic, one rounding per output).

use anyhow::{bail, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::context::{check_len, dim, grid_stride, launched, Gpu};
use super::float::DeviceFloat;
use super::launch::{self, buckets_len, pack, token_buckets};

impl Gpu {
    /// out (B,T,C) = `wte[inp]` + `wpe[t]` (wte (Vp,C), inp (B,T), wpe (maxT,C)). A token id >= Vp
    /// on the device (which the host cannot check without a copy) gives NaN in that row, not a
    /// wild read.
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>, // (B, T, C)
        inp: &CudaView<'_, u32>,      // (B, T)
        wte: &CudaView<'_, T>,        // (Vp, C)
        wpe: &CudaView<'_, T>,        // (maxT, C)
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "encoder_forward";
        check_len(K, "out", out.len(), b * t * c, "B*T*C")?;
        check_len(K, "inp", inp.len(), b * t, "B*T")?;
        let vp = embedding_rows(K, "wte", wte.len(), c)?;
        let maxt = embedding_rows(K, "wpe", wpe.len(), c)?;
        if t > maxt {
            bail!("{K}: T = {t} exceeds the {maxt} positions of wpe");
        }
        let (bi, ti, ci, vpi) = (
            dim(K, "B", b)?,
            dim(K, "T", t)?,
            dim(K, "C", c)?,
            dim(K, "Vp", vp)?,
        );
        dim(K, "B*T*C", b * t * c)?;
        let kernel = T::pick(&self.k.encoder_forward, &self.k.encoder_forward_bf16);
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(out).arg(inp).arg(wte).arg(wpe);
        lb.arg(&bi).arg(&ti).arg(&ci).arg(&vpi);
        // One thread per 16-byte pack on the packed path; the scalar path's grid-stride loop
        // covers every element with any grid.
        // SAFETY: the arguments match encoder_forward(_bf16)'s parameters in kernels/encoder.cu in
        // type and order (T* for the T instantiation); out and inp have exactly B*T*C and B*T
        // elements, wpe covers T rows, and token ids are checked against Vp (the rows of wte)
        // inside the kernel; the packed path runs only when C is a multiple of the pack and the
        // pointers are 16-byte aligned: every access is in bounds.
        launched(K, unsafe {
            lb.launch(grid_stride((b * t * c).div_ceil(pack::<T>())))
        })
    }

    /// dwte (Vp,C) += dout rows by token, dwpe (maxT,C) += dout summed over the batch (in bf16:
    /// the old value and the terms added in fp32, rounded once).
    ///
    /// Unlike the forward, `inp` is the HOST copy of the tokens (the same `&[u32]` as the CPU
    /// twin's): for a deterministic dwte without atomics the host groups the positions by token
    /// into buckets ([`token_buckets`]), uploads them, and one GPU thread per (bucket, channel)
    /// adds its bucket's rows in position order. Each element of dwte and dwpe then receives its
    /// terms in the CPU reference's order. Token ids >= Vp are an error. (The model sorts and
    /// uploads the buckets in its forward, while the GPU runs it, and calls
    /// [`Gpu::encoder_backward_buckets`] in its backward.)
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_backward<T: DeviceFloat>(
        &self,
        dwte: &mut CudaViewMut<'_, T>, // (Vp, C)
        dwpe: &mut CudaViewMut<'_, T>, // (maxT, C)
        dout: &CudaView<'_, T>,        // (B, T, C)
        inp: &[u32],                   // (B, T), on the host
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "encoder_backward";
        check_len(K, "inp", inp.len(), b * t, "B*T")?;
        let vp = embedding_rows(K, "dwte", dwte.len(), c)?;
        if let Some((pos, &tok)) = inp.iter().enumerate().find(|&(_, &x)| x as usize >= vp) {
            bail!("{K}: token id {tok} at position {pos} is not below Vp = {vp}");
        }
        let buckets = self.upload(&token_buckets(inp))?;
        // SAFETY: the buckets are token_buckets of B*T token ids, each checked < Vp above.
        unsafe { self.encoder_backward_buckets(dwte, dwpe, dout, &buckets.as_view(), b, t, c) }
    }

    /// [`Gpu::encoder_backward`] with the tokens as their buckets on the device: [`token_buckets`]
    /// of the (B, T) inputs, uploaded. The launch depends on B, T and C only (the buckets are
    /// padded to B*T), so it can be captured in a CUDA graph and replayed for any batch whose
    /// buckets were uploaded to the same place.
    ///
    /// # Safety
    /// `buckets` must hold [`token_buckets`] of B*T token ids that are all below Vp (the rows of
    /// dwte): the kernel indexes dwte and dout with them unchecked.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn encoder_backward_buckets<T: DeviceFloat>(
        &self,
        dwte: &mut CudaViewMut<'_, T>, // (Vp, C)
        dwpe: &mut CudaViewMut<'_, T>, // (maxT, C)
        dout: &CudaView<'_, T>,        // (B, T, C)
        buckets: &CudaView<'_, u32>,   // (3*B*T + 1) token_buckets of the inputs (B, T)
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        const K: &str = "encoder_backward";
        check_len(K, "dout", dout.len(), b * t * c, "B*T*C")?;
        check_len(K, "buckets", buckets.len(), buckets_len(b * t), "3*B*T+1")?;
        embedding_rows(K, "dwte", dwte.len(), c)?;
        let maxt = embedding_rows(K, "dwpe", dwpe.len(), c)?;
        if t > maxt {
            bail!("{K}: T = {t} exceeds the {maxt} positions of dwpe");
        }
        if b * t == 0 || c == 0 {
            return Ok(());
        }
        let (bi, ti, ci) = (dim(K, "B", b)?, dim(K, "T", t)?, dim(K, "C", c)?);
        dim(K, "B*T*C", b * t * c)?;

        // dwpe: one thread per (t, c), summing over b in order.
        let kernel = T::pick(
            &self.k.encoder_backward_wpe,
            &self.k.encoder_backward_wpe_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut *dwpe).arg(dout).arg(&bi).arg(&ti).arg(&ci);
        // SAFETY: the arguments match encoder_backward_wpe(_bf16) in kernels/encoder.cu; the kernel
        // touches dwpe[0..T*C) (T <= maxT checked) and dout[0..B*T*C) (length checked).
        launched("encoder_backward_wpe", unsafe {
            lb.launch(launch::per_element(t * c).into())
        })?;

        // dwte: one block row per bucket (B*T of them, the padding skipped by the kernel).
        let nb = dim(K, "B*T", b * t)?;
        let kernel = T::pick(
            &self.k.encoder_backward_wte,
            &self.k.encoder_backward_wte_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(dwte).arg(dout).arg(buckets).arg(&nb).arg(&ci);
        let cfg = launch::encoder_wte(b * t, c).into();
        // SAFETY: the arguments match encoder_backward_wte(_bf16) in kernels/encoder.cu; the
        // buckets (length checked; contents by the caller's contract) hold B*T tokens, each < Vp,
        // B*T + 1 offsets into the position list, each <= B*T, and B*T positions, each < B*T, so
        // dwte and dout are indexed in bounds.
        launched("encoder_backward_wte", unsafe { lb.launch(cfg) })
    }
}

/// The rows of an embedding table of `len` elements with `c` channels, or an error.
fn embedding_rows(kernel: &str, what: &str, len: usize, c: usize) -> Result<usize> {
    if c == 0 || !len.is_multiple_of(c) {
        bail!("{kernel}: {what} has {len} elements, not a whole number of rows of C = {c}");
    }
    Ok(len / c)
}
