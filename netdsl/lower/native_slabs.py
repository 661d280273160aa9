"""C source of the entry that hands a native kernel's slabs to the thread pool
(netdsl.lower.native_pool) in one call, instead of one Python thread's hand-over each.

A native kernel splits its work into slabs (of the batch, of planes, of channels, of
a flat array), each slab one or a few calls of its compiled functions. Handing the
slabs to Python threads costs about 24 us a call, so small ops stayed whole; the pool's
hand-over is one atomic store. `slabs_source(signatures)` renders a library with

    void slabs_run(void* pool_run, const int64_t* rows, long long calls,
                   long long slabs, long long parts)

which runs pool_run(run_part, &state, parts): each of the `parts` threads takes the
next slab nobody has started until none is left (as the Python threads do) and makes
that slab's `calls` calls, in order. A call is a row of int64: the index of its
function's signature in `signatures`, the function's address, which argument is the
running part's scratch (-1: none) and the bytes between two parts' scratch, then the
arguments (an address, an integer, or a double's bits). A signature is a string of
the arguments' kinds, `p` an address, `l` a long long, `d` a double; each is called
through a pointer of its own exact type. A row of signature -1 is skipped (a slab with
fewer calls than another). Only text is made here; runtime.native.slabs builds it.
"""
from __future__ import annotations

__all__ = ["slabs_source", "HEADER", "KINDS"]

# a row's words before the arguments: signature, function, scratch argument, its stride
HEADER = 4

KINDS = {"p": "void*", "l": "long long", "d": "double"}

_VALUES = {"p": "(void*)(uintptr_t)a[{i}]", "l": "(long long)a[{i}]", "d": "real(a[{i}])"}


def slabs_source(signatures: tuple[str, ...]) -> str:
    """The library running slabs of calls of these signatures on the pool."""
    if not signatures or any(not s or set(s) - set(KINDS) for s in signatures):
        raise ValueError(f"signatures of p, l and d, at least one each: {signatures}")
    width = max(len(s) for s in signatures)
    types, cases = [], []
    for index, signature in enumerate(signatures):
        types.append(f"typedef void (*kernel{index}_t)"
                     f"({', '.join(KINDS[k] for k in signature)});")
        values = ", ".join(_VALUES[k].format(i=i) for i, k in enumerate(signature))
        cases.append(f"    case {index}: ((kernel{index}_t)(uintptr_t)row[1])({values}); break;")
    return _TEMPLATE % {"header": HEADER, "width": width, "types": "\n".join(types),
                        "cases": "\n".join(cases)}


_TEMPLATE = r"""#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#define HEADER %(header)d
#define WIDTH %(width)d

typedef void (*part_t)(void*, long long, long long);
typedef void (*pool_t)(part_t, void*, long long);
%(types)s

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
%(cases)s
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
"""
