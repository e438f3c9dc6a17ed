// The host emulation's runtime: runs a CUDA grid on the CPU, block after block, each CUDA thread
// of a block as a fiber (a stack of its own, switched by hand on x86-64, by ucontext elsewhere).
// A fiber runs until it waits (a barrier, a warp-wide exchange, an mma) or exits; the scheduler
// then resumes the next runnable one. A wait nobody can end (a lane that diverged or returned early
// before a shuffle, a barrier some threads never reach) is a deadlock: the launch fails with a
// description of where every warp is, instead of hanging.
//
// Also here: guarded buffers (data placed against a PROT_NONE page, canary bytes around it) and a
// SIGSEGV/SIGBUS handler that turns a fault inside a launch into an error naming the thread, the
// block and the buffer the address belongs to; likewise SIGILL, the trap of an index past a local
// array's bound (the kernels are built with -fsanitize=bounds where the compiler has it).
//
// The C interface (emu_launch, emu_alloc, ...) is what the Rust harness calls through libloading,
// and emu_launch_opt / emu_kernel_info / emu_set_address_describer what the emulated CUDA driver
// (fake_cuda/cuda.cpp) calls. One launch at a time per library (a mutex): the `static` __shared__
// arrays are per library.
#include <algorithm>
#include <csetjmp>
#include <csignal>
#include <ctime>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <pthread.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cuda_shim.h"
#include "emu_register.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

EmuThread* emu_current = nullptr;
uint3 emu_block_idx;
uint3 emu_block_dim;
uint3 emu_grid_dim;

// The bounds of the kernels' static __shared__ arrays (cuda_shim.h puts them in the section
// emu_shared): the linker defines them in a library that has any, and they are null in one that
// has none.
extern "C" char __start_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_emu_shared[] __attribute__((weak, visibility("hidden")));

namespace {

// ---- context switch ------------------------------------------------------------------------------
#if defined(__x86_64__)
extern "C" void emu_ctx_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers and the SSE/x87 control words on the current stack, stores the
// stack pointer in *save_sp, and resumes the context whose stack pointer is load_sp.
asm(R"(
    .text
    .p2align 4
    .globl emu_ctx_switch
    .hidden emu_ctx_switch
    .type emu_ctx_switch,@function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch,.-emu_ctx_switch
)");
#endif

const size_t PAGE = 4096;
const size_t STACK_BYTES = 256 * 1024;

enum State { RUNNABLE, AT_BARRIER, AT_WARP_OP, EXITED };
enum WarpOp {
    OP_NONE = -1,
    OP_SHFL_IDX = 0,
    OP_SHFL_XOR = 1,
    OP_SHFL_DOWN = 2,
    OP_SHFL_UP = 3,
    OP_MMA = 4,
    OP_LDMATRIX_X2 = 5,
    OP_LDMATRIX_X2_TRANS = 6,
    OP_LDMATRIX_X4 = 7,
    OP_LDMATRIX_X4_TRANS = 8,
};

const char* op_name(int op) {
    switch (op) {
    case OP_SHFL_IDX: return "__shfl_sync";
    case OP_SHFL_XOR: return "__shfl_xor_sync";
    case OP_SHFL_DOWN: return "__shfl_down_sync";
    case OP_SHFL_UP: return "__shfl_up_sync";
    case OP_MMA: return "mma.sync.m16n8k16";
    case OP_LDMATRIX_X2: return "ldmatrix.x2";
    case OP_LDMATRIX_X2_TRANS: return "ldmatrix.x2.trans";
    case OP_LDMATRIX_X4: return "ldmatrix.x4";
    case OP_LDMATRIX_X4_TRANS: return "ldmatrix.x4.trans";
    default: return "?";
    }
}

// A cp.async copy issued but not yet waited for (it lands at the wait that covers its group).
struct PendingCopy {
    void* dst;
    const void* src;
    int bytes;     // the copy's size
    int src_bytes; // how many of them come from src (the rest are zero)
    int group;     // the commit group it belongs to (the fiber's count of commits when issued)
    bool landed;   // made already (at issue)
};

struct Fiber {
    std::vector<PendingCopy> copies; // cp.async copies in flight, in issue order
    int commits = 0;                 // cp.async.commit_group calls so far
    EmuThread t;
    int warp = 0;
    int lane = 0;
    State state = RUNNABLE;
    char* stack = nullptr; // lowest address of the mapping (a guard page, then the stack)
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
};

struct Warp {
    int op = OP_NONE;
    unsigned mask = 0;
    int width = 32;
    unsigned arrived = 0;
    unsigned present = 0; // lanes that exist (blockDim need not be a multiple of 32)
    unsigned vals[32];
    int args[32];
    unsigned res[32];
    float* c[32];
    const unsigned* a[32];
    const unsigned* b[32];
    const void* row[32]; // ldmatrix: each lane's row address
    unsigned* dst[32];   // and its destination registers
};

struct Alloc {
    char* base;       // the mapping, guard pages included
    size_t map_bytes; // its length
    char* data;       // what the caller gets
    size_t bytes;
};

struct Launch {
    const EmuKernelEntry* kernel = nullptr;
    void** args = nullptr;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<int> order; // the order in which runnable threads are resumed
    unsigned schedule = 0;  // the launch's schedule (its parity also decides when cp.async lands)
    int live = 0;
    int at_barrier = 0;
    const char* barrier_file = nullptr; // the barrier the waiting threads are at
    int barrier_line = 0;
    bool failed = false;
    std::string error;
    Fiber* cur = nullptr;
#if defined(__x86_64__)
    void* sched_sp = nullptr;
#else
    ucontext_t sched_ctx;
#endif
    char* smem = nullptr;
    size_t smem_bytes = 0;
};

std::mutex g_launch_mutex;
Launch g;
std::mutex g_alloc_mutex;
std::vector<Alloc> g_allocs;
std::vector<char*> g_stacks; // reused between launches
thread_local std::string t_error;
// The vector (packed) accesses of this thread's last launch: emu_check_aligned's calls.
thread_local unsigned long long t_vector_accesses = 0;

// fault handling
volatile sig_atomic_t g_in_launch = 0;
pthread_t g_owner;
sigjmp_buf g_fault_env;
void* volatile g_fault_addr = nullptr;
volatile int g_fault_sig = 0;
struct sigaction g_prev_segv, g_prev_bus, g_prev_ill;
std::once_flag g_handler_once;
// The watchdog's signal: a launch still running after launch_limit_s() seconds of its thread's CPU
// time fails (an endless loop would otherwise hang the test, as it hangs the GPU).
constexpr int WATCHDOG_SIGNAL = SIGXCPU;

std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string where(const Fiber* f) {
    return format("thread (%u,%u,%u) of block (%u,%u,%u)", f->t.tid.x, f->t.tid.y, f->t.tid.z, emu_block_idx.x,
                  emu_block_idx.y, emu_block_idx.z);
}

// ---- fibers --------------------------------------------------------------------------------------
void to_scheduler() {
    Fiber* f = g.cur;
#if defined(__x86_64__)
    emu_ctx_switch(&f->sp, g.sched_sp);
#else
    swapcontext(&f->ctx, &g.sched_ctx);
#endif
}

[[noreturn]] void fail(const std::string& msg) {
    if (!g.failed) {
        g.failed = true;
        g.error = msg;
    }
    for (;;) {
        to_scheduler(); // never resumed
    }
}

void on_exit_thread();

extern "C" void emu_fiber_main() {
    g.kernel->invoke(g.args);
    g.cur->state = EXITED;
    on_exit_thread();
    to_scheduler();
    __builtin_trap();
}

void start_fiber(Fiber& f) {
    char* top = f.stack + PAGE + STACK_BYTES;
#if defined(__x86_64__)
    // [sp] mxcsr, x87 cw; then r15 r14 r13 r12 rbx rbp; then the "return address" emu_fiber_main,
    // entered with rsp = top - 8 (16-byte aligned before a call, as the ABI wants).
    uint64_t* s = reinterpret_cast<uint64_t*>(top);
    s[-1] = 0;
    s[-2] = reinterpret_cast<uint64_t>(&emu_fiber_main);
    for (int i = 3; i <= 8; i++) {
        s[-i] = 0;
    }
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    char* sp = reinterpret_cast<char*>(&s[-9]);
    std::memcpy(sp, &mxcsr, 4);
    std::memcpy(sp + 4, &fpcw, 2);
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack + PAGE;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, (void (*)())emu_fiber_main, 0);
#endif
}

void resume(Fiber& f) {
    g.cur = &f;
    emu_current = &f.t;
#if defined(__x86_64__)
    emu_ctx_switch(&g.sched_sp, f.sp);
#else
    swapcontext(&g.sched_ctx, &f.ctx);
#endif
}

void release_barrier() {
    for (Fiber& f : g.fibers) {
        if (f.state == AT_BARRIER) {
            f.state = RUNNABLE;
        }
    }
    g.at_barrier = 0;
}

void on_exit_thread() {
    if (!g.cur->copies.empty()) {
        fail(format("%s: the thread exits with %zu cp.async copies it never waited for", where(g.cur).c_str(),
                    g.cur->copies.size()));
    }
    g.live--;
    if (g.at_barrier > 0 && g.at_barrier == g.live) {
        release_barrier();
    }
}

std::string lanes_text(unsigned m) {
    std::string s;
    int i = 0;
    while (i < 32) {
        if (!(m >> i & 1)) {
            i++;
            continue;
        }
        int j = i;
        while (j + 1 < 32 && (m >> (j + 1) & 1)) {
            j++;
        }
        if (!s.empty()) {
            s += ",";
        }
        s += i == j ? format("%d", i) : format("%d-%d", i, j);
        i = j + 1;
    }
    return s.empty() ? "none" : s;
}

// Where every thread of the block waits, warp by warp (for deadlock reports).
std::string block_state() {
    std::string s;
    for (size_t w = 0; w < g.warps.size(); w++) {
        unsigned barrier = 0, op = 0, exited = 0, runnable = 0;
        for (const Fiber& f : g.fibers) {
            if (f.warp != (int)w) {
                continue;
            }
            const unsigned bit = 1u << f.lane;
            switch (f.state) {
            case AT_BARRIER: barrier |= bit; break;
            case AT_WARP_OP: op |= bit; break;
            case EXITED: exited |= bit; break;
            case RUNNABLE: runnable |= bit; break;
            }
        }
        s += format("\n  warp %zu:", w);
        if (op) {
            s += format(" lanes %s wait at %s (mask 0x%08x);", lanes_text(op).c_str(), op_name(g.warps[w].op),
                        g.warps[w].mask);
        }
        if (barrier) {
            s += format(" lanes %s wait at __syncthreads (%s:%d);", lanes_text(barrier).c_str(), g.barrier_file,
                        g.barrier_line);
        }
        if (exited) {
            s += format(" lanes %s exited;", lanes_text(exited).c_str());
        }
        if (runnable) {
            s += format(" lanes %s runnable;", lanes_text(runnable).c_str());
        }
    }
    return s;
}

// Runs one block to completion; false (g.error set) on a failure.
// Runs the block's threads until all exit. Each pass resumes every runnable thread in the
// schedule's order, each until it waits (at a barrier or a warp-wide operation) or exits. Under an
// odd schedule a resumed thread's warp then runs on until every lane of it waits at a barrier or
// has exited: one warp goes through a whole stretch between two barriers before the next starts,
// the most skew between warps a GPU could show (a shared buffer refilled without a barrier after
// its last readers shows up this way); under an even one the warps advance together, one
// warp-wide operation a pass.
bool run_block() {
    const bool greedy = g.schedule & 1;
    for (;;) {
        bool progressed = false;
        for (int i : g.order) {
            Fiber& f = g.fibers[i];
            if (f.state != RUNNABLE) {
                continue;
            }
            progressed = true;
            resume(f);
            if (g.failed) {
                return false;
            }
            for (bool more = greedy; more;) {
                more = false;
                for (int k : g.order) {
                    Fiber& m = g.fibers[k];
                    if (m.warp == f.warp && m.state == RUNNABLE) {
                        more = true;
                        resume(m);
                        if (g.failed) {
                            return false;
                        }
                    }
                }
            }
        }
        if (g.live == 0) {
            return true;
        }
        if (!progressed) {
            g.failed = true;
            g.error = format("deadlock in block (%u,%u,%u): no thread can continue%s", emu_block_idx.x,
                             emu_block_idx.y, emu_block_idx.z, block_state().c_str());
            return false;
        }
    }
}

// ---- warp-wide operations ------------------------------------------------------------------------
// Joins this lane to its warp's pending operation; true when this lane completed it (the caller
// then computes the results), false when it waited and was woken after another lane completed it.
bool warp_arrive(int op, unsigned mask, int width) {
    Fiber* f = g.cur;
    Warp& w = g.warps[f->warp];
    if (!(mask >> f->lane & 1)) {
        fail(format("%s: %s called with mask 0x%08x, which excludes the calling lane %d", where(f).c_str(),
                    op_name(op), mask, f->lane));
    }
    if ((mask & w.present) != mask) {
        fail(format("%s: %s with mask 0x%08x names lanes %s, which do not exist (blockDim.x = %u)",
                    where(f).c_str(), op_name(op), mask, lanes_text(mask & ~w.present).c_str(), emu_block_dim.x));
    }
    if (w.arrived == 0) {
        w.op = op;
        w.mask = mask;
        w.width = width;
    } else if (w.op != op || w.mask != mask || w.width != width) {
        fail(format("%s: divergent warp: lane %d calls %s (mask 0x%08x, width %d) while lanes %s wait at %s "
                    "(mask 0x%08x, width %d)",
                    where(f).c_str(), f->lane, op_name(op), mask, width, lanes_text(w.arrived).c_str(),
                    op_name(w.op), w.mask, w.width));
    }
    w.arrived |= 1u << f->lane;
    if (w.arrived == w.mask) {
        return true;
    }
    f->state = AT_WARP_OP;
    to_scheduler();
    return false;
}

// Wakes the lanes that waited for the operation this lane just completed.
void warp_release() {
    Warp& w = g.warps[g.cur->warp];
    for (Fiber& f : g.fibers) {
        if (f.warp == g.cur->warp && (w.mask >> f.lane & 1) && f.state == AT_WARP_OP) {
            f.state = RUNNABLE;
        }
    }
    w.arrived = 0;
}

void complete_shfl(Warp& w) {
    for (int l = 0; l < 32; l++) {
        if (!(w.mask >> l & 1)) {
            continue;
        }
        const int seg = l & ~(w.width - 1);
        const int arg = w.args[l];
        int src = l;
        switch (w.op) {
        case OP_SHFL_IDX: src = seg + (arg & (w.width - 1)); break;
        case OP_SHFL_XOR: src = l ^ arg; break;
        case OP_SHFL_DOWN: src = l + arg; break;
        case OP_SHFL_UP: src = l - arg; break;
        }
        if (src < seg || src >= seg + w.width) {
            src = l; // outside the lane's segment: its own value, as CUDA
        }
        if (!(w.mask >> src & 1)) {
            fail(format("%s: lane %d reads lane %d, which is not in the mask 0x%08x (undefined on the GPU)",
                        op_name(w.op), l, src, w.mask));
        }
        w.res[l] = w.vals[src];
    }
}

// D = A B + C for mma.m16n8k16.row.col.f32.bf16.bf16.f32, from every lane's fragments laid out as
// the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type") specifies:
// groupID = lane >> 2, threadID_in_group = lane % 4, and within each .b32 register the elements
// are listed low to high (a0 in bits 0-15 of register 0, a1 in bits 16-31, ...):
//   A (16x16): a_i, i = 0..7, row = groupID (+8 for i = 2, 3, 6, 7),
//              col = 2 threadID_in_group + (i & 1) (+8 for i >= 4);
//   B (16x8):  b_i, i = 0..3, row = 2 threadID_in_group + (i & 1) (+8 for i >= 2), col = groupID;
//   C, D (16x8, f32): c_i, row = groupID (+8 for i >= 2), col = 2 threadID_in_group + (i & 1).
// The bf16 products are exact in fp32; the 16 products of each element are added to the
// accumulator in k order in fp32 (the hardware's internal order and rounding are not specified).
void complete_mma(Warp& w) {
    float A[16][16], B[16][8], C[16][8];
    int seen_a[16][16] = {}, seen_b[16][8] = {}, seen_c[16][8] = {};
    for (int lane = 0; lane < 32; lane++) {
        const int gid = lane >> 2, tig = lane & 3;
        for (int i = 0; i < 8; i++) {
            const unsigned bits = (w.a[lane][i / 2] >> (16 * (i & 1))) & 0xffffu;
            const int row = gid + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
            const int col = 2 * tig + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = __bfloat162float(__ushort_as_bfloat16((unsigned short)bits));
            seen_a[row][col]++;
        }
        for (int i = 0; i < 4; i++) {
            const unsigned bits = (w.b[lane][i / 2] >> (16 * (i & 1))) & 0xffffu;
            const int row = 2 * tig + (i & 1) + (i >= 2 ? 8 : 0);
            B[row][gid] = __bfloat162float(__ushort_as_bfloat16((unsigned short)bits));
            seen_b[row][gid]++;
        }
        for (int i = 0; i < 4; i++) {
            const int row = gid + (i >= 2 ? 8 : 0);
            const int col = 2 * tig + (i & 1);
            C[row][col] = w.c[lane][i];
            seen_c[row][col]++;
        }
    }
    for (int r = 0; r < 16; r++) {
        for (int k = 0; k < 16; k++) {
            if (seen_a[r][k] != 1 || (k < 8 && seen_c[r][k] != 1) || (r < 16 && k < 8 && seen_b[r][k] != 1)) {
                fail("mma emulation: the fragment layout does not cover each element once (internal error)");
            }
        }
    }
    for (int lane = 0; lane < 32; lane++) {
        const int gid = lane >> 2, tig = lane & 3;
        for (int i = 0; i < 4; i++) {
            const int row = gid + (i >= 2 ? 8 : 0);
            const int col = 2 * tig + (i & 1);
            float acc = C[row][col];
            for (int k = 0; k < 16; k++) {
                acc += A[row][k] * B[k][col];
            }
            w.c[lane][i] = acc;
        }
    }
}

// ---- faults --------------------------------------------------------------------------------------
void chain(int sig, siginfo_t* si, void* uc) {
    struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : sig == SIGBUS ? g_prev_bus : g_prev_ill;
    if (prev.sa_flags & SA_SIGINFO) {
        prev.sa_sigaction(sig, si, uc);
    } else if (prev.sa_handler == SIG_DFL || prev.sa_handler == SIG_IGN) {
        signal(sig, SIG_DFL); // the fault repeats and kills the process, as without us
    } else {
        prev.sa_handler(sig);
    }
}

void on_fault(int sig, siginfo_t* si, void* uc) {
    if (g_in_launch && pthread_equal(pthread_self(), g_owner)) {
        g_fault_addr = si->si_addr;
        g_fault_sig = sig;
        siglongjmp(g_fault_env, 1);
    }
    chain(sig, si, uc);
}

// The watchdog's expiry: leave the launch as a fault does (a late expiry outside it is ignored).
void on_watchdog(int sig, siginfo_t*, void*) {
    if (g_in_launch && pthread_equal(pthread_self(), g_owner)) {
        g_fault_addr = nullptr;
        g_fault_sig = sig;
        siglongjmp(g_fault_env, 1);
    }
}

void install_handlers() {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
    sigaction(SIGILL, &sa, &g_prev_ill);
    sa.sa_sigaction = on_watchdog;
    sigaction(WATCHDOG_SIGNAL, &sa, nullptr);
}

// The longest a launch may run, in seconds of CPU time: emu_set_launch_limit's, or
// EMU_LAUNCH_TIMEOUT_S, or 120 (the longest launch of the tests takes a few seconds).
double g_launch_limit_s = 0.0;
double launch_limit_s() {
    static const double from_env = [] {
        const char* e = std::getenv("EMU_LAUNCH_TIMEOUT_S");
        const double v = e ? std::atof(e) : 0.0;
        return v > 0.0 ? v : 120.0;
    }();
    return g_launch_limit_s > 0.0 ? g_launch_limit_s : from_env;
}

// A timer on the calling thread's CPU time that sends it WATCHDOG_SIGNAL after launch_limit_s();
// disarmed and deleted when it goes out of scope.
struct Watchdog {
    timer_t timer{};
    bool armed = false;
    Watchdog() {
        struct sigevent sev;
        std::memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = WATCHDOG_SIGNAL;
        sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &timer) != 0) {
            return; // no watchdog: an endless loop hangs, as it would without one
        }
        const double limit = launch_limit_s();
        struct itimerspec its;
        std::memset(&its, 0, sizeof its);
        its.it_value.tv_sec = (time_t)limit;
        its.it_value.tv_nsec = (long)((limit - (double)(time_t)limit) * 1e9);
        armed = timer_settime(timer, 0, &its, nullptr) == 0;
        if (!armed) {
            timer_delete(timer);
        }
    }
    ~Watchdog() {
        if (armed) {
            timer_delete(timer);
        }
    }
};

// A signal stack for this OS thread (a fault on a fiber's overflowing stack needs another).
void ensure_altstack() {
    static thread_local bool done = false;
    if (done) {
        return;
    }
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE) && cur.ss_size >= 65536) {
        done = true;
        return;
    }
    stack_t ss;
    ss.ss_size = 256 * 1024;
    ss.ss_sp = std::malloc(ss.ss_size); // kept for the thread's life
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
    done = true;
}

// Describes addresses outside this library's buffers (the emulated driver's device memory), or null.
void (*g_describe_extra)(const void* addr, char* buf, size_t len) = nullptr;

std::string describe_address(const void* p) {
    const char* a = static_cast<const char*>(p);
    for (const Alloc& al : g_allocs) {
        if (a >= al.base && a < al.base + al.map_bytes) {
            if (a >= al.data + al.bytes) {
                return format("%td bytes past the end of a %zu-byte buffer", a - (al.data + al.bytes), al.bytes);
            }
            if (a < al.data) {
                return format("%td bytes before the start of a %zu-byte buffer", al.data - a, al.bytes);
            }
            return format("inside a %zu-byte buffer at offset %td", al.bytes, a - al.data);
        }
    }
    for (const Fiber& f : g.fibers) {
        if (a >= f.stack && a < f.stack + PAGE) {
            return format("the guard page of %s's stack (stack overflow)", where(&f).c_str());
        }
    }
    if (g_describe_extra) {
        char buf[256] = "";
        g_describe_extra(p, buf, sizeof buf);
        if (buf[0]) {
            return buf;
        }
    }
    return "not in any emulated buffer";
}

// ---- guarded memory ------------------------------------------------------------------------------
const unsigned char CANARY = 0xa5;

// `bytes` bytes whose start is `misalign` bytes past a 16-byte boundary and whose end is less than
// 16 bytes before a PROT_NONE page; the slack on both sides holds canary bytes.
char* guarded_alloc(size_t bytes, size_t misalign) {
    const size_t front = 64;
    const size_t data_pages = (bytes + misalign + front + 16 + PAGE - 1) / PAGE;
    const size_t map_bytes = (data_pages + 2) * PAGE;
    void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        return nullptr;
    }
    char* base = static_cast<char*>(m);
    mprotect(base, PAGE, PROT_NONE);
    mprotect(base + (data_pages + 1) * PAGE, PAGE, PROT_NONE);
    char* limit = base + (data_pages + 1) * PAGE;
    char* data = reinterpret_cast<char*>(((reinterpret_cast<uintptr_t>(limit) - bytes - misalign) & ~uintptr_t(15)) +
                                         misalign);
    std::memset(base + PAGE, CANARY, data - (base + PAGE));
    std::memset(data + bytes, CANARY, limit - (data + bytes));
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    g_allocs.push_back(Alloc{base, map_bytes, data, bytes});
    return data;
}

Alloc* find_alloc(const void* data) {
    for (Alloc& a : g_allocs) {
        if (a.data == data) {
            return &a;
        }
    }
    return nullptr;
}

char* stack_for(size_t i) {
    while (g_stacks.size() <= i) {
        void* m = mmap(nullptr, PAGE + STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m == MAP_FAILED) {
            return nullptr;
        }
        mprotect(m, PAGE, PROT_NONE);
        g_stacks.push_back(static_cast<char*>(m));
    }
    return g_stacks[i];
}

// A permutation of 0..n-1: ascending (schedule 0), descending (1), or shuffled by the seed.
std::vector<int> permutation(int n, unsigned schedule, unsigned salt) {
    std::vector<int> p(n);
    for (int i = 0; i < n; i++) {
        p[i] = i;
    }
    if (schedule == 1) {
        std::reverse(p.begin(), p.end());
    } else if (schedule >= 2) {
        unsigned s = schedule * 2654435761u + salt;
        for (int i = n - 1; i > 0; i--) {
            s = s * 1664525u + 1013904223u;
            std::swap(p[i], p[(s >> 8) % (unsigned)(i + 1)]);
        }
    }
    return p;
}

// 0 on success; 1 for a launch the GPU would refuse (nothing ran), 2 for a fault, 3 for another
// failure while running (deadlock, divergence); t_error says what.
int launch_impl(const char* name, const unsigned* grid, const unsigned* block, unsigned smem, unsigned smem_limit,
                void** args, unsigned schedule) {
    t_vector_accesses = 0;
    const EmuKernelEntry* k = nullptr;
    for (int i = 0; i < emu_kernel_count; i++) {
        if (std::strcmp(emu_kernels[i].name, name) == 0) {
            k = &emu_kernels[i];
        }
    }
    if (!k) {
        t_error = format("no kernel named %s in this library", name);
        return 1;
    }
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64) {
        t_error = format("%s: invalid block (%u,%u,%u)", name, block[0], block[1], block[2]);
        return 1;
    }
    if (k->max_threads > 0 && threads > (unsigned long long)k->max_threads) {
        t_error = format("%s: %llu threads per block exceed its __launch_bounds__(%d): the launch would fail on "
                         "the GPU",
                         name, threads, k->max_threads);
        return 1;
    }
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 0x7fffffffu || grid[1] > 65535 ||
        grid[2] > 65535) {
        t_error = format("%s: invalid grid (%u,%u,%u)", name, grid[0], grid[1], grid[2]);
        return 1;
    }
    if (smem > smem_limit) {
        t_error = smem_limit == 48 * 1024
                      ? format("%s: %u bytes of dynamic shared memory exceed 48 KiB without an opt-in", name, smem)
                      : format("%s: %u bytes of dynamic shared memory exceed the kernel's limit of %u "
                               "(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)",
                               name, smem, smem_limit);
        return 1;
    }
    g = Launch();
    g.kernel = k;
    g.args = args;
    emu_grid_dim = uint3{grid[0], grid[1], grid[2]};
    emu_block_dim = uint3{block[0], block[1], block[2]};
    const int n = (int)threads;
    g.fibers.resize(n);
    g.warps.resize((n + 31) / 32);
    for (int i = 0; i < n; i++) {
        Fiber& f = g.fibers[i];
        f.t.tid = uint3{i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
        f.warp = i / 32;
        f.lane = i % 32;
        f.stack = stack_for(i);
        if (!f.stack) {
            t_error = "could not map a fiber stack";
            return 1;
        }
        g.warps[f.warp].present |= 1u << f.lane;
    }
    g.order = permutation(n, schedule, 17);
    g.schedule = schedule;
    g.smem_bytes = smem;
    g.smem = guarded_alloc(smem, 0);
    const unsigned long long nblocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    // Blocks in the schedule's order too (they must not depend on each other).
    std::vector<int> border;
    const bool permute_blocks = nblocks <= (1u << 20);
    if (permute_blocks) {
        border = permutation((int)nblocks, schedule, 91);
    }
    ensure_altstack();
    std::call_once(g_handler_once, install_handlers);
    g_owner = pthread_self();
    const Watchdog watchdog;
    if (sigsetjmp(g_fault_env, 1) != 0) {
        g_in_launch = 0;
        if (g_fault_sig == WATCHDOG_SIGNAL) {
            t_error = format("%s: still running after %g s (EMU_LAUNCH_TIMEOUT_S) in %s: an endless loop?", name,
                             launch_limit_s(), g.cur ? where(g.cur).c_str() : "the scheduler");
            return 4;
        }
        if (g_fault_sig == SIGILL) {
            t_error = format("%s: SIGILL at %p (a trap: an index past a local array's bound, caught by "
                             "-fsanitize=bounds; or the runtime's own) in %s",
                             name, g_fault_addr, g.cur ? where(g.cur).c_str() : "the scheduler");
            return 2;
        }
        t_error = format("%s: %s at address %p (%s) in %s", name, g_fault_sig == SIGSEGV ? "SIGSEGV" : "SIGBUS",
                         g_fault_addr, describe_address(g_fault_addr).c_str(),
                         g.cur ? where(g.cur).c_str() : "the scheduler");
        return 2;
    }
    g_in_launch = 1;
    for (unsigned long long bi = 0; bi < nblocks; bi++) {
        const unsigned long long b = permute_blocks ? (unsigned long long)border[bi] : bi;
        emu_block_idx = uint3{(unsigned)(b % grid[0]), (unsigned)((b / grid[0]) % grid[1]),
                              (unsigned)(b / ((unsigned long long)grid[0] * grid[1]))};
        if (g.smem) {
            std::memset(g.smem, 0xff, smem); // uninitialised shared memory reads as NaN
        }
        if (__start_emu_shared != __stop_emu_shared) { // the kernels' static __shared__ arrays
            std::memset(__start_emu_shared, 0xff, (size_t)(__stop_emu_shared - __start_emu_shared));
        }
        for (Fiber& f : g.fibers) {
            f.state = RUNNABLE;
            f.copies.clear();
            f.commits = 0;
            start_fiber(f);
        }
        for (Warp& w : g.warps) {
            w.op = OP_NONE;
            w.arrived = 0;
        }
        g.live = n;
        g.at_barrier = 0;
        if (!run_block()) {
            g_in_launch = 0;
            t_error = format("%s: %s", name, g.error.c_str());
            return 3;
        }
    }
    g_in_launch = 0;
    return 0;
}

} // namespace

// ---- what the kernels call -----------------------------------------------------------------------
void emu_syncthreads(const char* file, int line) {
    Fiber* f = g.cur;
    Warp& w = g.warps[f->warp];
    if (w.arrived != 0) {
        fail(format("%s: divergent warp: __syncthreads while lanes %s of its warp wait at %s", where(f).c_str(),
                    lanes_text(w.arrived).c_str(), op_name(w.op)));
    }
    if (g.at_barrier == 0) {
        g.barrier_file = file;
        g.barrier_line = line;
    } else if (g.barrier_line != line || std::strcmp(g.barrier_file, file) != 0) {
        fail(format("%s: __syncthreads at %s:%d while %d threads of the block wait at the one at %s:%d (a "
                    "barrier in divergent code)",
                    where(f).c_str(), file, line, g.at_barrier, g.barrier_file, g.barrier_line));
    }
    g.at_barrier++;
    if (g.at_barrier == g.live) {
        release_barrier();
        return;
    }
    f->state = AT_BARRIER;
    to_scheduler();
}

unsigned int emu_shfl(unsigned int mask, unsigned int value, int kind, int arg, int width) {
    Fiber* f = g.cur;
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
        fail(format("%s: %s with width %d (must be a power of two <= 32)", where(f).c_str(), op_name(kind), width));
    }
    Warp& w = g.warps[f->warp];
    w.vals[f->lane] = value;
    w.args[f->lane] = arg;
    if (warp_arrive(kind, mask, width)) {
        complete_shfl(w);
        warp_release();
    }
    return w.res[f->lane];
}

void emu_mma_m16n8k16_row_col_f32_bf16_bf16_f32(float* c, const unsigned int* a, const unsigned int* b) {
    Fiber* f = g.cur;
    Warp& w = g.warps[f->warp];
    w.c[f->lane] = c;
    w.a[f->lane] = a;
    w.b[f->lane] = b;
    if (warp_arrive(OP_MMA, 0xffffffffu, 32)) {
        complete_mma(w);
        warp_release();
    }
}

// ldmatrix: matrix i's row r comes from lane 8i + r's address (8 16-bit elements, 16-byte
// aligned); lane 4r + w receives word w of row r of each matrix, or with .trans word w of row r of
// its transpose (elements (2w, r) and (2w + 1, r)).
void complete_ldmatrix(Warp& w, int num, bool trans) {
    uint16_t rows[4][8][8];
    for (int i = 0; i < num; i++) {
        for (int r = 0; r < 8; r++) {
            const void* p = w.row[8 * i + r];
            if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
                fail(format("%s: lane %d's row address %p is not 16-byte aligned", op_name(w.op), 8 * i + r, p));
            }
            std::memcpy(rows[i][r], p, 16);
        }
    }
    for (int l = 0; l < 32; l++) {
        const int r = l >> 2, wd = l & 3;
        for (int i = 0; i < num; i++) {
            const uint16_t lo = trans ? rows[i][2 * wd][r] : rows[i][r][2 * wd];
            const uint16_t hi = trans ? rows[i][2 * wd + 1][r] : rows[i][r][2 * wd + 1];
            w.dst[l][i] = lo | (unsigned)hi << 16;
        }
    }
}

void emu_ldmatrix(unsigned int* dst, const void* row, int num, int trans) {
    Fiber* f = g.cur;
    if (num != 2 && num != 4) {
        fail(format("%s: ldmatrix of %d matrices (the kernels use x2 and x4)", where(f).c_str(), num));
    }
    Warp& w = g.warps[f->warp];
    w.row[f->lane] = row;
    w.dst[f->lane] = dst;
    const int op = (num == 4 ? OP_LDMATRIX_X4 : OP_LDMATRIX_X2) + (trans ? 1 : 0);
    if (warp_arrive(op, 0xffffffffu, 32)) {
        complete_ldmatrix(w, num, trans != 0);
        warp_release();
    }
}

// cp.async: a GPU makes the copy at any time between the instruction and the wait that covers
// it. The emulation takes the two ends: under an even schedule the copy lands at that wait (a
// read of the destination before it sees the old contents), under an odd one at once (a thread
// still reading the old contents, because a barrier is missing before the buffer is refilled,
// sees the new ones). A kernel correct under both is correct at any time in between.
void land(const PendingCopy& c) {
    std::memcpy(c.dst, c.src, (size_t)c.src_bytes);
    std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, (size_t)(c.bytes - c.src_bytes));
}

void emu_check_aligned(const void* p, int bytes, const char* what) {
    t_vector_accesses++;
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
        fail(format("%s: %s of %d bytes at %p, which is not %d-byte aligned (a misaligned address on a GPU)",
                    where(g.cur).c_str(), what, bytes, p, bytes));
    }
}

void emu_index_out_of_range(int k, int n, const char* what) {
    fail(format("%s: %s at index %d of %d (past the array: on a GPU another register or local memory)",
                where(g.cur).c_str(), what, k, n));
}

void emu_cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    Fiber* f = g.cur;
    if (bytes != 4 && bytes != 8 && bytes != 16) {
        fail(format("%s: cp.async of %d bytes (4, 8 or 16)", where(f).c_str(), bytes));
    }
    if (src_bytes < 0 || src_bytes > bytes) {
        fail(format("%s: cp.async of %d bytes with src-size %d", where(f).c_str(), bytes, src_bytes));
    }
    if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || reinterpret_cast<uintptr_t>(src) % bytes != 0) {
        fail(format("%s: cp.async of %d bytes from %p to %p: both must be %d-byte aligned", where(f).c_str(), bytes,
                    src, dst, bytes));
    }
    PendingCopy c{dst, src, bytes, src_bytes, f->commits, false};
    if (g.schedule & 1) {
        land(c);
        c.landed = true;
    }
    f->copies.push_back(c);
}

void emu_cp_async_commit() {
    g.cur->commits++;
}

// cp.async.wait_group n: the copies of every committed group but the n most recent land.
void emu_cp_async_wait(int n) {
    Fiber* f = g.cur;
    const int upto = f->commits - n; // groups [0, upto) complete
    size_t kept = 0;
    for (const PendingCopy& c : f->copies) {
        if (c.group < upto) {
            if (!c.landed) {
                land(c);
            }
        } else {
            f->copies[kept++] = c;
        }
    }
    f->copies.resize(kept);
}

void* emu_dynamic_smem() {
    return g.smem;
}

// ---- the C interface -----------------------------------------------------------------------------
// Runs kernel `name` on grid (grid[0..3]) of blocks (block[0..3]) with `smem` bytes of dynamic
// shared memory; args as cuLaunchKernel's kernelParams. schedule: the order in which threads and
// blocks run (0 ascending, 1 descending, >= 2 shuffled). 0 on success, else see emu_last_error.
EMU_EXPORT int emu_launch_opt(const char* name, const unsigned* grid, const unsigned* block, unsigned smem,
                              unsigned smem_limit, void** args, unsigned schedule);

EMU_EXPORT int emu_launch(const char* name, const unsigned* grid, const unsigned* block, unsigned smem, void** args,
                          unsigned schedule) {
    return emu_launch_opt(name, grid, block, smem, 48 * 1024, args, schedule);
}

// emu_launch with the kernel's dynamic shared memory limit: 48 KiB unless the caller opted in to
// more (cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)). Returns launch_impl's
// codes (1 refused, 2 fault, 3 other failure).
EMU_EXPORT int emu_launch_opt(const char* name, const unsigned* grid, const unsigned* block, unsigned smem,
                              unsigned smem_limit, void** args, unsigned schedule) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    const int rc = launch_impl(name, grid, block, smem, smem_limit, args, schedule);
    if (g.smem) {
        std::lock_guard<std::mutex> alock(g_alloc_mutex);
        Alloc* a = find_alloc(g.smem);
        if (a) {
            munmap(a->base, a->map_bytes);
            g_allocs.erase(g_allocs.begin() + (a - g_allocs.data()));
        }
        g.smem = nullptr;
    }
    return rc;
}

EMU_EXPORT const char* emu_last_error() {
    return t_error.c_str();
}

// How many vector (packed) loads and stores the calling thread's last launch made.
EMU_EXPORT unsigned long long emu_last_vector_accesses() {
    return t_vector_accesses;
}

// The names of the kernels in this library, one per line.
EMU_EXPORT const char* emu_kernel_names() {
    static std::string names;
    static std::once_flag once;
    std::call_once(once, [] {
        for (int i = 0; i < emu_kernel_count; i++) {
            names += emu_kernels[i].name;
            names += "\n";
        }
    });
    return names.c_str();
}

// Kernel `name`'s parameter count and sizes and __launch_bounds__ (0: none); 0, or 1 when the
// library has no such kernel.
EMU_EXPORT int emu_kernel_info(const char* name, int* param_count, const size_t** param_sizes, int* max_threads) {
    for (int i = 0; i < emu_kernel_count; i++) {
        if (std::strcmp(emu_kernels[i].name, name) == 0) {
            *param_count = emu_kernels[i].param_count;
            *param_sizes = emu_kernels[i].param_sizes;
            *max_threads = emu_kernels[i].max_threads;
            return 0;
        }
    }
    return 1;
}

// A fault's report asks `f` about an address outside this library's own buffers.
EMU_EXPORT void emu_set_address_describer(void (*f)(const void* addr, char* buf, size_t len)) {
    g_describe_extra = f;
}

// This library's launch time limit in seconds (0: EMU_LAUNCH_TIMEOUT_S or the default again).
EMU_EXPORT void emu_set_launch_limit(double seconds) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    g_launch_limit_s = seconds;
}

EMU_EXPORT void* emu_alloc(size_t bytes, size_t misalign) {
    return guarded_alloc(bytes, misalign % 16);
}

EMU_EXPORT void emu_free(void* data) {
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    Alloc* a = find_alloc(data);
    if (a) {
        munmap(a->base, a->map_bytes);
        g_allocs.erase(g_allocs.begin() + (a - g_allocs.data()));
    }
}

// 0 when every canary byte around the buffer is intact; else 1 and emu_last_error says where the
// first damaged byte is (an out-of-bounds write).
EMU_EXPORT int emu_check(void* data) {
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    Alloc* a = find_alloc(data);
    if (!a) {
        t_error = "emu_check: not an emulated buffer";
        return 1;
    }
    const unsigned char* lo = reinterpret_cast<unsigned char*>(a->base + PAGE);
    const unsigned char* hi = reinterpret_cast<unsigned char*>(a->base + a->map_bytes - PAGE);
    const unsigned char* d = reinterpret_cast<unsigned char*>(a->data);
    for (const unsigned char* p = d - 1; p >= lo; p--) {
        if (*p != CANARY) {
            t_error = format("out-of-bounds write %td bytes before the start of a %zu-byte buffer", d - p, a->bytes);
            return 1;
        }
    }
    for (const unsigned char* p = d + a->bytes; p < hi; p++) {
        if (*p != CANARY) {
            t_error = format("out-of-bounds write %td bytes past the end of a %zu-byte buffer", p - (d + a->bytes),
                             a->bytes);
            return 1;
        }
    }
    return 0;
}
