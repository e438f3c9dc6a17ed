// The AdamW update with decoupled weight decay and bias correction, one thread per parameter
// (grid-stride). It performs the CPU reference's float operations one for one (see AdamWParams in
// common.h), each rounded by an explicit _rn intrinsic so that nvcc cannot fuse a multiply and an
// add into an FMA: the result is bitwise the CPU's.
//
// adamw_kernel: fp32 parameters and gradients, updated in place. adamw_mixed_kernel (bf16 mixed
// precision): the same fp32 update on the fp32 master weights, from the widened bf16 gradients,
// then the bf16 parameters are written from the new master weights with stochastic rounding
// (round_bf16_stochastic with rounding_bits(seed, first + i), first + i the element's index in the
// whole parameter buffer: independent of the launch configuration, and of how the update is cut
// into launches, one per range of tensors with the same weight decay). Both take a packed path (PACK elements per thread) when every pointer is
// 16-byte aligned, then a scalar tail; every element is computed identically on either path.
#include "common.h"

// One element's update: p (the fp32 weight), mi, vi (the moments) from the gradient g, in place.
__device__ __forceinline__ void adamw_step(float& p, float& mi, float& vi, float grad, const AdamWParams& hp) {
    const float g = __fmul_rn(grad, hp.grad_scale);
    const float pd = __fmul_rn(p, hp.decay);
    const float m = __fadd_rn(mi, __fmul_rn(hp.one_minus_beta1, __fsub_rn(g, mi)));
    const float v = __fadd_rn(__fmul_rn(vi, hp.beta2), __fmul_rn(__fmul_rn(hp.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), hp.beta2_correction_sqrt), hp.eps);
    mi = m;
    vi = v;
    p = __fadd_rn(pd, __fdiv_rn(__fmul_rn(hp.neg_step_size, m), denom));
}

// params, grads, m, v: (n) each, the same layout. Updates params, m and v in place.
extern "C" __global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n,
                                        AdamWParams hp) {
    constexpr int PACK = Packed<float>::size;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t done = 0;
    if (aligned16(params) && aligned16(grads) && aligned16(m) && aligned16(v)) {
        const size_t packs = n / PACK;
        for (size_t q = tid; q < packs; q += stride) {
            const size_t i = q * PACK;
            Packed<float> p = load_packed(params + i);
            const Packed<float> g = load_packed(grads + i);
            Packed<float> mp = load_packed(m + i);
            Packed<float> vp = load_packed(v + i);
            for (int k = 0; k < PACK; k++) {
                adamw_step(p.v[k], mp.v[k], vp.v[k], g.v[k], hp);
            }
            store_packed(params + i, p);
            store_packed(m + i, mp);
            store_packed(v + i, vp);
        }
        done = packs * PACK;
    }
    for (size_t i = done + tid; i < n; i += stride) {
        float p = params[i];
        float mi = m[i];
        float vi = v[i];
        adamw_step(p, mi, vi, grads[i], hp);
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
    }
}

// params (n) bf16, written; master (n) fp32 master weights, updated; grads (n) bf16; m, v (n) fp32,
// updated; first: the index of element 0 in the whole parameter buffer. first + n <= 2^32 (the
// launcher checks it): element indexes are the 32-bit rounding counters.
// Packed path: 8 elements per thread (one Packed<bf16> of params and grads, two Packed<float> of
// master, m and v).
extern "C" __global__ void adamw_mixed_kernel(__nv_bfloat16* params, float* master, const __nv_bfloat16* grads,
                                              float* m, float* v, size_t n, AdamWParams hp, unsigned int seed,
                                              unsigned int first) {
    constexpr int PACK = Packed<__nv_bfloat16>::size; // 8 = 2 * Packed<float>::size
    constexpr int HALF = Packed<float>::size;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t done = 0;
    if (aligned16(params) && aligned16(master) && aligned16(grads) && aligned16(m) && aligned16(v)) {
        const size_t packs = n / PACK;
        for (size_t q = tid; q < packs; q += stride) {
            const size_t i = q * PACK;
            const Packed<__nv_bfloat16> g = load_packed(grads + i);
            Packed<__nv_bfloat16> out;
            for (int h = 0; h < 2; h++) {
                const size_t j = i + h * HALF;
                Packed<float> p = load_packed(master + j);
                Packed<float> mp = load_packed(m + j);
                Packed<float> vp = load_packed(v + j);
                for (int k = 0; k < HALF; k++) {
                    adamw_step(p.v[k], mp.v[k], vp.v[k], to_float(g.v[h * HALF + k]), hp);
                    out.v[h * HALF + k] = round_bf16_stochastic(p.v[k], rounding_bits(seed, first + (unsigned int)(j + k)));
                }
                store_packed(master + j, p);
                store_packed(m + j, mp);
                store_packed(v + j, vp);
            }
            store_packed(params + i, out);
        }
        done = packs * PACK;
    }
    for (size_t i = done + tid; i < n; i += stride) {
        float p = master[i];
        float mi = m[i];
        float vi = v[i];
        adamw_step(p, mi, vi, to_float(grads[i]), hp);
        m[i] = mi;
        v[i] = vi;
        master[i] = p;
        params[i] = round_bf16_stochastic(p, rounding_bits(seed, first + (unsigned int)i));
    }
}
