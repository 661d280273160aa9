"""C source of the native target's thread pool: one per process, shared by every
generated library that splits a step's work (the recurrent loops' GEMMs and passes).

`pool_run(fn, ctx, parts)` runs fn(ctx, part, parts) for every part: part 0 on the
calling thread, the others on the pool's workers, and returns when all have ended (a
barrier). Handing work over is one store of a generation counter that the workers spin
on; a Python thread's hand-over costs about 24 us (runtime.host), too much for the 50
steps of a loop, each with a GEMM of about 50 us.

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
MAX_WORKERS = 63

POOL_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define SPIN_NS %(spin)dLL
#define MAX_WORKERS %(max_workers)d

typedef void (*part_t)(void*, long long, long long);

static atomic_ulong generation;      /* bumped once per call: the workers' signal */
static atomic_long pending;          /* workers that have not finished this call */
static atomic_int sleepers;          /* workers asleep on `wake`, or about to be */
static atomic_flag busy = ATOMIC_FLAG_INIT;   /* a call is running */
static part_t job;
static void* job_ctx;
static long long job_parts;
static int workers;                  /* started, each with its index 1..workers */
static unsigned long born[MAX_WORKERS + 1];   /* the generation each worker started at */
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

/* the parts of the current call that the thread of `index` runs */
static void run_parts(long long index, long long stride) {
    for (long long part = index; part < job_parts; part += stride)
        job(job_ctx, part, job_parts);
}

static void* serve(void* arg) {
    const long long index = (long long)(size_t)arg;
    unsigned long seen = born[index];   /* a call made before it ran is still its own */
    for (;;) {
        long long began = now_ns();
        unsigned spins = 0;
        while (atomic_load_explicit(&generation, memory_order_acquire) == seen) {
            relax();
            if (++spins %% 64 == 0 && now_ns() - began > SPIN_NS) {
                pthread_mutex_lock(&lock);
                atomic_fetch_add(&sleepers, 1);
                while (atomic_load(&generation) == seen)
                    pthread_cond_wait(&wake, &lock);
                atomic_fetch_sub(&sleepers, 1);
                pthread_mutex_unlock(&lock);
            }
        }
        seen = atomic_load(&generation);
        run_parts(index, workers + 1);
        atomic_fetch_sub_explicit(&pending, 1, memory_order_release);
    }
    return NULL;
}

/* start workers up to `wanted` (the caller holds `busy`: none is running a part) */
static void grow(int wanted) {
    if (wanted > MAX_WORKERS)
        wanted = MAX_WORKERS;
    while (workers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        born[workers + 1] = atomic_load(&generation);
        int failed = pthread_create(&thread, &attr, serve, (void*)(size_t)(workers + 1));
        pthread_attr_destroy(&attr);
        if (failed)
            return;   /* fewer workers: the calling thread runs their parts */
        workers++;
    }
}

void pool_run(part_t fn, void* ctx, long long parts) {
    if (parts <= 1 || atomic_flag_test_and_set(&busy)) {
        for (long long part = 0; part < parts; part++)
            fn(ctx, part, parts);
        return;
    }
    grow((int)(parts - 1));
    if (workers == 0) {
        atomic_flag_clear(&busy);
        for (long long part = 0; part < parts; part++)
            fn(ctx, part, parts);
        return;
    }
    job = fn;
    job_ctx = ctx;
    job_parts = parts;
    atomic_store(&pending, workers);
    atomic_fetch_add(&generation, 1);          /* sequentially consistent: then sleepers */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&lock);
    }
    run_parts(0, workers + 1);
    long long began = now_ns();
    unsigned spins = 0;
    while (atomic_load_explicit(&pending, memory_order_acquire) > 0) {
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
    atomic_store(&pending, 0);
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
