#include <math.h>
#include <string.h>

typedef long long L;
typedef float T;
typedef void (*part_t)(void*, L, L);
typedef void (*pool_t)(part_t, void*, L);

static void run_parts(void* pool, part_t fn, void* arg, L parts) {
    if (pool && parts > 1)
        ((pool_t)pool)(fn, arg, parts);
    else
        for (L part = 0; part < parts; part++)
            fn(arg, part, parts);
}

/* relu_forward: the chain after the dense layer, on each output */
static inline float chain(const float x0)
{
    const float v0 = ((0.0f > x0) ? 0.0f : x0);
    return v0;
}
#define CHAIN(v) chain(v)
/* relu_backward_1_y: the chain's gradient from its output */
static inline float chain_gradient(const float y, const float gy)
{
    (void)y; (void)gy;
    return ((y > 0.0f) ? gy : 0.0f);
}
#define CHAIN_GRADIENT(y, gy) chain_gradient(y, gy)
/* g = the chain's gradient from y and gy (g may be gy), db = its sums over the rows
   (NULL: not wanted); columns split among the parts */
typedef struct {
    L B, N;
    const T* y; const T* gy; T* g; T* db;
} gradient_call;

static void gradient_part(void* arg, L part, L parts) {
    const gradient_call* s = (const gradient_call*)arg;
    const L j0 = s->N * part / parts, j1 = s->N * (part + 1) / parts;
    if (s->db)
        for (L j = j0; j < j1; j++)
            s->db[j] = 0;
    for (L r = 0; r < s->B; r++) {
        const T* y = s->y + r*s->N;
        const T* gy = s->gy + r*s->N;
        T* g = s->g + r*s->N;
        if (s->db) {
            #pragma omp simd
            for (L j = j0; j < j1; j++) {
                const T v = CHAIN_GRADIENT(y[j], gy[j]);
                g[j] = v;
                s->db[j] += v;
            }
        } else {
            #pragma omp simd
            for (L j = j0; j < j1; j++)
                g[j] = CHAIN_GRADIENT(y[j], gy[j]);
        }
    }
}

/* y = CHAIN(y + bias) over y's rows in place, after BLAS's GEMM wrote x w^T there
   (bias NULL: none) */
typedef struct {
    L B, N;
    T* y; const T* bias;
} epilogue_call;

static void epilogue_part(void* arg, L part, L parts) {
    const epilogue_call* s = (const epilogue_call*)arg;
    const L r0 = s->B * part / parts, r1 = s->B * (part + 1) / parts;
    for (L r = r0; r < r1; r++) {
        T* y = s->y + r*s->N;
        if (s->bias) {
            #pragma omp simd
            for (L j = 0; j < s->N; j++)
                y[j] = CHAIN(y[j] + s->bias[j]);
        } else {
            #pragma omp simd
            for (L j = 0; j < s->N; j++)
                y[j] = CHAIN(y[j]);
        }
    }
}

void dense_epilogue(void* pool, L parts, L B, L N, T* y, const T* bias) {
    epilogue_call s = {B, N, y, bias};
    run_parts(pool, epilogue_part, &s, parts);
}

void dense_chain_gradient(void* pool, L parts, L B, L N, const T* y, const T* gy, T* g,
                          T* db) {
    gradient_call s = {B, N, y, gy, g, db};
    run_parts(pool, gradient_part, &s, parts);
}
