// LayerNorm over the channels of each (b, t) row, eps 1e-5, forward and backward.
//
// Forward and the dinp part of backward: one warp per row (blockDim.x / 32 rows per block), lanes
// striding over the channels, sums by warp shuffles. The parameter gradients are reduced without
// atomics, deterministically: layernorm_backward_params_partial has one thread per channel c and
// row chunk (rows_per_chunk consecutive rows, summed in row order) writing per-chunk partial sums
// to a scratch buffer, and layernorm_backward_params_reduce adds the chunks in chunk order.
#include "common.h"

#define LAYERNORM_EPS 1e-5f

// out (N,C) = (inp - mean) * rstd * weight (C) + bias (C); saves mean (N) and rstd (N).
// N = B*T rows. Two passes over the row (mean, then the variance of the centred values).
extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                             const float* weight, const float* bias, int N, int C) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) {
        return;
    }
    const float* x = inp + (size_t)row * C;
    float sum = 0.0f;
    for (int i = lane; i < C; i += 32) {
        sum += x[i];
    }
    const float m = warp_reduce_sum(sum) / C;
    float var = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float d = x[i] - m;
        var += d * d;
    }
    var = warp_reduce_sum(var) / C;
    const float s = 1.0f / sqrtf(var + LAYERNORM_EPS);
    float* o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32) {
        const float n = s * (x[i] - m);
        o[i] = n * weight[i] + bias[i];
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// dinp (N,C) += the LayerNorm input gradient, one warp per row:
// dnorm = weight * dout; dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd.
extern "C" __global__ void layernorm_backward_dinp(float* dinp, const float* dout, const float* inp,
                                                   const float* weight, const float* mean, const float* rstd,
                                                   int N, int C) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) {
        return;
    }
    const size_t off = (size_t)row * C;
    const float* x = inp + off;
    const float* d = dout + off;
    const float m = mean[row];
    const float s = rstd[row];
    float dnorm_sum = 0.0f;
    float dnorm_norm_sum = 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float norm = (x[i] - m) * s;
        const float dnorm = weight[i] * d[i];
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * norm;
    }
    const float dnorm_mean = warp_reduce_sum(dnorm_sum) / C;
    const float dnorm_norm_mean = warp_reduce_sum(dnorm_norm_sum) / C;
    float* di = dinp + off;
    for (int i = lane; i < C; i += 32) {
        const float norm = (x[i] - m) * s;
        const float dnorm = weight[i] * d[i];
        float dval = dnorm;
        dval -= dnorm_mean;
        dval -= norm * dnorm_norm_mean;
        dval *= s;
        di[i] += dval;
    }
}

// partial (num_chunks, 2, C): for chunk k and channel c, [k, 0, c] = sum of dout * norm and
// [k, 1, c] = sum of dout over rows k*rows_per_chunk .. min(N, (k+1)*rows_per_chunk), in row order.
// grid: (ceil(C / blockDim.x), num_chunks).
extern "C" __global__ void layernorm_backward_params_partial(float* partial, const float* dout, const float* inp,
                                                            const float* mean, const float* rstd, int N, int C,
                                                            int rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (c >= C) {
        return;
    }
    const int row_end = min(N, (chunk + 1) * rows_per_chunk);
    float dw = 0.0f;
    float db = 0.0f;
    for (int row = chunk * rows_per_chunk; row < row_end; row++) {
        const size_t i = (size_t)row * C + c;
        const float norm = (inp[i] - mean[row]) * rstd[row];
        dw += dout[i] * norm;
        db += dout[i];
    }
    float* p = partial + (size_t)chunk * 2 * C;
    p[c] = dw;
    p[C + c] = db;
}

// dweight (C) += sum over chunks of partial[k, 0, :]; dbias (C) += sum of partial[k, 1, :]; chunks
// in order. One thread per channel.
extern "C" __global__ void layernorm_backward_params_reduce(float* dweight, float* dbias, const float* partial,
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
    dweight[c] += dw;
    dbias[c] += db;
}
