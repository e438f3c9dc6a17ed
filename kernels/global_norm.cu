// The global L2 norm of a buffer (gradient clipping), as a deterministic two-stage reduction: a
// FIXED number of blocks (chosen by the launcher, independent of the GPU) each reduce a grid-stride
// share to one partial sum of squares, then one block adds the partials. The launcher reads the
// total back and takes the square root on the host.
// The first stage is a template over the storage type T of the data (float or __nv_bfloat16),
// instantiated as global_norm_partial (fp32) and global_norm_partial_bf16; the squares, the
// partials and the final sum are fp32 in both. The first stage reads 16 bytes at a time when the
// data is 16-byte aligned (then a scalar tail), one element at a time otherwise.
#include "common.h"

// partial (gridDim.x) [block] = the sum of data[i]^2 over this block's grid-stride share of data (n).
// Packed path, when data is 16-byte aligned: thread tid (of stride = gridDim.x * blockDim.x) reads
// the whole packs q = tid, tid + stride, ... below n / PACK with 128-bit loads (PACK = 4 floats or
// 8 bf16), then the tail elements n / PACK * PACK + tid, + stride, ... below n (fewer than PACK, so
// at most one per thread) as scalars. Scalar path otherwise: elements tid, tid + stride, ...
// The order of the sum is fixed by n, the path (the data's alignment) and the launch, which is
// NORM_BLOCKS x NORM_THREADS on every GPU (gpu::launch): each thread adds its squares in fp32 in the
// order above (packs in stride order, the PACK elements of a pack in order, then its tail element),
// the block adds its threads' sums in block_reduce_sum's fixed tree, and global_norm_final adds the
// blocks' partials in its fixed order. Deterministic and independent of the GPU; a misaligned view
// of the same data sums in the scalar order instead (a few ulps apart).
template <typename T> __device__ __forceinline__ void global_norm_partial_impl(float* partial, const T* data, size_t n) {
    constexpr int PACK = Packed<T>::size;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    float sum = 0.0f;
    size_t done = 0; // elements below this were summed by the packed path
    if (aligned16(data)) {
        const size_t packs = n / PACK;
        for (size_t q = tid; q < packs; q += stride) {
            const Packed<T> p = load_packed(data + q * PACK);
            for (int k = 0; k < PACK; k++) {
                const float x = to_float(p.v[k]);
                sum += x * x;
            }
        }
        done = packs * PACK;
    }
    for (size_t i = done + tid; i < n; i += stride) {
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
