//! The matrix products of the GPU launchers as plain descriptions: for each cuBLAS or cuBLASLt
//! call, the transposes, m, n, k, leading dimensions, alpha, beta, batch count and strides, the
//! cuBLASLt epilogue and its aux leading dimension, and which of the launcher's buffers is A, B,
//! C/D, the bias and the aux. No CUDA types: compiled in every build, like `launch`. The launchers
//! (`matmul.rs`, `attention.rs`, `matmul_lt.rs`) build their cudarc configurations and cuBLASLt
//! products from these functions only, and `tests/gemm_plans.rs` runs the same descriptions
//! through a host reference of the libraries' column-major semantics (`tests/gemm_ref/`) and
//! compares with the CPU twins.
//!
//! Conventions (cuBLAS's and cuBLASLt's): column-major; op(A) is m x k, op(B) k x n, C/D m x n;
//! A is stored k x m (rows x columns) when `transa`, else m x k, with `lda` >= its rows; likewise
//! B (n x k when `transb`, else k x n) and C (m x n, `ldc` >= m). Batch i reads A at
//! `i * stride_a` (and so on); unbatched products have batch 1 and strides 0. With beta 0 C is
//! not read. llm.c's row-major (R, K) buffer is, read column-major with leading dimension K, its
//! (K x R) transpose: that is how every row-major product below becomes a column-major one.

/// A buffer of a launcher, by the name of its role (the launchers' argument names, the attention
/// scratch by its per-head contents).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operand {
    /// (B,T,C) a matmul's input.
    Inp,
    /// (OC,C) a matmul's weight.
    Weight,
    /// (OC) a matmul's bias.
    Bias,
    /// (B,T,OC) a matmul's output (with the GELU epilogue: gelu(PreGelu)).
    Out,
    /// The GELU input: (B,T,OC) written by the forward, (B,T,C) read by the backward.
    PreGelu,
    /// (B,T,OC) the gradient of a matmul's output.
    Dout,
    /// (B,T,C) the gradient of a matmul's input (`dpre` in the DGELU backward).
    Dinp,
    /// (OC,C) the weight gradient.
    Dweight,
    /// (OC) the bias gradient.
    Dbias,
    /// (B*T) ones: cuBLASLt's bias gradient as a product.
    Ones,
    /// (B,NH,T,HS) attention's per-head queries, keys and values (scratch).
    Q,
    K,
    V,
    /// (B,NH,T,T) the scaled scores and the probabilities.
    Preatt,
    Att,
    /// (B,NH,T,HS) attention's output per head, before the unpermute (in Q's scratch).
    Y,
    /// (B,NH,T,HS) the gradient of Y (scratch).
    Dy,
    /// (B,NH,T,T) the gradients of Att and Preatt.
    Datt,
    Dpreatt,
    /// (B,NH,T,HS) the gradients of Q (in Dy's scratch), K and V (in V's scratch).
    Dq,
    Dk,
    Dv,
}

/// The cuBLASLt epilogue of a product (`CUBLASLT_EPILOGUE_*`); plain cuBLAS products are
/// `Default`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// D = alpha op(A) op(B) + beta C.
    Default,
    /// D = alpha op(A) op(B) + beta C + bias (m elements, broadcast over the n columns).
    Bias,
    /// aux = alpha op(A) op(B) + beta C + bias; D = gelu(aux) (the tanh form).
    GeluAuxBias,
    /// D = (alpha op(A) op(B)) * gelu'(aux); beta 0.
    DGelu,
}

/// One product: D (m x n, ld ldc) = alpha op(A) op(B) + beta C, column-major, `batch` times with
/// the strides, then the epilogue. See the file doc for the conventions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmPlan {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    /// C's and D's (cuBLASLt's D is C here).
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    /// 1 for an unbatched product.
    pub batch: usize,
    /// Elements between consecutive batches of A, B, C (0 unbatched).
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub a: Operand,
    pub b: Operand,
    pub c: Operand,
    pub epilogue: Epilogue,
    /// The bias vector (m elements) of `Bias` and `GeluAuxBias`.
    pub bias: Option<Operand>,
    /// The GELU input (m x n, its leading dimension) of `GeluAuxBias` (written) and `DGelu` (read).
    pub aux: Option<(Operand, usize)>,
}

impl GemmPlan {
    /// An unbatched product with the epilogue `Default` and no bias or aux.
    #[allow(clippy::too_many_arguments)]
    fn plain(
        (transa, transb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        (a, lda): (Operand, usize),
        (b, ldb): (Operand, usize),
        (c, ldc): (Operand, usize),
        alpha: f32,
        beta: f32,
    ) -> GemmPlan {
        GemmPlan {
            transa,
            transb,
            m,
            n,
            k,
            lda,
            ldb,
            ldc,
            alpha,
            beta,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            a,
            b,
            c,
            epilogue: Epilogue::Default,
            bias: None,
            aux: None,
        }
    }

    /// Whether A, B and C are the buffers `(a, b, c)` (the launchers check the plan against the
    /// buffers they pass): an error message naming `what` otherwise.
    pub fn check_operands(
        &self,
        what: &str,
        abc: (Operand, Operand, Operand),
    ) -> Result<(), String> {
        if (self.a, self.b, self.c) == abc {
            Ok(())
        } else {
            Err(format!(
                "{what}: the plan's operands (A, B, C) are {:?}, the launcher passes {abc:?}",
                (self.a, self.b, self.c)
            ))
        }
    }
}

use Operand::*;

/// `Gpu::matmul_forward`'s product (the bias is a separate kernel): out^T (OC x BT, ld OC) =
/// op_T(weight: C x OC, ld C) . inp^T (C x BT, ld C); overwrites.
pub fn matmul_forward(bt: usize, c: usize, oc: usize) -> GemmPlan {
    GemmPlan::plain(
        (true, false),
        (oc, bt, c),
        (Weight, c),
        (Inp, c),
        (Out, oc),
        1.0,
        0.0,
    )
}

/// `Gpu::matmul_backward`'s input gradient: dinp^T (C x BT, ld C) += weight^T (C x OC, ld C) .
/// dout^T (OC x BT, ld OC); accumulates (beta 1).
pub fn matmul_backward_dinp(bt: usize, c: usize, oc: usize) -> GemmPlan {
    GemmPlan::plain(
        (false, false),
        (c, bt, oc),
        (Weight, c),
        (Dout, oc),
        (Dinp, c),
        1.0,
        1.0,
    )
}

/// `Gpu::matmul_backward`'s weight gradient (and cuBLASLt's): dweight^T (C x OC, ld C) +=
/// inp^T (C x BT, ld C) . op_T(dout^T: OC x BT, ld OC); accumulates (beta 1).
pub fn matmul_backward_dweight(bt: usize, c: usize, oc: usize) -> GemmPlan {
    GemmPlan::plain(
        (false, true),
        (c, oc, bt),
        (Inp, c),
        (Dout, oc),
        (Dweight, c),
        1.0,
        1.0,
    )
}

/// The per-head products of `Gpu::attention_forward` and `Gpu::attention_backward`, batched over
/// the B*NH heads, each head a row-major (T,HS) or (T,T) matrix (T*HS or T*T elements apart).
/// All overwrite (beta 0).
fn attention_gemm(
    heads: usize,
    trans: (bool, bool),
    mnk: (usize, usize, usize),
    alpha: f32,
    (a, lda, stride_a): (Operand, usize, usize),
    (bm, ldb, stride_b): (Operand, usize, usize),
    (cm, ldc, stride_c): (Operand, usize, usize),
) -> GemmPlan {
    GemmPlan {
        batch: heads,
        stride_a,
        stride_b,
        stride_c,
        ..GemmPlan::plain(trans, mnk, (a, lda), (bm, ldb), (cm, ldc), alpha, 0.0)
    }
}

/// 1 / sqrt(HS), attention's score scale (as the launchers compute it).
pub fn attention_scale(c: usize, nh: usize) -> f32 {
    1.0 / ((c / nh) as f32).sqrt()
}

/// The forward's products: `.0` preatt (T,T) = scale q k^T, column-major preatt^T (T x T, ld T) =
/// scale op_T(k^T: HS x T, ld HS) . q^T (HS x T, ld HS); `.1` y (T,HS) = att v, y^T (HS x T,
/// ld HS) = v^T (HS x T, ld HS) . att^T (T x T, ld T) (y goes into q's scratch).
pub fn attention_forward(b: usize, t: usize, c: usize, nh: usize) -> (GemmPlan, GemmPlan) {
    let d = b * nh;
    let hs = c / nh;
    let (tt, ths) = (t * t, t * hs);
    let scale = attention_scale(c, nh);
    let preatt = attention_gemm(
        d,
        (true, false),
        (t, t, hs),
        scale,
        (K, hs, ths),
        (Q, hs, ths),
        (Preatt, t, tt),
    );
    let y = attention_gemm(
        d,
        (false, false),
        (hs, t, t),
        1.0,
        (V, hs, ths),
        (Att, t, tt),
        (Y, hs, ths),
    );
    (preatt, y)
}

/// The backward's four products, in launch order (the softmax backward comes between the second
/// and the third):
/// - datt (T,T) = dy v^T: datt^T = op_T(v^T: HS x T) . dy^T (HS x T);
/// - dv (T,HS) = att^T dy: dv^T (HS x T) = dy^T (HS x T) . op_T(att^T: T x T) (into v's scratch);
/// - dq (T,HS) = scale dpreatt k: dq^T = k^T (HS x T) . dpreatt^T (T x T) (into dy's scratch);
/// - dk (T,HS) = scale dpreatt^T q: dk^T = q^T (HS x T) . op_T(dpreatt^T: T x T).
pub fn attention_backward(b: usize, t: usize, c: usize, nh: usize) -> [GemmPlan; 4] {
    let d = b * nh;
    let hs = c / nh;
    let (tt, ths) = (t * t, t * hs);
    let scale = attention_scale(c, nh);
    let datt = attention_gemm(
        d,
        (true, false),
        (t, t, hs),
        1.0,
        (V, hs, ths),
        (Dy, hs, ths),
        (Datt, t, tt),
    );
    let dv = attention_gemm(
        d,
        (false, true),
        (hs, t, t),
        1.0,
        (Dy, hs, ths),
        (Att, t, tt),
        (Dv, hs, ths),
    );
    let dq = attention_gemm(
        d,
        (false, false),
        (hs, t, t),
        scale,
        (K, hs, ths),
        (Dpreatt, t, tt),
        (Dq, hs, ths),
    );
    let dk = attention_gemm(
        d,
        (false, true),
        (hs, t, t),
        scale,
        (Q, hs, ths),
        (Dpreatt, t, tt),
        (Dk, hs, ths),
    );
    [datt, dv, dq, dk]
}

/// cuBLASLt's forward (`matmul_forward_lt`, and with `gelu` `matmul_forward_gelu_lt`):
/// out^T (OC x BT, ld OC) = op_T(weight: C x OC, ld C) . inp^T (C x BT, ld C), then
/// `GeluAuxBias` when `gelu` (aux = pre_gelu^T, OC x BT, ld OC), else `Bias` with a bias, else
/// `Default`. Overwrites (beta 0).
pub fn lt_forward(bt: usize, c: usize, oc: usize, bias: bool, gelu: bool) -> GemmPlan {
    let epilogue = match (gelu, bias) {
        (true, _) => Epilogue::GeluAuxBias,
        (false, true) => Epilogue::Bias,
        (false, false) => Epilogue::Default,
    };
    GemmPlan {
        epilogue,
        bias: bias.then_some(Bias),
        aux: gelu.then_some((PreGelu, oc)),
        ..matmul_forward(bt, c, oc)
    }
}

/// cuBLASLt's input gradient: dinp^T (C x BT, ld C) = [dinp^T +] weight (C x OC, ld C) .
/// dout^T (OC x BT, ld OC), accumulating (beta 1) when `accumulate`; with `dgelu` the `DGelu`
/// epilogue (aux = pre_gelu^T, C x BT, ld C) and beta 0 whatever `accumulate` says.
pub fn lt_dinp(bt: usize, c: usize, oc: usize, accumulate: bool, dgelu: bool) -> GemmPlan {
    GemmPlan {
        beta: if accumulate && !dgelu { 1.0 } else { 0.0 },
        epilogue: if dgelu {
            Epilogue::DGelu
        } else {
            Epilogue::Default
        },
        aux: dgelu.then_some((PreGelu, c)),
        ..matmul_backward_dinp(bt, c, oc)
    }
}

/// cuBLASLt's bias gradient: dbias (OC x 1, ld OC) += dout^T (OC x BT, ld OC) . ones (BT x 1,
/// ld BT); accumulates (beta 1).
pub fn lt_dbias(bt: usize, oc: usize) -> GemmPlan {
    GemmPlan::plain(
        (false, false),
        (oc, 1, bt),
        (Dout, oc),
        (Ones, bt),
        (Dbias, oc),
        1.0,
        1.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_check_names_both_sides() {
        let p = matmul_forward(6, 4, 5);
        assert!(p.check_operands("f", (Weight, Inp, Out)).is_ok());
        let e = p.check_operands("f", (Inp, Weight, Out)).unwrap_err();
        assert_eq!(
            e,
            "f: the plan's operands (A, B, C) are (Weight, Inp, Out), the launcher passes \
             (Inp, Weight, Out)"
        );
    }

    #[test]
    fn lt_plans_share_the_cublas_shapes() {
        let f = lt_forward(15, 24, 40, true, true);
        assert_eq!(f.epilogue, Epilogue::GeluAuxBias);
        assert_eq!((f.bias, f.aux), (Some(Bias), Some((PreGelu, 40))));
        let d = lt_dinp(15, 24, 40, true, true);
        assert_eq!((d.beta, d.aux), (0.0, Some((PreGelu, 24))));
        assert_eq!(lt_dinp(15, 24, 40, true, false).beta, 1.0);
    }
}
