"""C source of the native target's thread pool: one per process, shared by every
generated library that splits a step's work (the recurrent loops' GEMMs and passes).

`pool_run(fn, ctx, parts)` runs fn(ctx, part, parts) for every part, on the calling
thread and the pool's workers, and returns when all have ended (a barrier). Handing
work over is one store of a word (the call's generation and its parts) that the workers
spin on; a Python thread's hand-over costs about 24 us (runtime.host), too much for the
50 steps of a loop, each with a GEMM of about 50 us.

Each thread claims its own part first (the caller part 0, worker i part i: the same
block of a weight stays in one core's cache through a loop), then any part nobody has
claimed. So a worker that another process holds off its core delays nothing: the caller
runs its part too, and waits only for parts under way. A part is claimed by raising its
slot to the call's generation (compare and swap), so a worker that wakes late, still
holding an earlier call's word, finds nothing to claim.

Spinning is bounded so that an idle pool never holds a core: a worker spins on the
counter for at most SPIN_NS of its own time after its last part, checking the clock
every 64 pauses, then sleeps on a condition variable, which the caller signals only
when some worker sleeps. The caller, waiting for the workers' parts, spins for SPIN_NS,
then yields the core between checks (a worker another process holds back).

The workers start on the first call that wants them and grow to the parts asked for
(at most MAX_WORKERS). A forked child has none of its parent's threads: pthread_atfork
resets the pool there, and its first call starts workers of its own. A call made while
another thread's call runs (two executors on two Python threads) runs its parts on its
own thread. Parts cannot fail (a GEMM and loops over arrays), so there is nothing to
hand back. Only text is made here; netdsl.runtime.native.pool compiles and loads it.
"""
from __future__ import annotations

__all__ = ["POOL_SOURCE", "SPIN_NS", "MAX_WORKERS"]

SPIN_NS = 50_000     # how long a worker or the caller spins before it sleeps or yields
MAX_WORKERS = 63     # a call's parts: at most MAX_WORKERS + 1

POOL_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define SPIN_NS %(spin)dLL
#define MAX_WORKERS %(max_workers)d
#define MAX_PARTS (MAX_WORKERS + 1)

typedef void (*part_t)(void*, long long, long long);

/* the current call: its generation in the high 48 bits, its parts in the low 16 */
static _Atomic uint64_t call;
static _Atomic uint64_t owner[MAX_PARTS];   /* the generation that claimed each part */
static _Atomic(part_t) job;
static _Atomic(void*) job_ctx;
static atomic_long done;             /* parts of the current call finished */
static atomic_int sleepers;          /* workers asleep on `wake`, or about to be */
static atomic_flag busy = ATOMIC_FLAG_INIT;   /* a call is running */
static int workers;                  /* started, each with its index 1..workers */
static uint64_t born[MAX_WORKERS + 1];   /* the generation each worker started at */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* run the parts of call `word` that nobody has claimed, this thread's own first */
static void claim_parts(uint64_t word, long long index) {
    const uint64_t generation = word >> 16;
    const long long parts = (long long)(word & 0xffff);
    part_t fn = atomic_load_explicit(&job, memory_order_relaxed);
    void* ctx = atomic_load_explicit(&job_ctx, memory_order_relaxed);
    for (long long k = 0; k < parts; k++) {
        const long long part = (index + k) %% parts;
        uint64_t seen = atomic_load_explicit(&owner[part], memory_order_relaxed);
        while (seen < generation) {
            if (atomic_compare_exchange_weak(&owner[part], &seen, generation)) {
                fn(ctx, part, parts);
                atomic_fetch_add_explicit(&done, 1, memory_order_release);
                break;
            }
        }
    }
}

static void* serve(void* arg) {
    const long long index = (long long)(size_t)arg;
    pthread_setname_np(pthread_self(), "netdsl-pool");   /* told apart from BLAS's */
    uint64_t seen = born[index];   /* a call made before it ran is still its own */
    for (;;) {
        long long began = now_ns();
        unsigned spins = 0;
        uint64_t word;
        while ((word = atomic_load_explicit(&call, memory_order_acquire)) >> 16 == seen) {
            relax();
            if (++spins %% 64 == 0 && now_ns() - began > SPIN_NS) {
                pthread_mutex_lock(&lock);
                atomic_fetch_add(&sleepers, 1);
                while (atomic_load(&call) >> 16 == seen)
                    pthread_cond_wait(&wake, &lock);
                atomic_fetch_sub(&sleepers, 1);
                pthread_mutex_unlock(&lock);
            }
        }
        seen = word >> 16;
        claim_parts(word, index);
    }
    return NULL;
}

/* start workers up to `wanted` (the caller holds `busy`) */
static void grow(int wanted) {
    if (wanted > MAX_WORKERS)
        wanted = MAX_WORKERS;
    while (workers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        born[workers + 1] = atomic_load(&call) >> 16;
        int failed = pthread_create(&thread, &attr, serve, (void*)(size_t)(workers + 1));
        pthread_attr_destroy(&attr);
        if (failed)
            return;   /* fewer workers: the calling thread claims their parts */
        workers++;
    }
}

void pool_run(part_t fn, void* ctx, long long parts) {
    if (parts <= 1 || parts > MAX_PARTS || atomic_flag_test_and_set(&busy)) {
        for (long long part = 0; part < parts; part++)
            fn(ctx, part, parts);
        return;
    }
    grow((int)(parts - 1));
    atomic_store_explicit(&job, fn, memory_order_relaxed);
    atomic_store_explicit(&job_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&done, 0, memory_order_relaxed);
    const uint64_t word = ((atomic_load(&call) >> 16) + 1) << 16 | (uint64_t)parts;
    atomic_store(&call, word);          /* sequentially consistent: then sleepers */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&lock);
    }
    claim_parts(word, 0);
    long long began = now_ns();
    unsigned spins = 0;
    while (atomic_load_explicit(&done, memory_order_acquire) < parts) {
        relax();
        if (++spins %% 64 == 0 && now_ns() - began > SPIN_NS)
            sched_yield();
    }
    atomic_flag_clear(&busy);
}

/* the workers started: for tests and reports */
int pool_workers(void) {
    return workers;
}

static void forget_workers(void) {
    workers = 0;
    atomic_store(&sleepers, 0);
    atomic_flag_clear(&busy);
    pthread_mutex_t fresh_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh_wake = PTHREAD_COND_INITIALIZER;
    lock = fresh_lock;
    wake = fresh_wake;
}

__attribute__((constructor)) static void on_load(void) {
    pthread_atfork(NULL, NULL, forget_workers);
}
""" % {"spin": SPIN_NS, "max_workers": MAX_WORKERS}
