//! A host reference of the cuBLAS / cuBLASLt products the GPU launchers describe with
//! `gpu::gemm_plan::GemmPlan`, written from the libraries' documentation, used by
//! `tests/gemm_plans.rs`.
//!
//! Semantics (cublasSgemm, cublasGemmEx, cublasSgemmStridedBatched, cublasGemmStridedBatchedEx,
//! cublasLtMatmul): column-major; for batch i (0 <= i < batch),
//! C_i = alpha op(A_i) op(B_i) + beta C_i, with op(A_i) m x k, op(B_i) k x n, C_i m x n, and
//! - A_i's element (row r, column p) at `i * stride_a + r + p * lda`, A stored m x k (lda >= m)
//!   when not transposed, k x m (lda >= k) when transposed, op(A)(r, p) = A(p, r);
//! - B likewise (k x n, ldb >= k; transposed n x k, ldb >= n); C m x n, ldc >= m;
//! - beta = 0: C is not read (it may hold NaN); otherwise it is read and scaled;
//! - the cuBLASLt epilogues, after alpha op(A) op(B) + beta C:
//!   `Bias`: + bias[r] (a packed vector of m elements, broadcast over the n columns);
//!   `GeluAuxBias`: x = ... + bias[r], aux(r, j) = x (stored, ld aux_ld), D = gelu(x);
//!   `DGelu`: D = (alpha op(A) op(B)) * gelu'(aux(r, j)), read from aux (beta must be 0: the
//!   launchers' documented use, see `gpu::matmul_lt`);
//!   the aux leading dimension must be >= m and, the cuBLASLt header says, a multiple of 8.
//!
//! GELU is the tanh form (`cpu::gelu`'s), in f64. Sums are f64, each output rounded once to f32.
//!
//! The reference refuses (an `Err` from [`try_gemm_ref`], a panic from [`gemm_ref`]), with a
//! message naming the operand, any plan that would make the library touch memory outside a buffer
//! (a leading dimension below the rows, a batch or stride reaching past the end, a bias or aux too
//! short), batches of C that overlap (a race on the GPU), C aliasing an input, a bias or aux the
//! epilogue would not use, or an epilogue without its bias or aux.
#![allow(dead_code)]

use std::collections::BTreeMap;

use train_gpt2_cuda::gpu::gemm_plan::{Epilogue, GemmPlan, Operand};

/// The host buffers of a launcher, by operand.
#[derive(Clone, Debug, Default)]
pub struct Buffers(BTreeMap<Operand, Vec<f32>>);

impl Buffers {
    pub fn new() -> Buffers {
        Buffers::default()
    }

    pub fn set(&mut self, op: Operand, data: Vec<f32>) {
        self.0.insert(op, data);
    }

    /// The buffer `op`; panics if there is none.
    #[track_caller]
    pub fn get(&self, op: Operand) -> &[f32] {
        self.0
            .get(&op)
            .unwrap_or_else(|| panic!("no buffer {op:?}"))
    }

    /// Drops `op` (its memory now holds something else: a reused scratch slot), so that a later
    /// read of it fails.
    pub fn retire(&mut self, op: Operand) {
        self.0.remove(&op);
    }

    fn try_get(&self, role: &str, op: Operand) -> Result<&[f32], String> {
        self.0
            .get(&op)
            .map(|v| v.as_slice())
            .ok_or_else(|| format!("{role} is {op:?}, which holds nothing at this point"))
    }
}

/// A matrix of `rows` x `cols` with leading dimension `ld`, `batch` times `stride` apart, inside a
/// buffer of `len` elements: Ok, or why not.
#[allow(clippy::too_many_arguments)]
fn check_extent(
    role: &str,
    op: Operand,
    len: usize,
    (rows, cols, ld): (usize, usize, usize),
    batch: usize,
    stride: usize,
) -> Result<(), String> {
    if ld < rows.max(1) {
        return Err(format!(
            "{role} ({op:?}): leading dimension {ld} below its {rows} rows"
        ));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (batch - 1) * stride + (cols - 1) * ld + rows - 1;
    if last >= len {
        return Err(format!(
            "{role} ({op:?}): batch {} of {batch} ({rows} x {cols}, ld {ld}, stride {stride}) \
             reaches element {last}, past the end of its {len} elements",
            batch - 1
        ));
    }
    Ok(())
}

/// gelu(x), the tanh form.
pub fn gelu(x: f64) -> f64 {
    let s = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (s * (x + 0.044715 * x * x * x)).tanh())
}

/// d gelu(x) / dx, the tanh form.
pub fn gelu_grad(x: f64) -> f64 {
    let s = (2.0 / std::f64::consts::PI).sqrt();
    let th = (s * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * s * (1.0 + 3.0 * 0.044715 * x * x)
}

/// Runs `p` on `bufs` as the library would, or says why the plan is invalid (nothing written).
pub fn try_gemm_ref(p: &GemmPlan, bufs: &mut Buffers) -> Result<(), String> {
    if p.batch == 0 {
        return Err("batch count 0: the product would compute nothing".into());
    }
    if p.c == p.a || p.c == p.b {
        return Err(format!("C ({:?}) is also an input of the product", p.c));
    }
    let (a_rows, a_cols) = if p.transa { (p.k, p.m) } else { (p.m, p.k) };
    let (b_rows, b_cols) = if p.transb { (p.n, p.k) } else { (p.k, p.n) };
    let a = bufs.try_get("A", p.a)?;
    let b = bufs.try_get("B", p.b)?;
    let c = bufs.try_get("C", p.c)?;
    check_extent(
        "A",
        p.a,
        a.len(),
        (a_rows, a_cols, p.lda),
        p.batch,
        p.stride_a,
    )?;
    check_extent(
        "B",
        p.b,
        b.len(),
        (b_rows, b_cols, p.ldb),
        p.batch,
        p.stride_b,
    )?;
    check_extent("C", p.c, c.len(), (p.m, p.n, p.ldc), p.batch, p.stride_c)?;
    let c_extent = if p.m == 0 || p.n == 0 {
        0
    } else {
        (p.n - 1) * p.ldc + p.m
    };
    if p.batch > 1 && p.stride_c < c_extent {
        return Err(format!(
            "C ({:?}): batches {} elements apart overlap (each spans {c_extent})",
            p.c, p.stride_c
        ));
    }

    let (wants_bias, wants_aux) = match p.epilogue {
        Epilogue::Default => (false, false),
        Epilogue::Bias => (true, false),
        Epilogue::GeluAuxBias => (true, true),
        Epilogue::DGelu => (false, true),
    };
    if p.epilogue != Epilogue::Default && p.batch != 1 {
        return Err("epilogues are only modelled unbatched".into());
    }
    match (wants_bias, p.bias) {
        (true, None) => return Err(format!("epilogue {:?} without a bias", p.epilogue)),
        (false, Some(op)) => {
            return Err(format!(
                "a bias ({op:?}) that epilogue {:?} ignores",
                p.epilogue
            ))
        }
        _ => {}
    }
    match (wants_aux, p.aux) {
        (true, None) => return Err(format!("epilogue {:?} without an aux", p.epilogue)),
        (false, Some((op, _))) => {
            return Err(format!(
                "an aux ({op:?}) that epilogue {:?} ignores",
                p.epilogue
            ))
        }
        _ => {}
    }
    let bias = match p.bias {
        Some(op) => {
            let v = bufs.try_get("bias", op)?;
            if v.len() < p.m {
                return Err(format!(
                    "bias ({op:?}): {} elements, the epilogue reads m = {}",
                    v.len(),
                    p.m
                ));
            }
            Some(v)
        }
        None => None,
    };
    if let Some((op, ld)) = p.aux {
        if op == p.a || op == p.b || op == p.c {
            return Err(format!("aux ({op:?}) is also an operand of the product"));
        }
        let len = bufs.try_get("aux", op)?.len();
        check_extent("aux", op, len, (p.m, p.n, ld), 1, 0)?;
        if !ld.is_multiple_of(8) {
            return Err(format!(
                "aux ({op:?}): leading dimension {ld} is not a multiple of 8 \
                 (CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD)"
            ));
        }
    }
    if p.epilogue == Epilogue::DGelu && p.beta != 0.0 {
        return Err(format!("DGELU with beta {} (must be 0)", p.beta));
    }

    // Compute into fresh vectors, then store: no output is an input (checked above).
    let aux_in = match (p.epilogue, p.aux) {
        (Epilogue::DGelu, Some((op, _))) => Some(bufs.get(op)),
        _ => None,
    };
    let mut d = c.to_vec();
    let mut aux_out = match (p.epilogue, p.aux) {
        (Epilogue::GeluAuxBias, Some((op, _))) => Some(bufs.get(op).to_vec()),
        _ => None,
    };
    let aux_ld = p.aux.map_or(0, |(_, ld)| ld);
    for i in 0..p.batch {
        let (a0, b0, c0) = (i * p.stride_a, i * p.stride_b, i * p.stride_c);
        for j in 0..p.n {
            for r in 0..p.m {
                let mut acc = 0.0f64;
                for q in 0..p.k {
                    let x = if p.transa {
                        a[a0 + q + r * p.lda]
                    } else {
                        a[a0 + r + q * p.lda]
                    };
                    let y = if p.transb {
                        b[b0 + j + q * p.ldb]
                    } else {
                        b[b0 + q + j * p.ldb]
                    };
                    acc += x as f64 * y as f64;
                }
                let ci = c0 + r + j * p.ldc;
                let mut v = p.alpha as f64 * acc;
                if p.beta != 0.0 {
                    v += p.beta as f64 * c[ci] as f64;
                }
                let xi = r + j * aux_ld;
                v = match p.epilogue {
                    Epilogue::Default => v,
                    Epilogue::Bias => v + bias.expect("checked")[r] as f64,
                    Epilogue::GeluAuxBias => {
                        let x = v + bias.expect("checked")[r] as f64;
                        aux_out.as_mut().expect("checked")[xi] = x as f32;
                        gelu(x)
                    }
                    Epilogue::DGelu => v * gelu_grad(aux_in.expect("checked")[xi] as f64),
                };
                d[ci] = v as f32;
            }
        }
    }
    bufs.set(p.c, d);
    if let (Some(v), Some((op, _))) = (aux_out, p.aux) {
        bufs.set(op, v);
    }
    Ok(())
}

/// [`try_gemm_ref`], panicking with the reason on an invalid plan.
#[track_caller]
pub fn gemm_ref(p: &GemmPlan, bufs: &mut Buffers) {
    if let Err(e) = try_gemm_ref(p, bufs) {
        panic!("invalid product {p:?}: {e}");
    }
}
