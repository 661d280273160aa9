"""Lowering pass, codegen: elementwise programs for fused chains and the optimiser
update, rendered as CUDA source here and as C by lower.native.

A `Program` is what one elementwise kernel does at each index i: read some arrays at
i, compute named scalars, write arrays at i. Its expressions come from the ops'
formulas (ops.expr), so the program for a chain of ops is their composition:

- forward: y = f_k(...f_2(f_1(x0, ...)...)), every intermediate in a register;
- backward: the forward recomputed from the chain's inputs, then the chain rule
  from gy back to each input that needs a gradient, summed where an input is read
  twice.

The backward recomputes rather than storing intermediates: a chain keeps only its
inputs, and one kernel reads them once. Where the gradient needs no value but the
chain's output (`tanh(a + b)`, `relu(x + skip)`: the last op's derivative is stated
in its output, the others' in nothing), the chain keeps its output instead
(`from_output`): one array, often kept anyway, in place of several. `cuda_source` renders a program as one
CUDA C kernel (a grid-stride loop over n contiguous elements); `evaluate_program`
runs the same expressions with NumPy, which is how the tests check a program
against the ops it fuses. `run_program` runs one: evaluated so on the host, as compiled
C for a native lowering (netdsl.runtime.native provides it), and as the one kernel
under CuPy (netdsl.runtime.cuda provides it).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from netdsl.lower.cuda import CTYPES, grid_kernel
from netdsl.ops.base import Op
from netdsl.ops.expr import Const, Expr, Var, cuda, evaluate, names, sqrt
from netdsl.ops.routines import overridable

__all__ = ["Program", "Chain", "fusable", "chain_forward", "chain_backward", "from_output",
           "merge_writes",
           "update_program",
           "update_scalars", "cuda_source", "evaluate_program", "run_program", "launches"]

# programs run so far, per dtype (on a device, each is one kernel launch)
launches: Counter = Counter()


@dataclass(frozen=True)
class Program:
    """Per index i: read `reads`, compute `lets` in order, then write `writes`.

    Arrays are named; a written array that is also read is updated in place (an
    optimiser's moments). `scalars` are per-launch numbers (the learning rate).
    """

    name: str
    reads: tuple[str, ...]
    lets: tuple[tuple[str, Expr], ...]
    writes: tuple[tuple[str, Expr], ...]
    scalars: tuple[str, ...] = ()

    @property
    def arrays(self) -> tuple[str, ...]:
        """The kernel's array parameters, in order: those read, then those only written."""
        return self.reads + tuple(n for n, _ in self.writes if n not in self.reads)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.writes)


def fusable(op: Op) -> bool:
    """Whether an op states its forward and gradients as formulas (ops.expr)."""
    return hasattr(op, "formula") and hasattr(op, "derivative")


@dataclass(frozen=True)
class Chain:
    """Elementwise ops applied one after another.

    `wiring[m]` says where member m's inputs come from: the index of one of the chain's
    `inputs` (distinct values made outside it), or -1 for member m-1's output.
    """

    ops: tuple[Op, ...]
    wiring: tuple[tuple[int, ...], ...]
    inputs: int

    @property
    def name(self) -> str:
        return "_".join(op.name for op in self.ops)


def _recompute(chain: Chain) -> list[tuple[str, Expr]]:
    """v0 .. v{k-1}: each member's output, from the chain's inputs x0, x1, ..."""
    lets = []
    for m, (op, wires) in enumerate(zip(chain.ops, chain.wiring)):
        lets.append((f"v{m}", op.formula(*_arguments(wires, m))))
    return lets


def _arguments(wires: tuple[int, ...], m: int) -> list[Var]:
    return [Var(f"x{w}") if w >= 0 else Var(f"v{m - 1}") for w in wires]


def _reads(lets, writes, candidates) -> tuple[str, ...]:
    used = set().union(*(names(e) for _, e in (*lets, *writes)))
    return tuple(n for n in candidates if n in used)


def chain_forward(chain: Chain) -> Program:
    """x0, x1, ... -> y."""
    lets = _recompute(chain)
    writes = (("y", Var(lets[-1][0])),)
    inputs = [f"x{j}" for j in range(chain.inputs)]
    return Program(f"{chain.name}_forward", _reads(lets, writes, inputs), tuple(lets), writes)


def chain_backward(chain: Chain, needs: tuple[bool, ...], output: bool = False) -> Program:
    """x0, x1, ..., gy -> dx_j for each input j with needs[j]; with `output` the last
    member's value is read as the chain's output y instead of recomputed."""
    lets = _recompute(chain)
    last = len(chain.ops) - 1
    grad: Expr = Var("gy")
    parts: dict[int, list[Expr]] = {j: [] for j in range(chain.inputs) if needs[j]}
    for m in reversed(range(len(chain.ops))):
        op, wires = chain.ops[m], chain.wiring[m]
        value = Var("y") if output and m == last else Var(f"v{m}")
        grads = op.derivative(grad, value, *_arguments(wires, m))
        for w, g in zip(wires, grads):
            if g is None:
                continue
            if w < 0:
                lets.append((f"g{m - 1}", g))
                grad = Var(f"g{m - 1}")
            elif w in parts:
                parts[w].append(g)
    writes = tuple((f"dx{j}", _sum(terms)) for j, terms in parts.items())
    candidates = [f"x{j}" for j in range(chain.inputs)] + ["gy"] + (["y"] if output else [])
    lets = _live(lets, writes)
    tag = "".join("1" if n else "0" for n in needs) + ("_y" if output else "")
    return Program(f"{chain.name}_backward_{tag}", _reads(lets, writes, candidates), lets, writes)


def merge_writes(program: Program) -> tuple[Program, dict[str, str]]:
    """`program` writing each distinct expression once (an add's two input gradients are
    both gy), and which written array each dropped write equals."""
    first: dict[str, str] = {}   # an expression's C text -> the array that writes it
    copies, writes = {}, []
    for name, e in program.writes:
        text = cuda(e, "double")
        if text in first:
            copies[name] = first[text]
        else:
            first[text] = name
            writes.append((name, e))
    if not copies:
        return program, {}
    lets = _live(program.lets, writes)
    reads = _reads(lets, writes, program.reads)
    return Program(program.name + "_merged", reads, lets, tuple(writes), program.scalars), copies


def from_output(chain: Chain) -> bool:
    """Whether every gradient of the chain follows from gy and its output alone."""
    every = chain_backward(chain, (True,) * chain.inputs, output=True)
    return set(every.reads) <= {"gy", "y"}


def _sum(terms: list[Expr]) -> Expr:
    if not terms:
        return Const(0.0)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _live(lets, writes) -> tuple[tuple[str, Expr], ...]:
    """The lets that the writes depend on (the kernel source stays short)."""
    needed = set().union(*(names(e) for _, e in writes))
    kept = []
    for name, e in reversed(lets):
        if name in needed:
            kept.append((name, e))
            needed |= names(e)
    return tuple(reversed(kept))


def update_program(rule, state: tuple[str, ...]) -> Program:
    """The optimiser step of runtime.optim.Rule over flat p and g, as one kernel.

    `state` names the state arrays the optimiser holds (first_moment, second_moment,
    momentum_buffer). Scalars: lr, and with bias correction c1 = 1 - beta1^t and
    c2 = sqrt(1 - rho^t), computed on the host each step.
    """
    p, g = Var("params"), Var("grads")
    lets, writes, scalars = [], [], ["lr"]
    if rule.weight_decay:
        lets.append(("gd", g + rule.weight_decay * p))
        g = Var("gd")
    u: Expr = g
    if "second_moment" in state:
        v = rule.rho * Var("second_moment") + rule.square_weight * (g * g)
        lets.append(("v", v))
        writes.append(("second_moment", Var("v")))
    if "first_moment" in state:
        lets.append(("m", rule.beta1 * Var("first_moment") + (1 - rule.beta1) * g))
        writes.append(("first_moment", Var("m")))
        u = Var("m")
    if "second_moment" in state:
        root = sqrt(Var("v"))
        if rule.bias_correction:
            root = root / Var("c2")
            scalars.append("c2")
        u = u / (root + rule.eps)
    if rule.bias_correction and "first_moment" in state:
        u = u / Var("c1")
        scalars.append("c1")
    if "momentum_buffer" in state:
        lets.append(("b", rule.momentum * Var("momentum_buffer") + u))
        writes.append(("momentum_buffer", Var("b")))
        u = u + rule.momentum * Var("b") if rule.nesterov else Var("b")
    writes.append(("params", p - Var("lr") * u))
    candidates = ("params", "grads", *state)
    reads = _reads(lets, writes, candidates)
    return Program("update", reads, tuple(lets), tuple(writes), tuple(sorted(scalars)))


def update_scalars(rule, step: int, lr: float) -> dict[str, float]:
    """The scalars of `update_program` at step t (counted from 1)."""
    scalars = {"lr": lr}
    if rule.bias_correction:
        scalars["c1"] = 1 - rule.beta1 ** step
        scalars["c2"] = (1 - rule.rho ** step) ** 0.5
    return scalars


# ---- rendering and evaluation

def cuda_source(program: Program, dtype: str = "float32") -> str:
    """One `extern "C"` kernel named after the program, in the frame of lower.cuda."""
    t = CTYPES[dtype]
    written = set(program.outputs)
    params = [f"{'' if a in written else 'const '}{t}* __restrict__ a_{a}"
              for a in program.arrays]
    params += [f"const {t} {s}" for s in program.scalars]
    lines = [""]
    lines += [f"        const {t} {a} = a_{a}[i];" for a in program.reads]
    lines += [f"        const {t} {name} = {cuda(e, t)};" for name, e in program.lets]
    lines += [f"        a_{name}[i] = {cuda(e, t)};" for name, e in program.writes]
    return grid_kernel(program.name, ", ".join(params), "\n".join(lines) + "\n", t)


def evaluate_program(program: Program, arrays: dict, scalars: dict, xp, dtype: str) -> dict:
    """Run a program with NumPy (or any array module) over whole arrays.

    Returns the written values by name; arrays given for a written name (in-place
    updates) are overwritten too.
    """
    env = {name: arrays[name] for name in program.reads}
    env.update({name: xp.asarray(scalars[name], dtype=dtype) for name in program.scalars})
    for name, e in program.lets:
        env[name] = evaluate(e, env, xp, dtype)
    # every write reads the values from before the launch, as the kernel does
    results = {name: xp.asarray(evaluate(e, env, xp, dtype), dtype=dtype)
               for name, e in program.writes}
    for name, value in results.items():
        if name in arrays:
            arrays[name][...] = value
            results[name] = arrays[name]
    return results


@overridable
def run_program(xp, program: Program, arrays: dict, scalars: dict | None = None,
                dtype: str = "float32") -> dict:
    """The program's written arrays by name. Arrays given under a written name are updated
    in place; the others are new. Every array read must have one shape (after
    broadcasting): a kernel indexes them all alike. Here the program is evaluated with
    `xp`, slowly but exactly; a runtime may run it as one kernel."""
    launches[str(dtype)] += 1
    return evaluate_program(program, arrays, scalars or {}, xp, dtype)
