// The AdamW update with decoupled weight decay and bias correction, one thread per parameter
// (grid-stride). It performs the CPU reference's float operations one for one (see AdamWParams in
// common.h), each rounded by an explicit _rn intrinsic so that nvcc cannot fuse a multiply and an
// add into an FMA: the result is bitwise the CPU's.
#include "common.h"

// params, grads, m, v: (n) each, the same layout. Updates params, m and v in place.
extern "C" __global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n,
                                        AdamWParams hp) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = __fmul_rn(grads[i], hp.grad_scale);
        const float p = __fmul_rn(params[i], hp.decay);
        const float mi = __fadd_rn(m[i], __fmul_rn(hp.one_minus_beta1, __fsub_rn(g, m[i])));
        const float vi = __fadd_rn(__fmul_rn(v[i], hp.beta2), __fmul_rn(__fmul_rn(hp.one_minus_beta2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), hp.beta2_correction_sqrt), hp.eps);
        m[i] = mi;
        v[i] = vi;
        params[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(hp.neg_step_size, mi), denom));
    }
}
