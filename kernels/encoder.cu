// The token and position embedding: forward out = wte[token] + wpe[t], and its backward.
//
// encoder_backward is deterministic. dwpe: one thread per (t, c) adds dout[b, t, c] for b = 0..B-1
// in order. dwte: the host groups the positions by token into buckets (positions ascending within
// a bucket, see gpu::encoder_backward), then one thread per (bucket, c) adds the bucket's dout rows
// in position order into dwte[token, c]. Every element of dwte and dwpe thus receives its terms in
// the same order as the CPU reference's (b, t) loop, with no atomics.
#include "common.h"

// out (B,T,C) = wte (Vp,C) [inp (B,T)] + wpe (maxT,C) [t]. One thread per output element.
// A token id >= Vp (corrupt input) yields NaN in its row instead of reading out of bounds.
extern "C" __global__ void encoder_forward(float* out, const unsigned int* inp, const float* wte,
                                           const float* wpe, int B, int T, int C, int Vp) {
    const size_t n = (size_t)B * T * C;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t bt = idx / C;
        const int c = (int)(idx % C);
        const int t = (int)(bt % T);
        const unsigned int ix = inp[bt];
        out[idx] = ix < (unsigned int)Vp ? wte[(size_t)ix * C + c] + wpe[(size_t)t * C + c] : __int_as_float(0x7fc00000);
    }
}

// dwpe (maxT,C) [t, c] += sum over b of dout (B,T,C) [b, t, c], b ascending. One thread per (t, c).
extern "C" __global__ void encoder_backward_wpe(float* dwpe, const float* dout, int B, int T, int C) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * C) {
        return;
    }
    const int t = idx / C;
    const int c = idx % C;
    float acc = dwpe[idx];
    for (int b = 0; b < B; b++) {
        acc += dout[((size_t)b * T + t) * C + c];
    }
    dwpe[idx] = acc;
}

// dwte (Vp,C) [token, c] += the dout rows of the bucket's positions, in ascending position order.
// buckets (u32): [0, nb) the token of each bucket; [nb, 2nb+1) each bucket's start in the position
// list (the last entry is the end); then the position list (bt = b*T + t for every position).
// grid: (nb, ceil(C / blockDim.x)); one thread per (bucket, channel).
extern "C" __global__ void encoder_backward_wte(float* dwte, const float* dout, const unsigned int* buckets,
                                                int num_buckets, int C) {
    const int bucket = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (bucket >= num_buckets || c >= C) {
        return;
    }
    const unsigned int token = buckets[bucket];
    const unsigned int* starts = buckets + num_buckets;
    const unsigned int* positions = buckets + 2 * num_buckets + 1;
    float* row = dwte + (size_t)token * C;
    float acc = row[c];
    for (unsigned int i = starts[bucket]; i < starts[bucket + 1]; i++) {
        acc += dout[(size_t)positions[i] * C + c];
    }
    row[c] = acc;
}
