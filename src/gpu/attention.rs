//! Causal multi-head self-attention on the GPU, the cuBLAS way (`kernels/attention.cu` for the
//! permutations and the causal softmax, strided-batched cuBLAS gemms for q k^T and att v, batched
//! over the B*NH heads; see `Gpu::gemm_strided_batched`); twin of `cpu::attention`, whose buffers
//! it reproduces: preatt and att with zeros above the diagonal, datt and dpreatt OVERWRITTEN
//! (scratch) with zeros above the diagonal, dinp accumulated. Generic over the storage type `T`
//! (f32 or bf16): in bf16 every buffer, the scratch included, is bf16, the gemms accumulate in fp32
//! and the kernels compute in fp32.
//!
//! Both launchers take one extra argument at the END, `scratch`, a device buffer for the per-head
//! q, k, v (B,NH,T,HS) and their gradients: at least [`attention_forward_scratch_len`] =
//! 3*B*T*C elements for the forward and [`attention_backward_scratch_len`] = 5*B*T*C for the
//! backward. Its contents on entry do not matter and are garbage on return. The backward
//! re-permutes q, k, v from `inp` rather than keeping them from the forward.
//!
//! Per head, with row-major (T,HS) matrices read column-major as their transposes:
//! preatt (T,T) = scale q k^T is column-major preatt^T = op_T(k^T) . q^T, and y (T,HS) = att v is
//! y^T = v^T . att^T; the backward's products follow the same pattern (see each call).

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, PushKernelArg};

use super::context::{check_len, dim, grid_stride, launched, Gpu};
use super::float::DeviceFloat;
use super::gemm_plan::{self, GemmPlan, Operand, Operand::*};
use super::launch;
use super::matmul::strided_batched_config;

/// The scratch elements (of T) attention_forward needs: q, k, v (B,NH,T,HS) each (y reuses q's
/// space).
pub fn attention_forward_scratch_len(b: usize, t: usize, c: usize) -> usize {
    3 * b * t * c
}

/// The scratch elements (of T) attention_backward needs: q, k, v/dv, dy/dq, dk (B,NH,T,HS) each.
pub fn attention_backward_scratch_len(b: usize, t: usize, c: usize) -> usize {
    5 * b * t * c
}

/// The dimensions every attention kernel takes, checked and as ints.
struct Dims {
    b: i32,
    t: i32,
    nh: i32,
    hs: i32,
    bnh: i32,
    /// B*NH*T*HS = B*T*C, the elements of one per-head tensor.
    btc: usize,
    /// B*NH*T*T, the elements of preatt/att.
    btt: usize,
}

fn dims(kernel: &str, b: usize, t: usize, c: usize, nh: usize) -> Result<Dims> {
    if nh == 0 || !c.is_multiple_of(nh) {
        bail!("{kernel}: C = {c} is not divisible by NH = {nh}");
    }
    let btt = b * nh * t * t;
    dim(kernel, "B*NH*T*T", btt)?;
    dim(kernel, "B*T*3C", 3 * b * t * c)?;
    Ok(Dims {
        b: dim(kernel, "B", b)?,
        t: dim(kernel, "T", t)?,
        nh: dim(kernel, "NH", nh)?,
        hs: dim(kernel, "HS", c / nh)?,
        bnh: dim(kernel, "B*NH", b * nh)?,
        btc: b * t * c,
        btt,
    })
}

impl Gpu {
    /// Batched over the B*NH heads: C_h = alpha op(A_h) op(B_h) + beta C_h, column-major, as
    /// `plan` (one of `gemm_plan::attention_forward`/`attention_backward`) says; `abc` names the
    /// buffers passed as A, B and C, which must be the plan's.
    fn gemm_batched<T: DeviceFloat>(
        &self,
        what: &str,
        plan: &GemmPlan,
        abc: (Operand, Operand, Operand),
        a: &impl DevicePtr<T>,
        bm: &impl DevicePtr<T>,
        c: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        plan.check_operands(what, abc).map_err(|e| anyhow!(e))?;
        let cfg = strided_batched_config(what, plan)?;
        // SAFETY: every attention plan has per-head matrices of (T,HS) or (T,T) elements with
        // strides T*HS or T*T, over B*NH heads, and leading dimensions equal to the matrices' row
        // lengths; the callers pass buffers of B*T*C or B*NH*T*T elements (checked by the
        // launchers) as those operands (checked just above); tests/gemm_plans.rs runs each plan
        // on host buffers of these lengths and refuses any access outside them.
        unsafe { self.gemm_strided_batched(cfg, a, bm, c) }
            .map_err(|e| anyhow!("{what}: cuBLAS strided batched gemm failed: {e}"))
    }

    /// out (B,T,C) = causal softmax(q k^T / sqrt(HS)) v per head; writes preatt (B,NH,T,T) (the
    /// scaled scores) and att (B,NH,T,T) (the probabilities), both zero above the diagonal.
    /// `scratch`: at least [`attention_forward_scratch_len`] elements (see the file comment).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaViewMut<'_, T>,    // (B, T, C)
        preatt: &mut CudaViewMut<'_, T>, // (B, NH, T, T)
        att: &mut CudaViewMut<'_, T>,    // (B, NH, T, T)
        inp: &CudaView<'_, T>,           // (B, T, 3C)
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        scratch: &mut CudaViewMut<'_, T>, // (3, B, NH, T, HS)
    ) -> Result<()> {
        const K: &str = "attention_forward";
        let d = dims(K, b, t, c, nh)?;
        check_len(K, "out", out.len(), d.btc, "B*T*C")?;
        check_len(K, "preatt", preatt.len(), d.btt, "B*NH*T*T")?;
        check_len(K, "att", att.len(), d.btt, "B*NH*T*T")?;
        check_len(K, "inp", inp.len(), 3 * d.btc, "B*T*3C")?;
        let need = attention_forward_scratch_len(b, t, c);
        if scratch.len() < need {
            bail!(
                "{K}: scratch has {} elements, needs 3*B*T*C = {need}",
                scratch.len()
            );
        }
        if d.btc == 0 {
            return Ok(());
        }
        let (mut q, mut rest) = scratch.split_at_mut(d.btc);
        let (mut k, mut rest) = rest.split_at_mut(d.btc);
        let (mut v, _) = rest.split_at_mut(d.btc);
        self.permute(K, &mut q, &mut k, &mut v, inp, &d)?;

        let (preatt_plan, y_plan) = gemm_plan::attention_forward(b, t, c, nh);
        // preatt^T (T x T, ld T) = scale op_T(k^T (HS x T, ld HS)) . q^T (HS x T, ld HS)
        self.gemm_batched(
            "attention_forward (preatt = q k^T)",
            &preatt_plan,
            (Operand::K, Q, Preatt),
            &k,
            &q,
            preatt,
        )?;

        let bnh = d.bnh;
        let kernel = T::pick(
            &self.k.attention_softmax_forward,
            &self.k.attention_softmax_forward_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut *att).arg(&mut *preatt).arg(&bnh).arg(&d.t);
        // SAFETY: the arguments match attention_softmax_forward(_bf16) in kernels/attention.cu; att
        // and preatt hold B*NH*T*T elements (checked) and the kernel touches rows < B*NH*T of T
        // elements.
        launched("attention_softmax_forward", unsafe {
            lb.launch(launch::warp_per_row(b * nh * t).into())
        })?;

        // y^T (HS x T, ld HS) = v^T (HS x T, ld HS) . att^T (T x T, ld T); y goes into q's space.
        self.gemm_batched(
            "attention_forward (y = att v)",
            &y_plan,
            (V, Att, Y),
            &v,
            &*att,
            &mut q,
        )?;

        let y = q.as_view();
        let kernel = T::pick(
            &self.k.attention_unpermute,
            &self.k.attention_unpermute_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(out)
            .arg(&y)
            .arg(&d.b)
            .arg(&d.t)
            .arg(&d.nh)
            .arg(&d.hs);
        // SAFETY: the arguments match attention_unpermute(_bf16); y (in q) and out both hold B*T*C
        // elements.
        launched("attention_unpermute", unsafe {
            lb.launch(grid_stride(d.btc))
        })
    }

    /// The backward: dinp (B,T,3C) += the gradients of q, k, v; datt and dpreatt (B,NH,T,T) are
    /// OVERWRITTEN with the gradients of att and preatt (zero above the diagonal), as the CPU
    /// twin's. `scratch`: at least [`attention_backward_scratch_len`] elements.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaViewMut<'_, T>,    // (B, T, 3C)
        dpreatt: &mut CudaViewMut<'_, T>, // (B, NH, T, T)
        datt: &mut CudaViewMut<'_, T>,    // (B, NH, T, T)
        dout: &CudaView<'_, T>,           // (B, T, C)
        inp: &CudaView<'_, T>,            // (B, T, 3C)
        att: &CudaView<'_, T>,            // (B, NH, T, T)
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        scratch: &mut CudaViewMut<'_, T>, // (5, B, NH, T, HS)
    ) -> Result<()> {
        const K: &str = "attention_backward";
        let d = dims(K, b, t, c, nh)?;
        check_len(K, "dinp", dinp.len(), 3 * d.btc, "B*T*3C")?;
        check_len(K, "dpreatt", dpreatt.len(), d.btt, "B*NH*T*T")?;
        check_len(K, "datt", datt.len(), d.btt, "B*NH*T*T")?;
        check_len(K, "dout", dout.len(), d.btc, "B*T*C")?;
        check_len(K, "inp", inp.len(), 3 * d.btc, "B*T*3C")?;
        check_len(K, "att", att.len(), d.btt, "B*NH*T*T")?;
        let need = attention_backward_scratch_len(b, t, c);
        if scratch.len() < need {
            bail!(
                "{K}: scratch has {} elements, needs 5*B*T*C = {need}",
                scratch.len()
            );
        }
        if d.btc == 0 {
            return Ok(());
        }
        let (mut q, mut rest) = scratch.split_at_mut(d.btc);
        let (mut k, mut rest) = rest.split_at_mut(d.btc);
        let (mut v, mut rest) = rest.split_at_mut(d.btc);
        let (mut dy, mut rest) = rest.split_at_mut(d.btc);
        let (mut dk, _) = rest.split_at_mut(d.btc);
        self.permute(K, &mut q, &mut k, &mut v, inp, &d)?;

        let kernel = T::pick(
            &self.k.attention_unpermute_backward,
            &self.k.attention_unpermute_backward_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut dy)
            .arg(dout)
            .arg(&d.b)
            .arg(&d.t)
            .arg(&d.nh)
            .arg(&d.hs);
        // SAFETY: the arguments match attention_unpermute_backward(_bf16); dy and dout hold B*T*C
        // elements.
        launched("attention_unpermute_backward", unsafe {
            lb.launch(grid_stride(d.btc))
        })?;

        let [datt_plan, dv_plan, dq_plan, dk_plan] = gemm_plan::attention_backward(b, t, c, nh);
        // datt (T,T) = dy v^T: datt^T = op_T(v^T (HS x T)) . dy^T (HS x T)
        self.gemm_batched(
            "attention_backward (datt = dy v^T)",
            &datt_plan,
            (V, Dy, Datt),
            &v,
            &dy,
            datt,
        )?;
        // dv (T,HS) = att^T dy: dv^T (HS x T) = dy^T (HS x T) . op_T(att^T (T x T)); into v's
        // space.
        self.gemm_batched(
            "attention_backward (dv = att^T dy)",
            &dv_plan,
            (Dy, Att, Dv),
            &dy,
            att,
            &mut v,
        )?;

        let bnh = d.bnh;
        let kernel = T::pick(
            &self.k.attention_softmax_backward,
            &self.k.attention_softmax_backward_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(&mut *dpreatt)
            .arg(&mut *datt)
            .arg(att)
            .arg(&bnh)
            .arg(&d.t);
        // SAFETY: the arguments match attention_softmax_backward(_bf16); dpreatt, datt and att hold
        // B*NH*T*T elements (checked); the kernel touches rows < B*NH*T of T elements.
        launched("attention_softmax_backward", unsafe {
            lb.launch(launch::warp_per_row(b * nh * t).into())
        })?;

        // dq (T,HS) = scale dpreatt k: dq^T = k^T (HS x T) . dpreatt^T (T x T); into dy's space.
        self.gemm_batched(
            "attention_backward (dq = dpreatt k)",
            &dq_plan,
            (Operand::K, Dpreatt, Dq),
            &k,
            &*dpreatt,
            &mut dy,
        )?;
        // dk (T,HS) = scale dpreatt^T q: dk^T = q^T (HS x T) . op_T(dpreatt^T (T x T)).
        self.gemm_batched(
            "attention_backward (dk = dpreatt^T q)",
            &dk_plan,
            (Q, Dpreatt, Dk),
            &q,
            &*dpreatt,
            &mut dk,
        )?;

        let (dq, dk, dv) = (dy.as_view(), dk.as_view(), v.as_view());
        let kernel = T::pick(
            &self.k.attention_permute_backward,
            &self.k.attention_permute_backward_bf16,
        );
        let mut lb = self.stream.launch_builder(kernel);
        lb.arg(dinp).arg(&dq).arg(&dk).arg(&dv);
        lb.arg(&d.b).arg(&d.t).arg(&d.nh).arg(&d.hs);
        // SAFETY: the arguments match attention_permute_backward(_bf16) (dinp, dq, dk, dv, ...); dq
        // is in dy's space and dv in v's; each holds B*T*C elements and dinp B*T*3C (checked).
        launched("attention_permute_backward", unsafe {
            lb.launch(grid_stride(d.btc))
        })
    }

    /// q, k, v (B,NH,T,HS) <- inp (B,T,3C).
    fn permute<T: DeviceFloat>(
        &self,
        kernel: &str,
        q: &mut CudaViewMut<'_, T>,
        k: &mut CudaViewMut<'_, T>,
        v: &mut CudaViewMut<'_, T>,
        inp: &CudaView<'_, T>,
        d: &Dims,
    ) -> Result<()> {
        let func = T::pick(&self.k.attention_permute, &self.k.attention_permute_bf16);
        let mut lb = self.stream.launch_builder(func);
        lb.arg(q).arg(k).arg(v).arg(inp);
        lb.arg(&d.b).arg(&d.t).arg(&d.nh).arg(&d.hs);
        // SAFETY: the arguments match attention_permute(_bf16) in kernels/attention.cu; q, k, v
        // each hold B*T*C elements (split from a checked scratch) and inp B*T*3C (checked by the
        // caller).
        launched("attention_permute", unsafe {
            lb.launch(grid_stride(d.btc))
        })
        .map_err(|e| e.context(format!("in {kernel}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels take their dimensions as 32-bit ints: a product that does not fit is an error
    /// that names it, at the exact edge (no GPU needed).
    #[test]
    fn dims_refuse_what_does_not_fit_the_kernels_ints() {
        let e = |r: Result<Dims>| format!("{}", r.err().expect("an error"));
        // B*T*3C: the largest C with 3C <= i32::MAX passes, one more fails (B*NH*T*T is 1)
        let c = i32::MAX as usize / 3;
        assert!(dims("k", 1, 1, c, 1).is_ok());
        assert!(e(dims("k", 1, 1, c + 1, 1)).contains("B*T*3C"));
        // B*NH*T*T: 46340^2 fits, 46341^2 does not
        assert!(dims("k", 1, 46340, 1, 1).is_ok());
        assert!(e(dims("k", 1, 46341, 1, 1)).contains("B*NH*T*T"));
        assert!(e(dims("k", 1, 1, 8, 3)).contains("not divisible by NH = 3"));
        assert!(e(dims("k", 1, 1, 8, 0)).contains("not divisible by NH = 0"));
        let d = dims("k", 2, 3, 8, 2).unwrap();
        assert_eq!((d.b, d.t, d.nh, d.hs, d.bnh), (2, 3, 2, 4, 4));
        assert_eq!((d.btc, d.btt), (48, 36));
    }
}
