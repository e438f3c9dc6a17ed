//! Matmul, the layer that dominates the CPU path: `out = inp @ weight^T + bias`, and its backward
//! (`dinp += dout @ weight`, `dweight += dout^T @ inp`, `dbias += sum over B*T of dout`).
//!
//! All three products go through one cache-blocked GEMM, `C += A @ B`, which reads A and B through
//! strides, so that no transpose is ever materialised:
//! - C is cut into tiles of at most MC x NC; each tile is one rayon job, owned by one thread, and
//!   its K terms are added in blocks of KC, in order. Every element of C is thus computed in the
//!   same order whatever the number of threads: the results (the weight gradients included) are
//!   bitwise reproducible from run to run and independent of the thread count and tile sizes.
//! - per K block, A is packed into MR-row panels and B into NR-column panels (zero-padded at the
//!   edges) so that the micro-kernel reads both with unit stride. The operand several jobs need is
//!   packed once for all of them (the input of the forward, the input of dweight, dlogits for
//!   dinp); the other is packed by each job for itself, once.
//! - the micro-kernel keeps an MR x NR tile of accumulators in registers and, for each k, adds the
//!   outer product of an MR-column of A and an NR-row of B: plain Rust loops with constant bounds
//!   that LLVM unrolls and vectorises (checked in the assembly: 24 `vfmadd231ps` on zmm registers
//!   per k, no spills). It is compiled three times and picked at run time: AVX-512 + FMA (MR x NR
//!   = 12 x 32), AVX2 + FMA (6 x 16) and the baseline target (4 x 8: SSE2 on x86_64, NEON on
//!   aarch64), so the crate needs no `-C target-cpu` flag. With FMA each product-add rounds once,
//!   without it twice; either way the accumulation is plain fp32, in blocks of KC.
//!
//! Numerics: C gets each K block's partial sum in turn, so an element of C is
//! `((c0 + s_0) + s_1) + ...` with `s_i` the fp32 sum over the i-th block of KC terms and `c0` the
//! bias (forward) or the gradient accumulated so far (backward). `dbias` sums in f64.
//!
//! Throughput (`examples/bench_matmul.rs`, the d12 shapes at B*T = 256, on the 2-core Sapphire
//! Rapids VM this was written on, shared with other jobs, so the figures wander): one thread,
//! 75 to 100 GFLOP/s per shape and 85 to 90 GFLOP/s over a whole step's matmuls, against about
//! 114 GFLOP/s for the AVX-512 kernel's own loop on data in L1; two threads, 75 to 115 GFLOP/s
//! over a step (up to 175 GFLOP/s on one shape when the second core was free).

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

/// Depth of a K block: a packed NR-column panel of B is KC * NR floats (32 KiB for NR = 32), meant
/// to stay in L1 while the MR-row panels of A stream past it from L2.
const KC: usize = 256;
/// Fewest rows of C per job (unless C has fewer).
const MC_MIN: usize = 48;
/// Most and fewest columns of C per job (the packed B block, KC * NC floats, stays in L2).
const NC_MAX: usize = 512;
const NC_MIN: usize = 64;
/// Most floats of shared packed operands held at once (64 MiB); see `gemm_driver`.
const SHARED_MAX: usize = 1 << 24;

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
        Mat::new(inp, c, 1),
        Mat::new(weight, 1, c),
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
        Mat::new(dout, oc, 1),
        Mat::new(weight, c, 1),
        dinp,
        Init::Accumulate,
    );
    // dweight (OC, C) += dout^T (OC, BT) @ inp (BT, C): element (i, k) of dout^T is dout[k * OC + i].
    gemm(
        oc,
        c,
        bt,
        Mat::new(dout, 1, oc),
        Mat::new(inp, c, 1),
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

/// A read-only matrix inside a slice: element (i, j) is `data[i * rs + j * cs]`, rows or columns
/// contiguous (rs or cs 1).
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        // the packing routines copy along a contiguous dimension
        assert!(rs == 1 || cs == 1, "a matrix with neither stride 1");
        Mat { data, rs, cs }
    }
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
    gemm_isa(best_isa(), SHARED_MAX, m, n, k, a, b, c, init)
}

/// `gemm` with a given micro-kernel and limit on shared packs (the unit tests vary both).
#[allow(clippy::too_many_arguments)]
fn gemm_isa(
    isa: Isa,
    shared_max: usize,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    init: Init,
) {
    match isa {
        // The kernels are `unsafe fn`s because they are compiled with target features; `best_isa`
        // and `available_isas` only name an ISA after checking the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            gemm_driver::<12, 32>(x86::kernel_avx512, shared_max, m, n, k, a, b, c, init)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => gemm_driver::<6, 16>(x86::kernel_avx2, shared_max, m, n, k, a, b, c, init),
        Isa::Baseline => gemm_driver::<4, 8>(kernel_baseline, shared_max, m, n, k, a, b, c, init),
    }
}

/// How a micro-kernel writes its result into C.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// `C += acc`.
    Add,
    /// `C = bias + acc`, with `bias` the tile's columns (`C = acc` when None).
    Set(Option<&'a [f32]>),
}

/// A micro-kernel: `acc = sum over p < kc of outer(a[p*MR..][..MR], b[p*NR..][..NR])`, with `a`
/// an MR-row panel and `b` an NR-column panel, both packed (see [`pack_a`], [`pack_b`]); then
/// stores the top-left `rows x cols` of acc into C at `c` (row stride `ldc`) as `store` says.
type Kernel<const MR: usize, const NR: usize> = unsafe fn(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: Store,
);

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

#[allow(clippy::too_many_arguments)]
fn gemm_driver<const MR: usize, const NR: usize>(
    kernel: Kernel<MR, NR>,
    shared_max: usize,
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
    // Bounds of the strided reads, checked once here so that a failure has a name (packing
    // indexes safe slices and would panic anyway).
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

    // Tile sizes. Within a job, each A panel (MR x kc) stays in L1 while the job's B block
    // (kc x nc, at most NC_MAX columns) stays in L2; the A panels stream past once, so mc needs no
    // cache bound. Jobs: about 4 per thread, so that the threads finish together, made by cutting
    // the dimension whose cut costs less: cutting N makes every column block read all of A,
    // cutting M makes every row block read all of B. Tile sizes decide only who computes an
    // element, never its value. mc and nc are multiples of MR and NR, so tiles start on panels.
    let threads = rayon::current_num_threads().max(1);
    let want_jobs = 4 * threads;
    let nc_max = NC_MAX / NR * NR;
    let nc_min = NC_MIN.max(NR);
    let (m_blocks_wanted, n_blocks_wanted) = if m * k <= k * n {
        let nb = n.div_ceil(nc_max).max(want_jobs.min(n.div_ceil(nc_min)));
        (want_jobs.div_ceil(nb), nb)
    } else {
        (want_jobs, n.div_ceil(nc_max))
    };
    let nc = n.div_ceil(n_blocks_wanted).div_ceil(NR) * NR;
    let mc = m
        .div_ceil(m_blocks_wanted)
        .div_ceil(MR)
        .max(MC_MIN.div_ceil(MR))
        * MR;
    let (m_blocks, n_blocks) = (m.div_ceil(mc), n.div_ceil(nc));
    let jobs = m_blocks * n_blocks;

    // An operand that several jobs need (A when C has several column blocks, B when it has
    // several row blocks) is packed once, in parallel, before the jobs; otherwise each job packs
    // its own part. If the shared packs of all of K fit in `shared_max` floats, they are made up
    // front and each job runs through all K blocks of its tile (the tile of C stays in cache).
    // Otherwise (a long K, as dinp += dlogits @ wte) the K blocks run one after another, each
    // with its own shared packs and its own parallel section over the jobs.
    let (m_pad, n_pad) = (m.div_ceil(MR) * MR, n.div_ceil(NR) * NR);
    let (share_a, share_b) = (n_blocks > 1, m_blocks > 1);
    let shared_per_k = share_a as usize * m_pad + share_b as usize * n_pad;
    let k_inner = shared_per_k * k <= shared_max;
    let depth = if k_inner { k } else { KC.min(k) };
    // the shared packs live in the calling thread's buffers, kept between calls (no allocation
    // once they have grown to the largest product of the step)
    let (mut a_shared, mut b_shared) = SHARED_PACKS.with_borrow_mut(std::mem::take);
    a_shared.resize(if share_a { m_pad * depth } else { 0 }, 0.0);
    b_shared.resize(if share_b { n_pad * depth } else { 0 }, 0.0);
    // Packs K blocks p_begin.. (as many as the buffers hold) of the shared operands, block after
    // block: block p0 at (p0 - p_begin) * m_pad, its panel r at r * MR * kc.
    let pack_shared = |a_shared: &mut [f32], b_shared: &mut [f32], p_begin: usize| {
        if share_a {
            a_shared
                .par_chunks_mut(KC * m_pad)
                .enumerate()
                .for_each(|(q, blk)| {
                    let (p0, kc) = (p_begin + q * KC, blk.len() / m_pad);
                    blk.par_chunks_mut(MR * kc)
                        .with_min_len(8)
                        .enumerate()
                        .for_each(|(r, panel)| {
                            pack_a::<MR>(panel, a, r * MR, MR.min(m - r * MR), p0, kc)
                        });
                });
        }
        if share_b {
            b_shared
                .par_chunks_mut(KC * n_pad)
                .enumerate()
                .for_each(|(q, blk)| {
                    let (p0, kc) = (p_begin + q * KC, blk.len() / n_pad);
                    blk.par_chunks_mut(NR * kc)
                        .with_min_len(8)
                        .enumerate()
                        .for_each(|(s, panel)| {
                            pack_b::<NR>(panel, b, p0, kc, s * NR, NR.min(n - s * NR))
                        });
                });
        }
    };
    let cptr = CPtr(c.as_mut_ptr());
    // One job's work on one K block; `a_blk` / `b_blk` are that block of the shared packs.
    let tile_block = |job: usize, p0: usize, a_blk: Option<&[f32]>, b_blk: Option<&[f32]>| {
        let kc = KC.min(k - p0);
        let (ib, jb) = (job / n_blocks, job % n_blocks);
        let (i0, j0) = (ib * mc, jb * nc);
        let (mcur, ncur) = (mc.min(m - i0), nc.min(n - j0));
        let (mpanels, npanels) = (mcur.div_ceil(MR), ncur.div_ceil(NR));
        PACK_BUFS.with_borrow_mut(|(abuf, bbuf)| {
            // Panel i0 / MR of a shared block starts at i0 * kc (likewise j0 / NR).
            let apack: &[f32] = match a_blk {
                Some(blk) => &blk[i0 * kc..][..mpanels * MR * kc],
                None => {
                    abuf.resize(mpanels * MR * kc, 0.0);
                    pack_a::<MR>(abuf, a, i0, mcur, p0, kc);
                    abuf
                }
            };
            let bpack: &[f32] = match b_blk {
                Some(blk) => &blk[j0 * kc..][..npanels * NR * kc],
                None => {
                    bbuf.resize(npanels * NR * kc, 0.0);
                    pack_b::<NR>(bbuf, b, p0, kc, j0, ncur);
                    bbuf
                }
            };
            // The A panel (MR x kc) stays in L1 while the B panels of the tile stream past.
            for (r, apanel) in apack.chunks_exact(MR * kc).enumerate() {
                let ii0 = i0 + r * MR;
                let rows = MR.min(i0 + mcur - ii0);
                for (s, bpanel) in bpack.chunks_exact(NR * kc).enumerate() {
                    let jj0 = j0 + s * NR;
                    let cols = NR.min(j0 + ncur - jj0);
                    let store = match init {
                        Init::Overwrite(bias) if p0 == 0 => {
                            Store::Set(bias.map(|bias| &bias[jj0..jj0 + cols]))
                        }
                        _ => Store::Add,
                    };
                    // SAFETY: `kernel` was chosen by `gemm_isa` after a run-time check that this
                    // CPU has the target features it was compiled for. The rows x cols block at
                    // (ii0, jj0) lies inside this job's tile (i0..i0+mcur, j0..j0+ncur), inside
                    // C (M x N, row stride n, length checked above); jobs' tiles are disjoint
                    // and `c` is mutably borrowed for the whole parallel section, so nothing
                    // else reads or writes these elements.
                    unsafe {
                        let cblock = cptr.get().add(ii0 * n + jj0);
                        kernel(kc, apanel, bpanel, cblock, n, rows, cols, store);
                    }
                }
            }
        });
    };
    if k_inner {
        pack_shared(&mut a_shared, &mut b_shared, 0);
        let (a_all, b_all) = (&a_shared[..], &b_shared[..]);
        (0..jobs).into_par_iter().for_each(|job| {
            for p0 in (0..k).step_by(KC) {
                let a_blk = share_a.then(|| &a_all[p0 * m_pad..]);
                let b_blk = share_b.then(|| &b_all[p0 * n_pad..]);
                tile_block(job, p0, a_blk, b_blk);
            }
        });
    } else {
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let a_blk = &mut a_shared[..share_a as usize * m_pad * kc];
            let b_blk = &mut b_shared[..share_b as usize * n_pad * kc];
            pack_shared(&mut a_blk[..], &mut b_blk[..], p0);
            let (a_blk, b_blk) = (&*a_blk, &*b_blk);
            (0..jobs).into_par_iter().for_each(|job| {
                tile_block(job, p0, share_a.then_some(a_blk), share_b.then_some(b_blk));
            });
        }
    }
    SHARED_PACKS.with_borrow_mut(|bufs| *bufs = (a_shared, b_shared));
}

thread_local! {
    /// The calling thread's buffers for the packs of A and B that all jobs share, kept between
    /// calls.
    static SHARED_PACKS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// Each thread's buffers for the parts of A and B that a job packs for itself (mc x KC and
    /// KC x NC_MAX floats at most), kept between calls.
    static PACK_BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Packs rows i0..i0+mc, columns p0..p0+kc of A into MR-row panels: panel r holds, for each p,
/// the MR values A[i0 + r*MR + ii, p0 + p] at `dst[r*MR*kc + p*MR + ii]`; rows past mc are zero.
fn pack_a<const MR: usize>(dst: &mut [f32], a: Mat, i0: usize, mc: usize, p0: usize, kc: usize) {
    for (r, panel) in dst.chunks_exact_mut(MR * kc).enumerate() {
        let rows = MR.min(mc - r * MR);
        let base = (i0 + r * MR) * a.rs + p0 * a.cs;
        if a.cs == 1 {
            // Rows of A are contiguous: a transpose.
            transpose_into(panel, MR, &a.data[base..], a.rs, rows, kc);
        } else {
            // Columns of A are contiguous (A is a transpose): copy MR values per column.
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let src = &a.data[base + p * a.cs..];
                if rows == MR {
                    dst.copy_from_slice(&src[..MR]);
                } else {
                    dst[..rows].copy_from_slice(&src[..rows]);
                    dst[rows..].fill(0.0);
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
                let src = &b.data[base + p * b.rs..];
                if cols == NR {
                    dst.copy_from_slice(&src[..NR]);
                } else {
                    dst[..cols].copy_from_slice(&src[..cols]);
                    dst[cols..].fill(0.0);
                }
            }
        } else {
            // Columns of B are contiguous (B is a transpose): a transpose.
            transpose_into(panel, NR, &b.data[base..], b.cs, cols, kc);
        }
    }
}

/// `dst[p * w + q] = src[q * stride + p]` for q < n, p < kc, and zero for n <= q < w: `n`
/// contiguous source vectors of length kc, interleaved. Works in 4 x 4 blocks (four loads, four
/// stores, shuffles between), which LLVM vectorises.
fn transpose_into(dst: &mut [f32], w: usize, src: &[f32], stride: usize, n: usize, kc: usize) {
    let dst = &mut dst[..w * kc];
    let mut q0 = 0;
    while q0 + 4 <= n {
        let r: [&[f32]; 4] = std::array::from_fn(|i| &src[(q0 + i) * stride..][..kc]);
        let mut p = 0;
        while p + 4 <= kc {
            let blk: [[f32; 4]; 4] = std::array::from_fn(|i| r[i][p..p + 4].try_into().unwrap());
            for pp in 0..4 {
                let d: &mut [f32; 4] = (&mut dst[(p + pp) * w + q0..][..4]).try_into().unwrap();
                *d = [blk[0][pp], blk[1][pp], blk[2][pp], blk[3][pp]];
            }
            p += 4;
        }
        for p in p..kc {
            for i in 0..4 {
                dst[p * w + q0 + i] = r[i][p];
            }
        }
        q0 += 4;
    }
    for q in q0..n {
        let r = &src[q * stride..][..kc];
        for (d, &x) in dst[q..].iter_mut().step_by(w).zip(r) {
            *d = x;
        }
    }
    for q in n..w {
        for d in dst[q..].iter_mut().step_by(w) {
            *d = 0.0;
        }
    }
}

/// The micro-kernel's arithmetic: `out = sum over p < kc of outer(a[p*MR..][..MR],
/// b[p*NR..][..NR])`. With `FMA`, each step is one fused multiply-add; without, a multiply and an
/// add (all the baseline x86_64 target has). Each ISA's copy is a function of its own, not inlined
/// into its caller, so that LLVM keeps the MR x NR accumulators in registers for the whole loop.
#[inline(always)]
fn compute_body<const MR: usize, const NR: usize, const FMA: bool>(
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

/// Stores the top-left `rows x cols` of `tile` into C at `c` (row stride `ldc`) as `store` says.
///
/// # Safety
/// `c` must point at a `rows x cols` block (row stride `ldc`) of valid f32s that nothing else
/// accesses during the call; `rows <= MR`, `cols <= NR`.
#[inline(always)]
unsafe fn store_body<const MR: usize, const NR: usize>(
    tile: &[[f32; NR]; MR],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: Store,
) {
    // Full tiles take fixed-size loops (vector loads and stores); edge tiles the general ones.
    let full = rows == MR && cols == NR;
    for (i, acc) in tile.iter().enumerate().take(rows) {
        // SAFETY: row i < rows of the block, cols elements from its start: inside the block the
        // caller vouches for.
        let crow = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        match (store, full) {
            (Store::Add, true) => {
                let crow: &mut [f32; NR] = crow.try_into().unwrap();
                for j in 0..NR {
                    crow[j] += acc[j];
                }
            }
            (Store::Set(Some(bias)), true) => {
                let crow: &mut [f32; NR] = crow.try_into().unwrap();
                let bias: &[f32; NR] = bias.try_into().unwrap();
                for j in 0..NR {
                    crow[j] = bias[j] + acc[j];
                }
            }
            (Store::Add, false) => {
                for (cv, &x) in crow.iter_mut().zip(acc) {
                    *cv += x;
                }
            }
            (Store::Set(Some(bias)), false) => {
                for ((cv, &x), &bv) in crow.iter_mut().zip(acc).zip(bias) {
                    *cv = bv + x;
                }
            }
            (Store::Set(None), _) => crow.copy_from_slice(&acc[..cols]),
        }
    }
}

/// Defines a micro-kernel ([`Kernel`]) for one ISA: `$compute` (the arithmetic, never inlined)
/// and `$kernel` (arithmetic, then the store), both compiled with the target features `$features`.
macro_rules! define_kernel {
    ($(#[$doc:meta])* $kernel:ident, $compute:ident, $features:literal, $mr:literal, $nr:literal, $fma:expr) => {
        #[target_feature(enable = $features)]
        #[inline(never)]
        fn $compute(kc: usize, a: &[f32], b: &[f32], out: &mut [[f32; $nr]; $mr]) {
            compute_body::<$mr, $nr, { $fma }>(kc, a, b, out)
        }

        $(#[$doc])*
        /// # Safety
        /// The CPU must have the target features `$features`; `c` must point at a `rows x cols`
        /// block (row stride `ldc`) of valid f32s that nothing else accesses during the call.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $kernel(
            kc: usize,
            a: &[f32],
            b: &[f32],
            c: *mut f32,
            ldc: usize,
            rows: usize,
            cols: usize,
            store: Store,
        ) {
            let mut tile = [[0.0f32; $nr]; $mr];
            $compute(kc, a, b, &mut tile);
            // SAFETY: forwarded from the caller.
            unsafe { store_body(&tile, c, ldc, rows, cols, store) }
        }
    };
}

/// Whether the baseline target has a fused multiply-add instruction (so `mul_add` is one
/// instruction rather than a libm call).
const BASELINE_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// 4 x 8 for the baseline target (SSE2 on x86_64, NEON on aarch64).
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_baseline(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    store: Store,
) {
    let mut tile = [[0.0f32; 8]; 4];
    compute_body::<4, 8, BASELINE_FMA>(kc, a, b, &mut tile);
    // SAFETY: forwarded from the caller (as in the kernels of `define_kernel`).
    unsafe { store_body(&tile, c, ldc, rows, cols, store) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{compute_body, store_body, Store};

    define_kernel!(
        /// 12 x 32: 24 zmm accumulators, two zmm rows of B, and broadcasts of A.
        kernel_avx512, compute_avx512, "avx512f,fma", 12, 32, true
    );
    define_kernel!(
        /// 6 x 16: 12 ymm accumulators, two ymm rows of B, and broadcasts of A.
        kernel_avx2, compute_avx2, "avx2,fma", 6, 16, true
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The packing copies along a contiguous dimension: a matrix with none is refused.
    #[test]
    #[should_panic(expected = "a matrix with neither stride 1")]
    fn a_matrix_with_no_contiguous_dimension_is_refused() {
        Mat::new(&[0.0; 8], 3, 2);
    }

    /// An A or B shorter than its strides reach is refused by name, also for a single term (K = 1).
    #[test]
    fn a_short_a_or_b_is_refused_by_name() {
        let refusal = |a_len: usize, b_len: usize| {
            let (a, b) = (vec![1.0; a_len], vec![1.0; b_len]);
            let run = || {
                gemm(
                    2,
                    3,
                    1,
                    Mat::new(&a, 1, 1),
                    Mat::new(&b, 3, 1),
                    &mut [0.0; 6],
                    Init::Accumulate,
                )
            };
            std::panic::catch_unwind(run)
                .err()
                .map(|e| *e.downcast::<&str>().unwrap())
        };
        // (M, K) = (2, 1) and (K, N) = (1, 3): two and three elements
        assert_eq!(refusal(2, 3), None);
        assert_eq!(refusal(1, 3), Some("gemm: A is too short"));
        assert_eq!(refusal(2, 2), Some("gemm: B is too short"));
    }

    fn rand_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect()
    }

    /// Every kernel, on strided A and B of awkward sizes (several K blocks, partial tiles), against
    /// a naive f64 product.
    #[test]
    fn every_kernel_matches_naive_f64() {
        let mut rng = Rng::new(7);
        // (29, 200, 600) shares A between column blocks, (300, 40, 300) B between row blocks;
        // shared_max 0 runs them K block by K block, SHARED_MAX with all of K packed up front.
        let sizes = [
            (1, 1, 1),
            (13, 37, 5),
            (29, 70, 300),
            (50, 33, 517),
            (29, 200, 600),
            (300, 40, 300),
        ];
        for (isa, shared_max) in available_isas()
            .into_iter()
            .flat_map(|i| [(i, SHARED_MAX), (i, 0)])
        {
            for &(m, n, k) in &sizes {
                let a = rand_vec(&mut rng, m * k); // stored (M, K)
                let bt = rand_vec(&mut rng, n * k); // stored (N, K): B transposed
                let bias = rand_vec(&mut rng, n);
                let mut c = vec![f32::NAN; m * n];
                gemm_isa(
                    isa,
                    shared_max,
                    m,
                    n,
                    k,
                    Mat::new(&a, k, 1),
                    Mat::new(&bt, 1, k),
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
                    shared_max,
                    m,
                    n,
                    k,
                    Mat::new(&at, 1, m),
                    Mat::new(&b, n, 1),
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
