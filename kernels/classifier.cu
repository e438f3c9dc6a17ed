// The fused classifier: softmax over the vocabulary, the cross-entropy loss and its gradient, one
// row at a time, without ever storing the probabilities. The logits buffer is overwritten by the
// logits' gradient (the forward and backward of the last layer in one kernel, as llm.c does).
// A template over the storage type T of the logits (float or __nv_bfloat16), instantiated as
// fused_classifier (fp32) and fused_classifier_bf16: the softmax and the loss are computed in fp32
// from the widened logits, the losses are fp32 in both, the dlogits are rounded once into T.
#include "common.h"

// (m, s) <- the online-softmax merge of (m, s) and (m2, s2), where s is a sum of exp(x - m).
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == -INFINITY) {
        return; // both empty
    }
    s = s * expf(m - mn) + s2 * expf(m2 - mn);
    m = mn;
}

// exp(x - m) for a row's softmax, from base = row_exp_base<T>(m). fp32 logits: expf (the reference
// path, within an ulp of the CPU twin's). bf16 logits: 2^(x log2 e - m log2 e), one FFMA and one
// ex2.approx.ftz where expf is about eight instructions; the exponent's rounding adds at most
// about 2e-6 relative at the row's smallest terms (|x - m| log2 e < 32), far inside bf16's 2^-9.
// base is m log2 e rounded, so every term is off by about the same factor 2^r, |r| <= ulp(|m| log2 e)
// (the merges mix the bases of the threads' running maxima): it cancels in p = term / sum, and
// moves the loss log(sum) - (x - m) by |r| ln 2, 2e-5 at |m| = 240 (5e-7 at |m| = 4).
template <typename T> __device__ __forceinline__ float row_exp_base(float m) {
    return sizeof(T) == 2 ? m * LOG2E : m;
}
template <typename T> __device__ __forceinline__ float row_exp(float x, float base) {
    if constexpr (sizeof(T) == 2) {
        return exp2_ftz(fmaf(x, LOG2E, -base));
    } else {
        return expf(x - base);
    }
}

// Adds the first n of the N values v (n >= 1) to the online softmax (m, s) of one thread: s is
// the sum of exp(x - m) so far. The values' max first, so that s is rescaled at most once and
// each value costs one exponential, with no branch per value. A NaN value makes s NaN.
template <typename T, int N>
__device__ __forceinline__ void softmax_add(float& m, float& s, const float (&v)[N], int n) {
    float mx = m;
#pragma unroll
    for (int j = 0; j < N; j++) {
        if (j < n) {
            mx = fmaxf(mx, v[j]);
        }
    }
    const float base = row_exp_base<T>(mx);
    if (mx > m) {
        s *= row_exp<T>(m, base); // (0 while m is -inf)
        m = mx;
    }
#pragma unroll
    for (int j = 0; j < N; j++) {
        if (j < n) {
            s += row_exp<T>(v[j], base);
        }
    }
}

// For each row (b, t) of logits (N,Vp), N = B*T, with p = softmax(logits[row, 0..V]):
//   losses (N) [row] = -log p[target], computed as log(sum) - (x[target] - max);
//   logits[row, i] <- (p_i - [i == target]) * dloss for i < V, and 0 for V <= i < Vp,
//   only when write_dlogits != 0 (with 0 it computes the losses and leaves the logits intact).
// row_stats (N, 2), fp32, may be null: the row's max and sum of exp(x - max). With stats_given the
// kernel takes them from there instead of reading the row for them (the backward after a forward
// that saved them: one pass over the logits instead of two; the same numbers, since the forward
// computed them from the same logits with this same code); otherwise, when row_stats is not null,
// it writes them there.
// targets (N) must be < V; a bad target gives a NaN loss (and no one-hot term) instead of a wild
// access. One block per row, blockDim.x a multiple of 32 (at most 1024). Pass 1: each thread keeps
// an online (max, sum of exp) over its strided columns, merged by a fixed tree (deterministic);
// pass 2 writes. Both passes read whole 16-byte packs (8 bf16 or 4 floats per thread and step)
// when Vp is a multiple of the pack and the logits are 16-byte aligned (every row then is), else
// single elements; the pack path visits a thread's columns in another order, which changes the
// rounding of the sums (not their tree, which stays fixed: still deterministic).
template <typename T>
__device__ __forceinline__ void fused_classifier_impl(T* logits, float* losses, float* row_stats, float dloss,
                                                      const unsigned int* targets, int N, int V, int Vp,
                                                      int write_dlogits, int stats_given) {
    __shared__ float shared_m[32];
    __shared__ float shared_s[32];
    const int row = blockIdx.x;
    if (row >= N) {
        return;
    }
    constexpr int P = Packed<T>::size;
    const bool packed = Vp % P == 0 && aligned16(logits);
    T* x = logits + (size_t)row * Vp;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;

    float m = -INFINITY;
    float s = 0.0f;
    if (stats_given) {
        m = row_stats[2 * (size_t)row];
        s = row_stats[2 * (size_t)row + 1];
    } else {
        if (packed) {
            // i is a multiple of P below V <= Vp, and Vp a multiple of P: the pack is in the row
            for (int i = threadIdx.x * P; i < V; i += blockDim.x * P) {
                const Packed<T> p = load_packed(x + i);
                float v[P];
#pragma unroll
                for (int j = 0; j < P; j++) {
                    v[j] = to_float(p.v[j]);
                }
                softmax_add<T>(m, s, v, min(P, V - i));
            }
        } else {
            for (int i = threadIdx.x; i < V; i += blockDim.x) {
                const float v[1] = {to_float(x[i])};
                softmax_add<T>(m, s, v, 1);
            }
        }
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            softmax_merge(m, s, m2, s2);
        }
        if (lane == 0) {
            shared_m[warp] = m;
            shared_s[warp] = s;
        }
        __syncthreads();
        m = lane < num_warps ? shared_m[lane] : -INFINITY;
        s = lane < num_warps ? shared_s[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            softmax_merge(m, s, m2, s2);
        }
        // Lane 0's result is the same in every warp (same inputs, same tree); take it everywhere,
        // since a contracted (FMA) merge is not bitwise symmetric between the lanes of a butterfly.
        m = __shfl_sync(0xffffffffu, m, 0);
        s = __shfl_sync(0xffffffffu, s, 0);
        if (row_stats != nullptr && threadIdx.x == 0) {
            row_stats[2 * (size_t)row] = m;
            row_stats[2 * (size_t)row + 1] = s;
        }
    }
    // Every thread now holds the row's max m and sum s. Every thread must also have read its
    // logits before any is overwritten: thread 0 reads x[target] below, which another thread writes.
    const unsigned int target = targets[row];
    const bool target_ok = target < (unsigned int)V;
    const float x_target = target_ok ? to_float(x[target]) : 0.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        losses[row] = target_ok ? logf(s) - (x_target - m) : __int_as_float(0x7fc00000);
    }
    if (!write_dlogits) {
        return;
    }
    const float inv = 1.0f / s;
    const float base = row_exp_base<T>(m);
    // (p - onehot) * dloss for a column below V, 0 in the padding
    auto dlogit = [&](int i, float v) -> T {
        if (i >= V) {
            return from_float<T>(0.0f);
        }
        const float p = row_exp<T>(v, base) * inv;
        const float indicator = (unsigned int)i == target ? 1.0f : 0.0f;
        return from_float<T>((p - indicator) * dloss);
    };
    if (packed) {
        for (int i = threadIdx.x * P; i < Vp; i += blockDim.x * P) {
            const Packed<T> p = load_packed(x + i);
            Packed<T> d;
            for (int j = 0; j < P; j++) {
                d.v[j] = dlogit(i + j, to_float(p.v[j]));
            }
            store_packed(x + i, d);
        }
    } else {
        for (int i = threadIdx.x; i < Vp; i += blockDim.x) {
            x[i] = dlogit(i, to_float(x[i]));
        }
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    fused_classifier(float* logits, float* losses, float* row_stats, float dloss, const unsigned int* targets,
                     int N, int V, int Vp, int write_dlogits, int stats_given) {
    fused_classifier_impl(logits, losses, row_stats, dloss, targets, N, V, Vp, write_dlogits, stats_given);
}

extern "C" __global__ void __launch_bounds__(1024)
    fused_classifier_bf16(__nv_bfloat16* logits, float* losses, float* row_stats, float dloss,
                          const unsigned int* targets, int N, int V, int Vp, int write_dlogits, int stats_given) {
    fused_classifier_impl(logits, losses, row_stats, dloss, targets, N, V, Vp, write_dlogits, stats_given);
}
