// Flash attention: causal multi-head self-attention fused into one kernel per pass, with an online
// softmax, so that the (B,NH,T,T) scores never exist in memory (gpu::flash_attention_forward/
// backward; CPU twin: cpu::flash_attention, which computes the same algorithm).
//
// Shapes: qkv (B,T,3C) holds q|k|v for each position, each C = NH*HS wide with head h at channels
// h*HS..(h+1)*HS; out and dout (B,T,C); lse and D (B,NH,T) in fp32. HS is a template parameter
// (64 or 128); C = NH*HS is then a multiple of 64, and the launcher checks that every T buffer is
// 16-byte aligned, so the 128-bit and 32-bit accesses below are always aligned.
//
// Notation: s = q.k * scale * log2(e) (scores in base-2 units, scale = 1/sqrt(HS)), so that
// exp(scale q.k - x) = exp2(s - x log2(e)); lse = ln(sum over keys <= t of exp(scale q.k)).
//
// Forward, one block of 4 warps per (64 M-query tile, h, b); warp w owns queries q0+16Mw..
// q0+16Mw+16M-1 (M = 1, or 2 in the bf16 HS 64 `_q32` kernel: two row blocks of 16 per warp,
// which share every K and V fragment the warp loads):
//   for each 64-key tile j that holds a key <= the tile's last query (fully masked tiles skipped):
//     stage K_j, V_j (64 x HS) in shared memory (cp.async, 16 bytes a copy; where two tiles fit,
//     K_j+1, V_j+1 are loaded into a second buffer while tile j is computed on), then per warp
//     S = Q K_j^T (16M x 64, tensor cores), masked (key > query, or key >= T) to -inf,
//     m' = max(m, rowmax S); P = exp2(S - m'); l = l exp2(m - m') + rowsum P (S scaled inside
//     the exponent's FFMA);
//     O = O exp2(m - m') + P V_j (tensor cores; P rounded to T for the product); m = m'.
//   out = O / l, lse = (m + log2 l) ln 2.
// Backward (deterministic: every output element has one owner that sums in a fixed order, no
// atomics), three launches:
//   1. D = rowsum(dout * out), one warp per (b, t, h) row, into the scratch (B,NH,T).
//   2. dK, dV: one block per (64-key tile, h, b); warp w owns 16 keys; loop over the query tiles
//      that hold a query >= the tile's first key: P^T = exp2(K Q^T - lse log2 e) (masked),
//      dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - D), dK += dS^T Q; then
//      dqkv's k and v thirds += scale dK and dV.
//   3. dQ: one block per (64-query tile, h, b); loop over the key tiles as in the forward:
//      P = exp2(Q K^T - lse log2 e), dP = dO V^T, dS = P (dP - D), dQ += dS K; dqkv's q third +=
//      scale dQ.
//
// Tensor cores: mma.sync m16n8k16 (bf16 inputs, fp32 accumulators), whose fragment layouts are
// fixed by the PTX ISA (lane = 4 g + t, g = group 0..7, t = thread in group 0..3):
//   A (16x16, row major): pair p (elements 2p, 2p+1) = row g + 8 (p & 1), columns
//     2t + 8 (p >> 1) + {0, 1};
//   B (16x8, "col"): pair p = rows (k) 2t + 8p + {0, 1}, column (n) g;
//   C (16x8, fp32): element e = row g + 8 (e >> 1), column 2t + (e & 1).
// The C fragments of two adjacent n-tiles are exactly the A fragment of the next product (S -> P).
// For T = float the same fragments hold fp32 values and `mma` is a plain-FMA emulation of the
// instruction built from warp shuffles (the slow reference path: no rounding of P to bf16).
// Softmax statistics, accumulators and every sum are fp32 in both precisions.
#include "common.h"

namespace flash {

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
// Keys per block of the dK dV kernel: 16 per warp. (The forward's and dQ's queries per block are
// their configs' ROWS: 16 or 32 per warp.)
constexpr int BLOCK_ROWS = 16 * WARPS;
// Shared-memory rows are padded by 8 elements: 16-byte aligned, and the fragment loads below
// fall on distinct banks.
constexpr int PAD = 8;
constexpr float LN2 = 0.6931471805599453f;
constexpr unsigned FULL = 0xffffffffu;

// ---- fragments -----------------------------------------------------------------------------
struct FragC {
    float x[4];
};
template <typename T> struct FragA;
template <> struct FragA<float> {
    float x[8];
};
template <> struct FragA<__nv_bfloat16> {
    unsigned x[4];
};
template <typename T> struct FragB;
template <> struct FragB<float> {
    float x[4];
};
template <> struct FragB<__nv_bfloat16> {
    unsigned x[2];
};

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// Pair p of a fragment from two adjacent elements src[0], src[1] (one 32- or 64-bit load).
__device__ __forceinline__ void set_pair(FragA<float>& a, int p, const float* src) {
    CHECK_ALIGNED(src, 8, "set_pair");
    const float2 v = *reinterpret_cast<const float2*>(src);
    a.x[2 * p] = v.x;
    a.x[2 * p + 1] = v.y;
}
__device__ __forceinline__ void set_pair(FragA<__nv_bfloat16>& a, int p, const __nv_bfloat16* src) {
    CHECK_ALIGNED(src, 4, "set_pair");
    a.x[p] = *reinterpret_cast<const unsigned*>(src);
}
__device__ __forceinline__ void set_pair(FragB<float>& b, int p, const float* src) {
    CHECK_ALIGNED(src, 8, "set_pair");
    const float2 v = *reinterpret_cast<const float2*>(src);
    b.x[2 * p] = v.x;
    b.x[2 * p + 1] = v.y;
}
// Pair p from src[0] and src[stride] (two loads; fp32 only: bf16 fragments come from ldmatrix).
__device__ __forceinline__ void set_pair_strided(FragB<float>& b, int p, const float* src, int stride) {
    b.x[2 * p] = src[0];
    b.x[2 * p + 1] = src[stride];
}
// Pair p from two fp32 values (rounded to nearest even in bf16).
__device__ __forceinline__ void set_pair_values(FragA<float>& a, int p, float lo, float hi) {
    a.x[2 * p] = lo;
    a.x[2 * p + 1] = hi;
}
__device__ __forceinline__ void set_pair_values(FragA<__nv_bfloat16>& a, int p, float lo, float hi) {
    a.x[p] = pack_bf16(lo, hi);
}

// The A fragment (16 rows x 16 columns kk*16..) of the products P V, dS K, P^T dO, dS^T Q: the C
// fragments of n-tiles 2kk and 2kk+1.
template <typename T> __device__ __forceinline__ FragA<T> a_from_c(const FragC& c0, const FragC& c1) {
    FragA<T> a;
    set_pair_values(a, 0, c0.x[0], c0.x[1]);
    set_pair_values(a, 1, c0.x[2], c0.x[3]);
    set_pair_values(a, 2, c1.x[0], c1.x[1]);
    set_pair_values(a, 3, c1.x[2], c1.x[3]);
    return a;
}

// The A fragment of rows row0..row0+15, columns col0..col0+15 of a row-major matrix in global
// memory (row stride `stride` elements); rows >= rows_valid read as zero.
template <typename T>
__device__ __forceinline__ FragA<T> load_a_global(const T* m, size_t stride, int row0, int rows_valid, int col0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    FragA<T> a;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const int row = row0 + g + 8 * (p & 1);
        const int col = col0 + 2 * t + 8 * (p >> 1);
        if (row < rows_valid) {
            set_pair(a, p, m + (size_t)row * stride + col);
        } else {
            set_pair_values(a, p, 0.0f, 0.0f);
        }
    }
    return a;
}

// ldmatrix.sync.aligned.m8n8.x2{.trans}.shared.b16: two 8x8 matrices of 16-bit elements from
// shared memory, lane 8i + r giving the address of row r of matrix i (16-byte aligned; lanes 16-31
// give valid addresses that are not used). Lane 4r + w receives in r[i] the elements (r, 2w) and
// (r, 2w + 1) of matrix i, or with .trans (2w, r) and (2w + 1, r): exactly the pairs of an mma B
// fragment (g = r, t = w). One instruction for what takes two 32-bit loads, or four 16-bit loads
// and two packs, otherwise.
// LDMATRIX_BEGIN
template <bool TRANS> __device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const __nv_bfloat16* row) {
#ifdef CUDA_HOST_EMULATION
    // The host emulation (tests/emu): the same warp-wide load, as the PTX ISA defines it.
    emu_ldmatrix(r, row, 2, TRANS);
#else
    const unsigned addr = (unsigned)__cvta_generic_to_shared(row);
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(addr));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(addr));
    }
#endif
}
// LDMATRIX_END

// B fragment with B(k, n) = M[n0 + n][k0 + k], M row-major in shared memory with LD columns (the
// K of Q K^T, the Q of K Q^T, ...): pairs are adjacent in memory. bf16: matrix p of ldmatrix is
// rows n0..n0+7, columns k0+8p..k0+8p+7.
template <typename T, int LD>
__device__ __forceinline__ FragB<T> load_b_nk(const T (*m)[LD], int n0, int k0) {
    const int lane = threadIdx.x & 31;
    FragB<T> b;
    if constexpr (sizeof(T) == 2) {
        ldmatrix_x2<false>(b.x, &m[n0 + (lane & 7)][k0 + 8 * ((lane >> 3) & 1)]);
    } else {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            set_pair(b, p, &m[n0 + g][k0 + 2 * t + 8 * p]);
        }
    }
    return b;
}

// B fragment with B(k, n) = M[k0 + k][n0 + n] (the V of P V, the K of dS K, ...): pairs are a
// column apart. bf16: matrix p of ldmatrix.trans is rows k0+8p..k0+8p+7, columns n0..n0+7.
template <typename T, int LD>
__device__ __forceinline__ FragB<T> load_b_kn(const T (*m)[LD], int k0, int n0) {
    const int lane = threadIdx.x & 31;
    FragB<T> b;
    if constexpr (sizeof(T) == 2) {
        ldmatrix_x2<true>(b.x, &m[k0 + (lane & 15)][n0]);
    } else {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            set_pair_strided(b, p, &m[k0 + 2 * t + 8 * p][n0 + g], LD);
        }
    }
    return b;
}

// ---- the 16x8x16 product: c += a b ------------------------------------------------------------
// MMA_BF16_BEGIN
__device__ __forceinline__ void mma(FragC& c, const FragA<__nv_bfloat16>& a, const FragB<__nv_bfloat16>& b) {
#ifdef CUDA_HOST_EMULATION
    // The host emulation (tests/emu) has no tensor cores: the same warp-wide instruction, computed
    // from the fragments as the PTX ISA lays them out.
    emu_mma_m16n8k16_row_col_f32_bf16_bf16_f32(c.x, a.x, b.x);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c.x[0]), "+f"(c.x[1]), "+f"(c.x[2]), "+f"(c.x[3])
                 : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
#endif
}
// MMA_BF16_END

// The fp32 twin of the instruction, same fragments: lane (g, t) needs rows g and g+8 of A (held
// by lanes 4g..4g+3) and columns 2t and 2t+1 of B (held by lanes 8t..8t+3 and 8t+4..8t+7); source
// lane q of each group holds the k = 2q, 2q+1, 2q+8, 2q+9 slice. Fixed order: deterministic.
// The loop over q stays a loop: unrolled, the fp32 kernels' PTX was 8 MB (the driver's JIT took
// 33 s of ptxas time to compile it at every cold start); as a loop it is 3.6 MB and 8 s.
// MMA_F32_BEGIN
__device__ __forceinline__ void mma(FragC& c, const FragA<float>& a, const FragB<float>& b) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 1
    for (int q = 0; q < 4; ++q) {
        float av[8], b0[4], b1[4];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            av[e] = __shfl_sync(FULL, a.x[e], 4 * g + q);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            b0[e] = __shfl_sync(FULL, b.x[e], 8 * t + q);
            b1[e] = __shfl_sync(FULL, b.x[e], 8 * t + 4 + q);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            c.x[0] += av[j] * b0[j];
            c.x[0] += av[4 + j] * b0[2 + j];
            c.x[1] += av[j] * b1[j];
            c.x[1] += av[4 + j] * b1[2 + j];
            c.x[2] += av[2 + j] * b0[j];
            c.x[2] += av[6 + j] * b0[2 + j];
            c.x[3] += av[2 + j] * b1[j];
            c.x[3] += av[6 + j] * b1[2 + j];
        }
    }
}
// MMA_F32_END

// ---- helpers ---------------------------------------------------------------------------------
// cp.async: 16 bytes from global to shared memory without passing through registers, the
// bytes past `src_bytes` (0 or 16) zero-filled; .cg: cached in L2 only (each tile is read once
// per block). commit_group closes the thread's copies issued so far into a group; wait_group N
// waits until at most N of its groups are still in flight. The copies are then this thread's:
// a barrier makes them every thread's.
// CP_ASYNC_BEGIN
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
#ifdef CUDA_HOST_EMULATION
    // The host emulation (tests/emu) lands the copy at the wait that covers it or at once,
    // depending on the schedule: the two ends of when a GPU may land it.
    emu_cp_async(dst, src, 16, src_bytes);
#else
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef CUDA_HOST_EMULATION
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef CUDA_HOST_EMULATION
    emu_cp_async_wait(N);
#else
    // "memory": no load or store of shared memory moves across the wait (nor the wait across the
    // barrier after it)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
// CP_ASYNC_END

// dst (ROWS x HS, row stride HS + PAD) <- rows 0..ROWS-1 of src (row stride `stride`), 16 bytes
// per cp.async; rows >= rows_valid (>= 1) are zero. Every thread of the block calls it; the
// copies land at the thread's next cp_async_wait that covers them.
template <typename T, int HS, int ROWS>
__device__ __forceinline__ void stage_rows(T (*dst)[HS + PAD], const T* src, size_t stride, int rows_valid) {
    constexpr int P = 16 / sizeof(T);
    constexpr int PER_ROW = HS / P;
    constexpr int COPIES = ROWS * PER_ROW;
    // unrolled, a thread's copies are a fixed row apart: no division or loop test per copy
#pragma unroll
    for (int k = 0; k < (COPIES + THREADS - 1) / THREADS; ++k) {
        const int i = threadIdx.x + k * THREADS;
        if (COPIES % THREADS == 0 || i < COPIES) {
            const int r = i / PER_ROW;
            const int c = (i % PER_ROW) * P;
            const bool real = r < rows_valid;
            // a row past the end reads nothing (0 bytes) from a valid address: row 0's
            cp_async16(&dst[r][c], src + (size_t)(real ? r : 0) * stride + c, real ? 16 : 0);
        }
    }
}

// The tiles first..n_tiles-1 of a kernel's loop through shared memory: STAGES (1 or 2) buffers
// filled by `stage(j)` (tile j's copies). Called by every thread at the top of iteration j, after
// a barrier that ends every warp's use of the previous tile:
//   2 buffers: stage tile j+1 into the other buffer (the first iteration stages tile j too), then
//              wait for tile j: tile j+1's loads run while tile j is computed on;
//   1 buffer:  stage tile j and wait for it.
// A barrier after this makes tile j every thread's.
template <int STAGES, typename Stage>
__device__ __forceinline__ void next_tile(int j, int first, int n_tiles, Stage&& stage) {
    static_assert(STAGES == 1 || STAGES == 2, "one or two buffers");
    if constexpr (STAGES == 2) {
        if (j == first) {
            stage(j);
            cp_async_commit();
        }
        if (j + 1 < n_tiles) {
            stage(j + 1);
        }
        cp_async_commit(); // (empty at the last tile: the wait below still counts one group)
        cp_async_wait<1>();
    } else {
        stage(j);
        cp_async_commit();
        cp_async_wait<0>();
    }
}

// Two buffers where two tiles of `bytes` each fit in the 48 KiB of static shared memory, else one.
constexpr int stages_for(int bytes) {
    return 2 * bytes <= 48 * 1024 ? 2 : 1;
}

// Sets every accumulator of a row of C fragments (or of M rows) to 0.
template <int N> __device__ __forceinline__ void zero(FragC (&f)[N]) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
        f[n] = FragC{{0.0f, 0.0f, 0.0f, 0.0f}};
    }
}
template <int M, int N> __device__ __forceinline__ void zero(FragC (&f)[M][N]) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
        zero(f[i]);
    }
}

// r_last[i] <- the last real query of row block i of a warp whose first query is w0 (row block i
// holds queries w0 + 16 i .. w0 + 16 i + 15): T - 1 at most, less than its first when it has none.
template <int M> __device__ __forceinline__ void row_block_lasts(int (&r_last)[M], int w0, int T_) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
        r_last[i] = min(w0 + 16 * i + 15, T_ - 1);
    }
}

// acc (16 M, 8*NO) += p (16 M, BK: the warp's C fragments, M row blocks of 16, as an A operand
// in T) . m (BK, 8*NO, the tile in shared memory, rows k), over the 16-column slices of p that
// start at or before `last_visible[i]` for row block i (a later slice's keys are all masked for
// those rows: their probabilities are 0). Each B fragment is loaded once for the M products.
// EDGE false: the caller knows every slice is visible to every row block (an interior tile).
template <typename T, int LD, int BK, int NO, int M, bool EDGE>
__device__ __forceinline__ void mma_tile(FragC (&acc)[M][NO], const FragC (&p)[M][BK / 8], const T (*m)[LD], int k0,
                                         const int (&last_visible)[M]) {
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
        if (!EDGE || k0 + 16 * kk <= last_visible[M - 1]) { // row blocks in order: the last sees the most
            FragA<T> pa[M];
#pragma unroll
            for (int i = 0; i < M; ++i) {
                pa[i] = a_from_c<T>(p[i][2 * kk], p[i][2 * kk + 1]);
            }
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                const FragB<T> v = load_b_kn<T, LD>(m, 16 * kk, 8 * n);
#pragma unroll
                for (int i = 0; i < M; ++i) {
                    if (!EDGE || k0 + 16 * kk <= last_visible[i]) {
                        mma(acc[i][n], pa[i], v);
                    }
                }
            }
        }
    }
}

// The max of v over the 4 lanes of a group (the lanes that hold one row of a C fragment).
__device__ __forceinline__ float group_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL, v, 1));
    return fmaxf(v, __shfl_xor_sync(FULL, v, 2));
}
__device__ __forceinline__ float group_sum(float v) {
    v += __shfl_xor_sync(FULL, v, 1);
    return v + __shfl_xor_sync(FULL, v, 2);
}

// dst[0..1] = (a, b) rounded to T, one 32/64-bit store (dst is 8-byte aligned for float, 4 for bf16).
__device__ __forceinline__ void store_pair(float* dst, float a, float b) {
    CHECK_ALIGNED(dst, 8, "store_pair");
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* dst, float a, float b) {
    CHECK_ALIGNED(dst, 4, "store_pair");
    *reinterpret_cast<unsigned*>(dst) = pack_bf16(a, b);
}
// dst[0..1] += (a, b): read, add in fp32, round once.
template <typename T> __device__ __forceinline__ void add_pair(T* dst, float a, float b) {
    store_pair(dst, to_float(dst[0]) + a, to_float(dst[1]) + b);
}

// ---- the causal mask ---------------------------------------------------------------------------
// Each kernel tests every element of a tile against the mask only where the tile needs it: at the
// diagonal and past the end of the sequence. The others (at T = 1024 with 64-key tiles, 15 of a
// warp's 16 tiles in the forward) skip the tests (MASK = false), which otherwise are about a
// quarter of a tile's instructions.

// Beyond the mask, every kernel's products skip the slices of a tile that are hidden from all of
// a warp's (or a row block's) queries, with a warp-uniform test per `mma`; ptxas cannot tell that
// the tests are warp-uniform and puts a branch and a warp barrier around each product. So each
// loop's body is written once, over a compile-time flag EDGE (`Edge<true>` or `Edge<false>`):
// the interior tiles (no key hidden from any query of the warp) run it without a single test.
template <bool V> struct Edge {
    static constexpr bool value = V;
};
// tile(Edge<false>{}) where `interior`, else tile(Edge<true>{}). Only the bf16 kernels have the
// interior body: in the fp32 ones each emulated product is about 200 instructions, next to which
// the tests weigh nothing, and one body keeps their PTX half the size.
// (Compiled with -DFLASH_COUNT_INTERIOR, every tile takes the interior body: wrong results, but
// the loop then holds that body alone, for `tools/sass-stats --interior` to count.)
template <typename T, typename Tile> __device__ __forceinline__ void run_tile(bool interior, Tile&& tile) {
#ifdef FLASH_COUNT_INTERIOR
    interior = true;
#endif
    if constexpr (sizeof(T) == 2) {
        if (interior) {
            tile(Edge<false>{});
            return;
        }
    }
    tile(Edge<true>{});
}

// Whether key `key` is visible to query `query` (causal: key <= query; both before the end).
__device__ __forceinline__ bool visible(int key, int query, int T_) {
    return key <= query && query < T_ && key < T_;
}

// Whether every key k0..k0+BK-1 of a tile is real and visible to every query from `first` on.
__device__ __forceinline__ bool tile_visible_from(int k0, int BK, int first, int T_) {
    return k0 + BK - 1 <= first && k0 + BK <= T_;
}

// Forward: s (16 rows w0.., BK keys k0..: the products q.k, unscaled) <- -inf where the key is
// hidden (MASK); mx (rows w0+g, w0+g+8) <- max(mx, the row's scores). The scale comes with the
// exponent, one FFMA a score (exp2(s sl2 - m sl2), as FlashAttention 2): sl2 > 0, so the max of
// the unscaled scores, scaled, is the max of the scaled ones.
template <bool MASK, int NT>
__device__ __forceinline__ void scores_and_max(FragC (&s)[NT], float (&mx)[2], int w0, int k0, int T_) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if constexpr (MASK) {
                const int row = w0 + g + 8 * (e >> 1);
                const int key = k0 + 8 * n + 2 * t4 + (e & 1);
                // (rows past the end are never stored: only the key's bound matters for them)
                if (!(key <= row && key < T_)) {
                    s[n].x[e] = -INFINITY;
                }
            }
            mx[e >> 1] = fmaxf(mx[e >> 1], s[n].x[e]);
        }
    }
}

// ---- forward -----------------------------------------------------------------------------------
// M: row blocks of 16 queries per warp (1 or 2). With M = 2 (32 queries a warp, 128 a block, as
// FlashAttention 2's forward) each K or V fragment loaded from shared memory feeds two products
// instead of one, and each K, V tile staged serves twice the queries, for about twice the
// registers of the scores and the accumulators.
template <typename T, int HS, int M> struct FwdConfig {
    // keys per tile (fp32 HS=128 uses 32 to keep K and V under 48 KB of shared memory)
    static constexpr int BK = (sizeof(T) == 2 || HS == 64) ? 64 : 32;
    // K and V tiles in flight: two where they fit (bf16 HS=64)
    static constexpr int STAGES = stages_for(2 * BK * (HS + PAD) * (int)sizeof(T));
    // queries per warp and per block
    static constexpr int WARP_ROWS = 16 * M;
    static constexpr int ROWS = WARP_ROWS * WARPS;
};

template <typename T, int HS, int M>
__device__ __forceinline__ void forward_impl(T* out, float* lse, const T* qkv, int B, int T_, int NH) {
    using Cfg = FwdConfig<T, HS, M>;
    constexpr int BK = Cfg::BK;
    constexpr int STAGES = Cfg::STAGES;
    constexpr int LD = HS + PAD;
    constexpr int NT = BK / 8;  // n8-tiles of S
    constexpr int KS = HS / 16; // k16-steps over the head dimension
    constexpr int NO = HS / 8;  // n8-tiles of O
    __shared__ __align__(16) T ks[STAGES][BK][LD]; // (STAGES, BK, HS) keys of the tiles in flight
    __shared__ __align__(16) T vs[STAGES][BK][LD]; // (STAGES, BK, HS) their values
    (void)B;

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    // heaviest tiles (the last queries) first
    const int q0 = (gridDim.x - 1 - blockIdx.x) * Cfg::ROWS;
    const int h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int w0 = q0 + Cfg::WARP_ROWS * warp; // the warp's first query; row block i's is w0 + 16 i
    int r_last[M]; // row block i's last real query
    row_block_lasts(r_last, w0, T_);
    const int w_last = r_last[M - 1]; // the warp's last real query
    const int q_last = min(q0 + Cfg::ROWS - 1, T_ - 1);
    const T* head = qkv + (size_t)b * T_ * C3 + (size_t)h * HS; // q of (b, position 0, h)
    const float sl2 = LOG2E / sqrtf((float)HS);

    FragA<T> qf[M][KS]; // (16 M, HS) the warp's queries
#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            qf[i][kk] = load_a_global(head, C3, w0 + 16 * i, T_, kk * 16);
        }
    }
    FragC o[M][NO]; // (16 M, HS)
    zero(o);
    // rows w0+16i+g and w0+16i+g+8: running max (of q.k, unscaled) and this lane's part of the
    // running sum
    float m[M][2], l[M][2];
#pragma unroll
    for (int i = 0; i < M; ++i) {
        m[i][0] = m[i][1] = -INFINITY;
        l[i][0] = l[i][1] = 0.0f;
    }

    const int n_tiles = q_last / BK + 1;
    const auto stage = [&](int j) {
        const int k0 = j * BK;
        stage_rows<T, HS, BK>(ks[j % STAGES], head + C + (size_t)k0 * C3, C3, T_ - k0);
        stage_rows<T, HS, BK>(vs[j % STAGES], head + 2 * C + (size_t)k0 * C3, C3, T_ - k0);
    };
    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = j * BK;
        const T(*kt)[LD] = ks[j % STAGES];
        const T(*vt)[LD] = vs[j % STAGES];
        __syncthreads(); // every warp is done with the previous tile
        next_tile<STAGES>(j, 0, n_tiles, stage);
        __syncthreads(); // tile j is in shared memory
        if (k0 > w_last) {
            continue; // warp-uniform: no key of the tile is visible to this warp's queries
        }
        // the tile's products and the softmax update (EDGE: with the tests, see `Edge`)
        const auto tile = [&](auto edge) {
            constexpr bool EDGE = decltype(edge)::value;
            FragC s[M][NT]; // (16 M, BK)
            zero(s);
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    if (!EDGE || k0 + 8 * n <= w_last) { // warp-uniform; skipped n-tiles are all masked
                        const FragB<T> kb = load_b_nk<T, LD>(kt, 8 * n, 16 * kk);
#pragma unroll
                        for (int i = 0; i < M; ++i) {
                            if (!EDGE || k0 + 8 * n <= r_last[i]) {
                                mma(s[i][n], qf[i][kk], kb);
                            }
                        }
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < M; ++i) {
                const int r0 = w0 + 16 * i;
                float mx[2] = {m[i][0], m[i][1]};
                if (!EDGE || tile_visible_from(k0, BK, r0, T_)) { // warp-uniform: no key of the tile is hidden
                    scores_and_max<false>(s[i], mx, r0, k0, T_);
                } else {
                    scores_and_max<true>(s[i], mx, r0, k0, T_);
                }
                float base[2], alpha[2]; // base: the new max in base-2 units (0 while it is -inf)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    mx[r] = group_max(mx[r]);
                    base[r] = mx[r] == -INFINITY ? 0.0f : mx[r] * sl2;
                    alpha[r] = exp2_ftz(fmaf(m[i][r], sl2, -base[r]));
                    m[i][r] = mx[r];
                }
                float ls[2] = {0.0f, 0.0f};
#pragma unroll
                for (int n = 0; n < NT; ++n) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float p = exp2_ftz(fmaf(s[i][n].x[e], sl2, -base[e >> 1]));
                        s[i][n].x[e] = p;
                        ls[e >> 1] += p;
                    }
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    l[i][r] = l[i][r] * alpha[r] + ls[r];
                }
#pragma unroll
                for (int n = 0; n < NO; ++n) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        o[i][n].x[e] *= alpha[e >> 1];
                    }
                }
            }
            mma_tile<T, LD, BK, NO, M, EDGE>(o, s, vt, k0, r_last); // o += p v
        };
        run_tile<T>(tile_visible_from(k0, BK, w0, T_), tile);
    }

#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = w0 + 16 * i + g + 8 * r;
            const float sum = group_sum(l[i][r]);
            if (row < T_) {
                const float inv = 1.0f / sum;
                T* dst = out + ((size_t)b * T_ + row) * C + (size_t)h * HS + 2 * t4;
#pragma unroll
                for (int n = 0; n < NO; ++n) {
                    store_pair(dst + 8 * n, o[i][n].x[2 * r] * inv, o[i][n].x[2 * r + 1] * inv);
                }
                if (t4 == 0) {
                    lse[((size_t)b * NH + h) * T_ + row] = fmaf(m[i][r], sl2, log2f(sum)) * LN2;
                }
            }
        }
    }
}

// ---- backward 1: D = rowsum(dout * out) --------------------------------------------------------
// One warp per (b, t, h) row; D (B,NH,T).
template <typename T>
__device__ __forceinline__ void backward_d_impl(float* d, const T* dout, const T* out, int B, int T_, int NH,
                                                int HS) {
    const int lane = threadIdx.x & 31;
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (size_t)B * T_ * NH) {
        return;
    }
    const int h = (int)(row % NH);
    const size_t bt = row / NH;
    const int t = (int)(bt % T_);
    const size_t b = bt / T_;
    const size_t off = bt * NH * HS + (size_t)h * HS;
    float sum = 0.0f;
    for (int i = lane; i < HS; i += 32) {
        sum += to_float(dout[off + i]) * to_float(out[off + i]);
    }
    sum = warp_reduce_sum(sum);
    if (lane == 0) {
        d[(b * NH + h) * T_ + t] = sum;
    }
}

// ---- backward 2: dK, dV ------------------------------------------------------------------------
// st (16 keys w0.., BQ queries qq0..) <- P^T = exp2(st sl2 - lse log2 e) where the query sees the
// key (MASK; else 0), dpt <- dS^T = P^T (dP^T - D); lse2s and ds: the tile's lse log2 e and D.
template <bool MASK, int NT>
__device__ __forceinline__ void dkdv_scores(FragC (&st)[NT], FragC (&dpt)[NT], const float* lse2s, const float* ds,
                                            float sl2, int w0, int qq0, int T_) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = w0 + g + 8 * (e >> 1);
            const int qi = 8 * n + 2 * t4 + (e & 1);
            const float p = (!MASK || visible(key, qq0 + qi, T_)) ? exp2_ftz(st[n].x[e] * sl2 - lse2s[qi]) : 0.0f;
            st[n].x[e] = p;
            dpt[n].x[e] = p * (dpt[n].x[e] - ds[qi]);
        }
    }
}

template <typename T, int HS> struct DkdvConfig {
    // queries per tile (fp32 HS=128: 16, to stay clear of register spills on sm_80)
    static constexpr int BQ = (sizeof(T) == 2 && HS == 64) ? 64 : (sizeof(T) == 4 && HS == 128) ? 16 : 32;
    // whether each warp keeps its K and V rows in registers (else reloads them, from L1/L2)
    static constexpr bool KEEP = HS == 64;
    // Q, dO, lse and D tiles in flight: two where they fit (bf16 HS=64)
    static constexpr int STAGES = stages_for(2 * BQ * (HS + PAD) * (int)sizeof(T) + 8 * BQ);
};

template <typename T, int HS>
__device__ __forceinline__ void backward_dkdv_impl(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                                   const float* d, int B, int T_, int NH) {
    constexpr int BQ = DkdvConfig<T, HS>::BQ;
    constexpr bool KEEP = DkdvConfig<T, HS>::KEEP;
    constexpr int STAGES = DkdvConfig<T, HS>::STAGES;
    constexpr int LD = HS + PAD;
    constexpr int NT = BQ / 8;
    constexpr int KS = HS / 16;
    constexpr int NO = HS / 8;
    __shared__ __align__(16) T qs_[STAGES][BQ][LD];  // (STAGES, BQ, HS) queries of the tiles in flight
    __shared__ __align__(16) T dos_[STAGES][BQ][LD]; // (STAGES, BQ, HS) their dout
    __shared__ float lse2s_[STAGES][BQ];             // (STAGES, BQ) their lse * log2(e)
    __shared__ float ds_[STAGES][BQ];                // (STAGES, BQ) their D
    (void)B;

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int k0 = blockIdx.x * BLOCK_ROWS; // heaviest (first keys) first
    const int h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int w0 = k0 + 16 * warp; // the warp's first key
    const T* head = qkv + (size_t)b * T_ * C3 + (size_t)h * HS;
    const T* dhead = dout + (size_t)b * T_ * C + (size_t)h * HS;
    const float* lse_h = lse + ((size_t)b * NH + h) * T_;
    const float* d_h = d + ((size_t)b * NH + h) * T_;
    const float sl2 = LOG2E / sqrtf((float)HS);
    const float scale = 1.0f / sqrtf((float)HS);

    FragA<T> kf[KEEP ? KS : 1], vf[KEEP ? KS : 1]; // (16, HS) the warp's keys and values
    if constexpr (KEEP) {
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            kf[kk] = load_a_global(head + C, C3, w0, T_, 16 * kk);
            vf[kk] = load_a_global(head + 2 * C, C3, w0, T_, 16 * kk);
        }
    }
    FragC dk[NO], dv[NO];
    zero(dk);
    zero(dv);

    // query tiles from the one that holds the block's first key to the end
    const int first = k0 / BQ, n_tiles = (T_ + BQ - 1) / BQ;
    const auto stage = [&](int j) {
        const int qq0 = j * BQ, buf = j % STAGES;
        stage_rows<T, HS, BQ>(qs_[buf], head + (size_t)qq0 * C3, C3, T_ - qq0);
        stage_rows<T, HS, BQ>(dos_[buf], dhead + (size_t)qq0 * C, C, T_ - qq0);
        static_assert(BQ <= THREADS, "one thread per query of the tile");
        const int i = threadIdx.x;
        if (i < BQ) {
            const bool real = qq0 + i < T_;
            lse2s_[buf][i] = real ? lse_h[qq0 + i] * LOG2E : 0.0f;
            ds_[buf][i] = real ? d_h[qq0 + i] : 0.0f;
        }
    };
    for (int j = first; j < n_tiles; ++j) {
        const int qq0 = j * BQ;
        const T(*qs)[LD] = qs_[j % STAGES];
        const T(*dos)[LD] = dos_[j % STAGES];
        const float* lse2s = lse2s_[j % STAGES];
        const float* ds = ds_[j % STAGES];
        __syncthreads(); // every warp is done with the previous tile
        next_tile<STAGES>(j, first, n_tiles, stage);
        __syncthreads(); // tile j is in shared memory
        if (w0 >= T_ || qq0 + BQ - 1 < w0) {
            continue; // warp-uniform: no real key, or every query of the tile precedes every key
        }
        // the tile's products, dS and dK dV's updates (EDGE: with the tests, see `Edge`)
        const auto tile = [&](auto edge) {
            constexpr bool EDGE = decltype(edge)::value;
            FragC st[NT], dpt[NT]; // (16, BQ) S^T and dP^T of the warp's keys
            zero(st);
            zero(dpt);
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                FragA<T> ka, va;
                if constexpr (KEEP) {
                    ka = kf[kk];
                    va = vf[kk];
                } else {
                    ka = load_a_global(head + C, C3, w0, T_, 16 * kk);
                    va = load_a_global(head + 2 * C, C3, w0, T_, 16 * kk);
                }
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    const int n0 = qq0 + 8 * n;
                    if (!EDGE || (n0 + 7 >= w0 && n0 < T_)) { // warp-uniform; skipped n-tiles are all masked
                        mma(st[n], ka, load_b_nk<T, LD>(qs, 8 * n, 16 * kk));
                        mma(dpt[n], va, load_b_nk<T, LD>(dos, 8 * n, 16 * kk));
                    }
                }
            }
            if (!EDGE || (w0 + 15 <= qq0 && qq0 + BQ <= T_)) { // warp-uniform: no query of the tile hidden
                dkdv_scores<false>(st, dpt, lse2s, ds, sl2, w0, qq0, T_);
            } else {
                dkdv_scores<true>(st, dpt, lse2s, ds, sl2, w0, qq0, T_);
            }
#pragma unroll
            for (int kk = 0; kk < BQ / 16; ++kk) {
                const int n0 = qq0 + 16 * kk;
                if (!EDGE || (n0 + 15 >= w0 && n0 < T_)) {
                    const FragA<T> pa = a_from_c<T>(st[2 * kk], st[2 * kk + 1]);
                    const FragA<T> dsa = a_from_c<T>(dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                    for (int n = 0; n < NO; ++n) {
                        mma(dv[n], pa, load_b_kn<T, LD>(dos, 16 * kk, 8 * n));
                        mma(dk[n], dsa, load_b_kn<T, LD>(qs, 16 * kk, 8 * n));
                    }
                }
            }
        };
        run_tile<T>(w0 + 15 <= qq0 && qq0 + BQ <= T_, tile); // every query sees every key
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int key = w0 + g + 8 * i;
        if (key < T_) {
            T* dst = dqkv + ((size_t)b * T_ + key) * C3 + (size_t)h * HS + 2 * t4;
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                add_pair(dst + C + 8 * n, scale * dk[n].x[2 * i], scale * dk[n].x[2 * i + 1]);
                add_pair(dst + 2 * C + 8 * n, dv[n].x[2 * i], dv[n].x[2 * i + 1]);
            }
        }
    }
}

// ---- backward 3: dQ ----------------------------------------------------------------------------
// s (16 rows w0.., BK keys k0..) <- dS = P (dP - D), P = exp2(s sl2 - lse log2 e) where the key
// is visible (MASK; else 0).
template <bool MASK, int NT>
__device__ __forceinline__ void dq_scores(FragC (&s)[NT], const FragC (&dp)[NT], const float (&lse2)[2],
                                          const float (&dr)[2], float sl2, int w0, int k0, int T_) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = w0 + g + 8 * (e >> 1);
            const int key = k0 + 8 * n + 2 * t4 + (e & 1);
            const float p = (!MASK || visible(key, row, T_)) ? exp2_ftz(s[n].x[e] * sl2 - lse2[e >> 1]) : 0.0f;
            s[n].x[e] = p * (dp[n].x[e] - dr[e >> 1]);
        }
    }
}

// M: row blocks of 16 queries per warp (1 or 2), as in the forward. With M = 2 (the bf16 HS 64
// `_q32` kernel) each K or V fragment feeds two products, and the key tiles are 32 keys, to keep
// the scores, dP and the accumulators of 32 rows in registers.
template <typename T, int HS, int M> struct DqConfig {
    // keys per tile
    static constexpr int BK = (sizeof(T) == 2 && HS == 64 && M == 1) ? 64 : 32;
    // whether each warp keeps its q and dout rows in registers (else reloads them)
    static constexpr bool KEEP = sizeof(T) == 2 || HS == 64;
    // K and V tiles in flight: two where they fit (bf16 HS=64)
    static constexpr int STAGES = stages_for(2 * BK * (HS + PAD) * (int)sizeof(T));
    // queries per warp and per block
    static constexpr int WARP_ROWS = 16 * M;
    static constexpr int ROWS = WARP_ROWS * WARPS;
};

template <typename T, int HS, int M>
__device__ __forceinline__ void backward_dq_impl(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                                 const float* d, int B, int T_, int NH) {
    using Cfg = DqConfig<T, HS, M>;
    constexpr int BK = Cfg::BK;
    constexpr bool KEEP = Cfg::KEEP;
    constexpr int STAGES = Cfg::STAGES;
    constexpr int LD = HS + PAD;
    constexpr int NT = BK / 8;
    constexpr int KS = HS / 16;
    constexpr int NO = HS / 8;
    __shared__ __align__(16) T ks_[STAGES][BK][LD]; // (STAGES, BK, HS) keys of the tiles in flight
    __shared__ __align__(16) T vs_[STAGES][BK][LD]; // (STAGES, BK, HS) their values
    (void)B;

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * Cfg::ROWS;
    const int h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int w0 = q0 + Cfg::WARP_ROWS * warp; // the warp's first query; row block i's is w0 + 16 i
    int r_last[M]; // row block i's last real query
    row_block_lasts(r_last, w0, T_);
    const int w_last = r_last[M - 1];
    const int q_last = min(q0 + Cfg::ROWS - 1, T_ - 1);
    const T* head = qkv + (size_t)b * T_ * C3 + (size_t)h * HS;
    const T* dhead = dout + (size_t)b * T_ * C + (size_t)h * HS;
    const float sl2 = LOG2E / sqrtf((float)HS);
    const float scale = 1.0f / sqrtf((float)HS);

    FragA<T> qf[M][KEEP ? KS : 1], df[M][KEEP ? KS : 1]; // (16 M, HS) the warp's queries and dout
    if constexpr (KEEP) {
#pragma unroll
        for (int i = 0; i < M; ++i) {
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                qf[i][kk] = load_a_global(head, C3, w0 + 16 * i, T_, 16 * kk);
                df[i][kk] = load_a_global(dhead, (size_t)C, w0 + 16 * i, T_, 16 * kk);
            }
        }
    }
    float lse2[M][2], dr[M][2]; // rows w0+16i+g, w0+16i+g+8
#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = w0 + 16 * i + g + 8 * r;
            const size_t at = ((size_t)b * NH + h) * T_ + row;
            lse2[i][r] = row < T_ ? lse[at] * LOG2E : 0.0f;
            dr[i][r] = row < T_ ? d[at] : 0.0f;
        }
    }
    FragC dq[M][NO]; // (16 M, HS)
    zero(dq);

    const int n_tiles = q_last / BK + 1;
    const auto stage = [&](int j) {
        const int k0 = j * BK;
        stage_rows<T, HS, BK>(ks_[j % STAGES], head + C + (size_t)k0 * C3, C3, T_ - k0);
        stage_rows<T, HS, BK>(vs_[j % STAGES], head + 2 * C + (size_t)k0 * C3, C3, T_ - k0);
    };
    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = j * BK;
        const T(*ks)[LD] = ks_[j % STAGES];
        const T(*vs)[LD] = vs_[j % STAGES];
        __syncthreads(); // every warp is done with the previous tile
        next_tile<STAGES>(j, 0, n_tiles, stage);
        __syncthreads(); // tile j is in shared memory
        if (k0 > w_last) {
            continue; // warp-uniform: no key of the tile is visible to this warp's queries
        }
        // the tile's products, dS and dQ's update (EDGE: with the tests, see `Edge`)
        const auto tile = [&](auto edge) {
            constexpr bool EDGE = decltype(edge)::value;
            FragC s[M][NT], dp[M][NT]; // (16 M, BK)
            zero(s);
            zero(dp);
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                FragA<T> qa[M], da[M];
#pragma unroll
                for (int i = 0; i < M; ++i) {
                    if constexpr (KEEP) {
                        qa[i] = qf[i][kk];
                        da[i] = df[i][kk];
                    } else {
                        qa[i] = load_a_global(head, C3, w0 + 16 * i, T_, 16 * kk);
                        da[i] = load_a_global(dhead, (size_t)C, w0 + 16 * i, T_, 16 * kk);
                    }
                }
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    if (!EDGE || k0 + 8 * n <= w_last) { // warp-uniform; skipped n-tiles are all masked
                        const FragB<T> kb = load_b_nk<T, LD>(ks, 8 * n, 16 * kk);
                        const FragB<T> vb = load_b_nk<T, LD>(vs, 8 * n, 16 * kk);
#pragma unroll
                        for (int i = 0; i < M; ++i) {
                            if (!EDGE || k0 + 8 * n <= r_last[i]) {
                                mma(s[i][n], qa[i], kb);
                                mma(dp[i][n], da[i], vb);
                            }
                        }
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < M; ++i) {
                const int r0 = w0 + 16 * i;
                if (!EDGE || (tile_visible_from(k0, BK, r0, T_) && r0 + 15 < T_)) { // warp-uniform: none hidden
                    dq_scores<false>(s[i], dp[i], lse2[i], dr[i], sl2, r0, k0, T_);
                } else {
                    dq_scores<true>(s[i], dp[i], lse2[i], dr[i], sl2, r0, k0, T_);
                }
            }
            mma_tile<T, LD, BK, NO, M, EDGE>(dq, s, ks, k0, r_last); // dq += ds k
        };
        run_tile<T>(tile_visible_from(k0, BK, w0, T_) && w0 + Cfg::WARP_ROWS <= T_, tile); // rows all real
    }

#pragma unroll
    for (int i = 0; i < M; ++i) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = w0 + 16 * i + g + 8 * r;
            if (row < T_) {
                T* dst = dqkv + ((size_t)b * T_ + row) * C3 + (size_t)h * HS + 2 * t4;
#pragma unroll
                for (int n = 0; n < NO; ++n) {
                    add_pair(dst + 8 * n, scale * dq[i][n].x[2 * r], scale * dq[i][n].x[2 * r + 1]);
                }
            }
        }
    }
}

} // namespace flash

// ---- entry points ------------------------------------------------------------------------------
// Forward: grid (ceil(T/ROWS), NH, B), 128 threads, ROWS = 64 M queries a block (M row blocks
// of 16 per warp). out (B,T,C), lse (B,NH,T), qkv (B,T,3C). MIN_BLOCKS: blocks per SM that the
// registers must leave room for (bf16 HS=64, M=1: 4, at most 128 registers a thread, which it
// needs without spilling; 135 unbounded, 3 blocks). The _q32 kernel is M = 2 (32 queries a warp).
#define FLASH_FORWARD(NAME, TYPE, HS, M, MIN_BLOCKS)                                                     \
    extern "C" __global__ void __launch_bounds__(flash::THREADS, MIN_BLOCKS)                           \
        NAME(TYPE* out, float* lse, const TYPE* qkv, int B, int T, int NH) {                           \
        flash::forward_impl<TYPE, HS, M>(out, lse, qkv, B, T, NH);                                     \
    }
FLASH_FORWARD(flash_attention_forward_hs64, float, 64, 1, 1)
FLASH_FORWARD(flash_attention_forward_hs64_bf16, __nv_bfloat16, 64, 1, 4)
FLASH_FORWARD(flash_attention_forward_hs64_bf16_q32, __nv_bfloat16, 64, 2, 2)
FLASH_FORWARD(flash_attention_forward_hs128, float, 128, 1, 1)
FLASH_FORWARD(flash_attention_forward_hs128_bf16, __nv_bfloat16, 128, 1, 1)

// D (B,NH,T) = rowsum(dout * out), dout and out (B,T,C); one warp per row, any HS.
extern "C" __global__ void flash_attention_backward_d(float* d, const float* dout, const float* out, int B, int T,
                                                      int NH, int HS) {
    flash::backward_d_impl(d, dout, out, B, T, NH, HS);
}
extern "C" __global__ void flash_attention_backward_d_bf16(float* d, const __nv_bfloat16* dout,
                                                           const __nv_bfloat16* out, int B, int T, int NH, int HS) {
    flash::backward_d_impl(d, dout, out, B, T, NH, HS);
}

// dK, dV (accumulated into dqkv (B,T,3C)): grid (ceil(T/64), NH, B), 128 threads.
#define FLASH_DKDV(NAME, TYPE, HS)                                                                       \
    extern "C" __global__ void __launch_bounds__(flash::THREADS) NAME(                                 \
        TYPE* dqkv, const TYPE* dout, const TYPE* qkv, const float* lse, const float* d, int B, int T, int NH) { \
        flash::backward_dkdv_impl<TYPE, HS>(dqkv, dout, qkv, lse, d, B, T, NH);                        \
    }
FLASH_DKDV(flash_attention_backward_dkdv_hs64, float, 64)
FLASH_DKDV(flash_attention_backward_dkdv_hs64_bf16, __nv_bfloat16, 64)
FLASH_DKDV(flash_attention_backward_dkdv_hs128, float, 128)
FLASH_DKDV(flash_attention_backward_dkdv_hs128_bf16, __nv_bfloat16, 128)

// dQ (accumulated into dqkv (B,T,3C)): grid (ceil(T/ROWS), NH, B), 128 threads, ROWS = 64 M
// (the _q32 kernel: M = 2, 32 queries a warp). MIN_BLOCKS as the forward's (bf16 HS=64, M=1: 3,
// at most 168 registers, which it needs without spilling; unbounded it took 170, which the
// allocation's granularity of 8 rounds to 176: 2 blocks).
#define FLASH_DQ(NAME, TYPE, HS, M, MIN_BLOCKS)                                                          \
    extern "C" __global__ void __launch_bounds__(flash::THREADS, MIN_BLOCKS) NAME(                     \
        TYPE* dqkv, const TYPE* dout, const TYPE* qkv, const float* lse, const float* d, int B, int T, int NH) { \
        flash::backward_dq_impl<TYPE, HS, M>(dqkv, dout, qkv, lse, d, B, T, NH);                       \
    }
FLASH_DQ(flash_attention_backward_dq_hs64, float, 64, 1, 1)
FLASH_DQ(flash_attention_backward_dq_hs64_bf16, __nv_bfloat16, 64, 1, 3)
FLASH_DQ(flash_attention_backward_dq_hs64_bf16_q32, __nv_bfloat16, 64, 2, 2)
FLASH_DQ(flash_attention_backward_dq_hs128, float, 128, 1, 1)
FLASH_DQ(flash_attention_backward_dq_hs128_bf16, __nv_bfloat16, 128, 1, 1)
