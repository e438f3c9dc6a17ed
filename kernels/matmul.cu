// The matmul's helpers around cuBLAS (gpu::matmul_forward/backward): the bias add of the forward
// and the bias gradient of the backward.
//
// The bias gradient is deterministic without atomics: bias_backward_partial has one thread per
// output channel and row chunk (rows_per_chunk consecutive rows of dout summed in row order) and
// writes per-chunk sums to an fp32 scratch buffer; column_sum_reduce adds the chunks in chunk order.
//
// Templates over the storage type T (float or __nv_bfloat16), fp32 arithmetic, instantiated as
// NAME (fp32) and NAME_bf16; each T output is the fp32 result rounded once.
#include "common.h"

// out (N,OC) [row, o] += bias (OC) [o]. Grid-stride loop over the N*OC elements.
template <typename T> __device__ __forceinline__ void add_bias_impl(T* out, const T* bias, size_t n, int OC) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = from_float<T>(to_float(out[i]) + to_float(bias[i % OC]));
    }
}

extern "C" __global__ void add_bias(float* out, const float* bias, size_t n, int OC) {
    add_bias_impl(out, bias, n, OC);
}

extern "C" __global__ void add_bias_bf16(__nv_bfloat16* out, const __nv_bfloat16* bias, size_t n, int OC) {
    add_bias_impl(out, bias, n, OC);
}

// partial (num_chunks, OC) [k, o], fp32, = sum of dout (N,OC) [row, o] over rows
// k*rows_per_chunk .. min(N, (k+1)*rows_per_chunk), in row order. grid: (ceil(OC / blockDim.x), num_chunks).
template <typename T>
__device__ __forceinline__ void bias_backward_partial_impl(float* partial, const T* dout, int N, int OC,
                                                           int rows_per_chunk) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (o >= OC) {
        return;
    }
    const int row_end = min(N, (chunk + 1) * rows_per_chunk);
    float sum = 0.0f;
    for (int row = chunk * rows_per_chunk; row < row_end; row++) {
        sum += to_float(dout[(size_t)row * OC + o]);
    }
    partial[(size_t)chunk * OC + o] = sum;
}

extern "C" __global__ void bias_backward_partial(float* partial, const float* dout, int N, int OC, int rows_per_chunk) {
    bias_backward_partial_impl(partial, dout, N, OC, rows_per_chunk);
}

extern "C" __global__ void bias_backward_partial_bf16(float* partial, const __nv_bfloat16* dout, int N, int OC,
                                                      int rows_per_chunk) {
    bias_backward_partial_impl(partial, dout, N, OC, rows_per_chunk);
}

// out (n) [i] += sum over k of partial (num_chunks, n) [k, i], k ascending, in fp32, rounded once
// into T. One thread per i.
template <typename T>
__device__ __forceinline__ void column_sum_reduce_impl(T* out, const float* partial, int num_chunks, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    float sum = 0.0f;
    for (int k = 0; k < num_chunks; k++) {
        sum += partial[(size_t)k * n + i];
    }
    out[i] = from_float<T>(to_float(out[i]) + sum);
}

extern "C" __global__ void column_sum_reduce(float* out, const float* partial, int num_chunks, int n) {
    column_sum_reduce_impl(out, partial, num_chunks, n);
}

extern "C" __global__ void column_sum_reduce_bf16(__nv_bfloat16* out, const float* partial, int num_chunks, int n) {
    column_sum_reduce_impl(out, partial, num_chunks, n);
}
