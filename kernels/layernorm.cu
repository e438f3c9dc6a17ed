// LayerNorm over the channels of each (b, t) row, eps 1e-5, forward and backward.
//
// Forward and the dinp part of backward: one warp per row (blockDim.x / 32 rows per block), lanes
// striding over the channels (single channels, or packs of 16 bytes when C and the pointers allow),
// sums by warp shuffles. The parameter gradients are reduced without atomics, deterministically:
// layernorm_backward_params_partial has one thread per channel c (or per pack of channels) and row
// chunk (rows_per_chunk consecutive rows, summed in row order) writing per-chunk partial sums to a
// scratch buffer, and layernorm_backward_params_reduce adds the chunks in chunk order.
//
// Templates over the storage type T (float or __nv_bfloat16) of out, inp, weight, bias and the
// gradients, with fp32 arithmetic, instantiated as NAME (fp32) and NAME_bf16. mean, rstd and the
// partial sums are fp32 in both; each T output is the fp32 result rounded once (the backward reads
// the old gradient, adds in fp32, rounds once).
#include "common.h"

#define LAYERNORM_EPS 1e-5f

// out (N,C) = (inp - mean) * rstd * weight (C) + bias (C); saves mean (N) and rstd (N).
// N = B*T rows. Two passes over the row (mean, then the variance of the centred values), lanes
// striding over single channels; the output pass is packed (PACK channels per lane per step) when
// C is a multiple of PACK and out, inp, weight, bias are 16-byte aligned (same values either way).
template <typename T>
__device__ __forceinline__ void layernorm_forward_impl(T* out, float* mean, float* rstd, const T* inp,
                                                       const T* weight, const T* bias, int N, int C) {
    constexpr int PACK = Packed<T>::size;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) {
        return;
    }
    const T* x = inp + (size_t)row * C;
    float sum = 0.0f;
    for (int i = lane; i < C; i += 32) {
        sum += to_float(x[i]);
    }
    const float m = warp_reduce_sum(sum) / C;
    float var = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float d = to_float(x[i]) - m;
        var += d * d;
    }
    var = warp_reduce_sum(var) / C;
    const float s = 1.0f / sqrtf(var + LAYERNORM_EPS);
    T* o = out + (size_t)row * C;
    if (C % PACK == 0 && aligned16(out) && aligned16(inp) && aligned16(weight) && aligned16(bias)) {
        for (int i = lane * PACK; i < C; i += 32 * PACK) {
            const Packed<T> xp = load_packed(x + i);
            const Packed<T> wp = load_packed(weight + i);
            const Packed<T> bp = load_packed(bias + i);
            Packed<T> op;
            for (int k = 0; k < PACK; k++) {
                const float n = s * (to_float(xp.v[k]) - m);
                op.v[k] = from_float<T>(n * to_float(wp.v[k]) + to_float(bp.v[k]));
            }
            store_packed(o + i, op);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float n = s * (to_float(x[i]) - m);
            o[i] = from_float<T>(n * to_float(weight[i]) + to_float(bias[i]));
        }
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                             const float* weight, const float* bias, int N, int C) {
    layernorm_forward_impl(out, mean, rstd, inp, weight, bias, N, C);
}

extern "C" __global__ void layernorm_forward_bf16(__nv_bfloat16* out, float* mean, float* rstd,
                                                  const __nv_bfloat16* inp, const __nv_bfloat16* weight,
                                                  const __nv_bfloat16* bias, int N, int C) {
    layernorm_forward_impl(out, mean, rstd, inp, weight, bias, N, C);
}

// One channel's input-gradient term, (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd, in
// the fp32 operations' order that both paths of layernorm_backward_dinp share.
__device__ __forceinline__ float dinp_term(float dnorm, float norm, float dnorm_mean, float dnorm_norm_mean,
                                           float s) {
    float dval = dnorm;
    dval -= dnorm_mean;
    dval -= norm * dnorm_norm_mean;
    dval *= s;
    return dval;
}

// dinp (N,C) += the LayerNorm input gradient, one warp per row:
// dnorm = weight * dout; dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd.
// dout, inp (N,C) in T; weight (C) in T; mean, rstd (N) fp32. Two passes over the row: the sums of
// dnorm and dnorm * norm (fp32 per-lane partials, then the warp butterfly), then the update.
// Packed path, when C is a multiple of PACK and dinp, dout, inp, weight are all 16-byte aligned
// (then every row is): each lane takes PACK consecutive channels per step (channels lane*PACK ..
// lane*PACK + PACK-1, then 32*PACK further on), with 128-bit loads of inp, dout, weight and a
// 128-bit read-modify-write of dinp. Each element is computed exactly as in the scalar path; only
// which channels a lane's partial sums collect, and so the order of the fp32 additions, differs
// (lane l adds its packs in stride order, PACK consecutive channels in order within each pack,
// instead of channels l, l+32, l+64, ...). Scalar path otherwise: lanes stride over single channels.
template <typename T>
__device__ __forceinline__ void layernorm_backward_dinp_impl(T* dinp, const T* dout, const T* inp,
                                                             const T* weight, const float* mean,
                                                             const float* rstd, int N, int C) {
    constexpr int PACK = Packed<T>::size;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) {
        return;
    }
    const size_t off = (size_t)row * C;
    const T* x = inp + off;  // (C) this row's input
    const T* d = dout + off; // (C) this row's output gradient
    T* di = dinp + off;      // (C) this row's input gradient, accumulated
    const float m = mean[row];
    const float s = rstd[row];
    const bool packed =
        C % PACK == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
    float dnorm_sum = 0.0f;
    float dnorm_norm_sum = 0.0f;
    if (packed) {
        for (int i = lane * PACK; i < C; i += 32 * PACK) {
            const Packed<T> xp = load_packed(x + i);
            const Packed<T> dp = load_packed(d + i);
            const Packed<T> wp = load_packed(weight + i);
            for (int k = 0; k < PACK; k++) {
                const float norm = (to_float(xp.v[k]) - m) * s;
                const float dnorm = to_float(wp.v[k]) * to_float(dp.v[k]);
                dnorm_sum += dnorm;
                dnorm_norm_sum += dnorm * norm;
            }
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float norm = (to_float(x[i]) - m) * s;
            const float dnorm = to_float(weight[i]) * to_float(d[i]);
            dnorm_sum += dnorm;
            dnorm_norm_sum += dnorm * norm;
        }
    }
    const float dnorm_mean = warp_reduce_sum(dnorm_sum) / C;
    const float dnorm_norm_mean = warp_reduce_sum(dnorm_norm_sum) / C;
    if (packed) {
        for (int i = lane * PACK; i < C; i += 32 * PACK) {
            const Packed<T> xp = load_packed(x + i);
            const Packed<T> dp = load_packed(d + i);
            const Packed<T> wp = load_packed(weight + i);
            Packed<T> gp = load_packed(di + i);
            for (int k = 0; k < PACK; k++) {
                const float norm = (to_float(xp.v[k]) - m) * s;
                const float dnorm = to_float(wp.v[k]) * to_float(dp.v[k]);
                const float dval = dinp_term(dnorm, norm, dnorm_mean, dnorm_norm_mean, s);
                gp.v[k] = from_float<T>(to_float(gp.v[k]) + dval);
            }
            store_packed(di + i, gp);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float norm = (to_float(x[i]) - m) * s;
            const float dnorm = to_float(weight[i]) * to_float(d[i]);
            const float dval = dinp_term(dnorm, norm, dnorm_mean, dnorm_norm_mean, s);
            di[i] = from_float<T>(to_float(di[i]) + dval);
        }
    }
}

extern "C" __global__ void layernorm_backward_dinp(float* dinp, const float* dout, const float* inp,
                                                   const float* weight, const float* mean, const float* rstd,
                                                   int N, int C) {
    layernorm_backward_dinp_impl(dinp, dout, inp, weight, mean, rstd, N, C);
}

extern "C" __global__ void layernorm_backward_dinp_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* dout,
                                                        const __nv_bfloat16* inp, const __nv_bfloat16* weight,
                                                        const float* mean, const float* rstd, int N, int C) {
    layernorm_backward_dinp_impl(dinp, dout, inp, weight, mean, rstd, N, C);
}

// partial (num_chunks, 2, C), fp32: for chunk k and channel c, [k, 0, c] = sum of dout * norm and
// [k, 1, c] = sum of dout over rows k*rows_per_chunk .. min(N, (k+1)*rows_per_chunk), in row order
// (fp32, one running sum per channel). dout, inp (N,C) in T; mean, rstd (N) fp32. Chunk = blockIdx.y.
// packed = 0 (scalar): one thread per channel, grid (ceil(C / blockDim.x), num_chunks).
// packed = 1: one thread per pack of PACK consecutive channels (8 bf16 or 4 floats), 128-bit loads
// of dout and inp per row and 128-bit stores of the partial sums, grid (ceil(C / PACK /
// blockDim.x), num_chunks); the launcher sets it (gpu::launch::layernorm_params_partial) only when
// C is a multiple of PACK and partial, dout, inp are 16-byte aligned. Each channel's sums are the
// same fp32 operations in the same row order on either path: bitwise the same partials.
template <typename T>
__device__ __forceinline__ void layernorm_backward_params_partial_impl(float* partial, const T* dout,
                                                                       const T* inp, const float* mean,
                                                                       const float* rstd, int N, int C,
                                                                       int rows_per_chunk, int packed) {
    constexpr int PACK = Packed<T>::size;
    constexpr int FPACK = Packed<float>::size; // PACK is 1 or 2 Packed<float> of partial sums
    const int chunk = blockIdx.y;
    const int row_end = min(N, (chunk + 1) * rows_per_chunk);
    float* p = partial + (size_t)chunk * 2 * C; // (2, C) this chunk's sums
    if (packed) {
        const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * PACK; // first channel of the pack
        if (c0 >= C) {
            return;
        }
        float dw[PACK];
        float db[PACK];
        for (int k = 0; k < PACK; k++) {
            dw[k] = 0.0f;
            db[k] = 0.0f;
        }
        for (int row = chunk * rows_per_chunk; row < row_end; row++) {
            const size_t i = (size_t)row * C + c0;
            const Packed<T> xp = load_packed(inp + i);
            const Packed<T> dp = load_packed(dout + i);
            const float m = mean[row];
            const float s = rstd[row];
            for (int k = 0; k < PACK; k++) {
                const float norm = (to_float(xp.v[k]) - m) * s;
                const float d = to_float(dp.v[k]);
                dw[k] += d * norm;
                db[k] += d;
            }
        }
        for (int h = 0; h < PACK; h += FPACK) {
            Packed<float> wp;
            Packed<float> bp;
            for (int k = 0; k < FPACK; k++) {
                wp.v[k] = dw[h + k];
                bp.v[k] = db[h + k];
            }
            store_packed(p + c0 + h, wp);
            store_packed(p + C + c0 + h, bp);
        }
        return;
    }
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) {
        return;
    }
    float dw = 0.0f;
    float db = 0.0f;
    for (int row = chunk * rows_per_chunk; row < row_end; row++) {
        const size_t i = (size_t)row * C + c;
        const float norm = (to_float(inp[i]) - mean[row]) * rstd[row];
        const float d = to_float(dout[i]);
        dw += d * norm;
        db += d;
    }
    p[c] = dw;
    p[C + c] = db;
}

extern "C" __global__ void layernorm_backward_params_partial(float* partial, const float* dout, const float* inp,
                                                            const float* mean, const float* rstd, int N, int C,
                                                            int rows_per_chunk, int packed) {
    layernorm_backward_params_partial_impl(partial, dout, inp, mean, rstd, N, C, rows_per_chunk, packed);
}

extern "C" __global__ void layernorm_backward_params_partial_bf16(float* partial, const __nv_bfloat16* dout,
                                                                 const __nv_bfloat16* inp, const float* mean,
                                                                 const float* rstd, int N, int C,
                                                                 int rows_per_chunk, int packed) {
    layernorm_backward_params_partial_impl(partial, dout, inp, mean, rstd, N, C, rows_per_chunk, packed);
}

// dweight (C) += sum over chunks of partial[k, 0, :]; dbias (C) += sum of partial[k, 1, :]; chunks
// in order, in fp32, one rounding into T. One thread per channel.
template <typename T>
__device__ __forceinline__ void layernorm_backward_params_reduce_impl(T* dweight, T* dbias, const float* partial,
                                                                      int num_chunks, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) {
        return;
    }
    float dw = 0.0f;
    float db = 0.0f;
    for (int k = 0; k < num_chunks; k++) {
        const float* p = partial + (size_t)k * 2 * C;
        dw += p[c];
        db += p[C + c];
    }
    dweight[c] = from_float<T>(to_float(dweight[c]) + dw);
    dbias[c] = from_float<T>(to_float(dbias[c]) + db);
}

extern "C" __global__ void layernorm_backward_params_reduce(float* dweight, float* dbias, const float* partial,
                                                           int num_chunks, int C) {
    layernorm_backward_params_reduce_impl(dweight, dbias, partial, num_chunks, C);
}

extern "C" __global__ void layernorm_backward_params_reduce_bf16(__nv_bfloat16* dweight, __nv_bfloat16* dbias,
                                                                const float* partial, int num_chunks, int C) {
    layernorm_backward_params_reduce_impl(dweight, dbias, partial, num_chunks, C);
}
