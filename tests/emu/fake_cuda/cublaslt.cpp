// The fake libcublasLt.so of the emulated device (see fake_cuda.h): descriptors, layouts,
// preferences, the heuristic and cublasLtMatmul, for the epilogues the engine uses (DEFAULT,
// BIAS, GELU_AUX_BIAS, DGELU; src/gpu/matmul_lt.rs). It holds the engine to the library's
// documented contract rather than just running its calls:
// - every attribute is set with the size of its documented type (a wrong size is
//   CUBLAS_STATUS_INVALID_VALUE, as in cuBLASLt); an attribute the fake does not model is refused
//   with a message, so a new use is noticed;
// - the layouts of A, B, C and D agree with the transposes (op(A) m x k, op(B) k x n, C and D
//   m x n), leading dimensions cover the rows, types are the engine's (all CUDA_R_32F or all
//   CUDA_R_16BF, fp32 scale, CUBLAS_COMPUTE_32F or _FAST_TF32 for fp32);
// - the GELU aux: pointer set, leading dimension a multiple of 8 and at least D's rows; bias and
//   aux in D's type unless their data-type attributes say otherwise (only D's type is supported);
// - the algorithm passed to cublasLtMatmul was returned by the heuristic for this very product
//   (same descriptor values and layouts), and A, B, C and D are aligned as the preference that
//   chose it promised (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES, 256 bytes unless set);
// - DGELU with beta 0 (the engine's assumption: D is overwritten);
// - every matrix, the bias, the aux and the workspace inside one device allocation.
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>

#include "gemm.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr int SUCCESS = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, EXECUTION_FAILED = 13, NOT_SUPPORTED = 15;
constexpr int COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77;
// cublasLtEpilogue_t
constexpr unsigned EPI_DEFAULT = 1, EPI_BIAS = 4, EPI_GELU_AUX_BIAS = 164, EPI_DGELU = 192;

struct Lt {
    int unused = 0;
};

struct Desc {
    int compute = 0, scale = 0, pointer_mode = 0;
    int transa = 0, transb = 0;
    unsigned epilogue = EPI_DEFAULT;
    const void* bias = nullptr;
    void* aux = nullptr;
    long long aux_ld = 0;
    int bias_type = -1, aux_type = -1;
};

struct Layout {
    unsigned type = 0;
    int order = 0;
    unsigned long long rows = 0, cols = 0;
    long long ld = 0;
    int batch = 1;
    long long stride = 0;
};

struct Pref {
    unsigned long long max_workspace = 0;
    unsigned align[4] = {256, 256, 256, 256}; // A, B, C, D
};

// What the heuristic stores in the opaque algorithm (cublasLtMatmulAlgo_t: 8 x u64).
struct Algo {
    unsigned long long signature;
    unsigned long long align[4];
    unsigned long long magic;
    unsigned long long workspace; // the bytes of workspace it needs
    unsigned long long unused;
};
static_assert(sizeof(Algo) == 64, "cublasLtMatmulAlgo_t is 64 bytes");
constexpr unsigned long long ALGO_MAGIC = 0x66616b65616c676full;

struct HeuristicResult {
    Algo algo;
    size_t workspace_size;
    int state;
    float waves;
    int reserved[4];
};

std::mutex g_mutex;
std::set<const void*> g_live;

bool live(const void* p) {
    std::lock_guard<std::mutex> lock(g_mutex);
    return p && g_live.count(p) != 0;
}

template <typename T> T* make() {
    T* p = new T();
    std::lock_guard<std::mutex> lock(g_mutex);
    g_live.insert(p);
    return p;
}

template <typename T> int destroy(T* p) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_live.erase(p)) {
        return NOT_INITIALIZED;
    }
    delete p;
    return SUCCESS;
}

int fail(const char* call, int status, const char* why) {
    std::fprintf(stderr, "fake cuBLASLt: %s: %s\n", call, why);
    return status;
}

// Copies an attribute value of exactly sizeof(T) bytes.
template <typename T> int take(const char* call, T* dst, const void* buf, size_t size) {
    if (!buf || size != sizeof(T)) {
        std::fprintf(stderr, "fake cuBLASLt: %s: the value is %zu bytes, the attribute's type %zu\n", call, size,
                     sizeof(T));
        return INVALID_VALUE;
    }
    std::memcpy(dst, buf, sizeof(T));
    return SUCCESS;
}

unsigned long long mix(unsigned long long h, unsigned long long v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h;
}

// Everything an algorithm is chosen for: the descriptor's values (not its pointers' values) and
// the four layouts.
unsigned long long signature(const Desc& d, const Layout* const ls[4]) {
    unsigned long long h = 1469598103934665603ull;
    for (long long v : {(long long)d.compute, (long long)d.scale, (long long)d.pointer_mode, (long long)d.transa,
                        (long long)d.transb, (long long)d.epilogue, d.aux_ld, (long long)d.bias_type,
                        (long long)d.aux_type}) {
        h = mix(h, (unsigned long long)v);
    }
    for (int i = 0; i < 4; i++) {
        const Layout& l = *ls[i];
        for (long long v : {(long long)l.type, (long long)l.order, (long long)l.rows, (long long)l.cols, l.ld,
                            (long long)l.batch, l.stride}) {
            h = mix(h, (unsigned long long)v);
        }
    }
    return h;
}

// The product the descriptor and layouts describe, without pointers; 0 or a status (message
// printed).
int describe(const char* call, const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl,
             fakegemm::Gemm* g) {
    if (d.scale != fakegemm::R_32F) {
        return fail(call, NOT_SUPPORTED, "the scale type must be CUDA_R_32F");
    }
    if (d.pointer_mode != 0) {
        return fail(call, NOT_SUPPORTED, "only the host pointer mode is modelled");
    }
    if (a.type != b.type || a.type != c.type || a.type != dl.type ||
        (a.type != fakegemm::R_32F && a.type != fakegemm::R_16BF)) {
        return fail(call, NOT_SUPPORTED, "A, B, C and D must all be CUDA_R_32F or all CUDA_R_16BF");
    }
    if (d.compute != COMPUTE_32F && !(d.compute == COMPUTE_32F_FAST_TF32 && a.type == fakegemm::R_32F)) {
        return fail(call, NOT_SUPPORTED, "compute type must be CUBLAS_COMPUTE_32F (or _FAST_TF32 for fp32)");
    }
    for (const Layout* l : {&a, &b, &c, &dl}) {
        if (l->order != 0) {
            return fail(call, NOT_SUPPORTED, "only CUBLASLT_ORDER_COL is modelled");
        }
        if (l->ld < (long long)(l->rows > 1 ? l->rows : 1)) {
            return fail(call, INVALID_VALUE, "a layout's leading dimension is smaller than its rows");
        }
        if (l->batch != a.batch) {
            return fail(call, INVALID_VALUE, "the layouts' batch counts differ");
        }
    }
    if ((d.transa != 0 && d.transa != 1) || (d.transb != 0 && d.transb != 1)) {
        return fail(call, INVALID_VALUE, "TRANSA/TRANSB must be CUBLAS_OP_N or CUBLAS_OP_T");
    }
    const long long m = (long long)dl.rows, n = (long long)dl.cols;
    const long long k = d.transa ? (long long)a.rows : (long long)a.cols;
    const long long am = d.transa ? (long long)a.cols : (long long)a.rows;
    const long long bk = d.transb ? (long long)b.cols : (long long)b.rows;
    const long long bn = d.transb ? (long long)b.rows : (long long)b.cols;
    if (am != m || bk != k || bn != n || (long long)c.rows != m || (long long)c.cols != n) {
        return fail(call, INVALID_VALUE, "the layouts do not agree: op(A) m x k, op(B) k x n, C and D m x n");
    }
    if (c.ld != dl.ld || c.stride != dl.stride) {
        return fail(call, NOT_SUPPORTED, "C and D with different leading dimensions or strides are not modelled");
    }
    fakegemm::Epilogue e;
    switch (d.epilogue) {
    case EPI_DEFAULT:
        e = fakegemm::Epilogue::Default;
        break;
    case EPI_BIAS:
        e = fakegemm::Epilogue::Bias;
        break;
    case EPI_GELU_AUX_BIAS:
        e = fakegemm::Epilogue::GeluAuxBias;
        break;
    case EPI_DGELU:
        e = fakegemm::Epilogue::DGelu;
        break;
    default:
        return fail(call, NOT_SUPPORTED, "an epilogue the fake does not model");
    }
    const bool uses_bias = e == fakegemm::Epilogue::Bias || e == fakegemm::Epilogue::GeluAuxBias;
    const bool uses_aux = e == fakegemm::Epilogue::GeluAuxBias || e == fakegemm::Epilogue::DGelu;
    if (uses_bias && d.bias_type != -1 && d.bias_type != (int)dl.type) {
        return fail(call, NOT_SUPPORTED, "a bias type other than D's is not modelled");
    }
    if (uses_aux) {
        if (d.aux_ld % 8 != 0 || d.aux_ld < m) {
            return fail(call, INVALID_VALUE,
                        "CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD must be divisible by 8 and at least D's rows");
        }
        if (d.aux_type != -1 && d.aux_type != (int)dl.type) {
            return fail(call, NOT_SUPPORTED, "an aux type other than D's is not modelled");
        }
        if (a.batch != 1) {
            return fail(call, NOT_SUPPORTED, "a batched GELU aux is not modelled");
        }
    }
    g->transa = d.transa == 1;
    g->transb = d.transb == 1;
    g->m = m;
    g->n = n;
    g->k = k;
    g->lda = a.ld;
    g->ldb = b.ld;
    g->ldc = c.ld;
    g->ldd = dl.ld;
    g->stride_a = a.stride;
    g->stride_b = b.stride;
    g->stride_c = dl.stride;
    g->batch = a.batch;
    g->type = (int)a.type;
    g->tf32 = d.compute == COMPUTE_32F_FAST_TF32;
    g->epilogue = e;
    g->aux_ld = uses_aux ? d.aux_ld : 0;
    return SUCCESS;
}

} // namespace

EXPORT int cublasLtCreate(Lt** out) {
    if (!out) {
        return INVALID_VALUE;
    }
    *out = make<Lt>();
    return SUCCESS;
}

EXPORT int cublasLtDestroy(Lt* h) {
    return destroy(h);
}

EXPORT size_t cublasLtGetVersion() {
    return 130000;
}

EXPORT int cublasLtMatmulDescCreate(Desc** out, int compute, int scale) {
    if (!out) {
        return INVALID_VALUE;
    }
    Desc* d = make<Desc>();
    d->compute = compute;
    d->scale = scale;
    *out = d;
    return SUCCESS;
}

EXPORT int cublasLtMatmulDescDestroy(Desc* d) {
    return destroy(d);
}

EXPORT int cublasLtMatmulDescSetAttribute(Desc* d, int attr, const void* buf, size_t size) {
    const char* call = "cublasLtMatmulDescSetAttribute";
    if (!live(d)) {
        return NOT_INITIALIZED;
    }
    switch (attr) {
    case 0: // COMPUTE_TYPE (int32)
        return take(call, &d->compute, buf, size);
    case 1: // SCALE_TYPE (int32)
        return take(call, &d->scale, buf, size);
    case 2: // POINTER_MODE (int32)
        return take(call, &d->pointer_mode, buf, size);
    case 3: // TRANSA (int32)
        return take(call, &d->transa, buf, size);
    case 4: // TRANSB (int32)
        return take(call, &d->transb, buf, size);
    case 7: // EPILOGUE (uint32)
        return take(call, &d->epilogue, buf, size);
    case 8: // BIAS_POINTER (void*)
        return take(call, &d->bias, buf, size);
    case 11: // EPILOGUE_AUX_POINTER (void*)
        return take(call, &d->aux, buf, size);
    case 12: // EPILOGUE_AUX_LD (int64)
        return take(call, &d->aux_ld, buf, size);
    case 22: // EPILOGUE_AUX_DATA_TYPE (int32)
        return take(call, &d->aux_type, buf, size);
    case 26: // BIAS_DATA_TYPE (int32)
        return take(call, &d->bias_type, buf, size);
    default:
        std::fprintf(stderr, "fake cuBLASLt: %s: attribute %d is not modelled\n", call, attr);
        return NOT_SUPPORTED;
    }
}

EXPORT int cublasLtMatrixLayoutCreate(Layout** out, int type, unsigned long long rows, unsigned long long cols,
                                      long long ld) {
    if (!out) {
        return INVALID_VALUE;
    }
    Layout* l = make<Layout>();
    l->type = (unsigned)type;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    *out = l;
    return SUCCESS;
}

EXPORT int cublasLtMatrixLayoutDestroy(Layout* l) {
    return destroy(l);
}

EXPORT int cublasLtMatrixLayoutSetAttribute(Layout* l, int attr, const void* buf, size_t size) {
    const char* call = "cublasLtMatrixLayoutSetAttribute";
    if (!live(l)) {
        return NOT_INITIALIZED;
    }
    switch (attr) {
    case 0: // TYPE (uint32)
        return take(call, &l->type, buf, size);
    case 1: // ORDER (int32)
        return take(call, &l->order, buf, size);
    case 2: // ROWS (uint64)
        return take(call, &l->rows, buf, size);
    case 3: // COLS (uint64)
        return take(call, &l->cols, buf, size);
    case 4: // LD (int64)
        return take(call, &l->ld, buf, size);
    case 5: // BATCH_COUNT (int32)
        return take(call, &l->batch, buf, size);
    case 6: // STRIDED_BATCH_OFFSET (int64)
        return take(call, &l->stride, buf, size);
    default:
        std::fprintf(stderr, "fake cuBLASLt: %s: attribute %d is not modelled\n", call, attr);
        return NOT_SUPPORTED;
    }
}

EXPORT int cublasLtMatmulPreferenceCreate(Pref** out) {
    if (!out) {
        return INVALID_VALUE;
    }
    *out = make<Pref>();
    return SUCCESS;
}

EXPORT int cublasLtMatmulPreferenceDestroy(Pref* p) {
    return destroy(p);
}

EXPORT int cublasLtMatmulPreferenceSetAttribute(Pref* p, int attr, const void* buf, size_t size) {
    const char* call = "cublasLtMatmulPreferenceSetAttribute";
    if (!live(p)) {
        return NOT_INITIALIZED;
    }
    switch (attr) {
    case 1: // MAX_WORKSPACE_BYTES (uint64)
        return take(call, &p->max_workspace, buf, size);
    case 5: // MIN_ALIGNMENT_A_BYTES .. D (uint32)
    case 6:
    case 7:
    case 8: {
        unsigned v = 0;
        const int r = take(call, &v, buf, size);
        if (r == SUCCESS) {
            p->align[attr - 5] = v;
        }
        return r;
    }
    default:
        std::fprintf(stderr, "fake cuBLASLt: %s: attribute %d is not modelled\n", call, attr);
        return NOT_SUPPORTED;
    }
}

EXPORT int cublasLtMatmulAlgoGetHeuristic(Lt* h, Desc* d, Layout* a, Layout* b, Layout* c, Layout* dl, Pref* p,
                                          int requested, HeuristicResult* results, int* count) {
    const char* call = "cublasLtMatmulAlgoGetHeuristic";
    if (!live(h) || !live(d) || !live(a) || !live(b) || !live(c) || !live(dl) || !live(p)) {
        return fail(call, NOT_INITIALIZED, "a handle, descriptor, layout or preference is not live");
    }
    if (requested < 1 || !results || !count) {
        return fail(call, INVALID_VALUE, "requestedAlgoCount < 1 or a null output");
    }
    *count = 0;
    fakegemm::Gemm g;
    const int r = describe(call, *d, *a, *b, *c, *dl, &g);
    if (r != SUCCESS) {
        return r;
    }
    const Layout* const ls[4] = {a, b, c, dl};
    HeuristicResult res;
    std::memset(&res, 0, sizeof res);
    res.algo.signature = signature(*d, ls);
    for (int i = 0; i < 4; i++) {
        res.algo.align[i] = p->align[i];
    }
    res.algo.magic = ALGO_MAGIC;
    // every algorithm wants all the workspace the preference allows: the most a real one may ask
    res.algo.workspace = p->max_workspace;
    res.workspace_size = p->max_workspace;
    res.state = SUCCESS;
    res.waves = 1.0f;
    results[0] = res;
    *count = 1;
    return SUCCESS;
}

EXPORT int cublasLtMatmul(Lt* h, Desc* d, const void* alpha, const void* a, Layout* al, const void* b, Layout* bl,
                          const void* beta, const void* c, Layout* cl, void* dp, Layout* dl, const Algo* algo,
                          void* workspace, size_t workspace_bytes, void* stream) {
    const char* call = "cublasLtMatmul";
    if (!live(h) || !live(d) || !live(al) || !live(bl) || !live(cl) || !live(dl)) {
        return fail(call, NOT_INITIALIZED, "a handle, descriptor or layout is not live");
    }
    if (!alpha || !beta) {
        return fail(call, INVALID_VALUE, "alpha and beta must be host pointers");
    }
    fakegemm::Gemm g;
    int r = describe(call, *d, *al, *bl, *cl, *dl, &g);
    if (r != SUCCESS) {
        return r;
    }
    if (!algo) {
        return fail(call, NOT_SUPPORTED, "the fake models only calls with an algorithm from the heuristic");
    }
    const Layout* const ls[4] = {al, bl, cl, dl};
    if (algo->magic != ALGO_MAGIC || algo->signature != signature(*d, ls)) {
        return fail(call, INVALID_VALUE,
                    "the algorithm was not returned by the heuristic for this descriptor and these layouts");
    }
    const void* ptrs[4] = {a, b, c, dp};
    const char* names[4] = {"A", "B", "C", "D"};
    for (int i = 0; i < 4; i++) {
        const unsigned long long al_bytes = algo->align[i] ? algo->align[i] : 1;
        if ((unsigned long long)(uintptr_t)ptrs[i] % al_bytes != 0) {
            std::fprintf(stderr,
                         "fake cuBLASLt: %s: %s at %p is not aligned to the %llu bytes the algorithm was chosen "
                         "for\n",
                         call, names[i], ptrs[i], al_bytes);
            return INVALID_VALUE;
        }
    }
    g.a = a;
    g.b = b;
    g.c = c;
    g.d = dp;
    g.alpha = *static_cast<const float*>(alpha);
    g.beta = *static_cast<const float*>(beta);
    if (g.epilogue == fakegemm::Epilogue::Bias || g.epilogue == fakegemm::Epilogue::GeluAuxBias) {
        if (!d->bias) {
            return fail(call, INVALID_VALUE, "the epilogue needs CUBLASLT_MATMUL_DESC_BIAS_POINTER");
        }
        g.bias = d->bias;
    }
    if (g.epilogue == fakegemm::Epilogue::GeluAuxBias || g.epilogue == fakegemm::Epilogue::DGelu) {
        if (!d->aux) {
            return fail(call, INVALID_VALUE, "the epilogue needs CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER");
        }
        g.aux = d->aux;
    }
    if (g.epilogue == fakegemm::Epilogue::DGelu && g.beta != 0.0f) {
        return fail(call, NOT_SUPPORTED, "DGELU with beta != 0 is not modelled (the engine assumes it overwrites D)");
    }
    const char* what = nullptr;
    if (fakegemm::check_ranges(g, &what) != 0) {
        std::fprintf(stderr, "fake cuBLASLt: %s: %s is not inside one device allocation (m=%lld n=%lld k=%lld)\n",
                     call, what, g.m, g.n, g.k);
        return EXECUTION_FAILED;
    }
    if (workspace_bytes < algo->workspace) {
        std::fprintf(stderr, "fake cuBLASLt: %s: a workspace of %zu bytes, less than the %llu the algorithm needs\n",
                     call, workspace_bytes, algo->workspace);
        return NOT_SUPPORTED;
    }
    if (workspace_bytes > 0 &&
        fakecuda_check_range((unsigned long long)(uintptr_t)workspace, workspace_bytes) != 0) {
        return fail(call, EXECUTION_FAILED, "the workspace is not inside one device allocation");
    }
    if (g.m == 0 || g.n == 0 || g.batch == 0) {
        return SUCCESS;
    }
    return fakegemm::enqueue(stream, g) == 0 ? SUCCESS : EXECUTION_FAILED;
}
