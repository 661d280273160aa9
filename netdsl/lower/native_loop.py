"""C source for a whole recurrence: one function runs every time step forward, one BPTT.

The host's loop calls a few NumPy functions per member per time step, and at an
Elman cell's or an LSTM's sizes (a few thousand numbers per step) the calls cost more
than the arithmetic. For the native target a loop whose members are dense layers on one
input, fused elementwise chains and splits of a feature axis, over vectors (rank-1
features), becomes two C functions: the recurrent GEMMs call the BLAS that NumPy ships
with (its address passed in), the chains are loops over each step's rows.

Arrays cross the call as one table of pointers (`slots`): per member with storage its
(T, B, width) values, the sequences read, each state's initial values (delay, B,
width), the parameters; then, for backward, the members' gradients, the sequences'
and the initial values'. A split is a view of its parent:
(parent, column offset, the parent's row stride), and so is its gradient. Each function
runs the whole batch through every step (blocks of rows on threads of their own lost to
BLAS's threads: docs/cpu.md); a pooled kernel's split each step over the thread pool
(netdsl.lower.native_pool): the GEMMs at their output's columns, the passes at the
batch's rows. Only text is made here; netdsl.runtime.native.loops compiles, feeds and
calls it, and computes the dense layers' weight gradients after the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from netdsl.lower.codegen import Program
from netdsl.lower.cuda import CTYPES
from netdsl.lower.fuse import FusedChain
from netdsl.lower.native import simd_declarations
from netdsl.lower.native_gemm import PACKED_GEMM, PANEL
from netdsl.lower.plan import State
from netdsl.lower.schedule import MEMBER, SEQ, STATE, LoopSegment
from netdsl.ops.base import Op
from netdsl.ops.expr import Call, Expr, Var, c, functions_used, names

__all__ = ["LoopKernel", "loop_kernel"]

# CBLAS's enumerations
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# how a pooled kernel splits a part of its step: at the step's rows (a pass), at a dense
# layer's output columns (its GEMM), or not at all (on the calling thread)
ROWS, COLUMNS, WHOLE = "rows", "columns", "whole"

# the most weights a pooled function keeps packed (step_t.packed)
MAX_PACKED = 8

_POOL_DECLARATIONS = [
    "/* the thread pool (netdsl.lower.native_pool) and what each part of a step reads */",
    "typedef void (*part_t)(void*, long long, long long);",
    "typedef void (*pool_t)(part_t, void*, long long);",
    "typedef struct { gemm_t gemm; long long t, B; void* const* a;",
    f"                 float* packed[{MAX_PACKED}]; }} step_t;",
    "",
    "/* part `part` of `parts` even shares of n, in blocks of `align` */",
    "static inline void share(long long n, long long align, long long part, long long parts,",
    "                         long long* lo, long long* hi) {",
    "    const long long blocks = (n + align - 1) / align;",
    "    *lo = blocks * part / parts * align;",
    "    *hi = blocks * (part + 1) / parts * align;",
    "    if (*lo > n) *lo = n;",
    "    if (*hi > n) *hi = n;",
    "}",
    "",
]



@dataclass(frozen=True)
class LoopKernel:
    """One loop's C source (functions `loop_forward` and `loop_backward`) and its slots.

    `storage`: members whose values the functions write, (T, B, width) each; `seqs`:
    sequences read, (T, B, width); `states`: each state's initial values; `params`:
    (step node, parameter name) pairs; `transposed`: the parameters also passed
    transposed, (inputs, units), the dense layers' weights, which forward multiplies by
    without BLAS transposing them (OpenBLAS's sgemm at an LSTM's step takes 1.5 times as
    long with B transposed); `widths`: every member's and input's width.
    A member's values are kept for every step only if they are `kept` (read after the
    loop, by a later step as a state, or by backward); the others, and the gradients not
    in `summed` (received from later steps, read after the loop), take one step's room.
    """

    source: str
    storage: tuple[str, ...]
    seqs: tuple[str, ...]
    states: tuple[State, ...]
    params: tuple[tuple[str, str], ...]
    transposed: tuple[tuple[str, str], ...]
    widths: dict
    kept: frozenset
    summed: frozenset
    views: dict        # a column block's node -> (its parent, the block's first column)
    # a sequence -> the member whose gradient is the same array: a chain that adds the
    # two (an LSTM's hoisted input projection and its recurrent product) gives both the
    # same gradient, so backward writes it once, into one (T, B, width) array
    aliases: dict
    # a chain that adds a sequence to a recurrent product -> that product: the loop
    # copies the sequence's step into the chain's output and has the GEMM add into it
    folds: dict
    # ("value" or "grad", member) the functions never touch: a folded add's gradient and
    # its product's value, what a fused pass holds in registers; their arrays are empty
    idle: frozenset
    # a member whose array holds, from forward on, the function of it that the chain
    # reading it applies and whose backward reads it through that alone (an LSTM's gates'
    # sigmoids): forward writes the function's value over the member's, backward reads it
    # instead of computing it again; member -> (chain, input index, the function)
    activated: dict
    # the functions split each step over the process's thread pool (`loop_kernel`)
    pooled: bool = False
    # whether its pooled functions pack a weight once a call for their own GEMM (float32,
    # split columns in panels of PANEL: netdsl.lower.native_gemm)
    packed: bool = False
    # the floats of the room its functions pack weights into, a slot after the lengths
    # that the runtime fills with a NumPy array (so that tracemalloc and the memory report
    # count it); None: no such slot (not a packing kernel)
    pack_floats: int | None = None

    def rows(self, node: str, steps: int, grad: bool = False) -> int:
        """How many steps of `node`'s values (or gradients) its array holds."""
        if ("grad" if grad else "value", node) in self.idle:
            return 0
        return steps if node in (self.summed if grad else self.kept) else 1


def loop_kernel(segment: LoopSegment, types: dict, dtype: str, needs: dict,
                index_type: str, gemm: str, padded: bool = False,
                pooled: bool = False, packed: bool = False) -> LoopKernel | None:
    """The kernel of `segment`, or None when a member is of a kind it does not cover.

    `needs[node]` are the member's differentiated inputs (absent: backward skips it);
    `index_type` is the BLAS's integer ("long long" for ILP64) and `gemm` its name for
    the message of a comment only. A `padded` kernel takes each sequence's length (a
    slot after the parameters): past its end a state holds its last value, and its
    gradient there flows on to the step before, as runtime.loops does (a length of 0 or
    less holds the initial value from step 0 on: a checkpointed span's lengths count from
    its first step).

    A `pooled` kernel's functions take the thread pool's `pool_run` and a number of
    parts after the GEMM (netdsl.lower.native_pool) and split every step: a dense
    layer's GEMM at its output's columns, each part calling the GEMM on its block (BLAS
    held at one thread by the caller), and a pass over the step's rows at its rows; a
    call of the pool between them is the barrier. What must see every row (a padded
    state's hold after a dense layer, clearing a step's gradients) runs on the calling
    thread. A `packed` one, in float32, multiplies by each weight whose split columns
    come in panels of PANEL packed once a call (a GEMM of its own, on batches of a
    multiple of 8 rows; otherwise BLAS's).
    """
    widths = {}
    for step, route in zip(segment.steps, segment.routes):
        for r in route:
            if r.kind not in (MEMBER, SEQ, STATE):
                return None
        for name in (step.node, *(_ref_node(r) for r in route)):
            dims = types[name].dims
            if len(dims) != 1 or types[name].classes is not None:
                return None
            widths[name] = dims[0]
        if not _covered(step):
            return None
    # a column block of a member: (the member, the block's first column)
    splits = {step.node: (step.inputs[0], step.op.column_block(widths[step.inputs[0]]))
              for step in segment.steps if _is_view(step)}
    if any(first is None for _, first in splits.values()):
        return None
    if any(node in segment.stored for node in splits) or any(
            r.ref.source in splits for route in segment.routes for r in route if r.kind == STATE):
        return None
    storage = tuple(s.node for s in segment.steps if s.node not in splits)
    seqs = tuple(dict.fromkeys(r.ref for route in segment.routes for r in route
                               if r.kind == SEQ))
    if not seqs:    # the sequence read gives the loop its length
        return None
    states = tuple(segment.loop.states)
    params = tuple((s.node, name) for s in segment.steps for name in s.params)
    transposed = tuple((s.node, "weight") for s in segment.steps if s.op.column_linear)
    kept, summed, from_output = _lifetimes(segment, splits)
    aliases = _aliases(segment, splits, summed, from_output, needs)
    folds = _folds(segment, splits, kept, summed, aliases)
    activated = _activated(segment, splits, widths, from_output)
    writer = _Writer(segment, widths, splits, storage, seqs, states, params, transposed,
                     dtype, kept, summed, from_output, padded, aliases, folds, activated,
                     pooled, packed)
    source = writer.module(needs, index_type, gemm)
    return LoopKernel(source, storage, seqs, states, params, transposed, widths, kept, summed,
                      splits, aliases, folds, writer.idle(), activated, pooled,
                      writer.packed_any, writer.pack_floats if writer.packed else None)


def _readers(segment: LoopSegment) -> dict:
    """(route kind, node) -> how many inputs of the loop's steps read it that way."""
    readers: dict = {}
    for route in segment.routes:
        for r in route:
            readers[(r.kind, _ref_node(r))] = readers.get((r.kind, _ref_node(r)), 0) + 1
    return readers


def _sum_of(program) -> tuple[str, str] | None:
    """The two inputs a program's output is the sum of, if that is all it computes."""
    (_, expr), = program.writes
    lets = dict(program.lets)
    while isinstance(expr, Var) and expr.name in lets:
        expr = lets[expr.name]
    if (isinstance(expr, Call) and expr.fn == "add"
            and all(isinstance(a, Var) and a.name.startswith("x") for a in expr.args)):
        return tuple(a.name for a in expr.args)
    return None


def _folds(segment: LoopSegment, splits: dict, kept: frozenset, summed: frozenset,
           aliases: dict) -> dict:
    """Chains whose add the recurrent GEMM can do (LoopKernel.folds): the chain is the
    sum of a sequence and a dense layer's output, the two with one gradient (aliased), the
    product read by that chain alone and its value by nothing, the sum's gradient made in
    the loop alone (a view's, its blocks'). The sum then needs no pass of its own either
    way: its values are the sequence's copied and the GEMM's added (beta = 1), and its
    gradient is the product's, which is the sequence's."""
    linear = {s.node for s in segment.steps if s.op.column_linear}
    outside = set(segment.stored) | {s.source for s in segment.loop.states}
    folds = {}
    for step, route in zip(segment.steps, segment.routes):
        terms = _sum_of(step.op.program) if isinstance(step.op, FusedChain) else None
        if terms is None or terms[0] == terms[1]:
            continue
        seq, product = (route[int(name[1:])] for name in terms)
        if seq.kind != SEQ:
            seq, product = product, seq
        if (seq.kind == SEQ and product.kind == MEMBER and product.ref in linear
                and aliases.get(seq.ref) == product.ref and product.ref not in kept
                and step.node not in summed and step.node not in outside
                and step.node not in splits):
            folds[step.node] = product.ref
    return folds


def _aliases(segment: LoopSegment, splits: dict, summed: frozenset, from_output: frozenset,
             needs: dict) -> dict:
    """Sequences whose gradient is a member's, as LoopKernel.aliases: a chain reads both,
    each nowhere else, and its backward writes the same expression to both (an add's gy).
    The member's gradient must come from that chain alone: not a value read after the
    loop or by a state, not a parent of column blocks; and every step keeps it (summed)."""
    readers: dict = {}
    for step, route in zip(segment.steps, segment.routes):
        for r in route:
            readers[(r.kind, _ref_node(r))] = readers.get((r.kind, _ref_node(r)), 0) + 1
    outside = (set(segment.stored) | {s.source for s in segment.loop.states}
               | {parent for parent, _ in splits.values()})
    aliases = {}
    for step, route in zip(segment.steps, segment.routes):
        wanted = needs.get(step.node)
        if not isinstance(step.op, FusedChain) or wanted is None:
            continue
        program = step.op.backward_program(wanted, output=step.node in from_output,
                                           merged=False)
        written = {n: c(e, "float") for n, e in program.writes}
        for j, seq in enumerate(route):
            for k, member in enumerate(route):
                if (seq.kind == SEQ and member.kind == MEMBER and wanted[j] and wanted[k]
                        and written.get(f"dx{j}") == written.get(f"dx{k}")
                        and readers[(SEQ, seq.ref)] == 1 and readers[(MEMBER, member.ref)] == 1
                        and member.ref in summed and member.ref not in outside
                        and member.ref not in splits and seq.ref not in aliases
                        and member.ref not in aliases.values()):
                    aliases[seq.ref] = member.ref
    return aliases


def _activated(segment: LoopSegment, splits: dict, widths: dict, from_output: frozenset) -> dict:
    """LoopKernel.activated: a chain's input that its backward, for every set of needs,
    reads only through one let computing a math function of that input alone (sigmoid's
    tanh), read by that chain alone and by nothing else in the loop, after it or in
    backward: not a state's source, stored, the input of a dense layer (its weight
    gradient), a chain's output read back as such, or the parent of column blocks; a
    column block the same, its parent read through its blocks alone, which must not
    overlap. Decided once for every backward, as the lifetimes are: one forward serves
    all."""
    readers = _readers(segment)
    sources = {state.source for state in segment.loop.states}
    parents = {parent for parent, _ in splits.values()}
    dense_inputs = {r.ref for step, route in zip(segment.steps, segment.routes)
                    if step.op.column_linear for r in route if r.kind == MEMBER}

    def private(node: str) -> bool:
        return (node not in segment.stored and node not in sources and node not in dense_inputs
                and node not in from_output and readers.get((STATE, node), 0) == 0)

    def blocks_apart(parent: str) -> bool:
        spans = sorted((first, first + widths[node]) for node, (p, first) in splits.items()
                       if p == parent)
        return all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))

    activated = {}
    for step, route in zip(segment.steps, segment.routes):
        if not isinstance(step.op, FusedChain) or step.node in from_output:
            continue
        for j, r in enumerate(route):
            node = r.ref if r.kind == MEMBER else None
            if (node is None or readers[(MEMBER, node)] != 1 or not private(node)
                    or node in parents):
                continue
            if node in splits:
                parent = splits[node][0]
                blocks = sum(1 for p, _ in splits.values() if p == parent)
                if (parent in splits or readers[(MEMBER, parent)] != blocks
                        or not private(parent) or not blocks_apart(parent)):
                    continue
            let = _only_through(step.op, len(route), j)
            if let is not None:
                activated[node] = (step.node, j, let)
    return activated


def _only_through(chain: FusedChain, inputs: int, j: int) -> tuple[str, Expr] | None:
    """The let (name, expression) through which alone every backward program of `chain`
    (any needs, from its inputs) reads input j, when it computes a math function of x_j
    alone; else None."""
    x, found = f"x{j}", None
    for needs in product((False, True), repeat=inputs):
        if not any(needs):
            continue
        program = chain.backward_program(needs, output=False, merged=False)
        if x not in program.reads:
            continue
        lets = [(n, e) for n, e in program.lets if x in names(e)]
        if (len(lets) != 1 or names(lets[0][1]) != {x} or not functions_used(lets[0][1])
                or any(x in names(e) for _, e in program.writes)):
            return None
        if found is not None and (found[0] != lets[0][0]
                                  or c(found[1], "double") != c(lets[0][1], "double")):
            return None
        found = lets[0]
    return found


def _lifetimes(segment: LoopSegment, splits: dict) -> tuple[frozenset, frozenset, frozenset]:
    """(members whose values every step keeps, members whose gradients every step keeps,
    the chains whose backward reads their output rather than their inputs).

    Values: those read after the loop or as a state, and those backward reads: a chain's
    inputs or output, a dense layer's input (its weight gradient is one GEMM after the
    loop). The same for every backward, so that one forward serves all. A chain whose
    gradients follow from its output reads the output when that costs no more rows than
    its inputs would (it is kept anyway, or the inputs are not).
    Gradients: a state's (later steps add into earlier ones), a stored member's (they
    arrive from after the loop), a dense layer's output's (the weight gradient's GEMM).
    """
    def parent(node):
        while node in splits:
            node = splits[node][0]
        return node

    sources = {state.source for state in segment.loop.states}
    kept, summed = set(segment.stored) | sources, set(segment.stored) | sources
    chains = []
    for step, route in zip(segment.steps, segment.routes):
        if isinstance(step.op, FusedChain):
            chains.append((step, route))
        elif step.op.column_linear:
            summed.add(step.node)
            if route[0].kind == MEMBER:
                kept.add(parent(route[0].ref))

    def choose(base: set, known: set) -> tuple[set, set]:
        kept, from_output = set(base), set()
        for step, route in chains:
            program = step.op.backward_program((True,) * len(route), output=False,
                                               merged=False)
            inputs = {parent(r.ref) for j, r in enumerate(route)
                      if f"x{j}" in program.reads and r.kind == MEMBER}
            if step.op.from_output and (step.node in kept or inputs - kept
                                        or (step.node in known and inputs)):
                from_output.add(step.node)
                kept.add(step.node)
            else:
                kept |= inputs
        return kept, from_output

    # a chain whose output a later chain's backward reads anyway (an LSTM's tanh(c), read
    # by h's) reads that output too, if that keeps no more members: a second choice that
    # knows what the first kept
    kept_first, from_output = choose(kept, set())
    kept_second, from_second = choose(kept, kept_first)
    if kept_second <= kept_first:
        kept_first, from_output = kept_second, from_second
    return frozenset(kept_first - set(splits)), frozenset(summed), frozenset(from_output)


def _ref_node(route) -> str:
    return route.ref.source if route.kind == STATE else route.ref


def _covered(step) -> bool:
    """A fused chain, a linear map of one vector (a GEMM per step), or a column block."""
    if isinstance(step.op, FusedChain):
        return True
    return (step.op.column_linear and len(step.inputs) == 1) or _is_view(step)


def _is_view(step) -> bool:
    return len(step.inputs) == 1 and type(step.op).column_block is not Op.column_block


class _Writer:
    """The C text of one loop, with each value's place at time t."""

    def __init__(self, segment, widths, splits, storage, seqs, states, params, transposed,
                 dtype, kept, summed, from_output, padded, aliases, folds, activated,
                 pooled=False, packed=False):
        self.segment, self.widths, self.splits = segment, widths, splits
        self.pooled = pooled
        # packing applies to a pooled float32 kernel; self.packs: the function's weights
        # packed, (pointer, its row stride, K, N), by their place in step_t.packed
        self.packed = pooled and packed and dtype == "float32"
        self.packs: list = []
        self.packed_any = False   # whether either function packs a weight
        self.pack_floats = 0      # the room the function that packs more needs
        # a pass's rows: a part's, r0 .. r1, when the pool splits the step
        self.rows = ("for (long long r = r0; r < r1; r++)" if pooled
                     else "for (long long r = 0; r < B; r++)")
        self.aliases, self.folds = aliases, folds
        # (chain, input index) -> the let whose value forward writes over that input's
        self.activated = {(chain, j): let for chain, j, let in activated.values()}
        self.folded_into = {product: chain for chain, product in folds.items()}
        self.kept, self.summed, self.from_output = kept, summed, from_output
        self.padded = padded
        self.readers = _readers(segment)
        self.units = self._units()
        # gradients that live for one step start from zero at every step, unless nothing
        # writes them in memory (a fused run's own members sum theirs in registers)
        self.scratch = [n for n in storage if n not in summed and n not in folds
                        and not any(n in self._local_grads(u) for u in self.units)]
        self.t = CTYPES[dtype]
        self.slot = {}
        for name in storage:
            self.slot[("value", name)] = len(self.slot)
        for name in seqs:
            self.slot[("seq", name)] = len(self.slot)
        for state in states:
            self.slot[("init", state.node)] = len(self.slot)
        for key in params:
            self.slot[("param", key)] = len(self.slot)
        for key in transposed:
            self.slot[("transposed", key)] = len(self.slot)
        if padded:
            self.slot[("lengths", None)] = len(self.slot)
        if self.packed:
            self.slot[("packs", None)] = len(self.slot)
        for name in storage:
            self.slot[("grad", name)] = len(self.slot)
        for name in seqs:
            self.slot[("seq_grad", name)] = len(self.slot)
        for state in states:
            self.slot[("init_grad", state.node)] = len(self.slot)

    def _units(self) -> list[list]:
        """The steps as the functions run them, in order: a dense layer alone, or a run of
        chains of one width as one pass over the step's rows (unpadded: a padded batch
        holds states between chains). Column blocks and folded adds run nowhere."""
        units: list[list] = []
        for step, route in zip(self.segment.steps, self.segment.routes):
            if step.node in self.splits or step.node in self.folds:
                continue
            chain = isinstance(step.op, FusedChain)
            if chain and units and self._joins(units[-1], step, route):
                units[-1].append((step, route))
            else:
                units.append([(step, route)])
        return units

    def _joins(self, unit: list, step, route) -> bool:
        """Whether a chain can run in the pass of `unit`: a run of chains of its width,
        whose members it reads whole (not a block of one), at step t."""
        if self.padded or not isinstance(unit[-1][0].op, FusedChain):
            return False
        nodes = {s.node for s, _ in unit}
        if self.widths[unit[0][0].node] != self.widths[step.node]:
            return False
        return all(r.kind != MEMBER or r.ref in nodes or self._root(r.ref) not in nodes
                   for r in route)

    def _root(self, node: str) -> str:
        while node in self.splits:
            node = self.splits[node][0]
        return node

    def idle(self) -> frozenset:
        """LoopKernel.idle."""
        values = set(self.folded_into).union(*(self._local_values(u) for u in self.units))
        grads = set(self.folds).union(*(self._local_grads(u) for u in self.units))
        return frozenset({("value", n) for n in values} | {("grad", n) for n in grads})

    def _local_grads(self, unit: list) -> set:
        """The members of a fused run whose gradients only its own chains make: summed in
        registers, never in memory."""
        return self._internal(unit, self.summed)

    def _local_values(self, unit: list) -> set:
        """The members of a fused run whose values only its own chains read, and not
        backward: kept in registers, never written."""
        return self._internal(unit, self.kept)

    def _internal(self, unit: list, held: frozenset) -> set:
        """The members of a run of two chains or more, not `held` for other steps, that
        no step outside the run reads (not as a state, a column block, after the loop)."""
        if len(unit) < 2:
            return set()
        nodes = {s.node for s, _ in unit}
        inside: dict = {}
        for step, route in unit:
            for r in route:
                if r.kind == MEMBER and r.ref in nodes:
                    inside[r.ref] = inside.get(r.ref, 0) + 1
        parents = {parent for parent, _ in self.splits.values()}
        return {n for n in nodes if n not in held and n not in parents
                and n not in self.segment.stored
                and sum(count for (_, ref), count in self.readers.items() if ref == n)
                == inside.get(n, 0)}

    def array(self, kind: str, key) -> str:
        return f"(({self.t}*)a[{self.slot[(kind, key)]}])"

    # a value's (or a gradient's) place at time t: (pointer, row stride)
    def member(self, node: str, grad: bool, t: str = "t") -> tuple[str, str]:
        if grad and node in self.folds:     # a folded add's gradient is its product's
            node = self.folds[node]
        if node in self.splits:
            parent, first = self.splits[node]
            pointer, stride = self.member(parent, grad, t)
            return f"({pointer} + {first})", stride
        w = self.widths[node]
        array = self.array('grad' if grad else 'value', node)
        if node not in (self.summed if grad else self.kept):
            return array, str(w)    # one step's room
        return f"({array} + ({t})*B*{w})", str(w)

    def source_of(self, route, grad: bool) -> tuple[str, str]:
        """An input's place at time t, by its route."""
        if route.kind == MEMBER:
            return self.member(route.ref, grad)
        if route.kind == SEQ:
            w = self.widths[route.ref]
            kind = "seq_grad" if grad else "seq"
            return f"({self.array(kind, route.ref)} + t*B*{w})", str(w)
        state = route.ref
        w = self.widths[state.source]
        earlier, _ = self.member(state.source, grad, f"t - {state.delay}")
        initial = f"({self.array('init_grad' if grad else 'init', state.node)} + t*B*{w})"
        return f"(t >= {state.delay} ? {earlier} : {initial})", str(w)

    def module(self, needs: dict, index_type: str, gemm: str) -> str:
        t = self.t
        programs = []
        for step in self.segment.steps:
            if isinstance(step.op, FusedChain):
                programs.append(step.op.program)
                if needs.get(step.node) is not None and any(needs[step.node]):
                    programs.append(self._backward_program(step, needs[step.node]))
        lines = ["#include <math.h>", "#include <string.h>", ""]
        lines += simd_declarations(programs, t)
        lines += [f"/* {gemm}: CBLAS's ?gemm */",
                  f"typedef {index_type} I;",
                  f"typedef void (*gemm_t)(int, int, int, I, I, I, {t}, const {t}*, I, "
                  f"const {t}*, I, {t}, {t}*, I);", ""]
        if self.pooled:
            lines[1:1] = ["#include <stdlib.h>"]
            lines += _POOL_DECLARATIONS
        functions = [self.forward(), self.backward(needs)]
        if self.packed_any:
            lines += PACKED_GEMM
        return "\n".join(lines + functions)

    def forward(self) -> str:
        self.packs = []
        parts = []   # (how the pool splits it, lines, the columns it splits)
        for unit in self.units:
            if len(unit) > 1:
                parts.append((ROWS, self._fused_forward(unit), None))
                continue
            [(step, route)] = unit
            op = step.op
            y, ldy = self.member(step.node, False)
            if op.column_linear and step.node in self.folded_into:
                parts.append((COLUMNS, self._folded_dense_forward(step, route),
                              self.widths[step.node]))
            elif op.column_linear:
                x, ldx = self.source_of(route[0], False)
                parts.append((COLUMNS, self._dense_forward(step, route, x, ldx, y, ldy),
                              self.widths[step.node]))
            else:
                inputs = [self.source_of(r, False) for r in route]
                arrays = {f"x{j}": p for j, p in enumerate(inputs)}
                arrays["y"] = (y, ldy)
                parts.append((ROWS, self._elementwise(self._forward_program(step), arrays,
                                                      self.widths[step.node],
                                                      accumulate=False), None))
            if self.padded and step.node in self.segment.depth:
                how, lines, columns = parts[-1]
                if how == ROWS:   # a row's hold reads that row alone
                    parts[-1] = (how, lines + self._hold(step.node), columns)
                else:
                    parts.append((WHOLE, self._hold(step.node), None))
        return self._function("loop_forward", parts)

    def _folded_dense_forward(self, step, route) -> list[str]:
        """A recurrent product and the sequence its chain adds: the sequence's step copied
        into the sum's place, then the GEMM adds the product there (beta = 1)."""
        chain = self.folded_into[step.node]
        chain_route = next(r for s, r in zip(self.segment.steps, self.segment.routes)
                           if s.node == chain)
        seq = next(r for r in chain_route if r.kind == SEQ)
        y, ldy = self.member(chain, False)
        x, ldx = self.source_of(route[0], False)
        if self.pooled:   # the part's columns of every row
            source, ldseq = self.source_of(seq, False)
            copy = (f"for (long long r = 0; r < B; r++) memcpy({y} + r*{ldy} + c0, "
                    f"{source} + r*{ldseq} + c0, (c1 - c0)*sizeof({self.t}));")
        else:
            copy = (f"memcpy({y}, {self.source_of(seq, False)[0]}, "
                    f"B*{self.widths[chain]}*sizeof({self.t}));")
        return [copy] + self._dense_forward(step, route, x, ldx, y, ldy, beta=1)

    def _fused_forward(self, unit: list) -> list[str]:
        """A run of chains as one pass: each member's value in a register, read from there
        by the chains after it, written only where another step or backward reads it."""
        t, places, body = self.t, _Places(self.t, self.rows), []
        local = {}
        skip = self._local_values(unit)
        for k, (step, route) in enumerate(unit):
            program = self._forward_program(step)
            for j, r in enumerate(route):
                if f"x{j}" not in program.reads:
                    continue
                value = (local[r.ref] if r.kind == MEMBER and r.ref in local
                         else places.read(*self.source_of(r, False)))
                body.append(f"const {t} k{k}_x{j} = {value};")
            body += [f"const {t} k{k}_{n} = {c(_prefixed(e, k), t)};" for n, e in program.lets]
            (_, expr), *activations = program.writes
            body.append(f"const {t} k{k}_y = {c(_prefixed(expr, k), t)};")
            local[step.node] = f"k{k}_y"
            if step.node not in skip:
                body.append(f"{places.write(*self.member(step.node, False))} = k{k}_y;")
            for n, e in activations:   # over the input it is a function of
                body.append(f"{places.write(*self.source_of(route[int(n[1:])], False))} = "
                            f"{c(_prefixed(e, k), t)};")
        return places.loop(body, self.widths[unit[0][0].node])

    def _forward_program(self, step) -> Program:
        """The chain's program, writing after y each LoopKernel.activated input's function
        (a let of the program's own) over that input."""
        program = step.op.program
        writes = [(f"x{j}", _let_value(program, let))
                  for (chain, j), let in self.activated.items() if chain == step.node]
        if not writes:
            return program
        return Program(program.name, program.reads, program.lets, (*program.writes, *writes))

    def _backward_program(self, step, needs: tuple[bool, ...]) -> Program:
        """The chain's backward program; each member's gradient has its own place: every
        input's is written. An activated input's let reads the value forward left in its
        place instead of computing it."""
        program = step.op.backward_program(needs, output=step.node in self.from_output,
                                           merged=False)
        taken = {let[0]: f"x{j}" for (chain, j), let in self.activated.items()
                 if chain == step.node and f"x{j}" in program.reads}
        if not taken:
            return program
        lets = tuple((n, Var(taken[n]) if n in taken else e) for n, e in program.lets)
        return Program(program.name, program.reads, lets, program.writes)

    def _hold(self, node: str) -> list[str]:
        """Past a sequence's end a state keeps its value of the step before: at step 0 (a
        checkpointed span's first, whose lengths count from it) its initial value."""
        w, now = self.widths[node], self.member(node, False)[0]
        before = self._before(node, False)
        return [f"{self.rows} if (t >= "
                f"((const long long*)a[{self.slot[('lengths', None)]}])[r])",
                f"    memcpy({now} + r*{w}, {before} + r*{w}, {w}*sizeof({self.t}));"]

    def _pass_back(self, node: str) -> list[str]:
        """A held state's gradient past a sequence's end goes whole to the step before."""
        w, now = self.widths[node], self.member(node, True)[0]
        before = self._before(node, True)
        return [f"{self.rows} if (t >= "
                f"((const long long*)a[{self.slot[('lengths', None)]}])[r])",
                f"    for (long long i = 0; i < {w}; i++) {{ {before}[r*{w} + i] += "
                f"{now}[r*{w} + i]; {now}[r*{w} + i] = 0; }}"]

    def _before(self, node: str, grad: bool) -> str:
        """The place of `node`'s value (or gradient) at step t - 1: before step 0 the last
        initial value of a state that reads it."""
        earlier = self.member(node, grad, "t - 1")[0]
        state = next(s for s in self.segment.loop.states if s.source == node)
        kind = "init_grad" if grad else "init"
        initial = f"({self.array(kind, state.node)} + {state.delay - 1}*B*{self.widths[node]})"
        return f"(t > 0 ? {earlier} : {initial})"

    def backward(self, needs: dict) -> str:
        self.packs = []
        parts = []   # as forward's
        for unit in reversed(self.units):
            if len(unit) > 1:
                parts.append((ROWS, self._fused_backward(unit, needs), None))
                continue
            [(step, route)] = unit
            wanted = needs.get(step.node)
            op = step.op
            if wanted is None:
                continue
            body = []
            if self.padded and step.node in self.segment.depth:
                body += self._pass_back(step.node)
            gy, ldgy = self.member(step.node, True)
            if op.column_linear:
                if body:   # the GEMM reads every row of the gradient passed back
                    parts.append((WHOLE, body, None))
                parts.append((COLUMNS, self._dense_backward(step, route, wanted, gy, ldgy),
                              self.widths[_ref_node(route[0])]))
                continue
            if any(wanted):
                arrays = {f"x{j}": self.source_of(r, False) for j, r in enumerate(route)}
                arrays["y"] = self.member(step.node, False)
                arrays["gy"] = (gy, ldgy)
                for j, r in enumerate(route):
                    # an aliased sequence's gradient is the member's, written once
                    if wanted[j] and not (r.kind == SEQ and r.ref in self.aliases):
                        arrays[f"dx{j}"] = self.source_of(r, True)
                body += self._elementwise(self._backward_program(step, wanted), arrays,
                                          self.widths[step.node], accumulate=True)
            parts.append((ROWS, body, None))
        clear = [f"memset({self.array('grad', n)}, 0, B*{self.widths[n]}*sizeof({self.t}));"
                 for n in self.scratch]
        if clear:
            parts.insert(0, (WHOLE, clear, None))
        return self._function("loop_backward", parts, reverse=True)

    def _fused_backward(self, unit: list, needs: dict) -> list[str]:
        """A run of chains' backward as one pass, last chain first: a member's gradient is
        what reached its memory (from later steps, other steps, after the loop) plus what
        the run's later chains gave it in registers."""
        t, places, body = self.t, _Places(self.t, self.rows), []
        nodes = {s.node for s, _ in unit}
        given: dict = {n: [] for n in nodes}    # a member -> the registers adding into it
        in_memory = nodes - self._local_grads(unit)
        for k, (step, route) in reversed(list(enumerate(unit))):
            wanted = needs.get(step.node)
            if wanted is None or not any(wanted):
                continue
            program = self._backward_program(step, wanted)
            for name in program.reads:
                if name == "gy":
                    terms = ([places.read(*self.member(step.node, True))]
                             if step.node in in_memory else []) + given[step.node]
                    value = " + ".join(terms) or _literal_zero(t)
                elif name == "y":
                    value = places.read(*self.member(step.node, False))
                else:
                    value = places.read(*self.source_of(route[int(name[1:])], False))
                body.append(f"const {t} k{k}_{name} = {value};")
            body += [f"const {t} k{k}_{n} = {c(_prefixed(e, k), t)};" for n, e in program.lets]
            for n, e in program.writes:
                j = int(n[2:])
                r = route[j]
                if not wanted[j] or (r.kind == SEQ and r.ref in self.aliases):
                    continue   # an aliased sequence's gradient is the member's
                if r.kind == MEMBER and r.ref in nodes:
                    body.append(f"const {t} k{k}_{n} = {c(_prefixed(e, k), t)};")
                    given[r.ref].append(f"k{k}_{n}")
                else:
                    body.append(f"{places.write(*self.source_of(r, True))} += "
                                f"{c(_prefixed(e, k), t)};")
        return places.loop(body, self.widths[unit[0][0].node])

    def _function(self, name: str, parts: list, reverse: bool = False) -> str:
        """The function running `parts` (how the pool splits each, its lines, the columns
        it splits) at every step, last step first if `reverse`."""
        if self.pooled:
            return self._pooled_function(name, parts, reverse)
        loop = ("for (long long t = T - 1; t >= 0; t--) {" if reverse
                else "for (long long t = 0; t < T; t++) {")
        inner = "\n".join("        " + line for _, lines, _ in parts for line in lines)
        return (f"void {name}(gemm_t gemm, const long long T, const long long B, "
                f"void* const* a) {{\n"
                f"    {loop}\n{inner}\n    }}\n}}\n")

    def _pooled_function(self, name: str, parts: list, reverse: bool) -> str:
        """A function per part of the step, taking (the step, part, parts); the loop calls
        the pool on each (WHOLE ones on its own thread, as one part)."""
        # a part's columns start a cache line, or a packed panel
        align = PANEL if self.packed else 64 // (4 if self.t == "float" else 8)
        text, calls = [], []
        for k, (how, lines, columns) in enumerate(parts):
            part = f"{name}_part{k}"
            head = [f"static void {part}(void* step, const long long part, "
                    f"const long long parts) {{",
                    "    const step_t* s = (const step_t*)step;",
                    "    const gemm_t gemm = s->gemm; const long long t = s->t, B = s->B;",
                    "    void* const* a = s->a;",
                    "    (void)gemm; (void)t; (void)a;"]
            if how == COLUMNS:
                head += ["    long long c0, c1;",
                         f"    share({columns}, {align}, part, parts, &c0, &c1);",
                         "    if (c0 >= c1) return;"]
            else:
                head += ["    long long r0, r1;", "    share(B, 1, part, parts, &r0, &r1);",
                         "    if (r0 >= r1) return;"]
            text += head + ["    " + line for line in lines] + ["}", ""]
            calls.append(f"{part}(&s, 0, 1);" if how == WHOLE else f"pool({part}, &s, parts);")
        loop = ("for (s.t = T - 1; s.t >= 0; s.t--) {" if reverse
                else "for (s.t = 0; s.t < T; s.t++) {")
        inner = "\n".join("        " + line for line in calls)
        # the weights packed before the first step, into the room the runtime hands over
        # (LoopKernel.pack_floats: NumPy's memory, which its accounts count)
        packing, room = [], 0
        for i, (w, ldw, K, N) in enumerate(self.packs):
            packing += [f"    if (B % 8 == 0) {{",
                        f"        s.packed[{i}] = (float*)a[{self.slot[('packs', None)]}] + {room};",
                        f"        pack_panels({w}, {ldw}, {K}, {N}, s.packed[{i}]);",
                        "    }"]
            room += K * N
        self.pack_floats = max(self.pack_floats, room)
        text.append(f"void {name}(gemm_t gemm, pool_t pool, const long long parts, "
                    f"const long long T, const long long B, void* const* a) {{\n"
                    f"    step_t s = {{gemm, 0, B, a, {{0}}}};\n"
                    + "".join(line + "\n" for line in packing) +
                    f"    {loop}\n{inner}\n    }}\n}}\n")
        return "\n".join(text)

    def _packed(self, w: str, ldw: int, K: int, N: int) -> int | None:
        """The place in step_t.packed of weight `w` (K x N, row stride ldw) packed for this
        function, or None where it is not packed."""
        if not self.packed or N % PANEL or len(self.packs) >= MAX_PACKED:
            return None
        self.packs.append((w, ldw, K, N))
        self.packed_any = True
        return len(self.packs) - 1

    def _param(self, step, name: str) -> str:
        return self.array("param", (step.node, name))

    def _dense_forward(self, step, route, x, ldx, y, ldy, beta: int = 0) -> list[str]:
        units, inputs = self.widths[step.node], self.widths[_ref_node(route[0])]
        w = self.array("transposed", (step.node, "weight"))
        if self.pooled:   # the part's columns c0 .. c1 of the output
            lines = [f"gemm({ROW_MAJOR}, {NO_TRANS}, {NO_TRANS}, B, c1 - c0, {inputs}, 1, "
                     f"{x}, {ldx}, {w} + c0, {units}, {beta}, {y} + c0, {ldy});"]
            packed = self._packed(w, units, inputs, units)
            if packed is not None:
                lines = [f"if (s->packed[{packed}]) gemm_packed(B, c1 - c0, {inputs}, {x}, "
                         f"{ldx}, s->packed[{packed}] + c0*{inputs}, {beta}, {y} + c0, {ldy});",
                         "else " + lines[0]]
            return lines + self._bias_add(step, y, ldy, "c0", "c1")
        lines = [f"gemm({ROW_MAJOR}, {NO_TRANS}, {NO_TRANS}, B, {units}, {inputs}, 1, "
                 f"{x}, {ldx}, {w}, {units}, {beta}, {y}, {ldy});"]
        return lines + self._bias_add(step, y, ldy, "0", units)

    def _bias_add(self, step, y: str, ldy, c0, c1) -> list[str]:
        """The step's bias added to columns c0 .. c1 of every row of y, if it has one."""
        if "bias" not in step.params:
            return []
        b = self._param(step, "bias")
        return [f"{{ {self.t}* y = {y}; const {self.t}* b = {b};",
                f"  for (long long r = 0; r < B; r++) for (long long c = {c0}; c < {c1};"
                f" c++) y[r*{ldy} + c] += b[c]; }}"]

    def _dense_backward(self, step, route, wanted, gy, ldgy) -> list[str]:
        """The input's gradient; the weights' come after the loop, from one GEMM over
        every step's rows (runtime.native.loops), which BLAS runs far faster than T
        small ones."""
        if not wanted[0]:
            return []
        units, inputs = self.widths[step.node], self.widths[_ref_node(route[0])]
        w = self._param(step, "weight")
        gx, ldgx = self.source_of(route[0], True)
        if self.pooled:   # the part's columns c0 .. c1 of the input's gradient
            call = (f"gemm({ROW_MAJOR}, {NO_TRANS}, {NO_TRANS}, B, c1 - c0, {units}, 1, "
                    f"{gy}, {ldgy}, {w} + c0, {inputs}, 1, {gx} + c0, {ldgx});")
            packed = self._packed(w, inputs, units, inputs)
            if packed is None:
                return [call]
            return [f"if (s->packed[{packed}]) gemm_packed(B, c1 - c0, {units}, {gy}, {ldgy}, "
                    f"s->packed[{packed}] + c0*{units}, 1, {gx} + c0, {ldgx});", "else " + call]
        return [f"gemm({ROW_MAJOR}, {NO_TRANS}, {NO_TRANS}, B, {inputs}, {units}, 1, "
                f"{gy}, {ldgy}, {w}, {inputs}, 1, {gx}, {ldgx});"]

    def _elementwise(self, program, arrays: dict, width: int, accumulate: bool) -> list[str]:
        """The program over B rows of `width`: reads and writes at each array's stride; a
        write adds into its array with `accumulate` (gradients)."""
        t = self.t
        lines = ["{"]
        for name in dict.fromkeys((*program.reads, *program.outputs)):
            if name in arrays:
                pointer, stride = arrays[name]
                const = "" if name in program.outputs else "const "
                lines.append(f"  {const}{t}* restrict p_{name} = {pointer}; "
                             f"const long long s_{name} = {stride};")
        lines.append(f"  {self.rows} {{")
        lines.append("    #pragma omp simd")
        lines.append(f"    for (long long i = 0; i < {width}; i++) {{")
        lines += [f"      const {t} {n} = p_{n}[r*s_{n} + i];" for n in program.reads]
        lines += [f"      const {t} {n} = {c(e, t)};" for n, e in program.lets]
        for n, e in program.writes:
            if n not in arrays:
                continue
            op = "+=" if accumulate else "="
            lines.append(f"      p_{n}[r*s_{n} + i] {op} {c(e, t)};")
        lines += ["    }", "  }", "}"]
        return lines


class _Places:
    """The arrays one fused pass reads and writes, a pointer each (one per place, so that
    `restrict` holds), and the pass's loop over the step's rows."""

    def __init__(self, ctype: str, rows: str):
        self.t, self.rows = ctype, rows
        self.pointers: dict = {}    # (pointer, row stride) -> (name, written)

    def _name(self, pointer: str, stride: str, written: bool) -> str:
        name, was = self.pointers.get((pointer, stride), (f"p{len(self.pointers)}", False))
        self.pointers[(pointer, stride)] = (name, was or written)
        return f"{name}[r*{stride} + i]"

    def read(self, pointer: str, stride: str) -> str:
        return self._name(pointer, stride, False)

    def write(self, pointer: str, stride: str) -> str:
        return self._name(pointer, stride, True)

    def loop(self, body: list[str], width: int) -> list[str]:
        lines = ["{"]
        for (pointer, _), (name, written) in self.pointers.items():
            const = "" if written else "const "
            lines.append(f"  {const}{self.t}* restrict {name} = {pointer};")
        lines += [f"  {self.rows} {{", "    #pragma omp simd",
                  f"    for (long long i = 0; i < {width}; i++) {{"]
        lines += ["      " + line for line in body]
        return lines + ["    }", "  }", "}"]


def _let_value(program: Program, let: tuple[str, Expr]) -> Expr:
    """The let's value in `program`: its variable where the program computes the same
    expression under the same name, else the expression."""
    name, expr = let
    same = dict(program.lets).get(name)
    if same is not None and c(same, "double") == c(expr, "double"):
        return Var(name)
    return expr


def _prefixed(expr: Expr, k: int) -> Expr:
    """`expr` with each variable named as the k-th chain of a fused pass names it."""
    if isinstance(expr, Var):
        return Var(f"k{k}_{expr.name}")
    if isinstance(expr, Call):
        return Call(expr.fn, tuple(_prefixed(a, k) for a in expr.args))
    return expr


def _literal_zero(ctype: str) -> str:
    return "0.0f" if ctype == "float" else "0.0"
