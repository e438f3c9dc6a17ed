// The residual connection: out = inp1 + inp2, and its backward (the gradient flows to both inputs).
#include "common.h"

// out (N) = inp1 (N) + inp2 (N). Grid-stride loop.
extern "C" __global__ void residual_forward(float* out, const float* inp1, const float* inp2, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = inp1[i] + inp2[i];
    }
}

// dinp1 (N) += dout (N); dinp2 (N) += dout (N). Grid-stride loop.
extern "C" __global__ void residual_backward(float* dinp1, float* dinp2, const float* dout, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float d = dout[i];
        dinp1[i] += d;
        dinp2[i] += d;
    }
}
