"""C source for the native CPU target: codegen's programs as C functions in one module.

Each function runs its program over n contiguous elements in one loop the compiler
vectorises. The math functions are declared `simd`, so that GCC calls glibc's vector
versions (libmvec: 8 or 16 lanes of expf or tanhf at once) rather than one element at
a time: NumPy's ufuncs are SIMD themselves, and a scalar loop over exp and tanh runs
slower than they do. Without those declarations (`vector_math=False`, for a C library
that lacks the vector versions) the same source still compiles and runs.

A function's parameters are its arrays (those read, then those only written, as
`Program.arrays`), its scalars as doubles, and n. An op's per-channel program
(ops.channels, batchnorm's) is a function over channels c0 .. c1 of arrays viewed as
(B, C, N): per channel a pass per stage sums its terms (in double, a vectorised
reduction) and computes its per-channel values in double, then a last pass writes the
elements; a channel's B * N values stay in the cache between the passes for the layers
of a convolutional network. Its parameters: the elementwise arrays read, the vectors read,
the vectors written, the elementwise arrays written, the scalars as doubles, then B,
C, N, c0 and c1. Only text is made here; netdsl.runtime.native compiles, caches and
calls it.
"""
from __future__ import annotations


from netdsl.lower.codegen import Program
from netdsl.lower.cuda import CTYPES
from netdsl.ops.channels import ChannelProgram
from netdsl.ops.expr import Call, Var, c, functions_used, names
from netdsl.switches import flag

__all__ = ["c_module", "function_name", "simd_declarations", "channel_parameters"]

# elements a per-channel sum adds up before adding the block's sum to the channel's
SUM_BLOCK = 256

# A per-channel program's passes as NETDSL_BN_PASSES=0 leaves them: every block summed in
# double, and the writing pass reading again every array its terms read. On (the
# default): float32 blocks sum in float lanes (SUM_BLOCK terms, so 64 or 32 a lane)
# and only the blocks in double, since converting each term to double made batchnorm's
# backward compute-bound; and a selecting term that the sums and the writes share (an
# absorbed relu's masked gradient) is written once by the summing pass, into the
# written array it equals or else the first one, where the writing pass reads it back
# instead of the arrays it was made from (`_stash`).
LEAN_PASSES = flag("NETDSL_BN_PASSES", True)

# the math functions glibc's libmvec has vector versions of, for x86-64 and AArch64
VECTOR_MATH = ("exp", "expm1", "log", "log1p", "tanh")


def function_name(index: int) -> str:
    """The C name of a module's index-th program (program names repeat across chains)."""
    return f"netdsl_kernel{index}"


def c_module(programs: list[Program], dtype: str, vector_math: bool = True) -> str:
    """One C translation unit with a function per program, in order."""
    ctype = CTYPES[dtype]
    lines = ["#include <math.h>", ""]
    declared = simd_declarations(programs, ctype) if vector_math else []
    lines += declared
    if declared:
        lines.append("")
    for index, program in enumerate(programs):
        render = _channel_function if isinstance(program, ChannelProgram) else _function
        lines.append(render(program, function_name(index), ctype))
    return "\n".join(lines)


def simd_declarations(programs: list, ctype: str) -> list[str]:
    """The `simd` declarations of the vector math functions `programs` call in their
    elementwise loops."""
    used = set().union(*(functions_used(e) for p in programs
                         for _, e in (*p.lets, *p.writes,
                                      *(s for stage in getattr(p, "stages", ())
                                        for s in stage.sums))))
    suffix = "f" if ctype == "float" else ""
    return [f'__attribute__((simd("notinbranch"))) {ctype} {fn}{suffix}({ctype});'
            for fn in VECTOR_MATH if fn in used]


def _function(program: Program, name: str, ctype: str) -> str:
    written = set(program.outputs)
    params = [f"{'' if a in written else 'const '}{ctype}* restrict a_{a}"
              for a in program.arrays]
    params += [f"const double s_{s}" for s in program.scalars]
    params.append("const long long n")
    body = [f"    const {ctype} {s} = ({ctype})s_{s};" for s in program.scalars]
    body.append("    #pragma omp simd")
    body.append("    for (long long i = 0; i < n; i++) {")
    body += [f"        const {ctype} {a} = a_{a}[i];" for a in program.reads]
    body += [f"        const {ctype} {n} = {c(e, ctype)};" for n, e in program.lets]
    # every write reads the values from before the call, as evaluate_program does
    body += [f"        const {ctype} w_{n} = {c(e, ctype)};" for n, e in program.writes]
    body += [f"        a_{n}[i] = w_{n};" for n, _ in program.writes]
    body.append("    }")
    return (f"/* {program.name} */\nvoid {name}({', '.join(params)}) {{\n"
            + "\n".join(body) + "\n}\n")


def channel_parameters(program: ChannelProgram) -> tuple[str, ...]:
    """A per-channel program's array parameters, in order: elementwise arrays read,
    vectors read, vectors written, elementwise arrays written."""
    return (program.reads + program.vectors + tuple(n for n, _ in program.channel_writes)
            + tuple(n for n, _ in program.writes))


def _channel_function(program: ChannelProgram, name: str, ctype: str) -> str:
    written = set(program.outputs)
    params = [f"{'' if a in written else 'const '}{ctype}* restrict a_{a}"
              for a in channel_parameters(program)]
    params += [f"const double {s}" for s in program.scalars]
    params += ["const long long B", "const long long C", "const long long N",
               "const long long c0", "const long long c1"]
    stash = _stash(program) if LEAN_PASSES else None
    body = ["    const double count = (double)(B * N);",
            "    (void)count;",
            "    for (long long ch = c0; ch < c1; ch++) {"]
    body += [f"        const double {v} = (double)a_{v}[ch];" for v in program.vectors]
    for index, stage in enumerate(program.stages):
        last = index == len(program.stages) - 1
        body += _stage(program, stage, ctype, stash if last else None)
    body += [f"        a_{n}[ch] = ({ctype})({c(e, 'double')});"
             for n, e in program.channel_writes]
    if program.writes:
        writes, lets = program.writes, program.lets
        if stash is not None:   # the stashed term is read back from its array
            term, into = stash
            writes = tuple((n, _replace(e, term, Var("stashed"))) for n, e in writes
                           if n != into or e != term)
            lets = tuple((n, _replace(e, term, Var("stashed"))) for n, e in lets)
        body.append("        for (long long b = 0; b < B; b++) {")
        # the elementwise pass reads the channel's values in the arrays' precision
        body += [f"            const {ctype} e_{n} = ({ctype}){n};"
                 for n in program.channel_names_read((*lets, *writes))]
        read = _read(program.reads, (*lets, *writes))
        body += [f"            const {ctype}* restrict row_{a} = a_{a} + (b * C + ch) * N;"
                 for a in read]
        outs = [n for n, _ in writes]
        if stash is not None and stash[1] not in outs:
            outs.append(stash[1])
        body += [f"            {ctype}* restrict out_{n} = a_{n} + (b * C + ch) * N;"
                 for n in outs]
        body.append("            #pragma omp simd")
        body.append("            for (long long i = 0; i < N; i++) {")
        body += [f"                const {ctype} {a} = row_{a}[i];" for a in read]
        if stash is not None:
            body.append(f"                const {ctype} stashed = out_{stash[1]}[i];")
        element = program.element_names | {"stashed"}
        body += [f"                const {ctype} {n} = {c(_rename(e, element), ctype)};"
                 for n, e in lets]
        body += [f"                out_{n}[i] = {c(_rename(e, element), ctype)};"
                 for n, e in writes]
        body += ["            }", "        }"]
    body.append("    }")
    return (f"/* {program.name} */\nvoid {name}({', '.join(params)}) {{\n"
            + "\n".join(body) + "\n}\n")


def _stash(program: ChannelProgram):
    """(term, array) where the last stage's summing pass writes a term for the writing
    pass to read back: a selecting expression of the elements alone that both the sums
    and the writes contain, stored in the written array whose expression it is, else the
    first written array (which the writing pass then reads before writing it). None
    where there is none, or the writes follow no summing pass."""
    if not program.writes or not program.stages or not program.stages[-1].sums:
        return None
    element = frozenset(program.reads)
    in_writes = [t for _, e in (*program.lets, *program.writes) for t in _subterms(e)]
    for _, e in program.stages[-1].sums:
        for term in _subterms(e):
            if _selects(term) and names(term) <= element and term in in_writes:
                into = next((n for n, w in program.writes if w == term),
                            program.writes[0][0])
                return term, into
    return None


def _subterms(expr):
    """`expr` and its subexpressions, outermost first."""
    yield expr
    if isinstance(expr, Call):
        for a in expr.args:
            yield from _subterms(a)


def _replace(expr, term, by):
    """`expr` with every occurrence of `term` replaced by `by`."""
    if expr == term:
        return by
    if isinstance(expr, Call):
        return Call(expr.fn, tuple(_replace(a, term, by) for a in expr.args))
    return expr


def _stage(program: ChannelProgram, stage, ctype: str, stash=None) -> list[str]:
    """One pass summing over the channel (the values it reads from earlier passes in the
    arrays' precision), then the stage's per-channel values in double. With `stash`
    ((term, array)) the pass also writes the term into that array."""
    body = []
    sums = [n for n, _ in stage.sums]
    if sums:
        # a float32 block sums in float lanes (the lean passes), a float64 one in double
        block_type = ctype if LEAN_PASSES else "double"
        body += [f"        double {n} = 0;" for n in sums]
        body.append("        for (long long b = 0; b < B; b++) {")
        body += [f"            const {ctype} e_{n} = ({ctype}){n};"
                 for n in program.channel_names_read(stage.sums)]
        summed = _read(program.reads, stage.sums)
        body += [f"            const {ctype}* restrict row_{a} = a_{a} + (b * C + ch) * N;"
                 for a in summed]
        if stash is not None:
            body.append(f"            {ctype}* restrict out_{stash[1]} = "
                        f"a_{stash[1]} + (b * C + ch) * N;")
        # blocks of SUM_BLOCK elements summed apart, then added: the rounding of a sum
        # of B * N terms grows with the block's length and the count of blocks, not with
        # B * N (in float64 it would reach 1e-12 on ResNet-50's first layers)
        body.append(f"            for (long long i0 = 0; i0 < N; i0 += {SUM_BLOCK}) {{")
        body.append(f"                const long long i1 = i0 + {SUM_BLOCK} < N ? "
                    f"i0 + {SUM_BLOCK} : N;")
        body += [f"                {block_type} block_{n} = 0;" for n in sums]
        element = frozenset(program.reads) | {"stashed"}
        stage_sums = stage.sums
        if stash is not None:
            stage_sums = tuple((n, _replace(e, stash[0], Var("stashed"))) for n, e in stage_sums)
        terms = [(n, c(_rename(e, element), ctype)) for n, e in stage_sums]
        if stash is None and any(_selects(e) for _, e in stage.sums):
            # GCC (12) turns `sum += c ? g : 0` into a branch and leaves the loop scalar,
            # 10-30 times slower (an absorbed relu's gradient, lower.fuse.absorb): the
            # block's terms are written to the stack by one vectorised loop, then summed
            # (a stashed term's store makes GCC select without a branch)
            body += [f"                {ctype} term_{n}[{SUM_BLOCK}];" for n in sums]
            body.append("                #pragma omp simd")
            body.append("                for (long long i = i0; i < i1; i++) {")
            body += [f"                    const {ctype} {a} = row_{a}[i];" for a in summed]
            body += [f"                    term_{n}[i - i0] = {term};" for n, term in terms]
            body.append("                }")
            terms = [(n, f"term_{n}[i - i0]") for n in sums]
        body.append("                #pragma omp simd reduction(+:"
                    + ", ".join(f"block_{n}" for n in sums) + ")")
        body.append("                for (long long i = i0; i < i1; i++) {")
        if not any(t.startswith("term_") for _, t in terms):
            body += [f"                    const {ctype} {a} = row_{a}[i];" for a in summed]
        if stash is not None:
            body.append(f"                    const {ctype} stashed = "
                        f"{c(_rename(stash[0], element), ctype)};")
            body.append(f"                    out_{stash[1]}[i] = stashed;")
        cast = "" if block_type == ctype else "(double)"
        body += [f"                    block_{n} += {cast}({term});" for n, term in terms]
        body.append("                }")
        body += [f"                {n} += block_{n};" for n in sums]
        body += ["            }", "        }"]
    body += [f"        const double {n} = {c(e, 'double')};" for n, e in stage.lets]
    return body


def _selects(expr) -> bool:
    """Whether `expr` chooses between values (ops.expr.where)."""
    return isinstance(expr, Call) and (expr.fn == "where" or any(map(_selects, expr.args)))


def _read(arrays: tuple[str, ...], named) -> list[str]:
    """Those of `arrays` that the expressions of `named` ((name, expr) pairs) read."""
    used = set().union(*(names(e) for _, e in named))
    return [a for a in arrays if a in used]


def _rename(expr, element: frozenset[str]):
    """`expr` with each per-channel name n read as its element-precision copy e_n."""
    if isinstance(expr, Var):
        return expr if expr.name in element else Var(f"e_{expr.name}")
    if isinstance(expr, Call):
        return Call(expr.fn, tuple(_rename(a, element) for a in expr.args))
    return expr
