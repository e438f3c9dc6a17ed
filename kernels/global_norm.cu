// The global L2 norm of a buffer (gradient clipping), as a deterministic two-stage reduction: a
// FIXED number of blocks (chosen by the launcher, independent of the GPU) each reduce a grid-stride
// share to one partial sum of squares, then one block adds the partials. The launcher reads the
// total back and takes the square root on the host.
// The first stage is a template over the storage type T of the data (float or __nv_bfloat16),
// instantiated as global_norm_partial (fp32) and global_norm_partial_bf16; the squares, the
// partials and the final sum are fp32 in both.
#include "common.h"

// partial (gridDim.x) [block] = the sum of data[i]^2 over this block's grid-stride share of data (n).
template <typename T> __device__ __forceinline__ void global_norm_partial_impl(float* partial, const T* data, size_t n) {
    float sum = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = to_float(data[i]);
        sum += x * x;
    }
    sum = block_reduce_sum(sum);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = sum;
    }
}

extern "C" __global__ void __launch_bounds__(512) global_norm_partial(float* partial, const float* data, size_t n) {
    global_norm_partial_impl(partial, data, n);
}

extern "C" __global__ void __launch_bounds__(512)
    global_norm_partial_bf16(float* partial, const __nv_bfloat16* data, size_t n) {
    global_norm_partial_impl(partial, data, n);
}

// out (1) [0] = the sum of partial (num_partials). Launched as a single block.
// All kernels here: at most 512 threads per block (the launch bound).
extern "C" __global__ void __launch_bounds__(512) global_norm_final(float* out, const float* partial, int num_partials) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < num_partials; i += blockDim.x) {
        sum += partial[i];
    }
    sum = block_reduce_sum(sum);
    if (threadIdx.x == 0) {
        out[0] = sum;
    }
}
