// GELU, tanh approximation: gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), and its
// derivative; the same formulas, in the same operation order, as the CPU reference (cpu::gelu). No
// fast-math intrinsics: tanhf is CUDA's accurate one (within 2 ulp), so results differ from the CPU's
// in the last bits only.
#include "common.h"

#define GELU_SCALE 0.7978845608028654f // sqrt(2 / pi), rounded once to float
#define GELU_KAPPA 0.044715f

// out (N) = gelu(inp (N)). Grid-stride loop.
extern "C" __global__ void gelu_forward(float* out, const float* inp, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + GELU_KAPPA * (x * x * x));
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

// dinp (N) += gelu'(inp (N)) * dout (N). Grid-stride loop.
// gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
// u = sqrt(2/pi) (x + 0.044715 x^3).
extern "C" __global__ void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + GELU_KAPPA * (x * x * x));
        const float th = tanhf(u);
        const float dudx = GELU_SCALE * (1.0f + 3.0f * GELU_KAPPA * (x * x));
        const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * dudx;
        dinp[i] += grad * dout[i];
    }
}
