#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#define HEADER 4
#define WIDTH 24

typedef void (*part_t)(void*, long long, long long);
typedef void (*pool_t)(part_t, void*, long long);
typedef void (*kernel0_t)(void*, void*, void*, void*, void*, void*, void*, void*, long long, long long, long long, long long, long long, long long, long long, long long, long long, long long, long long, long long, long long, long long, long long, long long);
typedef void (*kernel1_t)(void*, void*, void*, void*, long long, long long, long long, long long, long long);

struct slabs {
    const int64_t* rows;   /* per slab, per call: HEADER words, then WIDTH arguments */
    long long calls;
    long long count;
    atomic_llong next;     /* the next slab nobody has started */
};

static double real(int64_t bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static void call(const int64_t* row, long long part) {
    int64_t a[WIDTH];
    memcpy(a, row + HEADER, sizeof a);
    if (row[2] >= 0)   /* this part's own scratch */
        a[row[2]] += part * row[3];
    switch (row[0]) {
    case 0: ((kernel0_t)(uintptr_t)row[1])((void*)(uintptr_t)a[0], (void*)(uintptr_t)a[1], (void*)(uintptr_t)a[2], (void*)(uintptr_t)a[3], (void*)(uintptr_t)a[4], (void*)(uintptr_t)a[5], (void*)(uintptr_t)a[6], (void*)(uintptr_t)a[7], (long long)a[8], (long long)a[9], (long long)a[10], (long long)a[11], (long long)a[12], (long long)a[13], (long long)a[14], (long long)a[15], (long long)a[16], (long long)a[17], (long long)a[18], (long long)a[19], (long long)a[20], (long long)a[21], (long long)a[22], (long long)a[23]); break;
    case 1: ((kernel1_t)(uintptr_t)row[1])((void*)(uintptr_t)a[0], (void*)(uintptr_t)a[1], (void*)(uintptr_t)a[2], (void*)(uintptr_t)a[3], (long long)a[4], (long long)a[5], (long long)a[6], (long long)a[7], (long long)a[8]); break;
    default: break;
    }
}

static void run_part(void* context, long long part, long long parts) {
    struct slabs* s = context;
    long long slab;
    (void)parts;
    while ((slab = atomic_fetch_add(&s->next, 1)) < s->count)
        for (long long k = 0; k < s->calls; k++)
            call(s->rows + (slab * s->calls + k) * (HEADER + WIDTH), part);
}

void slabs_run(void* pool_run, const int64_t* rows, long long calls, long long slabs,
               long long parts) {
    struct slabs s;
    s.rows = rows;
    s.calls = calls;
    s.count = slabs;
    atomic_init(&s.next, 0);
    ((pool_t)pool_run)(run_part, &s, parts);
}
