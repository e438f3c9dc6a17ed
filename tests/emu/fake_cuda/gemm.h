// The one product both fake BLAS libraries compute (cublas.cpp, cublaslt.cpp), written from the
// cuBLAS documentation: column-major; op(A) is m x k, op(B) k x n, C and D m x n; A is stored
// k x m (rows x columns) when transposed, else m x k, with its leading dimension >= its rows;
// batch i reads each matrix at i times its stride. D = alpha op(A) op(B) + beta C, then the
// epilogue; with beta 0, C is not read (it may hold NaN, as the fake driver's fresh memory does).
//
// Numbers: the inputs are read in their type (fp32 or bf16) and, under TF32, rounded to TF32
// (10 mantissa bits, to nearest, ties away: cvt.rna.tf32.f32); the sum is formed in double and
// rounded once to fp32 (a real GPU sums in fp32 in its own order: the tests' tolerances cover
// that); the result is stored in the output type, bf16 rounded to nearest even. The GELU is the
// tanh form (see src/gpu/matmul_lt.rs), computed in fp32 from the fp32 result.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "cuda_bf16.h" // the emulation's bf16 (tests/emu): conversions as CUDA's
#include "fake_cuda.h"

namespace fakegemm {

// cudaDataType_t values the engine uses.
constexpr int R_32F = 0;
constexpr int R_16BF = 14;

inline size_t type_bytes(int type) {
    return type == R_16BF ? 2 : 4;
}

inline float to_tf32(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) {
        return f; // inf, NaN
    }
    u += 0x1000u; // to nearest, ties away from zero
    u &= 0xffffe000u;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float load(const void* p, int type, size_t i) {
    if (type == R_16BF) {
        return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    }
    return static_cast<const float*>(p)[i];
}

inline void store(void* p, int type, size_t i, float v) {
    if (type == R_16BF) {
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); // to nearest even
    } else {
        static_cast<float*>(p)[i] = v;
    }
}

inline float gelu(float x) {
    const float s = std::sqrt(2.0f / 3.14159265358979323846f);
    const float cube = 0.044715f * x * x * x;
    return 0.5f * x * (1.0f + std::tanh(s * (x + cube)));
}

inline float gelu_grad(float x) {
    const float s = std::sqrt(2.0f / 3.14159265358979323846f);
    const float cube = 0.044715f * x * x * x;
    const float t = std::tanh(s * (x + cube));
    const float sech2 = 1.0f - t * t;
    return 0.5f * (1.0f + t) + 0.5f * x * sech2 * s * (1.0f + 3.0f * 0.044715f * x * x);
}

enum class Epilogue { Default, Bias, GeluAuxBias, DGelu };

// One product (or a strided batch of them), with pointers already checked.
struct Gemm {
    bool transa = false, transb = false;
    long long m = 0, n = 0, k = 0;
    const void* a = nullptr;
    long long lda = 0, stride_a = 0;
    const void* b = nullptr;
    long long ldb = 0, stride_b = 0;
    const void* c = nullptr;
    void* d = nullptr;
    long long ldc = 0, ldd = 0, stride_c = 0;
    long long batch = 1;
    int type = R_32F; // A, B, C, D (and bias, aux) share it
    bool tf32 = false;
    float alpha = 1, beta = 0;
    Epilogue epilogue = Epilogue::Default;
    const void* bias = nullptr;
    void* aux = nullptr;
    long long aux_ld = 0;
};

// The elements a column-major rows x cols matrix with leading dimension ld spans.
inline long long extent(long long rows, long long cols, long long ld) {
    return rows == 0 || cols == 0 ? 0 : (cols - 1) * ld + rows;
}

// Whether every matrix of the product lies inside one device allocation: 0, or -1 with `what` set.
inline int check_ranges(const Gemm& g, const char** what) {
    const size_t e = type_bytes(g.type);
    const long long a_rows = g.transa ? g.k : g.m, a_cols = g.transa ? g.m : g.k;
    const long long b_rows = g.transb ? g.n : g.k, b_cols = g.transb ? g.k : g.n;
    struct R {
        const void* p;
        long long elems;
        long long stride;
        const char* name;
    } rs[] = {
        {g.a, extent(a_rows, a_cols, g.lda), g.stride_a, "A"},
        {g.b, extent(b_rows, b_cols, g.ldb), g.stride_b, "B"},
        {g.beta != 0.0f ? g.c : nullptr, extent(g.m, g.n, g.ldc), g.stride_c, "C"},
        {g.d, extent(g.m, g.n, g.ldd), g.stride_c, "D"},
        {g.bias, g.m, 0, "the bias"},
        {g.aux, extent(g.m, g.n, g.aux_ld), 0, "the aux"},
    };
    for (const R& r : rs) {
        if (!r.p || r.elems == 0) {
            continue;
        }
        const long long last = (g.batch - 1) * r.stride + r.elems;
        if (fakecuda_check_range((unsigned long long)(uintptr_t)r.p, (size_t)last * e) != 0) {
            *what = r.name;
            return -1;
        }
    }
    return 0;
}

// The sum of a[l] * b[l] over l < k in double, in four interleaved partial sums (a fixed order:
// the result does not depend on the thread that computes it).
inline double dot(const float* a, const float* b, long long k) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    long long l = 0;
    for (; l + 4 <= k; l += 4) {
        s0 += (double)a[l] * (double)b[l];
        s1 += (double)a[l + 1] * (double)b[l + 1];
        s2 += (double)a[l + 2] * (double)b[l + 2];
        s3 += (double)a[l + 3] * (double)b[l + 3];
    }
    for (; l < k; l++) {
        s0 += (double)a[l] * (double)b[l];
    }
    return (s0 + s1) + (s2 + s3);
}

// Runs body(begin, end) over [0, n) split into contiguous ranges on up to 8 threads (one when the
// work is small); each index is handled by exactly one call.
template <typename F> void parallel_ranges(long long n, double work, F body) {
    unsigned hw = std::thread::hardware_concurrency();
    long long threads = work < 4e6 ? 1 : (long long)(hw == 0 ? 1 : (hw > 8 ? 8 : hw));
    if (threads > n) {
        threads = n;
    }
    if (threads <= 1) {
        body(0LL, n);
        return;
    }
    std::vector<std::thread> pool;
    const long long per = (n + threads - 1) / threads;
    for (long long t = 1; t < threads; t++) {
        const long long b = t * per, e = b + per < n ? b + per : n;
        if (b < e) {
            pool.emplace_back([=] { body(b, e); });
        }
    }
    body(0LL, per < n ? per : n);
    for (std::thread& t : pool) {
        t.join();
    }
}

// dst (rows x k, row-major, in fp32, TF32-rounded under TF32) from the stored column-major matrix
// src with leading dimension ld: element (r, l) is src[l + r*ld] when `rows_contiguous`, else
// src[r + l*ld]. The loops read src in memory order.
inline void pack(const Gemm& g, std::vector<float>& dst, const void* src, long long rows, long long ld,
                 bool rows_contiguous) {
    auto put = [&](long long r, long long l, size_t idx) {
        const float v = load(src, g.type, idx);
        dst[(size_t)(r * g.k + l)] = g.tf32 ? to_tf32(v) : v;
    };
    if (rows_contiguous) {
        for (long long r = 0; r < rows; r++)
            for (long long l = 0; l < g.k; l++)
                put(r, l, (size_t)(l + r * ld));
    } else {
        for (long long l = 0; l < g.k; l++)
            for (long long r = 0; r < rows; r++)
                put(r, l, (size_t)(r + l * ld));
    }
}

inline void run(const Gemm& g) {
    const size_t e = type_bytes(g.type);
    std::vector<float> opa((size_t)(g.m * g.k)), opb((size_t)(g.n * g.k));
    const double work = (double)g.m * (double)g.n * (double)g.k;
    for (long long bi = 0; bi < g.batch; bi++) {
        const char* a = static_cast<const char*>(g.a) + (size_t)(bi * g.stride_a) * e;
        const char* b = static_cast<const char*>(g.b) + (size_t)(bi * g.stride_b) * e;
        const char* c = g.c ? static_cast<const char*>(g.c) + (size_t)(bi * g.stride_c) * e : nullptr;
        char* d = static_cast<char*>(g.d) + (size_t)(bi * g.stride_c) * e;
        // op(A) as m rows of k, op(B)^T as n rows of k, so that every sum runs over contiguous
        // memory: A's rows are contiguous in memory when transposed, op(B)^T's when B is not
        pack(g, opa, a, g.m, g.lda, g.transa);
        pack(g, opb, b, g.n, g.ldb, !g.transb);
        // every output once, in column-major order split across threads
        parallel_ranges(g.m * g.n, work, [&](long long begin, long long end) {
            for (long long idx = begin; idx < end; idx++) {
                const long long i = idx % g.m, j = idx / g.m;
                const double s = dot(&opa[(size_t)(i * g.k)], &opb[(size_t)(j * g.k)], g.k);
                float v = g.alpha * (float)s;
                if (g.beta != 0.0f) {
                    v += g.beta * load(c, g.type, (size_t)(i + j * g.ldc));
                }
                switch (g.epilogue) {
                case Epilogue::Default:
                    break;
                case Epilogue::Bias:
                    v += load(g.bias, g.type, (size_t)i);
                    break;
                case Epilogue::GeluAuxBias:
                    v += load(g.bias, g.type, (size_t)i);
                    store(g.aux, g.type, (size_t)(i + j * g.aux_ld), v);
                    v = gelu(v);
                    break;
                case Epilogue::DGelu:
                    v *= gelu_grad(load(g.aux, g.type, (size_t)(i + j * g.aux_ld)));
                    break;
                }
                store(d, g.type, (size_t)(i + j * g.ldd), v);
            }
        });
    }
}

// Enqueues g on `stream` (run now, or recorded by a capture). Returns a CUresult.
inline int enqueue(void* stream, const Gemm& g) {
    Gemm* copy = new Gemm(g);
    return fakecuda_enqueue(
        stream, [](void* p) { run(*static_cast<Gemm*>(p)); }, copy,
        [](void* p) { delete static_cast<Gemm*>(p); });
}

} // namespace fakegemm
