// Residual add fused with the next LayerNorm (eps 1e-5), forward only:
//   residual_out = inp1 + inp2;  ln_out = layernorm(residual_out) * weight + bias;  mean, rstd saved.
// Twin of residual_forward followed by layernorm_forward (src/cpu/fused_residual_layernorm.rs).
//
// One warp per (b, t) row, blockDim.x / 32 rows per block. inp1 and inp2 are read once: the sum is
// rounded to the storage type T (as residual_forward would store it), written to residual_out, and
// that ROUNDED value is what the statistics and the normalisation see, so the result is the two
// separate kernels' in structure. The rounded row is kept for the later passes either in dynamic
// shared memory (cache_row = 1: blockDim.x / 32 rows of C floats) or, when that does not fit, read
// back from residual_out (cache_row = 0): every lane re-reads only the elements it wrote itself,
// so both ways see the same values and give the same bits.
//
// Loads and stores are 128-bit (4 floats or 8 bf16 per lane per step) when vec = 1, which the
// launcher sets only when C is a multiple of that width and every pointer is 16-byte aligned;
// scalar otherwise. Arithmetic is fp32 (to_float / from_float, common.h).
#include "common.h"

#define LAYERNORM_EPS 1e-5f

// V consecutive elements of T, aligned to their size: 16 bytes (one 128-bit access) when V > 1.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
    T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
    CHECK_ALIGNED(p, (int)sizeof(Pack<T, V>), "load_pack");
    return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& x) {
    CHECK_ALIGNED(p, (int)sizeof(Pack<T, V>), "store_pack");
    *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// One row per warp; lanes take V-element chunks at lane*V, lane*V + 32*V, ... (C % V == 0).
template <typename T, int V>
__device__ void residual_layernorm_row(T* residual_out, T* ln_out, float* mean, float* rstd, const T* inp1,
                                       const T* inp2, const T* weight, const T* bias, int N, int C, int cache_row) {
    extern __shared__ float row_cache[]; // (blockDim.x / 32, C) when cache_row
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    if (row >= N) {
        return; // the whole warp: row is the same on its 32 lanes
    }
    const size_t off = (size_t)row * C;
    float* cache = row_cache + (size_t)warp * C;
    T* res = residual_out + off;

    // Pass 1: the rounded sums, stored, and their total.
    float sum = 0.0f;
    for (int i = lane * V; i < C; i += 32 * V) {
        const Pack<T, V> a = load_pack<T, V>(inp1 + off + i);
        const Pack<T, V> b = load_pack<T, V>(inp2 + off + i);
        Pack<T, V> s;
#pragma unroll
        for (int k = 0; k < V; k++) {
            s.v[k] = from_float<T>(to_float(a.v[k]) + to_float(b.v[k]));
            const float x = to_float(s.v[k]);
            sum += x;
            if (cache_row) {
                cache[i + k] = x;
            }
        }
        store_pack<T, V>(res + i, s);
    }
    const float m = warp_reduce_sum(sum) / C;

    // Pass 2: the variance of the centred values (two passes, as layernorm_forward).
    float var = 0.0f;
    for (int i = lane * V; i < C; i += 32 * V) {
        Pack<T, V> s;
        if (!cache_row) {
            s = load_pack<T, V>(res + i); // this lane's own stores from pass 1
        }
#pragma unroll
        for (int k = 0; k < V; k++) {
            const float x = cache_row ? cache[i + k] : to_float(s.v[k]);
            const float d = x - m;
            var += d * d;
        }
    }
    var = warp_reduce_sum(var) / C;
    const float rs = 1.0f / sqrtf(var + LAYERNORM_EPS);

    // Pass 3: normalise, scale and shift.
    T* o = ln_out + off;
    for (int i = lane * V; i < C; i += 32 * V) {
        Pack<T, V> s;
        if (!cache_row) {
            s = load_pack<T, V>(res + i);
        }
        const Pack<T, V> w = load_pack<T, V>(weight + i);
        const Pack<T, V> bb = load_pack<T, V>(bias + i);
        Pack<T, V> out;
#pragma unroll
        for (int k = 0; k < V; k++) {
            const float x = cache_row ? cache[i + k] : to_float(s.v[k]);
            const float n = rs * (x - m);
            out.v[k] = from_float<T>(n * to_float(w.v[k]) + to_float(bb.v[k]));
        }
        store_pack<T, V>(o + i, out);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

// residual_out (N,C), ln_out (N,C), mean (N), rstd (N); inp1 (N,C), inp2 (N,C), weight (C), bias (C).
// N = B*T rows. vec: 128-bit accesses (C % (16 / sizeof(T)) == 0, all pointers 16-byte aligned).
// cache_row: dynamic shared memory holds (blockDim.x / 32) * C floats.
template <typename T>
__device__ void residual_layernorm_forward_impl(T* residual_out, T* ln_out, float* mean, float* rstd,
                                                const T* inp1, const T* inp2, const T* weight, const T* bias,
                                                int N, int C, int vec, int cache_row) {
    if (vec) {
        residual_layernorm_row<T, 16 / sizeof(T)>(residual_out, ln_out, mean, rstd, inp1, inp2, weight, bias, N,
                                                  C, cache_row);
    } else {
        residual_layernorm_row<T, 1>(residual_out, ln_out, mean, rstd, inp1, inp2, weight, bias, N, C,
                                     cache_row);
    }
}

extern "C" __global__ void residual_layernorm_forward(float* residual_out, float* ln_out, float* mean,
                                                      float* rstd, const float* inp1, const float* inp2,
                                                      const float* weight, const float* bias, int N, int C,
                                                      int vec, int cache_row) {
    residual_layernorm_forward_impl<float>(residual_out, ln_out, mean, rstd, inp1, inp2, weight, bias, N, C, vec,
                                           cache_row);
}

extern "C" __global__ void residual_layernorm_forward_bf16(__nv_bfloat16* residual_out, __nv_bfloat16* ln_out,
                                                           float* mean, float* rstd, const __nv_bfloat16* inp1,
                                                           const __nv_bfloat16* inp2,
                                                           const __nv_bfloat16* weight,
                                                           const __nv_bfloat16* bias, int N, int C, int vec,
                                                           int cache_row) {
    residual_layernorm_forward_impl<__nv_bfloat16>(residual_out, ln_out, mean, rstd, inp1, inp2, weight, bias, N,
                                                   C, vec, cache_row);
}
