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

// A packed (16-byte) load from wherever it is given, aligned or not (the kernels test aligned16
// first and take their scalar path otherwise).
extern "C" __global__ void unchecked_packed_load(float* out, const float* inp) {
    const Packed<float> x = load_packed(inp);
    out[threadIdx.x] = x.v[threadIdx.x % 4];
}

// The first n elements of a pack, summed: with n = 5, a loop one element past it (`k <= PACK`),
// which on the host reads the stack beyond it unseen.
extern "C" __global__ void element_past_a_pack(float* out, const float* inp, int n) {
    const Packed<float> x = load_packed(inp);
    float sum = 0.0f;
    for (int k = 0; k < n; k++) {
        sum += x.v[k];
    }
    out[threadIdx.x] = sum;
}

// The first n of a local array of 4, summed: with n = 5, a loop one past it (`k <= 4`, as
// `n <= NO` over an array of accumulators), which on the host reads the stack beyond it unseen
// unless the bounds are checked (-fsanitize=bounds).
extern "C" __global__ void element_past_a_local_array(float* out, int n) {
    float acc[4];
    for (int k = 0; k < 4; k++) {
        acc[k] = (float)(k + 1);
    }
    float sum = 0.0f;
    for (int k = 0; k < n; k++) {
        sum += acc[k];
    }
    out[threadIdx.x] = sum;
}

// Not a bug in itself: what a kernel reads where nothing was written. Each of its blocks of 32
// threads writes, at out[64 b + t], shared memory that no thread of the block wrote yet (the
// block before wrote it: blocks do not share it) and, at out[64 b + 32 + t], a local never written.
extern "C" __global__ void unwritten_memory(float* out) {
    __shared__ float s[32];
    float acc[2];
    acc[1] = 1.0f;
    const int i = blockIdx.x * 64 + threadIdx.x;
    out[i] = s[threadIdx.x];
    out[i + 32] = acc[threadIdx.x & 0];
    __syncthreads();
    s[threadIdx.x] = 1.0f + acc[1];
}

// Loops for ever (`n` is never reached: i wraps before it), as a grid-stride loop whose stride
// is lost does.
extern "C" __global__ void endless_loop(float* out, int n) {
    volatile unsigned int spins = 0;
    for (int i = 0; i < n; i = (i + 1) & 1023) {
        spins++;
    }
    out[threadIdx.x] = (float)spins;
}

extern "C" __global__ void __launch_bounds__(64) bounded(float* out) {
    out[threadIdx.x] = 1.0f;
}

// Not a bug: ldmatrix's layout. A 16x16 tile of 16-bit values v(r, c) = 256 + 16 r + c in shared
// memory (rows of 24 elements: 48 bytes, so every row starts 16-byte aligned); lane l points at
// row l & 15, column 8 (l >> 4) (plus `offset` elements: 1 misaligns every address); out[4 l + i]
// is the lane's register i after ldmatrix.x{num}{.trans}.
extern "C" __global__ void ldmatrix_layout(unsigned* out, int num, int trans, int offset) {
    __shared__ __align__(16) unsigned short tile[16][24];
    for (int i = threadIdx.x; i < 16 * 24; i += blockDim.x) {
        tile[i / 24][i % 24] = (unsigned short)(256 + 16 * (i / 24) + i % 24);
    }
    __syncthreads();
    unsigned r[4] = {0, 0, 0, 0};
    const int l = threadIdx.x;
    emu_ldmatrix(r, &tile[l & 15][8 * (l >> 4) + offset], num, trans);
    for (int i = 0; i < 4; i++) {
        out[4 * l + i] = r[i];
    }
}
