// GELU, tanh approximation: gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), and its
// derivative; the same formulas, in the same operation order, as the CPU reference (cpu::gelu). No
// fast-math intrinsics: tanhf is CUDA's accurate one (within 2 ulp), so results differ from the CPU's
// in the last bits only.
// Templates over the storage type T (float or __nv_bfloat16), fp32 arithmetic, instantiated as
// NAME (fp32) and NAME_bf16; in bf16 each output is the fp32 result rounded once. Packed path when
// every pointer is 16-byte aligned: n / PACK packs, then the scalar tail.
#include "common.h"

#define GELU_SCALE 0.7978845608028654f // sqrt(2 / pi), rounded once to float
#define GELU_KAPPA 0.044715f

__device__ __forceinline__ float gelu(float x) {
    const float u = GELU_SCALE * (x + GELU_KAPPA * (x * x * x));
    return 0.5f * x * (1.0f + tanhf(u));
}

// gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
// u = sqrt(2/pi) (x + 0.044715 x^3).
__device__ __forceinline__ float gelu_grad(float x) {
    const float u = GELU_SCALE * (x + GELU_KAPPA * (x * x * x));
    const float th = tanhf(u);
    const float dudx = GELU_SCALE * (1.0f + 3.0f * GELU_KAPPA * (x * x));
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * dudx;
}

// out (N) = gelu(inp (N)). Grid-stride loop.
template <typename T> __device__ __forceinline__ void gelu_forward_impl(T* out, const T* inp, size_t n) {
    constexpr int PACK = Packed<T>::size;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t done = 0;
    if (aligned16(out) && aligned16(inp)) {
        const size_t packs = n / PACK;
        for (size_t p = tid; p < packs; p += stride) {
            const Packed<T> x = load_packed(inp + p * PACK);
            Packed<T> o;
            for (int k = 0; k < PACK; k++) {
                o.v[k] = from_float<T>(gelu(to_float(x.v[k])));
            }
            store_packed(out + p * PACK, o);
        }
        done = packs * PACK;
    }
    for (size_t i = done + tid; i < n; i += stride) {
        out[i] = from_float<T>(gelu(to_float(inp[i])));
    }
}

extern "C" __global__ void gelu_forward(float* out, const float* inp, size_t n) {
    gelu_forward_impl(out, inp, n);
}

extern "C" __global__ void gelu_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* inp, size_t n) {
    gelu_forward_impl(out, inp, n);
}

// dinp (N) += gelu'(inp (N)) * dout (N). Grid-stride loop.
template <typename T>
__device__ __forceinline__ void gelu_backward_impl(T* dinp, const T* inp, const T* dout, size_t n) {
    constexpr int PACK = Packed<T>::size;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t done = 0;
    if (aligned16(dinp) && aligned16(inp) && aligned16(dout)) {
        const size_t packs = n / PACK;
        for (size_t p = tid; p < packs; p += stride) {
            const Packed<T> x = load_packed(inp + p * PACK);
            const Packed<T> d = load_packed(dout + p * PACK);
            Packed<T> di = load_packed(dinp + p * PACK);
            for (int k = 0; k < PACK; k++) {
                di.v[k] = from_float<T>(to_float(di.v[k]) + gelu_grad(to_float(x.v[k])) * to_float(d.v[k]));
            }
            store_packed(dinp + p * PACK, di);
        }
        done = packs * PACK;
    }
    for (size_t i = done + tid; i < n; i += stride) {
        dinp[i] = from_float<T>(to_float(dinp[i]) + gelu_grad(to_float(inp[i])) * to_float(dout[i]));
    }
}

extern "C" __global__ void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
    gelu_backward_impl(dinp, inp, dout, n);
}

extern "C" __global__ void gelu_backward_bf16(__nv_bfloat16* dinp, const __nv_bfloat16* inp,
                                              const __nv_bfloat16* dout, size_t n) {
    gelu_backward_impl(dinp, inp, dout, n);
}
