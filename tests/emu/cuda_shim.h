// CUDA on the host: with this header force-included (g++ -include cuda_shim.h) and __CUDACC__
// defined, g++ compiles kernels/*.cu as ordinary C++. Each CUDA thread of a block runs as a fiber
// (runtime.cpp); blocks run one after another. What the kernels see:
// - threadIdx, blockIdx, blockDim, gridDim: the current fiber's / block's / launch's (uint3 / dim3
//   of unsigned ints, as in CUDA, so the kernels' integer arithmetic is unchanged);
// - __syncthreads(): a block barrier; every live thread must wait at the same one (source line);
//   exited threads count as arrived;
// - __shfl_*_sync: warp-wide exchanges: every lane of the mask must arrive at the same kind of
//   shuffle with the same mask before any continues; a lane that never arrives (divergence, an
//   early return) is reported as a deadlock by the runtime instead of hanging;
// - __shared__: `static` (one block at a time, so one copy is enough), NaN bytes at each block's
//   start; `extern __shared__` arrays are rewritten by the harness (tests/emu/mod.rs) to the
//   launch's dynamic shared memory (NaN bytes too);
// - locals: compiled with -ftrivial-auto-var-init=pattern where the compiler has it (g++ 12,
//   clang 8), so a variable read before it is written holds 0xfe bytes (-1.7e38 as a float), not
//   whatever the stack had (often 0, which would pass for an initialised sum);
// - the _rn intrinsics: plain IEEE fp32 operations (compiled with -ffp-contract=off: no FMA);
//   expf, tanhf, ... : the host's libm (CUDA's differ by an ulp or two).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cuda_bf16.h"

#define CUDA_HOST_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
// static shared memory: one copy (blocks run one at a time), in a section of its own that the
// runtime fills with 0xff bytes (NaN in fp32 and bf16) before each block, as it does the dynamic
// shared memory: a read of shared memory no thread of the block wrote shows up
#define __shared__ static __attribute__((section("emu_shared")))

struct uint3 {
    unsigned int x, y, z;
};
typedef uint3 dim3;

struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) {
    return float2{x, y};
}

// ---- the runtime (runtime.cpp) ----------------------------------------------------------------
struct EmuThread {
    uint3 tid;
};
extern EmuThread* emu_current;
extern uint3 emu_block_idx;
extern uint3 emu_block_dim;
extern uint3 emu_grid_dim;

#define threadIdx (emu_current->tid)
#define blockIdx (emu_block_idx)
#define blockDim (emu_block_dim)
#define gridDim (emu_grid_dim)

// The block barrier at source line `line` of `file` (all threads must wait at the same one).
void emu_syncthreads(const char* file, int line);
// The warp-wide exchange: this lane offers `value` and receives the value of the lane the
// operation names (kind: 0 idx, 1 xor, 2 down, 3 up; arg: the lane, lane mask or delta).
unsigned int emu_shfl(unsigned int mask, unsigned int value, int kind, int arg, int width);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d}, {a}, {b}, {c} with d = c, for the whole
// warp: every lane passes its fragments (PTX ISA layout), the product is formed when all 32 arrived.
void emu_mma_m16n8k16_row_col_f32_bf16_bf16_f32(float* c, const unsigned int* a, const unsigned int* b);
// ldmatrix.sync.aligned.m8n8.x{num}{.trans if trans}.shared.b16 for the whole warp: every lane
// passes its row address (lane 8i + r: row r of matrix i) and receives num 32-bit registers.
void emu_ldmatrix(unsigned int* dst, const void* row, int num, int trans);
// cp.async.cg.shared.global [dst], [src], bytes, src_bytes; cp.async.commit_group;
// cp.async.wait_group n: for the calling thread, each copy made at the wait that covers it.
void emu_cp_async(void* dst, const void* src, int bytes, int src_bytes);
void emu_cp_async_commit();
void emu_cp_async_wait(int n);
// The launch's dynamic shared memory (`extern __shared__ T name[]`).
void* emu_dynamic_smem();
// A `bytes`-byte access at p (one of the kernels' packed 128-bit loads and stores): fails the
// launch unless p is `bytes`-aligned, as the GPU does (a misaligned address); the host's own
// loads would not notice.
void emu_check_aligned(const void* p, int bytes, const char* what);
// Index k into an array of n elements (the kernels' packs, see Packed in kernels/common.h): fails
// the launch unless 0 <= k < n; the host's stack would not notice.
[[noreturn]] void emu_index_out_of_range(int k, int n, const char* what);
inline void emu_check_index(int k, int n, const char* what) {
    if (k < 0 || k >= n) {
        emu_index_out_of_range(k, n, what);
    }
}

#define __syncthreads() emu_syncthreads(__FILE__, __LINE__)

template <typename T> inline T emu_shfl_t(unsigned int mask, T v, int kind, int arg, int width) {
    static_assert(sizeof(T) == 4, "the emulation shuffles 32-bit values");
    unsigned int u;
    std::memcpy(&u, &v, 4);
    u = emu_shfl(mask, u, kind, arg, width);
    T r;
    std::memcpy(&r, &u, 4);
    return r;
}
template <typename T> inline T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {
    return emu_shfl_t(mask, v, 0, src, width);
}
template <typename T> inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
    return emu_shfl_t(mask, v, 1, lane_mask, width);
}
template <typename T> inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    return emu_shfl_t(mask, v, 2, (int)delta, width);
}
template <typename T> inline T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    return emu_shfl_t(mask, v, 3, (int)delta, width);
}

// ---- arithmetic ---------------------------------------------------------------------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline float __uint_as_float(unsigned int u) { return emu_bits_float(u); }
inline unsigned int __float_as_uint(float f) { return emu_float_bits(f); }

// CUDA's integer min/max overloads (the kernels call min(int, int)).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
