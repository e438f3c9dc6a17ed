// The fake libcublas.so of the emulated device (see fake_cuda.h): the handful of cuBLAS calls the
// engine makes (cudarc's CudaBlas and src/gpu/matmul.rs), each checked as the cuBLAS
// documentation states and computed by gemm.h on the handle's stream. What it checks, so that
// the engine's calls are held to the library's contract and not just run: a live handle; m, n,
// k >= 0; lda >= max(1, rows of A as stored), ldb likewise, ldc >= max(1, m); batch >= 0; the
// data and compute types of the engine's two precisions (fp32 with CUBLAS_COMPUTE_32F or
// _FAST_TF32, bf16 with CUBLAS_COMPUTE_32F); every matrix inside one device allocation. alpha and
// beta are read from host memory at the call (the default pointer mode).
#include <cstdio>
#include <mutex>
#include <set>

#include "gemm.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// cublasStatus_t
constexpr int SUCCESS = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, EXECUTION_FAILED = 13, NOT_SUPPORTED = 15;
// cublasMath_t
constexpr int TF32_TENSOR_OP_MATH = 3;
constexpr int MATH_MODE_MASK = 0xf; // the low bits are the mode, 16 is a flag
// cublasComputeType_t
constexpr int COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77;

struct Handle {
    void* stream = nullptr;
    int math = 0;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
};

std::mutex g_mutex;
std::set<Handle*> g_handles;

bool live(Handle* h) {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_handles.count(h) != 0;
}

int fail(const char* call, int status, const char* why) {
    std::fprintf(stderr, "fake cuBLAS: %s: %s\n", call, why);
    return status;
}

// Checks and enqueues one product: the arguments of cublasGemmStridedBatchedEx.
int gemm(const char* call, Handle* h, int transa, int transb, long long m, long long n, long long k,
         const float* alpha, const void* a, int atype, long long lda, long long sa, const void* b, int btype,
         long long ldb, long long sb, const float* beta, void* c, int ctype, long long ldc, long long sc,
         long long batch, int compute) {
    if (!live(h)) {
        return fail(call, NOT_INITIALIZED, "the handle is not live");
    }
    if ((transa != 0 && transa != 1) || (transb != 0 && transb != 1)) {
        return fail(call, INVALID_VALUE, "only CUBLAS_OP_N and CUBLAS_OP_T are used for real data");
    }
    if (m < 0 || n < 0 || k < 0 || batch < 0) {
        return fail(call, INVALID_VALUE, "m, n, k and the batch count must be >= 0");
    }
    const long long a_rows = transa ? k : m, b_rows = transb ? n : k;
    if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1)) {
        return fail(call, INVALID_VALUE, "a leading dimension is smaller than its matrix's rows");
    }
    if (atype != btype || atype != ctype || (atype != fakegemm::R_32F && atype != fakegemm::R_16BF)) {
        return fail(call, NOT_SUPPORTED, "A, B and C must all be CUDA_R_32F or all CUDA_R_16BF");
    }
    if (compute != COMPUTE_32F && !(compute == COMPUTE_32F_FAST_TF32 && atype == fakegemm::R_32F)) {
        return fail(call, NOT_SUPPORTED, "compute type must be CUBLAS_COMPUTE_32F (or _FAST_TF32 for fp32)");
    }
    if (!alpha || !beta) {
        return fail(call, INVALID_VALUE, "alpha and beta must be host pointers");
    }
    if (m == 0 || n == 0 || batch == 0) {
        return SUCCESS;
    }
    fakegemm::Gemm g;
    g.transa = transa == 1;
    g.transb = transb == 1;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = a;
    g.lda = lda;
    g.stride_a = sa;
    g.b = b;
    g.ldb = ldb;
    g.stride_b = sb;
    g.c = c;
    g.d = c;
    g.ldc = ldc;
    g.ldd = ldc;
    g.stride_c = sc;
    g.batch = batch;
    g.type = atype;
    g.tf32 = atype == fakegemm::R_32F &&
             (compute == COMPUTE_32F_FAST_TF32 || (h->math & MATH_MODE_MASK) == TF32_TENSOR_OP_MATH);
    g.alpha = *alpha;
    g.beta = *beta;
    const char* what = nullptr;
    if (fakegemm::check_ranges(g, &what) != 0) {
        std::fprintf(stderr, "fake cuBLAS: %s: %s is not inside one device allocation (m=%lld n=%lld k=%lld)\n",
                     call, what, m, n, k);
        return EXECUTION_FAILED;
    }
    return fakegemm::enqueue(h->stream, g) == 0 ? SUCCESS : EXECUTION_FAILED;
}

} // namespace

EXPORT int cublasCreate_v2(Handle** out) {
    if (!out) {
        return INVALID_VALUE;
    }
    Handle* h = new Handle();
    std::lock_guard<std::mutex> lock(g_mutex);
    g_handles.insert(h);
    *out = h;
    return SUCCESS;
}

EXPORT int cublasDestroy_v2(Handle* h) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_handles.erase(h)) {
        return NOT_INITIALIZED;
    }
    delete h;
    return SUCCESS;
}

EXPORT int cublasSetStream_v2(Handle* h, void* stream) {
    if (!live(h)) {
        return NOT_INITIALIZED;
    }
    h->stream = stream;
    return SUCCESS;
}

EXPORT int cublasGetStream_v2(Handle* h, void** stream) {
    if (!live(h) || !stream) {
        return NOT_INITIALIZED;
    }
    *stream = h->stream;
    return SUCCESS;
}

// The workspace given is recorded (nothing here needs one): a size without memory is refused,
// as cuBLAS does.
EXPORT int cublasSetWorkspace_v2(Handle* h, void* workspace, size_t bytes) {
    if (!live(h)) {
        return NOT_INITIALIZED;
    }
    if (bytes > 0 && !workspace) {
        return fail("cublasSetWorkspace_v2", INVALID_VALUE, "a workspace size without memory");
    }
    h->workspace = workspace;
    h->workspace_bytes = bytes;
    return SUCCESS;
}

EXPORT int cublasSetMathMode(Handle* h, int mode) {
    if (!live(h)) {
        return NOT_INITIALIZED;
    }
    const int base = mode & MATH_MODE_MASK;
    if ((mode & ~(MATH_MODE_MASK | 16)) != 0 || base > 4) {
        return fail("cublasSetMathMode", INVALID_VALUE, "unknown math mode");
    }
    h->math = mode;
    return SUCCESS;
}

EXPORT int cublasGetMathMode(Handle* h, int* mode) {
    if (!live(h) || !mode) {
        return NOT_INITIALIZED;
    }
    *mode = h->math;
    return SUCCESS;
}

EXPORT int cublasSgemm_v2(Handle* h, int transa, int transb, int m, int n, int k, const float* alpha,
                          const float* a, int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
    return gemm("cublasSgemm_v2", h, transa, transb, m, n, k, alpha, a, fakegemm::R_32F, lda, 0, b,
                fakegemm::R_32F, ldb, 0, beta, c, fakegemm::R_32F, ldc, 0, 1, COMPUTE_32F);
}

EXPORT int cublasSgemmStridedBatched(Handle* h, int transa, int transb, int m, int n, int k, const float* alpha,
                                     const float* a, int lda, long long sa, const float* b, int ldb, long long sb,
                                     const float* beta, float* c, int ldc, long long sc, int batch) {
    return gemm("cublasSgemmStridedBatched", h, transa, transb, m, n, k, alpha, a, fakegemm::R_32F, lda, sa, b,
                fakegemm::R_32F, ldb, sb, beta, c, fakegemm::R_32F, ldc, sc, batch, COMPUTE_32F);
}

EXPORT int cublasGemmEx(Handle* h, int transa, int transb, int m, int n, int k, const void* alpha, const void* a,
                        int atype, int lda, const void* b, int btype, int ldb, const void* beta, void* c, int ctype,
                        int ldc, int compute, int /*algo*/) {
    return gemm("cublasGemmEx", h, transa, transb, m, n, k, static_cast<const float*>(alpha), a, atype, lda, 0, b,
                btype, ldb, 0, static_cast<const float*>(beta), c, ctype, ldc, 0, 1, compute);
}

EXPORT int cublasGemmStridedBatchedEx(Handle* h, int transa, int transb, int m, int n, int k, const void* alpha,
                                      const void* a, int atype, int lda, long long sa, const void* b, int btype,
                                      int ldb, long long sb, const void* beta, void* c, int ctype, int ldc,
                                      long long sc, int batch, int compute, int /*algo*/) {
    return gemm("cublasGemmStridedBatchedEx", h, transa, transb, m, n, k, static_cast<const float*>(alpha), a,
                atype, lda, sa, b, btype, ldb, sb, static_cast<const float*>(beta), c, ctype, ldc, sc, batch,
                compute);
}

EXPORT int cublasGetVersion_v2(Handle* /*h*/, int* version) {
    if (version) {
        *version = 130000;
    }
    return SUCCESS;
}
