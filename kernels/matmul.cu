// The matmul's helpers around cuBLAS sgemm (gpu::matmul_forward/backward): the bias add of the
// forward and the bias gradient of the backward.
//
// The bias gradient is deterministic without atomics: bias_backward_partial has one thread per
// output channel and row chunk (rows_per_chunk consecutive rows of dout summed in row order) and
// writes per-chunk sums to a scratch buffer; column_sum_reduce adds the chunks in chunk order.
#include "common.h"

// out (N,OC) [row, o] += bias (OC) [o]. Grid-stride loop over the N*OC elements.
extern "C" __global__ void add_bias(float* out, const float* bias, size_t n, int OC) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] += bias[i % OC];
    }
}

// partial (num_chunks, OC) [k, o] = sum of dout (N,OC) [row, o] over rows
// k*rows_per_chunk .. min(N, (k+1)*rows_per_chunk), in row order. grid: (ceil(OC / blockDim.x), num_chunks).
extern "C" __global__ void bias_backward_partial(float* partial, const float* dout, int N, int OC, int rows_per_chunk) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (o >= OC) {
        return;
    }
    const int row_end = min(N, (chunk + 1) * rows_per_chunk);
    float sum = 0.0f;
    for (int row = chunk * rows_per_chunk; row < row_end; row++) {
        sum += dout[(size_t)row * OC + o];
    }
    partial[(size_t)chunk * OC + o] = sum;
}

// out (n) [i] += sum over k of partial (num_chunks, n) [k, i], k ascending. One thread per i.
extern "C" __global__ void column_sum_reduce(float* out, const float* partial, int num_chunks, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    float sum = 0.0f;
    for (int k = 0; k < num_chunks; k++) {
        sum += partial[(size_t)k * n + i];
    }
    out[i] += sum;
}
