// The emulated CUDA device's execution of one launch: blocks in grid order on the
// calling OS thread; a block's threads as fibers (own stacks, switched by a few
// instructions of assembly: no system call) that meet at __syncthreads and at every warp
// operation. A fault inside a kernel (an access outside every allocation hits a guard
// page; arithmetic on never-written memory, which the device fills with a signalling
// NaN, traps as an invalid operation; a divergent barrier) ends the launch with a
// description naming the block and thread, which the Rust side turns into an error
// naming the kernel and, for addresses, the allocation.
#include "compat.h"

#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

#if !defined(__x86_64__)
#error "the emulated CUDA device's fibers are written for x86-64"
#endif

extern "C" {
struct EmuLaunch {
    emu_dim3 grid, block;
    uint64_t shared_bytes;
    int trap_invalid;
};

// kind: 0 none, 1 bad address, 2 invalid floating-point operation, 3 barrier divergence
// (threads wait where others cannot come), 4 warp operation naming an exited lane,
// 5 fiber stack overflow, 6 bus error.
struct EmuFault {
    int kind;
    uint64_t addr;
    emu_dim3 block, thread;
    char what[200];
};
}

struct EmuFiber {
    void* sp;
    emu_dim3 tid;
    unsigned lane, warp;
    int state;  // RUN, AT_BLOCK, AT_WARP, DONE
    uint32_t mask;
    uint64_t xseq;
};

enum { RUN = 0, AT_BLOCK = 1, AT_WARP = 2, DONE = 3 };

struct WarpSlots {
    uint32_t vals[2][32];
};

namespace {
constexpr size_t STACK = 64 * 1024;

struct Launch {
    const EmuLaunch* l;
    void (*body)(void**);
    void** args;
    EmuFault* fault;
    emu_dim3 block_idx;
    std::vector<EmuFiber> fibers;
    std::vector<WarpSlots> warps;
    std::vector<uint64_t> shared;
    EmuFiber* cur = nullptr;
    void* main_sp = nullptr;
    sigjmp_buf jmp;
    volatile int in_kernel = 0;
};

thread_local Launch* T = nullptr;
thread_local std::vector<char*> stacks;  // one per fiber slot, guard page below each
thread_local char* altstack = nullptr;

struct sigaction old_segv, old_bus, old_fpe;
std::once_flag installed;
long page_size = 4096;
}  // namespace

extern "C" void emu_switch(void** save_sp, void* to_sp);
extern "C" void emu_fiber_start(void);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch,.-emu_switch
.globl emu_fiber_start
.type emu_fiber_start,@function
emu_fiber_start:
    call emu_fiber_main
    ud2
.size emu_fiber_start,.-emu_fiber_start
)");

// A blocked or finished fiber hands on to the next runnable one after it (no trip
// through the scheduler), or back to the scheduler at the end of the block's fibers.
static void yield_to_main(void) {
    EmuFiber* f = T->cur;
    EmuFiber* end = T->fibers.data() + T->fibers.size();
    for (EmuFiber* g = f + 1; g < end; g++)
        if (g->state == RUN) {
            T->cur = g;
            emu_switch(&f->sp, g->sp);
            return;
        }
    emu_switch(&f->sp, T->main_sp);
}

extern "C" void emu_fiber_main(void) {
    T->body(T->args);
    T->cur->state = DONE;
    yield_to_main();
    abort();  // a finished fiber is never resumed
}

extern "C" const emu_dim3* emu_thread_idx(void) { return &T->cur->tid; }
extern "C" const emu_dim3* emu_block_idx(void) { return &T->block_idx; }
extern "C" const emu_dim3* emu_block_dim(void) { return &T->l->block; }
extern "C" const emu_dim3* emu_grid_dim(void) { return &T->l->grid; }
extern "C" unsigned emu_lane(void) { return T->cur->lane; }
extern "C" void* emu_dynamic_shared(void) { return T->shared.data(); }

extern "C" void emu_syncthreads(void) {
    T->cur->state = AT_BLOCK;
    yield_to_main();
}

extern "C" void emu_syncwarp(uint32_t mask) {
    T->cur->state = AT_WARP;
    T->cur->mask = mask;
    yield_to_main();
}

extern "C" uint32_t emu_warp_exchange(uint32_t mask, uint32_t v, int src) {
    EmuFiber* f = T->cur;
    // Two slot sets used alternately: a lane can be at most one exchange ahead.
    uint32_t* slot = T->warps[f->warp].vals[f->xseq & 1];
    slot[f->lane] = v;
    emu_syncwarp(mask);
    f = T->cur;
    slot = T->warps[f->warp].vals[f->xseq & 1];
    f->xseq++;
    if (src >= 0) return slot[src & 31];
    // Ballot over the lanes of the mask that exist.
    uint32_t out = 0;
    size_t first = (size_t)f->warp * 32;
    for (unsigned i = 0; i < 32; i++)
        if ((mask >> i & 1u) && first + i < T->fibers.size() && slot[i]) out |= 1u << i;
    return out;
}

static void set_fault(int kind, uint64_t addr, const char* what) {
    EmuFault* f = T->fault;
    f->kind = kind;
    f->addr = addr;
    f->block = T->block_idx;
    f->thread = T->cur ? T->cur->tid : emu_dim3{0, 0, 0};
    snprintf(f->what, sizeof f->what, "%s", what);
}

static void chain(struct sigaction* old, int sig, siginfo_t* si, void* uc) {
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) return old->sa_sigaction(sig, si, uc);
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        return old->sa_handler(sig);
    }
    signal(sig, SIG_DFL);  // returning re-raises it with the default action
}

static void on_signal(int sig, siginfo_t* si, void* uc) {
    Launch* t = T;
    if (!t || !t->in_kernel) {
        chain(sig == SIGSEGV ? &old_segv : sig == SIGBUS ? &old_bus : &old_fpe, sig, si, uc);
        return;
    }
    t->in_kernel = 0;
    uint64_t a = (uint64_t)si->si_addr;
    if (sig == SIGFPE) {
        set_fault(2, a, "invalid floating-point operation: arithmetic on device memory never written (the emulator fills it with a signalling NaN), or 0/0, inf-inf, sqrt or log of a negative");
    } else {
        int kind = sig == SIGBUS ? 6 : 1;
        if (t->cur) {
            size_t i = (size_t)(t->cur - t->fibers.data());
            if (i < stacks.size() && a >= (uint64_t)stacks[i] && a < (uint64_t)stacks[i] + (uint64_t)page_size) kind = 5;
        }
        set_fault(kind, a, kind == 5 ? "a thread's stack overflowed (64 KiB per emulated thread)" : "access outside every allocation");
    }
    siglongjmp(t->jmp, 1);
}

static void install(void) {
    page_size = sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    sigaction(SIGFPE, &sa, &old_fpe);
}

static void ensure_altstack(void) {
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;
    if (!altstack) altstack = (char*)malloc(64 * 1024);
    stack_t ss;
    ss.ss_sp = altstack;
    ss.ss_size = 64 * 1024;
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
}

static char* stack_for(size_t i) {
    while (stacks.size() <= i) {
        void* p = mmap(nullptr, STACK + page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return nullptr;
        mprotect(p, page_size, PROT_NONE);  // the guard below the stack
        stacks.push_back((char*)p);
    }
    return stacks[i];
}

static void start_fiber(EmuFiber* f, char* stack) {
    uint64_t top = ((uint64_t)stack + page_size + STACK) & ~(uint64_t)15;
    // emu_switch pops r15, r14, r13, r12, rbx, rbp, then returns into the start; the
    // start's call then sees a 16-byte aligned stack, as the ABI wants.
    uint64_t* sp = (uint64_t*)(top - 16 - 56);
    for (int i = 0; i < 6; i++) sp[i] = 0;
    sp[6] = (uint64_t)&emu_fiber_start;
    f->sp = sp;
}

// Releases whoever can go on; false when no one can (a divergence).
static bool release(Launch* t) {
    bool any = false;
    size_t n = t->fibers.size();
    for (size_t i = 0; i < n; i++) {
        EmuFiber& f = t->fibers[i];
        if (f.state != AT_WARP) continue;
        size_t first = (size_t)f.warp * 32;
        bool ok = true;
        for (unsigned j = 0; j < 32 && ok; j++) {
            if (!(f.mask >> j & 1u) || first + j >= n) continue;
            EmuFiber& g = t->fibers[first + j];
            if (g.state == DONE) {
                t->cur = &f;
                set_fault(4, 0, "a warp operation names a lane that has exited");
                return false;
            }
            ok = g.state == AT_WARP && g.mask == f.mask && g.xseq == f.xseq;
        }
        if (!ok) continue;
        for (unsigned j = 0; j < 32; j++)
            if ((f.mask >> j & 1u) && first + j < n) t->fibers[first + j].state = RUN;
        any = true;
    }
    if (any) return true;
    bool all_block = true, some = false, exited = false;
    for (auto& f : t->fibers) {
        if (f.state == DONE) {
            exited = true;
            continue;
        }
        some = true;
        all_block &= f.state == AT_BLOCK;
    }
    if (some && all_block && exited) {
        // Undefined in CUDA (a barrier in code that not every thread of the block runs),
        // whatever some devices happen to do with it.
        for (auto& f : t->fibers)
            if (f.state == AT_BLOCK) {
                t->cur = &f;
                break;
            }
        set_fault(3, 0, "__syncthreads reached by some threads of the block after others exited (a barrier in divergent code)");
        return false;
    }
    if (some && all_block) {
        for (auto& f : t->fibers)
            if (f.state == AT_BLOCK) f.state = RUN;
        return true;
    }
    if (!some) return true;
    for (auto& f : t->fibers)
        if (f.state != DONE) {
            t->cur = &f;
            break;
        }
    set_fault(3, 0, "barrier divergence: some threads wait at __syncthreads or a warp operation that others of the block never reach");
    return false;
}

extern "C" int emu_run(const EmuLaunch* l, void (*body)(void**), void** args, EmuFault* fault) {
    std::call_once(installed, install);
    ensure_altstack();
    size_t nthreads = (size_t)l->block.x * l->block.y * l->block.z;
    Launch t;
    t.l = l;
    t.body = body;
    t.args = args;
    t.fault = fault;
    t.fibers.resize(nthreads);
    t.warps.resize((nthreads + 31) / 32);
    t.shared.assign((l->shared_bytes + 7) / 8, 0x7f817f817f817f81ull);
    for (size_t i = 0; i < nthreads; i++)
        if (!stack_for(i)) {
            fault->kind = 5;
            snprintf(fault->what, sizeof fault->what, "could not map the stacks of %zu emulated threads", nthreads);
            return 1;
        }
    // The floating-point control of the whole launch (fibers and the scheduler between
    // them, which does no floating point): exception flags clear, the invalid-operation
    // trap unmasked if asked. Restored on every way out.
    uint32_t mxcsr;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    uint32_t kmx = (mxcsr & ~0x3Fu) & (l->trap_invalid ? ~0x80u : ~0u);
    Launch* prev = T;
    T = &t;
    int rc = 0;
    if (sigsetjmp(t.jmp, 1) != 0) {
        asm volatile("ldmxcsr %0" ::"m"(mxcsr));
        T = prev;
        return 1;
    }
    t.in_kernel = 1;
    asm volatile("ldmxcsr %0" ::"m"(kmx));
    for (unsigned bz = 0; bz < l->grid.z && rc == 0; bz++)
        for (unsigned by = 0; by < l->grid.y && rc == 0; by++)
            for (unsigned bx = 0; bx < l->grid.x && rc == 0; bx++) {
                t.block_idx = {bx, by, bz};
                size_t i = 0;
                for (unsigned z = 0; z < l->block.z; z++)
                    for (unsigned y = 0; y < l->block.y; y++)
                        for (unsigned x = 0; x < l->block.x; x++, i++) {
                            EmuFiber& f = t.fibers[i];
                            f.tid = {x, y, z};
                            f.lane = (unsigned)(i % 32);
                            f.warp = (unsigned)(i / 32);
                            f.state = RUN;
                            f.mask = 0;
                            f.xseq = 0;
                            start_fiber(&f, stacks[i]);
                        }
                if (l->shared_bytes) t.shared.assign(t.shared.size(), 0x7f817f817f817f81ull);
                for (;;) {
                    for (auto& f : t.fibers)
                        if (f.state == RUN) {
                            // Runs it and every runnable fiber after it (see yield_to_main).
                            t.cur = &f;
                            emu_switch(&t.main_sp, f.sp);
                            break;
                        }
                    t.cur = nullptr;
                    bool done = true;
                    for (auto& f : t.fibers) done &= f.state == DONE;
                    if (done) break;
                    if (!release(&t)) {
                        rc = 1;
                        break;
                    }
                }
            }
    asm volatile("ldmxcsr %0" ::"m"(mxcsr));
    t.in_kernel = 0;
    T = prev;
    return rc;
}
