// Deliberately broken kernels for the emulation's self-test (tests/emulated_kernels.rs,
// `the_emulation_reports_*`): each shows one kind of bug the emulation must catch. Not part of the
// engine; compiled only by the host emulation.
#include "common.h"

// A lane returns before the warp's shuffle: the others wait forever (a deadlock on the GPU, or
// undefined results).
extern "C" __global__ void early_return_before_shuffle(float* out) {
    if (threadIdx.x == 5) {
        return;
    }
    out[threadIdx.x] = warp_reduce_sum(1.0f);
}

// Writes one element past the end of its n-element buffer.
extern "C" __global__ void off_by_one_write(float* out, int n) {
    for (int i = threadIdx.x; i <= n; i += blockDim.x) {
        out[i] = 1.0f;
    }
}

// Reads past the end of its buffer (within the page after it).
extern "C" __global__ void wild_read(float* out, const float* inp, int n) {
    out[threadIdx.x] = inp[threadIdx.x + n + 16];
}

// Thread 0 reads what thread 1 writes to shared memory, without a barrier between: the result
// depends on the order the threads run in.
extern "C" __global__ void missing_barrier(float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Half the block waits at a barrier the other half skips (to wait at the next one).
extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    }
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void __launch_bounds__(64) bounded(float* out) {
    out[threadIdx.x] = 1.0f;
}
