// Causal multi-head self-attention helpers for the cuBLAS path (gpu::attention_forward/backward):
// the launcher permutes the fused qkv activations into per-head q, k, v, computes
// preatt = scale * q k^T and y = att v with cublasSgemmStridedBatched, and uses these kernels for
// the permutations and the causal softmax, forward and backward.
//
// Shapes: inp (B,T,3C) holds q|k|v for each position, each C = NH*HS wide with head nh at channels
// nh*HS..(nh+1)*HS. The per-head layout (B,NH,T,HS) makes each head's q, k, v a contiguous (T,HS)
// matrix. preatt and att are (B,NH,T,T); row (b, nh, t) is causal: only t2 <= t is meaningful.
#include "common.h"

// q, k, v (B,NH,T,HS) <- inp (B,T,3C). One thread per element of q.
extern "C" __global__ void attention_permute(float* q, float* k, float* v, const float* inp, int B, int T, int NH,
                                             int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T);
        const int nh = (int)((idx / ((size_t)HS * T)) % NH);
        const size_t b = idx / ((size_t)HS * T * NH);
        const size_t src = (b * T + t) * 3 * C + (size_t)nh * HS + d;
        q[idx] = inp[src];
        k[idx] = inp[src + C];
        v[idx] = inp[src + 2 * C];
    }
}

// dinp (B,T,3C) += dq, dk, dv (B,NH,T,HS) in the q, k, v thirds. One thread per element of dq.
extern "C" __global__ void attention_permute_backward(float* dinp, const float* dq, const float* dk,
                                                      const float* dv, int B, int T, int NH, int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T);
        const int nh = (int)((idx / ((size_t)HS * T)) % NH);
        const size_t b = idx / ((size_t)HS * T * NH);
        const size_t dst = (b * T + t) * 3 * C + (size_t)nh * HS + d;
        dinp[dst] += dq[idx];
        dinp[dst + C] += dk[idx];
        dinp[dst + 2 * C] += dv[idx];
    }
}

// out (B,T,C) <- y (B,NH,T,HS): the heads side by side again. One thread per element.
extern "C" __global__ void attention_unpermute(float* out, const float* y, int B, int T, int NH, int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T);
        const int nh = (int)((idx / ((size_t)HS * T)) % NH);
        const size_t b = idx / ((size_t)HS * T * NH);
        out[(b * T + t) * C + (size_t)nh * HS + d] = y[idx];
    }
}

// dy (B,NH,T,HS) = dout (B,T,C) rearranged per head (overwrites dy: it is scratch).
extern "C" __global__ void attention_unpermute_backward(float* dy, const float* dout, int B, int T, int NH, int HS) {
    const int C = NH * HS;
    const size_t n = (size_t)B * NH * T * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        const int t = (int)((idx / HS) % T);
        const int nh = (int)((idx / ((size_t)HS * T)) % NH);
        const size_t b = idx / ((size_t)HS * T * NH);
        dy[idx] = dout[(b * T + t) * C + (size_t)nh * HS + d];
    }
}

// att (B*NH*T, T) = causal softmax of preatt (B*NH*T, T) (already scaled by 1/sqrt(HS)): row
// (bh, t) normalises preatt[t2] over t2 <= t and writes att = 0 for t2 > t; it also sets
// preatt[t2 > t] = 0 (the gemm filled the whole row), so both match the CPU reference's buffers.
// One warp per row, blockDim.x / 32 rows per block; max, then the sum of exp(x - max), then the write.
extern "C" __global__ void attention_softmax_forward(float* att, float* preatt, int BNH, int T) {
    const int lane = threadIdx.x & 31;
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (size_t)BNH * T) {
        return;
    }
    const int t = (int)(row % T);
    float* x = preatt + row * T;
    float* y = att + row * T;
    float maxval = -INFINITY;
    for (int i = lane; i <= t; i += 32) {
        maxval = fmaxf(maxval, x[i]);
    }
    maxval = warp_reduce_max(maxval);
    float sum = 0.0f;
    for (int i = lane; i <= t; i += 32) {
        sum += expf(x[i] - maxval);
    }
    sum = warp_reduce_sum(sum);
    const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;
    for (int i = lane; i < T; i += 32) {
        if (i <= t) {
            y[i] = expf(x[i] - maxval) * inv;
        } else {
            y[i] = 0.0f;
            x[i] = 0.0f;
        }
    }
}

// The softmax backward, overwriting (dpreatt and datt are scratch, as in the CPU reference):
// dpreatt (B*NH*T, T) [t3] = att[t3] * (datt[t3] - sum_{t2 <= t} att[t2] datt[t2]) for t3 <= t, and
// dpreatt[t3] = datt[t3] = 0 for t3 > t (the datt gemm filled the whole row; the dq/dk gemms that
// follow read the whole dpreatt row). One warp per row.
extern "C" __global__ void attention_softmax_backward(float* dpreatt, float* datt, const float* att, int BNH,
                                                      int T) {
    const int lane = threadIdx.x & 31;
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (size_t)BNH * T) {
        return;
    }
    const int t = (int)(row % T);
    const float* a = att + row * T;
    float* da = datt + row * T;
    float* dp = dpreatt + row * T;
    float dot = 0.0f;
    for (int i = lane; i <= t; i += 32) {
        dot += a[i] * da[i];
    }
    dot = warp_reduce_sum(dot);
    for (int i = lane; i < T; i += 32) {
        if (i <= t) {
            dp[i] = a[i] * (da[i] - dot);
        } else {
            dp[i] = 0.0f;
            da[i] = 0.0f;
        }
    }
}
