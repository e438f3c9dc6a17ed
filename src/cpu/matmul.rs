//! Matmul, the layer that dominates the CPU path: `out = inp @ weight^T + bias`, and its backward
//! (`dinp += dout @ weight`, `dweight += dout^T @ inp`, `dbias += sum over B*T of dout`).
//!
//! All three products go through one cache-blocked GEMM, `C += A @ B`, with A and B read through
//! strides, so that no transpose is ever materialised:
//! - the output C is cut into tiles of at most MC x NC; each tile is one rayon job, owned by one
//!   thread, and runs over the whole K dimension in blocks of KC. Every element of C therefore sums
//!   its K terms in the same order whatever the number of threads: the results (weight gradients
//!   included) are bitwise reproducible run to run and independent of the thread count.
//! - per K block, the job packs its rows of A into MR-row panels and its columns of B into NR-column
//!   panels (zero-padded at the edges), so the micro-kernel reads both with unit stride.
//! - the micro-kernel keeps an MR x NR tile of accumulators in registers and, for each k, adds the
//!   outer product of an MR-column of A and an NR-row of B: plain Rust loops with constant bounds
//!   that LLVM unrolls and vectorises. It is compiled three times and picked at run time: AVX-512 +
//!   FMA (MR x NR = 12 x 32), AVX2 + FMA (6 x 16), and the baseline target (4 x 8: SSE2 on x86_64,
//!   NEON on aarch64), so the crate needs no `-C target-cpu` flag. With FMA each product-add is
//!   rounded once, without it twice; either way accumulation is plain fp32, in blocks of KC.
//!
//! `C += A @ B` adds each K block's partial sum to C (the bias, for the forward, is written first),
//! so an element of C is `((c0 + s_0) + s_1) + ...` with `s_i` the fp32 sum over the i-th K block.

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

/// Depth of a K block: a packed NR-column panel of B is KC * NR floats (32 KiB for NR = 32), meant
/// to stay in L1 while the MR-row panels of A stream past it from L2.
const KC: usize = 256;
/// Most rows of C per job (the packed A block, MC * KC floats, stays in L2).
const MC_MAX: usize = 256;
/// Most and fewest columns of C per job (the packed B block is KC * NC floats).
const NC_MAX: usize = 512;
const NC_MIN: usize = 64;

/// Forward: `out = inp @ weight^T + bias` (bias optional).
pub fn matmul_forward(
    out: &mut [f32],      // (B, T, OC)
    inp: &[f32],          // (B, T, C)
    weight: &[f32],       // (OC, C)
    bias: Option<&[f32]>, // (OC)
    b: usize,
    t: usize,
    c: usize,
    oc: usize,
) {
    let bt = b * t;
    assert_eq!(out.len(), bt * oc, "matmul_forward: out must be (B, T, OC)");
    assert_eq!(inp.len(), bt * c, "matmul_forward: inp must be (B, T, C)");
    assert_eq!(
        weight.len(),
        oc * c,
        "matmul_forward: weight must be (OC, C)"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), oc, "matmul_forward: bias must be (OC)");
    }
    // A = inp (BT, C) row-major; B = weight^T (C, OC): element (k, j) is weight[j * C + k].
    gemm(
        bt,
        oc,
        c,
        Mat {
            data: inp,
            rs: c,
            cs: 1,
        },
        Mat {
            data: weight,
            rs: 1,
            cs: c,
        },
        out,
        Init::Overwrite(bias),
    );
}

/// Backward: `dinp += dout @ weight`, `dweight += dout^T @ inp`, `dbias += sum over B*T of dout`.
pub fn matmul_backward(
    dinp: &mut [f32],          // (B, T, C)
    dweight: &mut [f32],       // (OC, C)
    dbias: Option<&mut [f32]>, // (OC)
    dout: &[f32],              // (B, T, OC)
    inp: &[f32],               // (B, T, C)
    weight: &[f32],            // (OC, C)
    b: usize,
    t: usize,
    c: usize,
    oc: usize,
) {
    let bt = b * t;
    assert_eq!(
        dinp.len(),
        bt * c,
        "matmul_backward: dinp must be (B, T, C)"
    );
    assert_eq!(
        dweight.len(),
        oc * c,
        "matmul_backward: dweight must be (OC, C)"
    );
    assert_eq!(
        dout.len(),
        bt * oc,
        "matmul_backward: dout must be (B, T, OC)"
    );
    assert_eq!(inp.len(), bt * c, "matmul_backward: inp must be (B, T, C)");
    assert_eq!(
        weight.len(),
        oc * c,
        "matmul_backward: weight must be (OC, C)"
    );
    // dinp (BT, C) += dout (BT, OC) @ weight (OC, C).
    gemm(
        bt,
        c,
        oc,
        Mat {
            data: dout,
            rs: oc,
            cs: 1,
        },
        Mat {
            data: weight,
            rs: c,
            cs: 1,
        },
        dinp,
        Init::Accumulate,
    );
    // dweight (OC, C) += dout^T (OC, BT) @ inp (BT, C): element (i, k) of dout^T is dout[k * OC + i].
    gemm(
        oc,
        c,
        bt,
        Mat {
            data: dout,
            rs: 1,
            cs: oc,
        },
        Mat {
            data: inp,
            rs: c,
            cs: 1,
        },
        dweight,
        Init::Accumulate,
    );
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc, "matmul_backward: dbias must be (OC)");
        // Each job owns a run of output channels and sums its columns over the B*T rows in order,
        // in f64 (a lane per channel, so it vectorises), then adds the sum to dbias.
        const CH: usize = 256;
        dbias.par_chunks_mut(CH).enumerate().for_each(|(ci, db)| {
            let o0 = ci * CH;
            let mut acc = vec![0.0f64; db.len()];
            for row in dout.chunks_exact(oc) {
                for (a, &x) in acc.iter_mut().zip(&row[o0..o0 + db.len()]) {
                    *a += x as f64;
                }
            }
            for (d, a) in db.iter_mut().zip(acc) {
                *d += a as f32;
            }
        });
    }
}

/// A read-only matrix inside a slice: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// What the GEMM does with the C it is given.
#[derive(Clone, Copy)]
enum Init<'a> {
    /// `C = bias + A @ B` (bias broadcast over rows; zero when None).
    Overwrite(Option<&'a [f32]>),
    /// `C += A @ B`.
    Accumulate,
}

/// The micro-kernels this build can run on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Baseline,
}

/// The fastest micro-kernel the CPU supports (checked at run time; std caches the answer).
fn best_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Every micro-kernel the CPU supports, fastest first (the unit tests run each one).
#[cfg(test)]
fn available_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx512);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2);
        }
    }
    v.push(Isa::Baseline);
    v
}

/// `C (M, N) op= A (M, K) @ B (K, N)`, C row-major and contiguous; see the file comment.
fn gemm(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], init: Init) {
    gemm_isa(best_isa(), m, n, k, a, b, c, init)
}

fn gemm_isa(isa: Isa, m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], init: Init) {
    match isa {
        // The kernels are `unsafe fn`s because they are compiled with target features; `best_isa`
        // and `available_isas` only name an ISA after checking the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => gemm_driver::<12, 32>(x86::kernel_avx512, m, n, k, a, b, c, init),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => gemm_driver::<6, 16>(x86::kernel_avx2, m, n, k, a, b, c, init),
        Isa::Baseline => gemm_driver::<4, 8>(kernel_baseline, m, n, k, a, b, c, init),
    }
}

/// A micro-kernel: `out = sum over p < kc of outer(a[p*MR..][..MR], b[p*NR..][..NR])`, with `a` an
/// MR-row panel and `b` an NR-column panel, both packed (see [`pack_a`], [`pack_b`]).
type Kernel<const MR: usize, const NR: usize> =
    unsafe fn(kc: usize, a: &[f32], b: &[f32], out: &mut [[f32; NR]; MR]);

/// A raw pointer to C that jobs share; each job writes only its own tile.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
impl CPtr {
    /// The pointer (a method, so that closures capture the whole Send + Sync wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the pointer is only dereferenced by jobs writing disjoint tiles of C (see gemm_driver),
// while the `&mut [f32]` it came from is borrowed for the whole parallel section.
unsafe impl Send for CPtr {}
// SAFETY: as above: shared between jobs, but no two jobs touch the same element.
unsafe impl Sync for CPtr {}

fn gemm_driver<const MR: usize, const NR: usize>(
    kernel: Kernel<MR, NR>,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    init: Init,
) {
    assert_eq!(c.len(), m * n, "gemm: C must be (M, N)");
    if m == 0 || n == 0 {
        return;
    }
    // Bounds of the strided reads, checked once here so that packing can index freely (it still
    // bounds-checks, but these asserts give the error a name).
    assert!(
        k == 0 || (m - 1) * a.rs + (k - 1) * a.cs < a.data.len(),
        "gemm: A is too short"
    );
    assert!(
        k == 0 || (k - 1) * b.rs + (n - 1) * b.cs < b.data.len(),
        "gemm: B is too short"
    );
    if let Init::Overwrite(Some(bias)) = init {
        assert_eq!(bias.len(), n, "gemm: bias must be (N)");
    }
    if k == 0 {
        // No terms: C = bias or C unchanged.
        if let Init::Overwrite(bias) = init {
            for row in c.chunks_exact_mut(n) {
                match bias {
                    Some(bias) => row.copy_from_slice(bias),
                    None => row.fill(0.0),
                }
            }
        }
        return;
    }

    // Tile sizes: as large as the caches allow, but with enough jobs (about 4 per thread) that the
    // threads finish together. Tile sizes decide only who computes an element, never its value.
    let threads = rayon::current_num_threads().max(1);
    let want_jobs = 4 * threads;
    let mc = MC_MAX.min(m.div_ceil(MR) * MR);
    let m_blocks = m.div_ceil(mc);
    let n_blocks_wanted = want_jobs.div_ceil(m_blocks);
    let nc = n
        .div_ceil(n_blocks_wanted)
        .div_ceil(NR)
        .max(1)
        .saturating_mul(NR)
        .clamp(NC_MIN.max(NR), NC_MAX);
    let n_blocks = n.div_ceil(nc);
    let jobs = m_blocks * n_blocks;

    let cptr = CPtr(c.as_mut_ptr());
    (0..jobs).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new()),
        |(apack, bpack), job| {
            let (ib, jb) = (job / n_blocks, job % n_blocks);
            let (i0, j0) = (ib * mc, jb * nc);
            let (mcur, ncur) = (mc.min(m - i0), nc.min(n - j0));
            let (mpanels, npanels) = (mcur.div_ceil(MR), ncur.div_ceil(NR));
            let mut tile = [[0.0f32; NR]; MR];
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                apack.resize(mpanels * MR * kc, 0.0);
                bpack.resize(npanels * NR * kc, 0.0);
                pack_a::<MR>(apack, a, i0, mcur, p0, kc);
                pack_b::<NR>(bpack, b, p0, kc, j0, ncur);
                let first = p0 == 0;
                for (s, bpanel) in bpack.chunks_exact(NR * kc).enumerate() {
                    let jj0 = j0 + s * NR;
                    let cols = NR.min(j0 + ncur - jj0);
                    for (r, apanel) in apack.chunks_exact(MR * kc).enumerate() {
                        let ii0 = i0 + r * MR;
                        let rows = MR.min(i0 + mcur - ii0);
                        // SAFETY: `kernel` was chosen by `gemm_isa` after a run-time check that
                        // this CPU has the target features it was compiled for.
                        unsafe { kernel(kc, apanel, bpanel, &mut tile) };
                        for (ii, acc) in tile.iter().enumerate().take(rows) {
                            // SAFETY: rows ii0..ii0+rows and columns jj0..jj0+cols lie inside this
                            // job's tile (i0..i0+mcur, j0..j0+ncur), which lies inside C (M x N,
                            // length checked above). Jobs' tiles are disjoint and `c` is mutably
                            // borrowed for the whole parallel section, so no other reference to
                            // these elements exists while this slice lives.
                            let crow = unsafe {
                                std::slice::from_raw_parts_mut(
                                    cptr.get().add((ii0 + ii) * n + jj0),
                                    cols,
                                )
                            };
                            let acc = &acc[..cols];
                            match (first, init) {
                                (true, Init::Overwrite(Some(bias))) => {
                                    let bias = &bias[jj0..jj0 + cols];
                                    for ((cv, &x), &bv) in crow.iter_mut().zip(acc).zip(bias) {
                                        *cv = bv + x;
                                    }
                                }
                                (true, Init::Overwrite(None)) => crow.copy_from_slice(acc),
                                _ => {
                                    for (cv, &x) in crow.iter_mut().zip(acc) {
                                        *cv += x;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    );
}

/// Packs rows i0..i0+mc, columns p0..p0+kc of A into MR-row panels: panel r holds, for each p,
/// the MR values A[i0 + r*MR + ii, p0 + p] at `dst[r*MR*kc + p*MR + ii]`; rows past mc are zero.
fn pack_a<const MR: usize>(dst: &mut [f32], a: Mat, i0: usize, mc: usize, p0: usize, kc: usize) {
    for (r, panel) in dst.chunks_exact_mut(MR * kc).enumerate() {
        let rows = MR.min(mc - r * MR);
        let base = (i0 + r * MR) * a.rs + p0 * a.cs;
        if a.cs == 1 {
            // Rows of A are contiguous: read along each row.
            for ii in 0..MR {
                if ii < rows {
                    let src = &a.data[base + ii * a.rs..][..kc];
                    for (p, &x) in src.iter().enumerate() {
                        panel[p * MR + ii] = x;
                    }
                } else {
                    for p in 0..kc {
                        panel[p * MR + ii] = 0.0;
                    }
                }
            }
        } else {
            // Columns of A are contiguous (A is a transpose): read MR values per column.
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let col = base + p * a.cs;
                for (ii, d) in dst.iter_mut().enumerate() {
                    *d = if ii < rows {
                        a.data[col + ii * a.rs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs rows p0..p0+kc, columns j0..j0+nc of B into NR-column panels: panel s holds, for each p,
/// the NR values B[p0 + p, j0 + s*NR + jj] at `dst[s*NR*kc + p*NR + jj]`; columns past nc are zero.
fn pack_b<const NR: usize>(dst: &mut [f32], b: Mat, p0: usize, kc: usize, j0: usize, nc: usize) {
    for (s, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
        let cols = NR.min(nc - s * NR);
        let base = p0 * b.rs + (j0 + s * NR) * b.cs;
        if b.cs == 1 {
            // Rows of B are contiguous: copy NR values per row.
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let src = &b.data[base + p * b.rs..][..cols];
                dst[..cols].copy_from_slice(src);
                dst[cols..].fill(0.0);
            }
        } else {
            // Columns of B are contiguous (B is a transpose): read down each column.
            for jj in 0..NR {
                if jj < cols {
                    let src = &b.data[base + jj * b.cs..][..(kc - 1) * b.rs + 1];
                    for p in 0..kc {
                        panel[p * NR + jj] = src[p * b.rs];
                    }
                } else {
                    for p in 0..kc {
                        panel[p * NR + jj] = 0.0;
                    }
                }
            }
        }
    }
}

/// The micro-kernel's body, inlined into each target-feature variant. With `FMA`, each step is one
/// fused multiply-add; without, a multiply and an add (what the baseline x86_64 target has).
#[inline(always)]
fn kernel_body<const MR: usize, const NR: usize, const FMA: bool>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    out: &mut [[f32; NR]; MR],
) {
    let mut acc = [[0.0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        let ap: &[f32; MR] = ap.try_into().unwrap();
        let bp: &[f32; NR] = bp.try_into().unwrap();
        for i in 0..MR {
            let ai = ap[i];
            for j in 0..NR {
                acc[i][j] = if FMA {
                    ai.mul_add(bp[j], acc[i][j])
                } else {
                    acc[i][j] + ai * bp[j]
                };
            }
        }
    }
    *out = acc;
}

/// Whether the baseline target has a fused multiply-add instruction (so `mul_add` is one
/// instruction rather than a libm call).
const BASELINE_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

fn kernel_baseline(kc: usize, a: &[f32], b: &[f32], out: &mut [[f32; 8]; 4]) {
    kernel_body::<4, 8, BASELINE_FMA>(kc, a, b, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// 12 x 32: 24 zmm accumulators, two zmm rows of B, and broadcasts of A.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn kernel_avx512(kc: usize, a: &[f32], b: &[f32], out: &mut [[f32; 32]; 12]) {
        super::kernel_body::<12, 32, true>(kc, a, b, out)
    }

    /// 6 x 16: 12 ymm accumulators, two ymm rows of B, and broadcasts of A.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_avx2(kc: usize, a: &[f32], b: &[f32], out: &mut [[f32; 16]; 6]) {
        super::kernel_body::<6, 16, true>(kc, a, b, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn rand_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect()
    }

    /// Every kernel, on strided A and B of awkward sizes (several K blocks, partial tiles), against
    /// a naive f64 product.
    #[test]
    fn every_kernel_matches_naive_f64() {
        let mut rng = Rng::new(7);
        for isa in available_isas() {
            for &(m, n, k) in &[(1, 1, 1), (13, 37, 5), (29, 70, 300), (50, 33, 517)] {
                let a = rand_vec(&mut rng, m * k); // stored (M, K)
                let bt = rand_vec(&mut rng, n * k); // stored (N, K): B transposed
                let bias = rand_vec(&mut rng, n);
                let mut c = vec![f32::NAN; m * n];
                gemm_isa(
                    isa,
                    m,
                    n,
                    k,
                    Mat {
                        data: &a,
                        rs: k,
                        cs: 1,
                    },
                    Mat {
                        data: &bt,
                        rs: 1,
                        cs: k,
                    },
                    &mut c,
                    Init::Overwrite(Some(&bias)),
                );
                // Again as C += A^T^T @ B, reading A through its transpose layout.
                let mut at = vec![0.0f32; k * m];
                for i in 0..m {
                    for p in 0..k {
                        at[p * m + i] = a[i * k + p];
                    }
                }
                let mut b = vec![0.0f32; k * n];
                for j in 0..n {
                    for p in 0..k {
                        b[p * n + j] = bt[j * k + p];
                    }
                }
                let mut c2 = vec![1.0f32; m * n];
                gemm_isa(
                    isa,
                    m,
                    n,
                    k,
                    Mat {
                        data: &at,
                        rs: 1,
                        cs: m,
                    },
                    Mat {
                        data: &b,
                        rs: n,
                        cs: 1,
                    },
                    &mut c2,
                    Init::Accumulate,
                );
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0.0f64;
                        let mut sabs = 0.0f64;
                        for p in 0..k {
                            let x = a[i * k + p] as f64 * bt[j * k + p] as f64;
                            s += x;
                            sabs += x.abs();
                        }
                        let tol = 1e-6 * (sabs + 1.0);
                        let got = c[i * n + j] as f64;
                        let want = s + bias[j] as f64;
                        assert!(
                            (got - want).abs() <= tol,
                            "{isa:?} {m}x{n}x{k} ({i},{j}): {got} vs {want}"
                        );
                        let got2 = c2[i * n + j] as f64;
                        assert!(
                            (got2 - (s + 1.0)).abs() <= tol,
                            "{isa:?} {m}x{n}x{k} ({i},{j}) acc: {got2} vs {}",
                            s + 1.0
                        );
                    }
                }
            }
        }
    }
}
