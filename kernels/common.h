// Structs shared by the CUDA kernels and the Rust launchers. Plain C: nvcc includes this file from
// the kernels, and build.rs turns it into `#[repr(C)]` Rust structs with bindgen (OUT_DIR/common.rs),
// so both sides agree on the layout by construction. Only float and int fields: no padding.
#pragma once

// One AdamW step's coefficients, passed by value to adamw_kernel. The host derives them once per
// step from the hyperparameters (lr, beta1, beta2, eps, weight_decay), the step t (from 1) and the
// gradient scale, in f64 rounded once to float, exactly as the CPU reference (cpu::adamw) does, so
// that the kernel performs the CPU's float operations one for one (PyTorch's AdamW order):
//   g = grad * grad_scale;  p = p * decay;  m = m + one_minus_beta1 * (g - m);
//   v = v * beta2 + (one_minus_beta2 * g) * g;  denom = sqrt(v) / beta2_correction_sqrt + eps;
//   p = p + neg_step_size * m / denom.
// In real arithmetic: p -= lr * ((m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + wd * p).
typedef struct {
    float grad_scale;            // multiplies every gradient (1, or max_norm / norm when clipping)
    float decay;                 // 1 - lr * weight_decay
    float one_minus_beta1;       // 1 - beta1
    float beta2;                 // beta2
    float one_minus_beta2;       // 1 - beta2
    float neg_step_size;         // -lr / (1 - beta1^t): the first-moment bias correction folded in
    float beta2_correction_sqrt; // sqrt(1 - beta2^t)
    float eps;                   // eps
} AdamWParams;


#ifdef __CUDACC__
// Device-side helpers shared by the kernels (nvcc only; bindgen never sees this part).
#include <cuda_bf16.h>

// ---- element types -------------------------------------------------------------------------
// Kernels that exist in both precisions are templates over the storage type T (float or
// __nv_bfloat16), instantiated as `extern "C"` wrappers named NAME (fp32) and NAME_bf16 (bf16);
// the Rust launchers pick one through `DeviceFloat::pick`. Arithmetic is always fp32: load with
// to_float, store with from_float (round to nearest even).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// A vector load or store at p of `bytes` bytes must be aligned to them: the GPU faults otherwise.
// The host emulation checks it (and counts the access, see tests/emu); on the GPU it is nothing.
#ifdef CUDA_HOST_EMULATION
#define CHECK_ALIGNED(p, bytes, what) emu_check_aligned((p), (bytes), (what))
#else
#define CHECK_ALIGNED(p, bytes, what) ((void)0)
#endif

// ---- 128-bit packed access -------------------------------------------------------------------
// Packed<T>: 16 bytes of T (4 floats or 8 bf16), loaded and stored with one 128-bit instruction.
// Only for addresses that are 16-byte aligned: a kernel takes its packed path only when every
// pointer it packs is aligned (aligned16) and the lengths/row sizes are multiples of PACK,
// and falls back to its scalar path otherwise. Each element is computed as in the scalar path.
//
// Its elements, PackElements<T, N>, are T[N] on the GPU. The host emulation checks every index
// into them (an array of the same layout): there a loop one element past a pack reads or writes
// the stack beyond it unseen, where on the GPU it would reach another register or local memory.
#ifdef CUDA_HOST_EMULATION
template <typename T, int N> struct PackElements {
    T e[N];
    T& operator[](int k) {
        emu_check_index(k, N, "an element of a Packed");
        return e[k];
    }
    const T& operator[](int k) const {
        emu_check_index(k, N, "an element of a Packed");
        return e[k];
    }
};
#else
template <typename T, int N> using PackElements = T[N];
#endif
template <typename T> struct alignas(16) Packed {
    static constexpr int size = 16 / sizeof(T);
    PackElements<T, 16 / sizeof(T)> v;
};

template <typename T> __device__ __forceinline__ Packed<T> load_packed(const T* p) {
    CHECK_ALIGNED(p, 16, "load_packed");
    return *reinterpret_cast<const Packed<T>*>(p);
}

template <typename T> __device__ __forceinline__ void store_packed(T* p, const Packed<T>& x) {
    CHECK_ALIGNED(p, 16, "store_packed");
    *reinterpret_cast<Packed<T>*>(p) = x;
}

// Whether p is 16-byte aligned.
__device__ __forceinline__ bool aligned16(const void* p) {
    return ((unsigned long long)p & 15ull) == 0;
}

// ---- fast exponentials -----------------------------------------------------------------------
// log2(e): exp(x) = exp2(x log2 e), for the kernels that take their exponentials through exp2.
constexpr float LOG2E = 1.4426950408889634f;

// 2^x, with results below 2^-126 flushed to zero: one `ex2.approx.ftz` (MUFU.EX2 in SASS), where
// exp2f keeps subnormal results and ptxas wraps each of its `ex2.approx` in a range test and two
// multiplies; expf is about eight instructions. Same accuracy otherwise (2 ulp). For softmaxes,
// whose arguments are <= 0 (a value less its row's max or log-sum-exp): a flushed term below
// 2^-126 weighs nothing next to the row's largest, which is about 1, and exp2(-inf) is still 0.
__device__ __forceinline__ float exp2_ftz(float x) {
#ifdef CUDA_HOST_EMULATION
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y; // FLT_MIN
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// ---- stochastic rounding (host twin: src/precision.rs) ---------------------------------------
// Chris Wellons' lowbias32 hash.
__device__ __forceinline__ unsigned int lowbias32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// The random bits for element `index` of an update seeded by `seed` (precision::rounding_bits).
__device__ __forceinline__ unsigned int rounding_bits(unsigned int seed, unsigned int index) {
    return lowbias32(index ^ lowbias32(seed));
}

// x rounded to bf16 stochastically (precision::round_bf16_stochastic): the low 16 bits of
// `random` are added to x's low 16 bits and the sum truncated; inf and NaN round to nearest.
__device__ __forceinline__ __nv_bfloat16 round_bf16_stochastic(float x, unsigned int random) {
    const unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        return __float2bfloat16_rn(x);
    }
    return __ushort_as_bfloat16((unsigned short)((bits + (random & 0xffffu)) >> 16));
}

// The sum of v over the 32 lanes of a warp; every lane gets the same (bitwise) total, because the
// xor butterfly adds the same pairs in the same tree on every lane.
__device__ __forceinline__ float warp_reduce_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// The max of v over the 32 lanes of a warp, on every lane.
__device__ __forceinline__ float warp_reduce_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// The sum of v over the whole block, returned to every thread. blockDim.x must be a multiple of 32
// (at most 1024) and every thread of the block must call it. The tree is fixed: deterministic.
__device__ __forceinline__ float block_reduce_sum(float v) {
    __shared__ float warp_sums[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;
    v = warp_reduce_sum(v);
    __syncthreads(); // an earlier call may still be reading warp_sums
    if (lane == 0) {
        warp_sums[warp] = v;
    }
    __syncthreads();
    v = lane < num_warps ? warp_sums[lane] : 0.0f;
    return warp_reduce_sum(v);
}
#endif
