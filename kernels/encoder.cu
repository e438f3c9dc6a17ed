// The token and position embedding: forward out = wte[token] + wpe[t], and its backward.
//
// Every kernel is a template over the storage type T (float or __nv_bfloat16) with fp32
// arithmetic, instantiated as NAME (fp32) and NAME_bf16. In bf16 each output element is the fp32
// result rounded once to bf16 (the backward reads the old gradient, adds in fp32, rounds once).
//
// encoder_backward is deterministic. dwpe: one thread per (t, c) adds dout[b, t, c] for b = 0..B-1
// in order. dwte: the host groups the positions by token into buckets (positions ascending within
// a bucket, see gpu::encoder_backward), then one thread per (bucket, c) adds the bucket's dout rows
// in position order into dwte[token, c]. Every element of dwte and dwpe thus receives its terms in
// the same order as the CPU reference's (b, t) loop, with no atomics.
#include "common.h"

// out (B,T,C) = wte (Vp,C) [inp (B,T)] + wpe (maxT,C) [t]. A token id >= Vp (corrupt input)
// yields NaN in its row instead of reading out of bounds. Packed path (C a multiple of PACK and
// out, wte, wpe 16-byte aligned): one thread per PACK consecutive channels; else one thread per
// element. Grid-stride loops.
template <typename T>
__device__ __forceinline__ void encoder_forward_impl(T* out, const unsigned int* inp, const T* wte,
                                                     const T* wpe, int B, int T_, int C, int Vp) {
    constexpr int PACK = Packed<T>::size;
    const size_t n = (size_t)B * T_ * C;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const float nan = __int_as_float(0x7fc00000);
    if (C % PACK == 0 && aligned16(out) && aligned16(wte) && aligned16(wpe)) {
        for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < n / PACK; p += stride) {
            const size_t idx = p * PACK;
            const size_t bt = idx / C;
            const int c = (int)(idx % C);
            const int t = (int)(bt % T_);
            const unsigned int ix = inp[bt];
            Packed<T> o;
            if (ix < (unsigned int)Vp) {
                const Packed<T> a = load_packed(wte + (size_t)ix * C + c);
                const Packed<T> b = load_packed(wpe + (size_t)t * C + c);
                for (int k = 0; k < PACK; k++) {
                    o.v[k] = from_float<T>(to_float(a.v[k]) + to_float(b.v[k]));
                }
            } else {
                for (int k = 0; k < PACK; k++) {
                    o.v[k] = from_float<T>(nan);
                }
            }
            store_packed(out + idx, o);
        }
        return;
    }
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += stride) {
        const size_t bt = idx / C;
        const int c = (int)(idx % C);
        const int t = (int)(bt % T_);
        const unsigned int ix = inp[bt];
        out[idx] = from_float<T>(ix < (unsigned int)Vp
                                     ? to_float(wte[(size_t)ix * C + c]) + to_float(wpe[(size_t)t * C + c])
                                     : nan);
    }
}

extern "C" __global__ void encoder_forward(float* out, const unsigned int* inp, const float* wte,
                                           const float* wpe, int B, int T, int C, int Vp) {
    encoder_forward_impl(out, inp, wte, wpe, B, T, C, Vp);
}

extern "C" __global__ void encoder_forward_bf16(__nv_bfloat16* out, const unsigned int* inp,
                                                const __nv_bfloat16* wte, const __nv_bfloat16* wpe, int B,
                                                int T, int C, int Vp) {
    encoder_forward_impl(out, inp, wte, wpe, B, T, C, Vp);
}

// dwpe (maxT,C) [t, c] += sum over b of dout (B,T,C) [b, t, c], b ascending. One thread per (t, c).
template <typename T>
__device__ __forceinline__ void encoder_backward_wpe_impl(T* dwpe, const T* dout, int B, int T_, int C) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T_ * C) {
        return;
    }
    const int t = idx / C;
    const int c = idx % C;
    float acc = to_float(dwpe[idx]);
    for (int b = 0; b < B; b++) {
        acc += to_float(dout[((size_t)b * T_ + t) * C + c]);
    }
    dwpe[idx] = from_float<T>(acc);
}

extern "C" __global__ void encoder_backward_wpe(float* dwpe, const float* dout, int B, int T, int C) {
    encoder_backward_wpe_impl(dwpe, dout, B, T, C);
}

extern "C" __global__ void encoder_backward_wpe_bf16(__nv_bfloat16* dwpe, const __nv_bfloat16* dout, int B,
                                                     int T, int C) {
    encoder_backward_wpe_impl(dwpe, dout, B, T, C);
}

// dwte (Vp,C) [token, c] += the dout rows of the bucket's positions, in ascending position order.
// buckets (u32): [0, nb) the token of each bucket; [nb, 2nb+1) each bucket's start in the position
// list (the last entry is the end); then the position list (bt = b*T + t for every position).
// grid: (nb, ceil(C / blockDim.x)); one thread per (bucket, channel). An empty bucket (start ==
// end) is padding and writes nothing: the host pads the list to nb = B*T buckets, so that the
// launch does not depend on how many distinct tokens a batch has (one CUDA graph for every batch).
template <typename T>
__device__ __forceinline__ void encoder_backward_wte_impl(T* dwte, const T* dout, const unsigned int* buckets,
                                                          int num_buckets, int C) {
    const int bucket = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (bucket >= num_buckets || c >= C) {
        return;
    }
    const unsigned int* starts = buckets + num_buckets;
    const unsigned int* positions = buckets + 2 * num_buckets + 1;
    if (starts[bucket] == starts[bucket + 1]) {
        return; // padding: its token may be another bucket's, whose row this must not touch
    }
    const unsigned int token = buckets[bucket];
    T* row = dwte + (size_t)token * C;
    float acc = to_float(row[c]);
    for (unsigned int i = starts[bucket]; i < starts[bucket + 1]; i++) {
        acc += to_float(dout[(size_t)positions[i] * C + c]);
    }
    row[c] = from_float<T>(acc);
}

extern "C" __global__ void encoder_backward_wte(float* dwte, const float* dout, const unsigned int* buckets,
                                                int num_buckets, int C) {
    encoder_backward_wte_impl(dwte, dout, buckets, num_buckets, C);
}

extern "C" __global__ void encoder_backward_wte_bf16(__nv_bfloat16* dwte, const __nv_bfloat16* dout,
                                                     const unsigned int* buckets, int num_buckets, int C) {
    encoder_backward_wte_impl(dwte, dout, buckets, num_buckets, C);
}
