"""C source for the native CPU target: codegen's programs as C functions in one module.

Each function runs its program over n contiguous elements in one loop the compiler
vectorises. The math functions are declared `simd`, so that GCC calls glibc's vector
versions (libmvec: 8 or 16 lanes of expf or tanhf at once) rather than one element at
a time: NumPy's ufuncs are SIMD themselves, and a scalar loop over exp and tanh runs
slower than they do. Without those declarations (`vector_math=False`, for a C library
that lacks the vector versions) the same source still compiles and runs.

A function's parameters are its arrays (those read, then those only written, as
`Program.arrays`), its scalars as doubles, and n. Only text is made here;
netdsl.runtime.native compiles, caches and calls it.
"""
from __future__ import annotations

from netdsl.lower.codegen import Program
from netdsl.lower.cuda import CTYPES
from netdsl.ops.expr import c, functions_used

__all__ = ["c_module", "function_name", "simd_declarations"]

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
        lines.append(_function(program, function_name(index), ctype))
    return "\n".join(lines)


def simd_declarations(programs: list[Program], ctype: str) -> list[str]:
    """The `simd` declarations of the vector math functions `programs` call."""
    used = set().union(*(functions_used(e) for p in programs for _, e in (*p.lets, *p.writes)))
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
