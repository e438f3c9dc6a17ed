// The residual connection: out = inp1 + inp2, and its backward (the gradient flows to both inputs).
// Templates over the storage type T (float or __nv_bfloat16), fp32 arithmetic, instantiated as
// NAME (fp32) and NAME_bf16; in bf16 each output is the fp32 result rounded once.
// Packed path when every pointer is 16-byte aligned: n / PACK packs, then the scalar tail.
#include "common.h"

// out (N) = inp1 (N) + inp2 (N). Grid-stride loop.
template <typename T>
__device__ __forceinline__ void residual_forward_impl(T* out, const T* inp1, const T* inp2, size_t n) {
    constexpr int PACK = Packed<T>::size;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t done = 0;
    if (aligned16(out) && aligned16(inp1) && aligned16(inp2)) {
        const size_t packs = n / PACK;
        for (size_t p = tid; p < packs; p += stride) {
            const Packed<T> a = load_packed(inp1 + p * PACK);
            const Packed<T> b = load_packed(inp2 + p * PACK);
            Packed<T> o;
            for (int k = 0; k < PACK; k++) {
                o.v[k] = from_float<T>(to_float(a.v[k]) + to_float(b.v[k]));
            }
            store_packed(out + p * PACK, o);
        }
        done = packs * PACK;
    }
    for (size_t i = done + tid; i < n; i += stride) {
        out[i] = from_float<T>(to_float(inp1[i]) + to_float(inp2[i]));
    }
}

extern "C" __global__ void residual_forward(float* out, const float* inp1, const float* inp2, size_t n) {
    residual_forward_impl(out, inp1, inp2, n);
}

extern "C" __global__ void residual_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* inp1,
                                                 const __nv_bfloat16* inp2, size_t n) {
    residual_forward_impl(out, inp1, inp2, n);
}

// dinp1 (N) += dout (N); dinp2 (N) += dout (N). Grid-stride loop.
template <typename T>
__device__ __forceinline__ void residual_backward_impl(T* dinp1, T* dinp2, const T* dout, size_t n) {
    constexpr int PACK = Packed<T>::size;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t done = 0;
    if (aligned16(dinp1) && aligned16(dinp2) && aligned16(dout)) {
        const size_t packs = n / PACK;
        for (size_t p = tid; p < packs; p += stride) {
            const Packed<T> d = load_packed(dout + p * PACK);
            Packed<T> a = load_packed(dinp1 + p * PACK);
            Packed<T> b = load_packed(dinp2 + p * PACK);
            for (int k = 0; k < PACK; k++) {
                const float dk = to_float(d.v[k]);
                a.v[k] = from_float<T>(to_float(a.v[k]) + dk);
                b.v[k] = from_float<T>(to_float(b.v[k]) + dk);
            }
            store_packed(dinp1 + p * PACK, a);
            store_packed(dinp2 + p * PACK, b);
        }
        done = packs * PACK;
    }
    for (size_t i = done + tid; i < n; i += stride) {
        const float d = to_float(dout[i]);
        dinp1[i] = from_float<T>(to_float(dinp1[i]) + d);
        dinp2[i] = from_float<T>(to_float(dinp2[i]) + d);
    }
}

extern "C" __global__ void residual_backward(float* dinp1, float* dinp2, const float* dout, size_t n) {
    residual_backward_impl(dinp1, dinp2, dout, n);
}

extern "C" __global__ void residual_backward_bf16(__nv_bfloat16* dinp1, __nv_bfloat16* dinp2,
                                                  const __nv_bfloat16* dout, size_t n) {
    residual_backward_impl(dinp1, dinp2, dout, n);
}
