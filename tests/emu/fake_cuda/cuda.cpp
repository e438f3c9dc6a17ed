// The emulated device's libcuda.so: the part of the CUDA driver API that cudarc's safe API calls
// for this engine (and what the fake cuBLAS libraries need, fake_cuda.h), over the host emulation
// of the kernels (tests/emu/runtime.cpp). Built by tests/emu/device.rs; a process that finds it
// first on LD_LIBRARY_PATH runs the GPU engine (src/gpu) on the CPU, unchanged.
//
// What it models, and why:
// - Device memory is host memory: a CUdeviceptr is a host address. Every allocation ends against a
//   PROT_NONE page with canary bytes in the slack on both sides (as the emulation's own buffers),
//   and starts filled with 0xFF bytes, a NaN in f32 and in bf16, so that a read of memory nobody
//   wrote shows up in the results. A freed allocation stays mapped PROT_NONE for a while, so that
//   a use after free faults instead of reading whatever reused the address. The capacity is
//   FAKECUDA_MEMORY_BYTES (default 4 GiB): beyond it allocations fail as on a full GPU.
// - One device, "Emulated CUDA device (host)", compute capability 9.0 (an H100's attributes).
// - Streams run synchronously: each operation runs on the calling thread when it is issued, in
//   order. Events hold the host time at which they were reached.
// - Modules: the PTX is only read for its `.entry` names; each is the emulated kernel of that name
//   in one of the kernel libraries listed in FAKECUDA_KERNEL_LIBS (colon-separated paths, one
//   library per kernels/*.cu, each with its own copy of the runtime). A launch is the emulated
//   launch (threads and blocks in the order FAKECUDA_SCHEDULE picks: 0 ascending, the default; 1
//   descending; >= 2 shuffled), with real CUDA's checks of the geometry and the dynamic shared
//   memory. A fault or a failure while the kernel runs is printed to stderr and is sticky, as on a
//   GPU: every later call in the context fails with it, until the primary context is released.
// - Graphs: while a stream is captured, its work is recorded (a launch's arguments copied, as the
//   driver does) and runs at each cuGraphLaunch. cuMemAllocAsync during a capture allocates at once
//   (the graph's allocation has a fixed address) and is refilled with 0xFF at each launch;
//   cuMemFreeAsync of such an allocation during the capture frees it when the graph is destroyed.
//   What the CUDA programming guide prohibits during a capture fails as the driver would: a
//   synchronous or "potentially unsafe" call (cuMemAlloc, cuMemFree, synchronous copies, a context,
//   stream or event synchronize or query...) returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and
//   invalidates the capture, which then ends with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED.
//   Two switches make captures fail for the engine's fallback: FAKECUDA_INVALIDATE_CAPTURES=1 ends
//   each invalidated, FAKECUDA_FAIL_CAPTURED_LAUNCHES=1 refuses each launch in one.
// - One global (recursive) mutex: the runtime of each kernel library has globals, and cargo runs
//   tests on several threads.
#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_cuda.h"

#define API extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;

namespace {

// ---- error codes (cuda.h's CUresult values) --------------------------------------------------------
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_FILE_NOT_FOUND = 301,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_CAPTURED_EVENT = 907,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
    CUDA_ERROR_UNKNOWN = 999,
};

struct ErrorText {
    int code;
    const char* name;
    const char* text;
};
const ErrorText ERRORS[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {CUDA_ERROR_FILE_NOT_FOUND, "CUDA_ERROR_FILE_NOT_FOUND", "file not found"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
     "too many resources requested for launch"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_CAPTURED_EVENT, "CUDA_ERROR_CAPTURED_EVENT",
     "operation not permitted on an event last recorded in a capturing stream"},
    {CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
     "attempt to terminate a thread-local capture sequence from another thread"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

// cuDeviceGetAttribute values (CUdevice_attribute) for an H100-like sm_90 part.
const int SM_COUNT = 132;
const int MAX_SHARED_OPTIN = 227 * 1024;
const int DEFAULT_SHARED = 48 * 1024;

int device_attribute(int a) {
    switch (a) {
    case 1: return 1024;           // MAX_THREADS_PER_BLOCK
    case 2: return 1024;           // MAX_BLOCK_DIM_X
    case 3: return 1024;           // MAX_BLOCK_DIM_Y
    case 4: return 64;             // MAX_BLOCK_DIM_Z
    case 5: return 2147483647;     // MAX_GRID_DIM_X
    case 6: return 65535;          // MAX_GRID_DIM_Y
    case 7: return 65535;          // MAX_GRID_DIM_Z
    case 8: return DEFAULT_SHARED; // MAX_SHARED_MEMORY_PER_BLOCK
    case 9: return 65536;          // TOTAL_CONSTANT_MEMORY
    case 10: return 32;            // WARP_SIZE
    case 11: return 2147483647;    // MAX_PITCH
    case 12: return 65536;         // MAX_REGISTERS_PER_BLOCK
    case 13: return 1980000;       // CLOCK_RATE (kHz)
    case 14: return 512;           // TEXTURE_ALIGNMENT
    case 15: return 1;             // GPU_OVERLAP
    case 16: return SM_COUNT;      // MULTIPROCESSOR_COUNT
    case 19: return 1;             // CAN_MAP_HOST_MEMORY
    case 31: return 1;             // CONCURRENT_KERNELS
    case 32: return 1;             // ECC_ENABLED
    case 36: return 2619000;       // MEMORY_CLOCK_RATE (kHz)
    case 37: return 5120;          // GLOBAL_MEMORY_BUS_WIDTH
    case 38: return 50 * 1024 * 1024; // L2_CACHE_SIZE
    case 39: return 2048;          // MAX_THREADS_PER_MULTIPROCESSOR
    case 40: return 2;             // ASYNC_ENGINE_COUNT
    case 41: return 1;             // UNIFIED_ADDRESSING
    case 75: return 9;             // COMPUTE_CAPABILITY_MAJOR
    case 76: return 0;             // COMPUTE_CAPABILITY_MINOR
    case 81: return 228 * 1024;    // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    case 82: return 65536;         // MAX_REGISTERS_PER_MULTIPROCESSOR
    case 83: return 1;             // MANAGED_MEMORY
    case 97: return MAX_SHARED_OPTIN; // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    case 106: return 32;           // MAX_BLOCKS_PER_MULTIPROCESSOR
    case 111: return 1024;         // RESERVED_SHARED_MEMORY_PER_BLOCK
    case 115: return 1;            // MEMORY_POOLS_SUPPORTED: cudarc then uses cuMemAllocAsync, as on a GPU
    default: return 0;
    }
}

// ---- state ---------------------------------------------------------------------------------------
std::recursive_mutex g_mu;
using Lock = std::lock_guard<std::recursive_mutex>;
bool g_initialised = false;

std::string format(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

void note(const std::string& s) {
    std::fprintf(stderr, "fake libcuda: %s\n", s.c_str());
}

struct Context {
    bool primary = false;
    int refs = 0;
    // A sticky error (a fault in a kernel): every later call in the context returns it.
    int sticky = 0;
};
Context g_primary;
thread_local Context* t_current = nullptr;

struct GraphData;

// A capture sequence: what a stream records while it is captured.
struct Capture {
    std::shared_ptr<GraphData> graph;
    int mode; // CUstreamCaptureMode: 0 global, 1 thread-local, 2 relaxed
    std::thread::id thread;
    bool invalid = false;
};

struct Stream {
    Context* ctx;
    std::unique_ptr<Capture> cap;
};
std::set<Stream*> g_streams;
// The legacy stream (CUstream 0, 1 or 2) of each context: never captured here.
std::map<Context*, Stream> g_legacy;

struct Event {
    unsigned flags;
    bool recorded = false;
    bool captured = false; // last recorded into a capture
    double ms = 0;
};
std::set<Event*> g_events;

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// ---- device memory -----------------------------------------------------------------------------------
const size_t PAGE = 4096;
const unsigned char CANARY = 0xa5;

struct Alloc {
    char* base;       // the mapping, guard pages included
    size_t map_bytes; // its length
    char* data;       // what the caller gets
    size_t bytes;
    GraphData* graph = nullptr; // allocated during this graph's capture
};
std::map<uintptr_t, Alloc> g_allocs; // by data address
std::deque<Alloc> g_freed;          // PROT_NONE, kept to catch uses after free
size_t g_freed_bytes = 0;
size_t g_used = 0;
std::set<void*> g_pinned; // cuMemHostAlloc's page-locked host memory

size_t capacity() {
    static size_t cap = [] {
        const char* e = std::getenv("FAKECUDA_MEMORY_BYTES");
        if (e && *e) {
            return (size_t)std::strtoull(e, nullptr, 0);
        }
        return (size_t)4 << 30;
    }();
    return cap;
}

// `bytes` bytes filled with 0xFF, ending less than 16 bytes before a PROT_NONE page, 256-byte
// aligned when that fits in the page's slack (the driver's alignment), canary bytes around them.
CUresult device_alloc(size_t bytes, CUdeviceptr* out) {
    if (g_used + bytes > capacity() || g_used + bytes < g_used) {
        note(format("out of memory: %zu bytes requested, %zu of %zu in use (FAKECUDA_MEMORY_BYTES)", bytes, g_used,
                    capacity()));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    const size_t front = 64;
    const size_t data_pages = (bytes + front + 256 + PAGE - 1) / PAGE;
    const size_t map_bytes = (data_pages + 2) * PAGE;
    void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    char* base = static_cast<char*>(m);
    mprotect(base, PAGE, PROT_NONE);
    char* limit = base + (data_pages + 1) * PAGE;
    mprotect(limit, PAGE, PROT_NONE);
    // 256-byte aligned start (cudaMalloc's guarantee) unless that leaves more than 15 bytes of
    // slack at the end: then 16-byte aligned, so that a read past the end faults within 16 bytes.
    uintptr_t end = reinterpret_cast<uintptr_t>(limit);
    uintptr_t start = (end - bytes) & ~uintptr_t(255);
    if (end - (start + bytes) >= 16) {
        start = (end - bytes) & ~uintptr_t(15);
    }
    char* data = reinterpret_cast<char*>(start);
    std::memset(base + PAGE, CANARY, data - (base + PAGE));
    std::memset(data, 0xff, bytes);
    std::memset(data + bytes, CANARY, limit - (data + bytes));
    g_allocs[start] = Alloc{base, map_bytes, data, bytes};
    g_used += bytes;
    *out = start;
    return CUDA_SUCCESS;
}

void release(Alloc a) {
    g_used -= a.bytes;
    // Keep the addresses unusable for a while (the pages themselves go back to the system).
    madvise(a.base, a.map_bytes, MADV_DONTNEED);
    mprotect(a.base, a.map_bytes, PROT_NONE);
    g_freed.push_back(a);
    g_freed_bytes += a.map_bytes;
    while (g_freed_bytes > ((size_t)8 << 30) && !g_freed.empty()) {
        munmap(g_freed.front().base, g_freed.front().map_bytes);
        g_freed_bytes -= g_freed.front().map_bytes;
        g_freed.pop_front();
    }
}

// The live allocation holding [p, p + bytes) (bytes 0: p inside it or at its end), or null.
Alloc* find_range(uintptr_t p, size_t bytes) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) {
        return nullptr;
    }
    --it;
    Alloc& a = it->second;
    const uintptr_t d = reinterpret_cast<uintptr_t>(a.data);
    if (p < d || p > d + a.bytes || bytes > d + a.bytes - p) {
        return nullptr;
    }
    return &a;
}

// What a fault's address is, for the kernel runtime's report.
void describe(const void* p, char* buf, size_t len) {
    const char* c = static_cast<const char*>(p);
    for (const auto& kv : g_allocs) {
        const Alloc& a = kv.second;
        if (c >= a.base && c < a.base + a.map_bytes) {
            if (c >= a.data + a.bytes) {
                std::snprintf(buf, len, "%td bytes past the end of a %zu-byte device allocation", c - (a.data + a.bytes),
                              a.bytes);
            } else if (c < a.data) {
                std::snprintf(buf, len, "%td bytes before the start of a %zu-byte device allocation", a.data - c,
                              a.bytes);
            } else {
                std::snprintf(buf, len, "inside a %zu-byte device allocation at offset %td", a.bytes, c - a.data);
            }
            return;
        }
    }
    for (const Alloc& a : g_freed) {
        if (c >= a.base && c < a.base + a.map_bytes) {
            std::snprintf(buf, len, "offset %td of a freed %zu-byte device allocation (use after free)", c - a.data,
                          a.bytes);
            return;
        }
    }
}

// An error text when a canary byte around some allocation was overwritten (an out-of-bounds
// write the guard page did not catch), else "".
std::string check_canaries() {
    for (const auto& kv : g_allocs) {
        const Alloc& a = kv.second;
        const unsigned char* lo = reinterpret_cast<unsigned char*>(a.base + PAGE);
        const unsigned char* hi = reinterpret_cast<unsigned char*>(a.base + a.map_bytes - PAGE);
        const unsigned char* d = reinterpret_cast<unsigned char*>(a.data);
        for (const unsigned char* q = lo; q < d; q++) {
            if (*q != CANARY) {
                return format("out-of-bounds write %td bytes before the start of a %zu-byte device allocation", d - q,
                              a.bytes);
            }
        }
        for (const unsigned char* q = d + a.bytes; q < hi; q++) {
            if (*q != CANARY) {
                return format("out-of-bounds write %td bytes past the end of a %zu-byte device allocation",
                              q - (d + a.bytes), a.bytes);
            }
        }
    }
    return "";
}

// ---- graphs --------------------------------------------------------------------------------------
// One recorded operation: runs at each launch of the graph.
using Op = std::function<CUresult()>;

struct GraphData {
    std::vector<Op> ops;
    // What the recorded operations own (fakecuda_enqueue's data, dropped with the graph).
    std::vector<std::shared_ptr<void>> keep;
    // Allocations made during the capture...
    std::vector<uintptr_t> allocs;
    // ... and those of them freed during it: they belong to the graph, freed with it.
    std::vector<uintptr_t> owned;
    int launches = 0;
    ~GraphData() {
        for (uintptr_t p : allocs) {
            auto it = g_allocs.find(p);
            if (it != g_allocs.end() && it->second.graph == this) {
                it->second.graph = nullptr; // handed over: a plain allocation from now on
            }
        }
        for (uintptr_t p : owned) {
            auto it = g_allocs.find(p);
            if (it != g_allocs.end()) {
                Alloc a = it->second;
                g_allocs.erase(it);
                release(a);
            }
        }
    }
};

struct Graph {
    std::shared_ptr<GraphData> data;
};
struct GraphExec {
    std::shared_ptr<GraphData> data;
};
std::set<Graph*> g_graphs;
std::set<GraphExec*> g_execs;

// ---- kernels -------------------------------------------------------------------------------------
struct KernelLib {
    std::string path;
    void* handle;
    int (*launch)(const char*, const unsigned*, const unsigned*, unsigned, unsigned, void**, unsigned);
    const char* (*last_error)();
    int (*info)(const char*, int*, const size_t**, int*);
};

struct Function {
    std::string name;
    KernelLib* lib;
    int param_count;
    const size_t* param_sizes;
    int max_threads; // __launch_bounds__, 0 when none
    int max_dynamic_smem = DEFAULT_SHARED;
};

struct Module {
    std::map<std::string, std::unique_ptr<Function>> functions;
};
std::set<Module*> g_modules;

std::vector<KernelLib*>* g_libs = nullptr;

// The kernel libraries of FAKECUDA_KERNEL_LIBS, loaded once; null (with a note) when unset or
// when one does not load.
std::vector<KernelLib*>* kernel_libs() {
    static bool tried = false;
    if (tried) {
        return g_libs;
    }
    tried = true;
    const char* env = std::getenv("FAKECUDA_KERNEL_LIBS");
    if (!env || !*env) {
        note("FAKECUDA_KERNEL_LIBS is not set: no emulated kernels to load (tests/emu/device.rs sets it)");
        return nullptr;
    }
    auto* libs = new std::vector<KernelLib*>();
    std::string s = env;
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t end = s.find(':', pos);
        if (end == std::string::npos) {
            end = s.size();
        }
        std::string path = s.substr(pos, end - pos);
        pos = end + 1;
        if (path.empty()) {
            continue;
        }
        // RTLD_LOCAL: each library has its own copy of the runtime and its globals.
        void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            note(format("loading the kernel library %s failed: %s", path.c_str(), dlerror()));
            return nullptr;
        }
        auto* k = new KernelLib{path, h, nullptr, nullptr, nullptr};
        k->launch = reinterpret_cast<decltype(k->launch)>(dlsym(h, "emu_launch_opt"));
        k->last_error = reinterpret_cast<decltype(k->last_error)>(dlsym(h, "emu_last_error"));
        k->info = reinterpret_cast<decltype(k->info)>(dlsym(h, "emu_kernel_info"));
        auto set_describer =
            reinterpret_cast<void (*)(void (*)(const void*, char*, size_t))>(dlsym(h, "emu_set_address_describer"));
        if (!k->launch || !k->last_error || !k->info || !set_describer) {
            note(format("%s is not an emulated kernel library of this runtime (missing emu_launch_opt...)", path.c_str()));
            return nullptr;
        }
        set_describer(describe);
        libs->push_back(k);
    }
    g_libs = libs;
    return g_libs;
}

unsigned schedule() {
    static unsigned s = [] {
        const char* e = std::getenv("FAKECUDA_SCHEDULE");
        return e && *e ? (unsigned)std::strtoul(e, nullptr, 0) : 0u;
    }();
    return s;
}

// Whether the switch `name` (FAKECUDA_INVALIDATE_CAPTURES, FAKECUDA_FAIL_CAPTURED_LAUNCHES) is 1.
bool switched_on(const char* name) {
    const char* e = std::getenv(name);
    return e && std::string(e) == "1";
}

// ---- context and capture checks ------------------------------------------------------------------
// The current context, or an error: none current, or its sticky error.
CUresult current(Context** out) {
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (!t_current) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (t_current->sticky) {
        return t_current->sticky;
    }
    *out = t_current;
    return CUDA_SUCCESS;
}

// The stream behind a CUstream handle (0, 1 and 2 are the legacy and per-thread streams).
CUresult stream_of(void* h, Stream** out) {
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    Stream* s;
    if (h == nullptr || h == reinterpret_cast<void*>(1) || h == reinterpret_cast<void*>(2)) {
        if (!t_current) {
            return CUDA_ERROR_INVALID_CONTEXT;
        }
        s = &g_legacy[t_current];
        s->ctx = t_current;
    } else {
        s = static_cast<Stream*>(h);
        if (!g_streams.count(s)) {
            return CUDA_ERROR_INVALID_HANDLE;
        }
    }
    if (s->ctx->sticky) {
        return s->ctx->sticky;
    }
    *out = s;
    return CUDA_SUCCESS;
}

// The captures that forbid this thread a potentially unsafe call: its own, unless relaxed, and any
// other thread's global-mode one (cuStreamBeginCapture's documentation of the modes).
std::vector<Stream*> forbidding_captures() {
    std::vector<Stream*> v;
    for (Stream* s : g_streams) {
        if (!s->cap) {
            continue;
        }
        const bool mine = s->cap->thread == std::this_thread::get_id();
        if ((mine && s->cap->mode != 2) || (!mine && s->cap->mode == 0)) {
            v.push_back(s);
        }
    }
    return v;
}

// CUDA_SUCCESS, or CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (invalidating the captures) when a
// capture forbids the potentially unsafe call `what` now.
CUresult unsafe_call(const char* what) {
    std::vector<Stream*> v = forbidding_captures();
    if (v.empty()) {
        return CUDA_SUCCESS;
    }
    note(format("%s during a stream capture: not permitted (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); the capture is "
                "invalidated",
                what));
    for (Stream* s : v) {
        s->cap->invalid = true;
    }
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

// Refuses `what` on a stream being captured (synchronize, query): illegal in every mode.
CUresult not_on_capturing(Stream* s, const char* what) {
    if (s->cap) {
        note(format("%s of a stream being captured: not permitted; the capture is invalidated", what));
        s->cap->invalid = true;
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return CUDA_SUCCESS;
}

// Sets the context's sticky error after a failure inside running work.
CUresult fail_sticky(Context* ctx, CUresult code, const std::string& msg) {
    note(msg + format(" (%s: the context is unusable from now on, as after a fault on a GPU)",
                      code == CUDA_ERROR_ILLEGAL_ADDRESS ? "CUDA_ERROR_ILLEGAL_ADDRESS" : "CUDA_ERROR_LAUNCH_FAILED"));
    ctx->sticky = code;
    return code;
}

// Runs `op` on `s` now, or records it when `s` is being captured.
CUresult submit(Stream* s, Op op, std::shared_ptr<void> keep = nullptr) {
    if (s->cap) {
        if (s->cap->invalid) {
            return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        }
        s->cap->graph->ops.push_back(std::move(op));
        if (keep) {
            s->cap->graph->keep.push_back(std::move(keep));
        }
        return CUDA_SUCCESS;
    }
    return op();
}

// ---- launches --------------------------------------------------------------------------------------
// The checks the GPU makes before a launch: CUDA_ERROR_INVALID_VALUE with a note when it would
// refuse this one.
CUresult check_geometry(const Function* f, const unsigned* grid, const unsigned* block, unsigned smem) {
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    std::string why;
    if (threads == 0 || block[0] > 1024 || block[1] > 1024 || block[2] > 64 || threads > 1024) {
        why = format("invalid block (%u,%u,%u)", block[0], block[1], block[2]);
    } else if (f->max_threads > 0 && threads > (unsigned long long)f->max_threads) {
        why = format("%llu threads per block exceed its __launch_bounds__(%d)", threads, f->max_threads);
    } else if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 0x7fffffffu || grid[1] > 65535 ||
               grid[2] > 65535) {
        why = format("invalid grid (%u,%u,%u)", grid[0], grid[1], grid[2]);
    } else if (smem > (unsigned)f->max_dynamic_smem) {
        why = format("%u bytes of dynamic shared memory exceed the kernel's limit of %d%s", smem, f->max_dynamic_smem,
                     f->max_dynamic_smem == DEFAULT_SHARED ? " (48 KiB without an opt-in)" : "");
    }
    if (why.empty()) {
        return CUDA_SUCCESS;
    }
    note(format("cuLaunchKernel(%s): %s (CUDA_ERROR_INVALID_VALUE)", f->name.c_str(), why.c_str()));
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult run_kernel(Context* ctx, const Function* f, const unsigned* grid, const unsigned* block, unsigned smem,
                    void** params) {
    if (ctx->sticky) {
        return ctx->sticky;
    }
    const int rc = f->lib->launch(f->name.c_str(), grid, block, smem, (unsigned)f->max_dynamic_smem, params,
                                  schedule());
    if (rc == 1) {
        note(format("cuLaunchKernel: %s (CUDA_ERROR_INVALID_VALUE)", f->lib->last_error()));
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (rc == 2) {
        return fail_sticky(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, format("kernel fault: %s", f->lib->last_error()));
    }
    if (rc != 0) {
        return fail_sticky(ctx, CUDA_ERROR_LAUNCH_FAILED, format("kernel failure: %s", f->lib->last_error()));
    }
    std::string bad = check_canaries();
    if (!bad.empty()) {
        return fail_sticky(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, format("after %s: %s", f->name.c_str(), bad.c_str()));
    }
    return CUDA_SUCCESS;
}

// ---- copies ----------------------------------------------------------------------------------------
CUresult check_device(CUdeviceptr p, size_t bytes, const char* what) {
    if (bytes == 0) {
        return CUDA_SUCCESS;
    }
    if (!find_range(p, bytes)) {
        char buf[256] = "";
        describe(reinterpret_cast<void*>(p), buf, sizeof buf);
        note(format("%s: [0x%llx, +%zu) is not inside one live device allocation%s%s (CUDA_ERROR_INVALID_VALUE)", what,
                    p, bytes, buf[0] ? ": " : "", buf));
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

// A device <-> host copy on `s` (kind 0 htod, 1 dtoh, 2 dtod).
CUresult copy_async(Stream* s, void* dst, const void* src, size_t n, int kind, const char* what) {
    CUresult rc = CUDA_SUCCESS;
    if (kind != 0) {
        rc = check_device(reinterpret_cast<CUdeviceptr>(src), n, what);
    }
    if (rc == CUDA_SUCCESS && kind != 1) {
        rc = check_device(reinterpret_cast<CUdeviceptr>(dst), n, what);
    }
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    // A copy to pageable host memory returns only once it is done: not something a capture can
    // record (CUDA's API synchronization behaviour).
    if (kind == 1 && s->cap && !g_pinned.count(dst)) {
        note(format("%s to pageable host memory while the stream is being captured: not permitted; the capture is "
                    "invalidated",
                    what));
        s->cap->invalid = true;
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return submit(s, [=] {
        if (n) {
            std::memmove(dst, src, n);
        }
        return CUDA_SUCCESS;
    });
}

CUresult memset_async(Stream* s, CUdeviceptr dst, unsigned char v, size_t n) {
    CUresult rc = check_device(dst, n, "cuMemsetD8");
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return submit(s, [=] {
        std::memset(reinterpret_cast<void*>(dst), v, n);
        return CUDA_SUCCESS;
    });
}

CUresult free_async(CUdeviceptr p, Stream* s) {
    auto it = g_allocs.find(p);
    if (it == g_allocs.end()) {
        note(format("cuMemFreeAsync(0x%llx): not a live device allocation (CUDA_ERROR_INVALID_VALUE)", p));
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (s->cap) {
        if (s->cap->invalid) {
            return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        }
        GraphData* g = s->cap->graph.get();
        if (it->second.graph != g ||
            std::find(g->owned.begin(), g->owned.end(), p) != g->owned.end()) {
            // cuMemFreeAsync: "During stream capture, this function results in the creation of a
            // free node and must therefore be passed the address of a graph allocation."
            note(format("cuMemFreeAsync(0x%llx) during a capture of memory not allocated in that capture (a %zu-byte "
                        "allocation made before it): a graph can only free its own allocations "
                        "(CUDA_ERROR_INVALID_VALUE); the capture is invalidated",
                        p, it->second.bytes));
            s->cap->invalid = true;
            return CUDA_ERROR_INVALID_VALUE;
        }
        g->owned.push_back(p);
        return CUDA_SUCCESS;
    }
    Alloc a = it->second;
    g_allocs.erase(it);
    release(a);
    return CUDA_SUCCESS;
}

CUresult alloc_async(CUdeviceptr* out, size_t bytes, Stream* s) {
    if (!out) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (s->cap && s->cap->invalid) {
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    CUresult rc = device_alloc(bytes, out);
    if (rc != CUDA_SUCCESS || !s->cap) {
        return rc;
    }
    // A graph allocation: its address is fixed for the graph; its contents are undefined at each
    // launch (refilled with 0xFF, so that reading it before writing shows).
    GraphData* g = s->cap->graph.get();
    g_allocs[*out].graph = g;
    g->allocs.push_back(*out);
    const CUdeviceptr p = *out;
    g->ops.push_back([p, bytes] {
        if (g_allocs.count(p)) {
            std::memset(reinterpret_cast<void*>(p), 0xff, bytes);
        }
        return CUDA_SUCCESS;
    });
    return CUDA_SUCCESS;
}

// Runs a graph's operations in order.
CUresult replay(Context* ctx, const std::shared_ptr<GraphData>& g) {
    // Allocations made by the capture and not freed in it were handed to the caller: the driver
    // refuses a second launch until they are freed, and allocates them again then (which the
    // emulation, with addresses fixed at capture, cannot do).
    if (g->launches > 0) {
        for (uintptr_t p : g->allocs) {
            if (std::find(g->owned.begin(), g->owned.end(), p) != g->owned.end()) {
                continue;
            }
            note(format("cuGraphLaunch: the graph allocated 0x%lx and did not free it; relaunching it is %s", p,
                        g_allocs.count(p) ? "refused until that memory is freed (CUDA_ERROR_INVALID_VALUE)"
                                          : "not supported by the emulation (CUDA_ERROR_NOT_SUPPORTED)"));
            return g_allocs.count(p) ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_NOT_SUPPORTED;
        }
    }
    g->launches++;
    for (Op& op : g->ops) {
        CUresult rc = op();
        if (rc != CUDA_SUCCESS) {
            return rc;
        }
        if (ctx->sticky) {
            return ctx->sticky;
        }
    }
    return CUDA_SUCCESS;
}

// Every context/stream/event/module call takes the global lock first.
#define LOCK Lock lock_(g_mu)

// Destroys the handle h of a kind whose live handles are `live`: CUDA_ERROR_INVALID_HANDLE for one
// that is not (or no longer) live.
template <typename T> CUresult destroy_handle(std::set<T*>& live, void* h) {
    T* p = static_cast<T*>(h);
    if (!live.erase(p)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    delete p;
    return CUDA_SUCCESS;
}

} // namespace

// ==== the driver API ================================================================================
API CUresult cuGetErrorString(CUresult e, const char** s) {
    for (const ErrorText& t : ERRORS) {
        if (t.code == e) {
            *s = t.text;
            return CUDA_SUCCESS;
        }
    }
    *s = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuGetErrorName(CUresult e, const char** s) {
    for (const ErrorText& t : ERRORS) {
        if (t.code == e) {
            *s = t.name;
            return CUDA_SUCCESS;
        }
    }
    *s = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuInit(unsigned flags) {
    LOCK;
    if (flags != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    g_initialised = true;
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int* v) {
    if (!v) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *v = 13000;
    return CUDA_SUCCESS;
}

// ---- device --------------------------------------------------------------------------------------
API CUresult cuDeviceGetCount(int* n) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    *n = 1;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (ordinal != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *d = 0;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if (!name || len <= 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::snprintf(name, (size_t)len, "%s", "Emulated CUDA device (host)");
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    const unsigned char u[16] = {'f', 'a', 'k', 'e', 'c', 'u', 'd', 'a', 0, 0, 0, 0, 0, 0, 0, 1};
    std::memcpy(uuid, u, 16);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) {
    return cuDeviceGetUuid(uuid, d);
}

API CUresult cuDeviceGetAttribute(int* v, int attrib, CUdevice d) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if (!v) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *v = device_attribute(attrib);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *bytes = capacity();
    return CUDA_SUCCESS;
}

// ---- contexts --------------------------------------------------------------------------------------
API CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if (g_primary.refs++ == 0) {
        // a fresh primary context: a sticky error dies with the one before
        g_primary.sticky = 0;
        g_primary.primary = true;
    }
    *ctx = &g_primary;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    LOCK;
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if (g_primary.refs <= 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    g_primary.refs--;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxReset_v2(CUdevice d) {
    LOCK;
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    g_primary.sticky = 0;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSetCurrent(void* ctx) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    t_current = static_cast<Context*>(ctx);
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetCurrent(void** ctx) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    *ctx = t_current;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetDevice(CUdevice* d) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    *d = 0;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSynchronize() {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    // Synchronizing a context with a stream in capture is invalid in every mode (CUDA
    // programming guide, "Prohibited and Unhandled Operations").
    bool capturing = false;
    for (Stream* s : g_streams) {
        if (s->ctx == ctx && s->cap) {
            s->cap->invalid = true;
            capturing = true;
        }
    }
    if (capturing) {
        note("cuCtxSynchronize while a stream of the context is being captured: not permitted; the capture is "
             "invalidated");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return CUDA_SUCCESS;
}

API CUresult cuCtxSetFlags(unsigned) {
    LOCK;
    Context* ctx;
    return current(&ctx);
}

API CUresult cuCtxGetLimit(size_t* v, int limit) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc == CUDA_SUCCESS) {
        *v = limit == 0 ? 1024 : 0; // CU_LIMIT_STACK_SIZE
    }
    return rc;
}

API CUresult cuCtxSetLimit(int, size_t) {
    LOCK;
    Context* ctx;
    return current(&ctx);
}

API CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc == CUDA_SUCCESS) {
        if (least) {
            *least = 0;
        }
        if (greatest) {
            *greatest = -5;
        }
    }
    return rc;
}

// ---- memory --------------------------------------------------------------------------------------
API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    *free_bytes = capacity() - g_used;
    *total = capacity();
    return CUDA_SUCCESS;
}

API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if ((rc = unsafe_call("cuMemAlloc")) != CUDA_SUCCESS) {
        return rc;
    }
    if (bytes == 0 || !p) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    return device_alloc(bytes, p);
}

API CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if ((rc = unsafe_call("cuMemFree")) != CUDA_SUCCESS) {
        return rc;
    }
    if (p == 0) {
        return CUDA_SUCCESS;
    }
    Stream* s;
    if ((rc = stream_of(nullptr, &s)) != CUDA_SUCCESS) {
        return rc;
    }
    return free_async(p, s);
}

API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* stream) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return alloc_async(p, bytes, s);
}

API CUresult cuMemFreeAsync(CUdeviceptr p, void* stream) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return free_async(p, s);
}

// cuDeviceGetDefaultMemPool and cuMemPoolSetAttribute: the device's one pool, whose release
// threshold (CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, the only attribute set here) is kept and read
// back; it changes nothing, as freed memory is not held for reuse here.
static char g_default_pool;
static uint64_t g_release_threshold = 0;

API CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice d) {
    LOCK;
    if (!g_initialised) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (d != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if (!pool) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pool = &g_default_pool;
    return CUDA_SUCCESS;
}

API CUresult cuMemPoolSetAttribute(void* pool, int attr, void* value) {
    LOCK;
    if (pool != &g_default_pool || !value) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (attr != 4) { // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    g_release_threshold = *static_cast<const uint64_t*>(value);
    return CUDA_SUCCESS;
}

API CUresult cuMemPoolGetAttribute(void* pool, int attr, void* value) {
    LOCK;
    if (pool != &g_default_pool || !value) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (attr != 4) {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    *static_cast<uint64_t*>(value) = g_release_threshold;
    return CUDA_SUCCESS;
}

API CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if ((rc = unsafe_call("cuMemHostAlloc")) != CUDA_SUCCESS) {
        return rc;
    }
    void* m = nullptr;
    if (posix_memalign(&m, PAGE, bytes ? bytes : 1) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    g_pinned.insert(m);
    *p = m;
    return CUDA_SUCCESS;
}

API CUresult cuMemAllocHost_v2(void** p, size_t bytes) {
    return cuMemHostAlloc(p, bytes, 0);
}

API CUresult cuMemFreeHost(void* p) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if ((rc = unsafe_call("cuMemFreeHost")) != CUDA_SUCCESS) {
        return rc;
    }
    if (!g_pinned.erase(p)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::free(p);
    return CUDA_SUCCESS;
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* stream) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return copy_async(s, reinterpret_cast<void*>(dst), src, n, 0, "cuMemcpyHtoDAsync");
}

API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* stream) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return copy_async(s, dst, reinterpret_cast<const void*>(src), n, 1, "cuMemcpyDtoHAsync");
}

API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* stream) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return copy_async(s, reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n, 2,
                      "cuMemcpyDtoDAsync");
}

// The synchronous copies and memset: the legacy stream, and potentially unsafe during a capture.
API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCK;
    CUresult rc = unsafe_call("cuMemcpyHtoD");
    return rc != CUDA_SUCCESS ? rc : cuMemcpyHtoDAsync_v2(dst, src, n, nullptr);
}

API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCK;
    CUresult rc = unsafe_call("cuMemcpyDtoH");
    return rc != CUDA_SUCCESS ? rc : cuMemcpyDtoHAsync_v2(dst, src, n, nullptr);
}

API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    LOCK;
    CUresult rc = unsafe_call("cuMemcpyDtoD");
    return rc != CUDA_SUCCESS ? rc : cuMemcpyDtoDAsync_v2(dst, src, n, nullptr);
}

API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* stream) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return memset_async(s, dst, v, n);
}

API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    LOCK;
    CUresult rc = unsafe_call("cuMemsetD8");
    return rc != CUDA_SUCCESS ? rc : cuMemsetD8Async(dst, v, n, nullptr);
}

// ---- streams ---------------------------------------------------------------------------------------
API CUresult cuStreamCreate(void** out, unsigned) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    Stream* s = new Stream{ctx, nullptr};
    g_streams.insert(s);
    *out = s;
    return CUDA_SUCCESS;
}

API CUresult cuStreamCreateWithPriority(void** out, unsigned flags, int) {
    return cuStreamCreate(out, flags);
}

API CUresult cuStreamDestroy_v2(void* h) {
    LOCK;
    return destroy_handle(g_streams, h);
}

// cuStreamSynchronize and cuStreamQuery: the work is done already (streams run synchronously);
// both are forbidden on, and during, a capture.
static CUresult stream_wait(void* h, const char* call) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(h, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if ((rc = not_on_capturing(s, call)) != CUDA_SUCCESS) {
        return rc;
    }
    return unsafe_call(call);
}

API CUresult cuStreamSynchronize(void* h) {
    return stream_wait(h, "cuStreamSynchronize");
}

API CUresult cuStreamQuery(void* h) {
    return stream_wait(h, "cuStreamQuery");
}

API CUresult cuStreamWaitEvent(void* h, void* ev, unsigned) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(h, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (!g_events.count(static_cast<Event*>(ev))) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (s->cap && s->cap->invalid) {
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    return CUDA_SUCCESS; // everything before the event has run
}

API CUresult cuLaunchHostFunc(void* h, void (*fn)(void*), void* user) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(h, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    return submit(s, [fn, user] {
        fn(user);
        return CUDA_SUCCESS;
    });
}

API CUresult cuStreamBeginCapture_v2(void* h, int mode) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(h, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (!g_streams.count(s)) {
        note("cuStreamBeginCapture on the legacy stream: not permitted");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (mode < 0 || mode > 2) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (s->cap) {
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    s->cap.reset(new Capture{std::make_shared<GraphData>(), mode, std::this_thread::get_id()});
    return CUDA_SUCCESS;
}

API CUresult cuStreamBeginCapture(void* h, int mode) {
    return cuStreamBeginCapture_v2(h, mode);
}

API CUresult cuStreamEndCapture(void* h, void** graph) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(h, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (!s->cap) {
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    if (s->cap->mode != 2 && s->cap->thread != std::this_thread::get_id()) {
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    }
    std::unique_ptr<Capture> cap = std::move(s->cap);
    *graph = nullptr;
    // FAKECUDA_INVALIDATE_CAPTURES=1: every capture fails here, as one would that did something a
    // capture forbids (the tests of the engine's fallback to eager launches)
    if (switched_on("FAKECUDA_INVALIDATE_CAPTURES")) {
        cap->invalid = true;
    }
    if (cap->invalid) {
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED; // the recorded graph is dropped
    }
    Graph* g = new Graph{cap->graph};
    g_graphs.insert(g);
    *graph = g;
    return CUDA_SUCCESS;
}

API CUresult cuStreamIsCapturing(void* h, int* status) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(h, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    *status = !s->cap ? 0 : s->cap->invalid ? 2 : 1; // NONE, ACTIVE, INVALIDATED
    return CUDA_SUCCESS;
}

// ---- events ----------------------------------------------------------------------------------------
API CUresult cuEventCreate(void** out, unsigned flags) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    Event* e = new Event{flags};
    g_events.insert(e);
    *out = e;
    return CUDA_SUCCESS;
}

API CUresult cuEventDestroy_v2(void* h) {
    LOCK;
    return destroy_handle(g_events, h);
}

API CUresult cuEventRecord(void* h, void* stream) {
    LOCK;
    Event* e = static_cast<Event*>(h);
    if (!g_events.count(e)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    e->captured = s->cap != nullptr;
    return submit(s, [e] {
        if (g_events.count(e)) {
            e->recorded = true;
            e->captured = false;
            e->ms = now_ms();
        }
        return CUDA_SUCCESS;
    });
}

API CUresult cuEventRecordWithFlags(void* h, void* stream, unsigned) {
    return cuEventRecord(h, stream);
}

static CUresult event_wait(void* h, const char* what) {
    Event* e = static_cast<Event*>(h);
    if (!g_events.count(e)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (t_current && t_current->sticky) {
        return t_current->sticky;
    }
    if (e->captured) {
        note(format("%s of an event recorded in a capture: not permitted (CUDA_ERROR_CAPTURED_EVENT)", what));
        return CUDA_ERROR_CAPTURED_EVENT;
    }
    return unsafe_call(what);
}

API CUresult cuEventQuery(void* h) {
    LOCK;
    return event_wait(h, "cuEventQuery");
}

API CUresult cuEventSynchronize(void* h) {
    LOCK;
    return event_wait(h, "cuEventSynchronize");
}

API CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    LOCK;
    Event* a = static_cast<Event*>(start);
    Event* b = static_cast<Event*>(end);
    if (!g_events.count(a) || !g_events.count(b)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (t_current && t_current->sticky) {
        return t_current->sticky;
    }
    // CU_EVENT_DISABLE_TIMING (2), or not recorded yet: CUDA_ERROR_INVALID_HANDLE, as the driver.
    if ((a->flags & 2) || (b->flags & 2) || !a->recorded || !b->recorded) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    *ms = (float)(b->ms - a->ms);
    return CUDA_SUCCESS;
}

API CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    return cuEventElapsedTime_v2(ms, start, end);
}

// ---- modules and launches ------------------------------------------------------------------------
API CUresult cuModuleLoadData(void** out, const void* image) {
    LOCK;
    Context* ctx;
    CUresult rc = current(&ctx);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    std::vector<KernelLib*>* libs = kernel_libs();
    if (!libs) {
        return CUDA_ERROR_NOT_FOUND;
    }
    const std::string ptx = static_cast<const char*>(image);
    auto m = std::make_unique<Module>();
    size_t pos = 0;
    while ((pos = ptx.find(".entry", pos)) != std::string::npos) {
        pos += 6;
        if (pos >= ptx.size() || !(ptx[pos] == ' ' || ptx[pos] == '\t')) {
            continue;
        }
        while (pos < ptx.size() && (ptx[pos] == ' ' || ptx[pos] == '\t')) {
            pos++;
        }
        size_t end = pos;
        while (end < ptx.size() && (std::isalnum((unsigned char)ptx[end]) || ptx[end] == '_' || ptx[end] == '$')) {
            end++;
        }
        const std::string name = ptx.substr(pos, end - pos);
        if (name.empty()) {
            continue;
        }
        std::unique_ptr<Function> f;
        for (KernelLib* lib : *libs) {
            int count, max_threads;
            const size_t* sizes;
            if (lib->info(name.c_str(), &count, &sizes, &max_threads) == 0) {
                f.reset(new Function{name, lib, count, sizes, max_threads});
                break;
            }
        }
        if (!f) {
            note(format("cuModuleLoadData: the PTX entry %s has no emulated kernel in FAKECUDA_KERNEL_LIBS "
                        "(CUDA_ERROR_NOT_FOUND)",
                        name.c_str()));
            return CUDA_ERROR_NOT_FOUND;
        }
        m->functions[name] = std::move(f);
    }
    if (m->functions.empty()) {
        note("cuModuleLoadData: no .entry in the image (only PTX text is understood)");
        return CUDA_ERROR_INVALID_PTX;
    }
    Module* raw = m.release();
    g_modules.insert(raw);
    *out = raw;
    return CUDA_SUCCESS;
}

API CUresult cuModuleLoad(void** out, const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) {
        return CUDA_ERROR_FILE_NOT_FOUND;
    }
    std::string text;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
        text.append(buf, n);
    }
    std::fclose(f);
    return cuModuleLoadData(out, text.c_str());
}

API CUresult cuModuleUnload(void* h) {
    LOCK;
    Module* m = static_cast<Module*>(h);
    if (!g_modules.erase(m)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    // The functions stay valid for graphs that recorded them (a leak, as the emulation's modules
    // are few and live as long as the process).
    for (auto& kv : m->functions) {
        kv.second.release();
    }
    delete m;
    return CUDA_SUCCESS;
}

API CUresult cuModuleGetFunction(void** out, void* h, const char* name) {
    LOCK;
    Module* m = static_cast<Module*>(h);
    if (!g_modules.count(m)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    auto it = m->functions.find(name);
    if (it == m->functions.end()) {
        return CUDA_ERROR_NOT_FOUND;
    }
    *out = it->second.get();
    return CUDA_SUCCESS;
}

API CUresult cuModuleGetGlobal_v2(CUdeviceptr*, size_t*, void*, const char*) {
    return CUDA_ERROR_NOT_FOUND; // the kernels have no __device__ globals the engine reads
}

API CUresult cuFuncGetAttribute(int* v, int attrib, void* h) {
    LOCK;
    const Function* f = static_cast<const Function*>(h);
    switch (attrib) {
    case 0: *v = f->max_threads > 0 ? f->max_threads : 1024; break; // MAX_THREADS_PER_BLOCK
    case 4: *v = 32; break;                                         // NUM_REGS
    case 5:                                                         // PTX_VERSION
    case 6: *v = 90; break;                                         // BINARY_VERSION
    case 8: *v = f->max_dynamic_smem; break;                        // MAX_DYNAMIC_SHARED_SIZE_BYTES
    case 9: *v = -1; break;                                         // PREFERRED_SHARED_MEMORY_CARVEOUT
    default: *v = 0;
    }
    return CUDA_SUCCESS;
}

API CUresult cuFuncSetAttribute(void* h, int attrib, int value) {
    LOCK;
    Function* f = static_cast<Function*>(h);
    if (attrib == 8) { // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value > MAX_SHARED_OPTIN) {
            note(format("cuFuncSetAttribute(%s, MAX_DYNAMIC_SHARED_SIZE_BYTES, %d): more than the device's %d "
                        "(CUDA_ERROR_INVALID_VALUE)",
                        f->name.c_str(), value, MAX_SHARED_OPTIN));
            return CUDA_ERROR_INVALID_VALUE;
        }
        f->max_dynamic_smem = value;
        return CUDA_SUCCESS;
    }
    if (attrib == 9) { // PREFERRED_SHARED_MEMORY_CARVEOUT: a hint
        return CUDA_SUCCESS;
    }
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuFuncSetCacheConfig(void*, int) {
    return CUDA_SUCCESS;
}

API CUresult cuLaunchKernel(void* h, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                            unsigned smem, void* stream, void** params, void** extra) {
    LOCK;
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    const Function* f = static_cast<const Function*>(h);
    if (!f) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (extra) {
        note("cuLaunchKernel: the `extra` argument convention is not emulated");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (f->param_count > 0 && !params) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const unsigned grid[3] = {gx, gy, gz};
    const unsigned block[3] = {bx, by, bz};
    if ((rc = check_geometry(f, grid, block, smem)) != CUDA_SUCCESS) {
        return rc;
    }
    Context* ctx = s->ctx;
    if (!s->cap) {
        return run_kernel(ctx, f, grid, block, smem, params);
    }
    // FAKECUDA_FAIL_CAPTURED_LAUNCHES=1: every launch during a capture is refused, as the driver
    // refuses one that asks for more than the device has, and the capture stays valid (the tests
    // of the engine's fallback to eager launches when its own work fails during a capture)
    if (switched_on("FAKECUDA_FAIL_CAPTURED_LAUNCHES")) {
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    // Recorded: the arguments' values now, as the driver copies them when the launch is captured.
    auto storage = std::make_shared<std::vector<std::vector<max_align_t>>>();
    for (int i = 0; i < f->param_count; i++) {
        std::vector<max_align_t> v((f->param_sizes[i] + sizeof(max_align_t) - 1) / sizeof(max_align_t) + 1);
        std::memcpy(v.data(), params[i], f->param_sizes[i]);
        storage->push_back(std::move(v));
    }
    std::array<unsigned, 3> g3 = {gx, gy, gz}, b3 = {bx, by, bz};
    return submit(s, [ctx, f, g3, b3, smem, storage] {
        std::vector<void*> ptrs;
        for (auto& v : *storage) {
            ptrs.push_back(v.data());
        }
        return run_kernel(ctx, f, g3.data(), b3.data(), smem, ptrs.data());
    });
}

// ---- graphs --------------------------------------------------------------------------------------
API CUresult cuGraphInstantiateWithFlags(void** out, void* h, unsigned long long flags) {
    LOCK;
    Graph* g = static_cast<Graph*>(h);
    if (!g_graphs.count(g)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    // AUTO_FREE_ON_LAUNCH (1), UPLOAD (2), DEVICE_LAUNCH (4), USE_NODE_PRIORITY (8); device launch
    // is not combinable with auto free (cuGraphInstantiate's documentation).
    if ((flags & ~15ull) || ((flags & 4) && (flags & 1))) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    GraphExec* e = new GraphExec{g->data};
    g_execs.insert(e);
    *out = e;
    return CUDA_SUCCESS;
}

API CUresult cuGraphInstantiate(void** out, void* h, unsigned long long flags) {
    return cuGraphInstantiateWithFlags(out, h, flags);
}

API CUresult cuGraphLaunch(void* h, void* stream) {
    LOCK;
    GraphExec* e = static_cast<GraphExec*>(h);
    if (!g_execs.count(e)) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    std::shared_ptr<GraphData> g = e->data;
    Context* ctx = s->ctx;
    return submit(s, [ctx, g] { return replay(ctx, g); });
}

API CUresult cuGraphUpload(void* h, void* stream) {
    LOCK;
    if (!g_execs.count(static_cast<GraphExec*>(h))) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    Stream* s;
    return stream_of(stream, &s);
}

API CUresult cuGraphExecDestroy(void* h) {
    LOCK;
    return destroy_handle(g_execs, h);
}

API CUresult cuGraphDestroy(void* h) {
    LOCK;
    return destroy_handle(g_graphs, h);
}

API CUresult cuProfilerStart() {
    return CUDA_SUCCESS;
}

API CUresult cuProfilerStop() {
    return CUDA_SUCCESS;
}

// ==== the interface of the fake cuBLAS libraries (fake_cuda.h) =====================================
API int fakecuda_enqueue(void* stream, void (*run)(void* data), void* data, void (*drop)(void* data)) {
    LOCK;
    auto dropper = [drop](void* d) {
        if (drop) {
            drop(d);
        }
    };
    Stream* s;
    CUresult rc = stream_of(stream, &s);
    if (rc == CUDA_SUCCESS && s->cap && s->cap->invalid) {
        rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    if (rc != CUDA_SUCCESS) {
        dropper(data);
        return rc;
    }
    Context* ctx = s->ctx;
    auto op = [ctx, run, data] {
        if (ctx->sticky) {
            return ctx->sticky;
        }
        run(data);
        std::string bad = check_canaries();
        if (!bad.empty()) {
            return fail_sticky(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, "after a cuBLAS call: " + bad);
        }
        return (CUresult)CUDA_SUCCESS;
    };
    if (!s->cap) {
        rc = op();
        dropper(data);
        return rc;
    }
    return submit(s, op, std::shared_ptr<void>(data, dropper));
}

API int fakecuda_check_range(unsigned long long ptr, size_t bytes) {
    LOCK;
    return find_range(ptr, bytes) ? 0 : -1;
}
