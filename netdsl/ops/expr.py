"""Scalar expressions: an elementwise op's formula, written once, read three ways.

An elementwise op states its forward value and its input gradients as expressions
over named scalars (`Op.formula`, `Op.derivative`). The GPU executor renders the
expressions of a fused chain as the body of one CUDA kernel (`cuda`), the native CPU
target as the body of one C loop (`c`); the tests evaluate the same expressions with
NumPy (`evaluate`) against the op's own forward and backward, so the kernels compute
what the op does.

    >>> x = Var("x")
    >>> cuda(where(x > 0, x, x * 0.01), "float")
    '((x > 0.0f) ? x : (x * 0.01f))'
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Expr", "Var", "Const", "Call", "where", "exp", "expm1", "log", "log1p", "tanh",
           "sqrt", "maximum", "minimum", "absolute", "sigmoid", "softplus", "as_expr",
           "evaluate", "cuda", "c", "names", "functions_used", "substitute"]


class Expr:
    """A scalar expression; Python's arithmetic and comparisons build bigger ones."""

    def __add__(self, other):
        return Call("add", (self, as_expr(other)))

    def __radd__(self, other):
        return Call("add", (as_expr(other), self))

    def __sub__(self, other):
        return Call("sub", (self, as_expr(other)))

    def __rsub__(self, other):
        return Call("sub", (as_expr(other), self))

    def __mul__(self, other):
        return Call("mul", (self, as_expr(other)))

    def __rmul__(self, other):
        return Call("mul", (as_expr(other), self))

    def __truediv__(self, other):
        return Call("div", (self, as_expr(other)))

    def __rtruediv__(self, other):
        return Call("div", (as_expr(other), self))

    def __neg__(self):
        return Call("neg", (self,))

    def __gt__(self, other):
        return Call("gt", (self, as_expr(other)))

    def __lt__(self, other):
        return Call("gt", (as_expr(other), self))


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A named scalar: a kernel input, or a value computed earlier in the kernel."""

    name: str


@dataclass(frozen=True, eq=False)
class Const(Expr):
    value: float


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """`fn` applied to `args`; fn is a key of _NUMPY and _CUDA."""

    fn: str
    args: tuple[Expr, ...]


def as_expr(value) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a scalar expression: {value!r}")
    return Const(float(value))


def _call(fn):
    def build(*args):
        return Call(fn, tuple(as_expr(a) for a in args))
    build.__name__ = fn
    return build


exp, expm1, log, log1p, tanh, sqrt = map(_call, ("exp", "expm1", "log", "log1p", "tanh", "sqrt"))
maximum, minimum, absolute = map(_call, ("max", "min", "abs"))


def where(condition: Expr, a, b) -> Expr:
    """a where `condition` holds, else b (both are computed: keep each one finite)."""
    return Call("where", (condition, as_expr(a), as_expr(b)))


def sigmoid(x: Expr) -> Expr:
    """1 / (1 + e^-x) through tanh, which overflows nowhere (as kernels.sigmoid)."""
    return 0.5 * tanh(0.5 * x) + 0.5


def softplus(x: Expr) -> Expr:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), finite for every x."""
    return maximum(x, 0) + log1p(exp(-absolute(x)))


# ---- NumPy

_NUMPY = {
    "add": lambda xp, a, b: a + b, "sub": lambda xp, a, b: a - b,
    "mul": lambda xp, a, b: a * b, "div": lambda xp, a, b: a / b,
    "neg": lambda xp, a: -a, "gt": lambda xp, a, b: a > b,
    "where": lambda xp, c, a, b: xp.where(c, a, b),
    "exp": lambda xp, a: xp.exp(a), "expm1": lambda xp, a: xp.expm1(a),
    "log": lambda xp, a: xp.log(a), "log1p": lambda xp, a: xp.log1p(a),
    "tanh": lambda xp, a: xp.tanh(a), "sqrt": lambda xp, a: xp.sqrt(a),
    "max": lambda xp, a, b: xp.maximum(a, b), "min": lambda xp, a, b: xp.minimum(a, b),
    "abs": lambda xp, a: xp.abs(a),
}


def evaluate(expr: Expr, env: dict, xp, dtype):
    """The value of `expr` with arrays (or scalars) for its variables; constants take
    `dtype`, as a typed literal does in the kernel."""
    if isinstance(expr, Var):
        return env[expr.name]
    if isinstance(expr, Const):
        return xp.asarray(expr.value, dtype=dtype)
    args = [evaluate(a, env, xp, dtype) for a in expr.args]
    return _NUMPY[expr.fn](xp, *args)


# ---- CUDA C

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">"}
# CUDA's math library overloads these for float and double
_FUNCTIONS = {"exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p", "tanh": "tanh",
              "sqrt": "sqrt", "max": "fmax", "min": "fmin", "abs": "fabs"}


def cuda(expr: Expr, ctype: str) -> str:
    """`expr` as a CUDA C expression over scalars of `ctype` ("float" or "double")."""
    return _render(expr, ctype, _FUNCTIONS)


# C's math library names the float version of each function with an f
_FLOAT_FUNCTIONS = {fn: name + "f" for fn, name in _FUNCTIONS.items()}


def c(expr: Expr, ctype: str) -> str:
    """`expr` as a C99 expression over scalars of `ctype` ("float" or "double")."""
    return _render(expr, ctype, _FLOAT_FUNCTIONS if ctype == "float" else _FUNCTIONS)


def _render(expr: Expr, ctype: str, functions: dict[str, str]) -> str:
    if isinstance(expr, Var):
        return expr.name
    if isinstance(expr, Const):
        return _literal(expr.value, ctype)
    args = [_render(a, ctype, functions) for a in expr.args]
    if expr.fn in _INFIX:
        return f"({args[0]} {_INFIX[expr.fn]} {args[1]})"
    if expr.fn == "neg":
        return f"(-{args[0]})"
    if expr.fn == "where":
        return f"({args[0]} ? {args[1]} : {args[2]})"
    return f"{functions[expr.fn]}({', '.join(args)})"


def functions_used(expr: Expr) -> set[str]:
    """The math functions `expr` calls (keys of _FUNCTIONS)."""
    if not isinstance(expr, Call):
        return set()
    own = {expr.fn} if expr.fn in _FUNCTIONS else set()
    return own.union(*(functions_used(a) for a in expr.args))


def _literal(value: float, ctype: str) -> str:
    if not math.isfinite(value):
        raise ValueError(f"no literal for {value} in a kernel")
    text = repr(float(value))
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f" if ctype == "float" else text


def names(expr: Expr) -> set[str]:
    """The variables `expr` reads."""
    if isinstance(expr, Var):
        return {expr.name}
    if isinstance(expr, Call):
        return set().union(*(names(a) for a in expr.args))
    return set()


def substitute(expr: Expr, values: dict[str, Expr]) -> Expr:
    """`expr` with each variable named in `values` replaced by its expression."""
    if isinstance(expr, Var):
        return values.get(expr.name, expr)
    if isinstance(expr, Call):
        return Call(expr.fn, tuple(substitute(a, values) for a in expr.args))
    return expr
