// Causal multi-head self-attention helpers for the cuBLAS path (gpu::attention_forward/backward):
// the launcher permutes the fused qkv activations into per-head q, k, v, computes
// preatt = scale * q k^T and y = att v with strided-batched cuBLAS gemms, and uses these kernels
// for the permutations and the causal softmax, forward and backward.
//
// Templates over the storage type T (float or __nv_bfloat16), fp32 arithmetic, instantiated as
// NAME (fp32) and NAME_bf16; each T output is the fp32 result rounded once (accumulations read the
// old value, add in fp32, round once).
//
// Shapes: inp (B,T,3C) holds q|k|v for each position, each C = NH*HS wide with head nh at channels
// nh*HS..(nh+1)*HS. The per-head layout (B,NH,T,HS) makes each head's q, k, v a contiguous (T,HS)
// matrix. preatt and att are (B,NH,T,T); row (b, nh, t) is causal: only t2 <= t is meaningful.
#include "common.h"

// q, k, v (B,NH,T,HS) <- inp (B,T,3C). One thread per element of q.
template <typename T>
__device__ __forceinline__ void attention_permute_impl(T* q, T* k, T* v, const T* inp, int B, int T_, int NH,
                                                       int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T_ * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T_);
        const int nh = (int)((idx / ((size_t)HS * T_)) % NH);
        const size_t b = idx / ((size_t)HS * T_ * NH);
        const size_t src = (b * T_ + t) * 3 * C + (size_t)nh * HS + d;
        q[idx] = inp[src];
        k[idx] = inp[src + C];
        v[idx] = inp[src + 2 * C];
    }
}

extern "C" __global__ void attention_permute(float* q, float* k, float* v, const float* inp, int B, int T, int NH,
                                             int HS) {
    attention_permute_impl(q, k, v, inp, B, T, NH, HS);
}

extern "C" __global__ void attention_permute_bf16(__nv_bfloat16* q, __nv_bfloat16* k, __nv_bfloat16* v,
                                                  const __nv_bfloat16* inp, int B, int T, int NH, int HS) {
    attention_permute_impl(q, k, v, inp, B, T, NH, HS);
}

// dinp (B,T,3C) += dq, dk, dv (B,NH,T,HS) in the q, k, v thirds. One thread per element of dq.
template <typename T>
__device__ __forceinline__ void attention_permute_backward_impl(T* dinp, const T* dq, const T* dk, const T* dv,
                                                                int B, int T_, int NH, int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T_ * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T_);
        const int nh = (int)((idx / ((size_t)HS * T_)) % NH);
        const size_t b = idx / ((size_t)HS * T_ * NH);
        const size_t dst = (b * T_ + t) * 3 * C + (size_t)nh * HS + d;
        dinp[dst] = from_float<T>(to_float(dinp[dst]) + to_float(dq[idx]));
        dinp[dst + C] = from_float<T>(to_float(dinp[dst + C]) + to_float(dk[idx]));
        dinp[dst + 2 * C] = from_float<T>(to_float(dinp[dst + 2 * C]) + to_float(dv[idx]));
    }
}

extern "C" __global__ void attention_permute_backward(float* dinp, const float* dq, const float* dk,
                                                      const float* dv, int B, int T, int NH, int HS) {
    attention_permute_backward_impl(dinp, dq, dk, dv, B, T, NH, HS);
}

extern "C" __global__ void attention_permute_backward_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* dq,
                                                           const __nv_bfloat16* dk, const __nv_bfloat16* dv, int B,
                                                           int T, int NH, int HS) {
    attention_permute_backward_impl(dinp, dq, dk, dv, B, T, NH, HS);
}

// out (B,T,C) <- y (B,NH,T,HS): the heads side by side again. One thread per element.
template <typename T>
__device__ __forceinline__ void attention_unpermute_impl(T* out, const T* y, int B, int T_, int NH, int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T_ * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T_);
        const int nh = (int)((idx / ((size_t)HS * T_)) % NH);
        const size_t b = idx / ((size_t)HS * T_ * NH);
        out[(b * T_ + t) * C + (size_t)nh * HS + d] = y[idx];
    }
}

extern "C" __global__ void attention_unpermute(float* out, const float* y, int B, int T, int NH, int HS) {
    attention_unpermute_impl(out, y, B, T, NH, HS);
}

extern "C" __global__ void attention_unpermute_bf16(__nv_bfloat16* out, const __nv_bfloat16* y, int B, int T, int NH,
                                                    int HS) {
    attention_unpermute_impl(out, y, B, T, NH, HS);
}

// dy (B,NH,T,HS) = dout (B,T,C) rearranged per head (overwrites dy: it is scratch).
template <typename T>
__device__ __forceinline__ void attention_unpermute_backward_impl(T* dy, const T* dout, int B, int T_, int NH,
                                                                  int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T_ * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T_);
        const int nh = (int)((idx / ((size_t)HS * T_)) % NH);
        const size_t b = idx / ((size_t)HS * T_ * NH);
        dy[idx] = dout[(b * T_ + t) * C + (size_t)nh * HS + d];
    }
}

extern "C" __global__ void attention_unpermute_backward(float* dy, const float* dout, int B, int T, int NH, int HS) {
    attention_unpermute_backward_impl(dy, dout, B, T, NH, HS);
}

extern "C" __global__ void attention_unpermute_backward_bf16(__nv_bfloat16* dy, const __nv_bfloat16* dout, int B,
                                                             int T, int NH, int HS) {
    attention_unpermute_backward_impl(dy, dout, B, T, NH, HS);
}

// att (B*NH*T, T) = causal softmax of preatt (B*NH*T, T) (already scaled by 1/sqrt(HS)): row
// (bh, t) normalises preatt[t2] over t2 <= t and writes att = 0 for t2 > t; it also sets
// preatt[t2 > t] = 0 (the gemm filled the whole row), so both match the CPU reference's buffers.
// One warp per row, blockDim.x / 32 rows per block; max, then the sum of exp(x - max), then the write.
template <typename T>
__device__ __forceinline__ void attention_softmax_forward_impl(T* att, T* preatt, int BNH, int T_) {
    const int lane = threadIdx.x & 31;
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (size_t)BNH * T_) {
        return;
    }
    const int t = (int)(row % T_);
    T* x = preatt + row * T_;
    T* y = att + row * T_;
    float maxval = -INFINITY;
    for (int i = lane; i <= t; i += 32) {
        maxval = fmaxf(maxval, to_float(x[i]));
    }
    maxval = warp_reduce_max(maxval);
    float sum = 0.0f;
    for (int i = lane; i <= t; i += 32) {
        sum += expf(to_float(x[i]) - maxval);
    }
    sum = warp_reduce_sum(sum);
    const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;
    for (int i = lane; i < T_; i += 32) {
        if (i <= t) {
            y[i] = from_float<T>(expf(to_float(x[i]) - maxval) * inv);
        } else {
            y[i] = from_float<T>(0.0f);
            x[i] = from_float<T>(0.0f);
        }
    }
}

extern "C" __global__ void attention_softmax_forward(float* att, float* preatt, int BNH, int T) {
    attention_softmax_forward_impl(att, preatt, BNH, T);
}

extern "C" __global__ void attention_softmax_forward_bf16(__nv_bfloat16* att, __nv_bfloat16* preatt, int BNH, int T) {
    attention_softmax_forward_impl(att, preatt, BNH, T);
}

// The softmax backward, overwriting (dpreatt and datt are scratch, as in the CPU reference):
// dpreatt (B*NH*T, T) [t3] = att[t3] * (datt[t3] - sum_{t2 <= t} att[t2] datt[t2]) for t3 <= t, and
// dpreatt[t3] = datt[t3] = 0 for t3 > t (the datt gemm filled the whole row; the dq/dk gemms that
// follow read the whole dpreatt row). One warp per row.
template <typename T>
__device__ __forceinline__ void attention_softmax_backward_impl(T* dpreatt, T* datt, const T* att, int BNH, int T_) {
    const int lane = threadIdx.x & 31;
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (size_t)BNH * T_) {
        return;
    }
    const int t = (int)(row % T_);
    const T* a = att + row * T_;
    T* da = datt + row * T_;
    T* dp = dpreatt + row * T_;
    float dot = 0.0f;
    for (int i = lane; i <= t; i += 32) {
        dot += to_float(a[i]) * to_float(da[i]);
    }
    dot = warp_reduce_sum(dot);
    for (int i = lane; i < T_; i += 32) {
        if (i <= t) {
            dp[i] = from_float<T>(to_float(a[i]) * (to_float(da[i]) - dot));
        } else {
            dp[i] = from_float<T>(0.0f);
            da[i] = from_float<T>(0.0f);
        }
    }
}

extern "C" __global__ void attention_softmax_backward(float* dpreatt, float* datt, const float* att, int BNH,
                                                      int T) {
    attention_softmax_backward_impl(dpreatt, datt, att, BNH, T);
}

extern "C" __global__ void attention_softmax_backward_bf16(__nv_bfloat16* dpreatt, __nv_bfloat16* datt,
                                                           const __nv_bfloat16* att, int BNH, int T) {
    attention_softmax_backward_impl(dpreatt, datt, att, BNH, T);
}
