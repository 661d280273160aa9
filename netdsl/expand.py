"""Pass 2, expand: inline blocks, repetitions and loops into a flat `Program`.

Scalars (block parameters, loop variables, `4*n`) are evaluated here; tensor
expressions become node definitions. Every node keeps the span of the call that
made it and the block path it sits in (stage2/basic1/conv2).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from itertools import islice
from typing import Any, Callable

from netdsl import ast, dims
from netdsl.errors import (ShapeError, Span, SpecError, SpecErrors, closest, errors_of, leading,
                           suggest)
from netdsl.fmt import expr as source_text
from netdsl.ops import OPS
from netdsl.ops.base import ArgError, Op, bind, describe
from netdsl.program import Frame, NodeDef, Program, StartFrom, StateDef, call_notes, op_node
from netdsl.shapes import node_type
from netdsl.train_clause import clause_spans, evaluate_train
from netdsl.types import TensorType

__all__ = ["expand", "Loader", "IndependentErrors"]

# load(target, is_path, importing_file, span) -> the imported module
Loader = Callable[[str, bool, str, Any], ast.Module]
CONSTANTS = {"true": True, "false": False, "none": None}
# the name that throws a value away: `a, _ = split(x, 2)`
DISCARD = "_"
# the most a spec may expand to, in statements run and nodes made once loops, repeats
# and blocks multiply out: checking stays fast however the multiplications are nested
EXPANSION_BUDGET = 1_000_000
# undefined names and unknown layers given a "did you mean": each guess compares with
# every name in scope (or every layer), so a spec of thousands of them gets its errors
# without guesses past these
MISSPELLINGS_GUESSED = 100
# the layers of a network called with equal plain arguments share one op (True), or
# each gets an op of its own (False, the path before: kept to compare the two)
SHARE_OPS = True
# a block call with the arguments of an earlier one replays the nodes that call made,
# renamed into its own instance, instead of walking the body again (True); False walks
# every call (the path before, kept to compare the two). Only bodies whose walk can
# depend on nothing but the arguments replay, and only after a walk without errors.
REPLAY_BLOCKS = True
# a pipeline's stage of one layer with numbers written out (`-> dense(16)`, `-> relu`)
# takes the op an equal stage was given, found by the layer and numbers alone, without
# matching its arguments again (True); False matches every stage's (the path before)
REUSE_STAGE_OPS = True
_SCALAR_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
# `a + b` of two tensors: the op that declares the operator
_TENSOR_OPS = {op.operator: name for name, op in OPS.items() if op.operator is not None}


class Value:
    """A tensor: the output of node `node`."""

    __slots__ = ("node",)

    def __init__(self, node: str):
        self.node = node


class _OverBudget(SpecError):
    """The expansion would pass the budget: it stops at once, not statement by statement."""


class _Poison(Value):
    """The value of an expression that already failed: uses of it report nothing more.
    POISON is its one instance."""

    def __init__(self):
        super().__init__("")


POISON = _Poison()


@dataclass(slots=True)  # one per name bound: a big spec has hundreds of thousands
class _Binding:
    name: str
    value: Any
    span: Any
    used: bool = False


@dataclass
class _StateSlot:
    decl: StateDef
    delayed: dict[int, str] = field(default_factory=dict)  # delay -> state node id
    misused: bool = False  # already reported: used without a delay
    start: str | None = None  # the node of the value it starts from (StartFrom)


@dataclass
class _Shared:
    """`share NAME = call`: the first use defines the parameters, later uses reuse them."""

    name: str
    call: ast.Call
    uses: int = 0
    owners: dict[str, str] = field(default_factory=dict)  # local path -> first node id


class _Scope:
    """The names and states of one body as it runs: the top level's, or a block call's."""

    # one per block call: a big spec makes tens of thousands
    __slots__ = ("prefix", "frames", "env", "history", "states", "shared", "counters", "inputs",
                 "outputs", "share", "defined", "bodies", "used_early")

    def __init__(self, prefix: str, frames: tuple[Frame, ...], inputs: list[Value] | None = None,
                 share: tuple[_Shared, str] | None = None):
        self.prefix = prefix
        self.frames = frames
        self.env: dict[str, _Binding] = {}
        self.history: list[_Binding] = []
        self.states: dict[str, _StateSlot] = {}
        self.shared: dict[str, _Shared] = {}
        self.counters: dict[str, int] = {}  # names made so far, by base
        self.inputs = inputs  # tensors a block call passes to its `in`
        self.outputs: list[Value] | None = None
        self.share = share  # inside a shared instance: (it, path within it)
        self.bodies: dict[int, Any] = {}  # the bodies run, by id (see _defined_at)
        self.used_early: set[str] = set()  # used before its definition (reported)

    def fresh(self, base: str, taken) -> str:
        counters = self.counters
        while True:
            count = counters[base] = counters.get(base, 0) + 1
            candidate = f"{self.prefix}{base}{count}"
            if candidate not in taken:
                return candidate


class IndependentErrors(SpecErrors):
    """Errors that leave the program whole (a bad train setting, an unused value, a second
    network header): later passes can still run on `program` and report their own."""

    def __init__(self, errors: list[SpecError], program: Program):
        super().__init__(errors)
        self.program = program


def expand(module: ast.Module, load: Loader | None = None) -> Program:
    """Inline every block, repetition and loop of a parsed spec.

    Raises
    ------
    IndependentErrors
        When every error leaves the program whole; it carries the program.
    SpecError, SpecErrors
        For unknown names and layers, bad arguments, misuse of blocks and states.
    """
    return _Expander(module, load).run()


class _Expander:
    def __init__(self, module: ast.Module, load: Loader | None):
        self.module = module
        self.load = load
        self.nodes: dict[str, NodeDef] = {}
        self.losses: dict[str, str] = {}
        self.train: dict[str, Any] = {}
        self.train_spans: dict[str, Span] = {}
        self.errors: list[SpecError] = []
        self.independent: list[SpecError] = []  # errors after which the program is still whole
        self.consumed: set[str] = set()  # nodes that are some node's input
        self.named: set[str] = set()     # nodes renamed for the name a statement gave them
        self.types: dict[str, TensorType] = {}  # inferred when a spec reads a dimension
        self.guesses_left = MISSPELLINGS_GUESSED
        self.work = 0  # statements run and nodes made: the budget spent
        # the loops and repeats running: [rounds, what, where, rounds left with this one]
        self.factors: list[list] = []
        self.sizes: dict[int, int] = {}  # a body's static size, by id
        self.definitions: dict[int, dict[str, Span]] = {}  # the names a body defines, by id
        self.blocks: dict[str, ast.Block] = {}
        self.depth = 0
        self.failed_imports: list[str] = []
        self.ops: dict | None = {} if SHARE_OPS else None  # ops made, shared (see ops.base.bind)
        self.takes_input: dict[str, bool] = {}  # see _takes_input
        # block calls walked once, by block and arguments (see REPLAY_BLOCKS, _Template);
        # replaying shares the first walk's ops, so it needs them shared
        self.templates: dict | None = {} if REPLAY_BLOCKS and SHARE_OPS else None
        self.replayable: dict[str, bool] = {}  # see _replayable
        # the op of a stage of numbers written out, by _stage_key (see REUSE_STAGE_OPS)
        self.stage_ops: dict | None = {} if REUSE_STAGE_OPS and SHARE_OPS else None

    # ---- driver
    def run(self) -> Program:
        self._collect_blocks(self.module, set())
        headers = [i for i in self.module.items if isinstance(i, ast.NetworkDecl)]
        for header in headers[1:]:
            self.independent.append(SpecError(
                f"a second network header: this file already names its network '{headers[0].name}'",
                header.span, f"a spec describes one network; the first header is at {headers[0].span}"))
        top = _Scope("", ())
        body = [i for i in self.module.items if not isinstance(i, (ast.Import, ast.NetworkDecl, ast.Block))]
        try:
            self._exec_body(body, top)
        except _OverBudget as exc:
            self.errors.append(exc)
            SpecErrors.collect(self.errors)
        self._finish_scope(top)
        if not self.errors and not self.losses and not self.nodes:
            # an empty file (or one of only comments) is pointed at its first line
            first_line = Span(self.module.file, 1, 1, 1, 1)
            span = self.module.items[0].span if self.module.items else first_line
            if self.module.blocks:
                self.errors.append(SpecError("this file defines blocks but no network", span,
                                             f'use them from a spec: import "{self.module.file}"'))
            else:
                self.errors.append(SpecError("the spec defines no network", span,
                                             "declare an input and some layers: see docs/language.md"))
        self._check_checkpointing()
        if self.errors:
            SpecErrors.collect(self.errors + self.independent)
        name = self.module.network_name or _stem(self.module.file)
        names = {key: b.value.node for key, b in top.env.items() if isinstance(b.value, Value)}
        program = Program(name, self.nodes, self.losses, self.train, self.module.file,
                          self.train_spans, names)
        if self.independent:
            raise IndependentErrors(self.independent, program)
        return program

    def _check_checkpointing(self) -> None:
        """bptt(checkpoint=k) keeps a recurrence's states: a spec without one is told so."""
        bptt = (self.train or {}).get("bptt")
        if bptt is None or "checkpoint" not in bptt[1]:
            return
        if not any(node.kind == "state" for node in self.nodes.values()):
            span = self.train_spans.get("bptt.checkpoint") or self.train_spans.get("bptt")
            self.independent.append(SpecError(  # the network itself is whole
                "bptt(checkpoint=...) keeps a recurrence's states, but the spec has no state",
                span, "remove bptt(...) from the train clause, or add a recurrence"))

    def _collect_blocks(self, module: ast.Module, seen: set[str]) -> None:
        seen.add(module.file)
        for item in module.items:
            if isinstance(item, ast.Import):
                self._import(item, module, seen)
            elif isinstance(item, ast.Block):
                earlier = self.blocks.get(item.name)
                if earlier is not None and earlier is not item:
                    self.errors.append(SpecError(
                        f"block '{item.name}' is defined twice", item.span,
                        f"the other definition is at {earlier.span}"))
                self.blocks[item.name] = item
                if item.name in OPS or item.name == dims.SHAPE:
                    what = "function" if item.name == dims.SHAPE else "layer"
                    self.errors.append(SpecError(
                        f"block '{item.name}' has the name of a built-in {what}", item.span,
                        "rename the block"))

    def _import(self, item: ast.Import, module: ast.Module, seen: set[str]) -> None:
        if self.load is None:
            self.errors.append(SpecError("imports are not available here", item.span))
            return
        try:
            imported = self.load(item.target, item.is_path, module.file, item.span)
        except SpecError as exc:
            module_name = _stdlib_meant(item)
            if module_name is not None:
                exc.hint = f"'{module_name}' is a standard library module: write import {module_name}"
            self.errors.extend(errors_of(exc))
            self.failed_imports.append(item.target)
            return
        if imported.file in seen:
            return
        for stmt in imported.items:
            if not isinstance(stmt, (ast.Import, ast.Block, ast.NetworkDecl)):
                self.errors.append(SpecError(
                    "an imported file may hold only blocks and imports", stmt.span,
                    f"this file is imported from {item.span}"))
                break
        self._collect_blocks(imported, seen)

    # ---- statements
    def _exec_body(self, body, scope: _Scope) -> None:
        scope.bodies.setdefault(id(body), body)  # see _defined_at
        for stmt in body:
            self.work += 1
            if self.work > EXPANSION_BUDGET:
                raise self._over_budget(self.work, stmt.span)
            try:
                self._exec(stmt, scope)
            except _OverBudget:
                raise
            except (SpecError, SpecErrors) as exc:
                # the train clause defines nothing that later statements or passes read
                self._report(errors_of(exc), scope, independent=isinstance(stmt, ast.Train))
                self._after_failure(stmt, scope)

    def _report(self, errors: list[SpecError], scope: _Scope, independent: bool = False) -> None:
        """Keep errors; one inside a block body notes the calls that led to it."""
        for error in errors:
            if scope.frames and not error.notes:
                error.notes = call_notes(scope.frames, error.span)
            (self.independent if independent else self.errors).append(error)

    def _after_failure(self, stmt, scope: _Scope) -> None:
        """Keep one mistake from causing more reports: poison what the statement defines."""
        for name in _names_in(stmt):
            if name in scope.env:
                scope.env[name].used = True
            if name in scope.states:
                scope.states[name].misused = True
        for name in getattr(stmt, "targets", ()):
            self._bind(scope, name, POISON, stmt.span, used=True)
        declared = [stmt.name] if isinstance(stmt, ast.IODecl) else \
            [i.name for i in stmt.items] if isinstance(stmt, ast.StateDecl) else []
        for name in declared:  # a failed declaration still declares the name
            if name not in scope.env and name not in scope.states:
                self._bind(scope, name, POISON, stmt.span, used=True)
        if isinstance(stmt, ast.Out) and scope.outputs is None:
            scope.outputs = [POISON] * len(stmt.values)

    def _exec(self, stmt, scope: _Scope) -> None:
        kind = type(stmt)  # the syntax classes have no subclasses: one test per kind
        if kind is ast.Assign:
            targets = stmt.targets
            value = self._eval(stmt.value, scope, want=len(targets))
            if type(value) is Value and len(targets) == 1:  # one name, one tensor: most statements
                name = targets[0]
                span = stmt.target_spans[0] if stmt.target_spans else stmt.span
                if name in CONSTANTS:
                    raise SpecError(f"'{name}' is a constant and cannot be assigned", span)
                if name != DISCARD:
                    if value.node not in self.named:
                        value = self._rename(value, scope, name)
                    self._bind(scope, name, value, span)
                return
            values = value if isinstance(value, tuple) else (value,)
            if len(values) != len(stmt.targets):
                raise SpecError(
                    f"{len(stmt.targets)} names but the value gives {len(values)}", stmt.span)
            spans = stmt.target_spans or (stmt.span,) * len(stmt.targets)
            for name, span in zip(stmt.targets, spans):
                if name in CONSTANTS:
                    raise SpecError(f"'{name}' is a constant and cannot be assigned", span)
            # a node given twice (a block's `out x, x`) keeps its id: renamed, the other
            # value would name a node no longer there
            if len(values) == 1:  # the common case, without a Counter per statement
                given = {values[0].node: 1} if isinstance(values[0], Value) else {}
                newest = False
            else:
                given = Counter(v.node for v in values if isinstance(v, Value))
                newest = set(given) == set(islice(reversed(self.nodes), len(given)))
            named = []
            for name, val, span in zip(stmt.targets, values, spans):
                if name != DISCARD and isinstance(val, Value) and not isinstance(val, _Poison) \
                        and val.node not in self.named and given[val.node] == 1:
                    # `i, f, g, o = split(z, 4)` makes nodes i, f, g, o; `h = v`: v keeps its node
                    val = self._rename(val, scope, name)
                named.append(val)
                if name != DISCARD:  # `a, _ = split(x, 2)`: the value is not wanted
                    self._bind(scope, name, val, span)
            if newest:  # a renamed node moved last: keep the split's order, discards included
                for val in named:
                    self.nodes[val.node] = self.nodes.pop(val.node)
        elif kind is ast.IODecl:
            self._declare_io(stmt, scope)
        elif kind is ast.StateDecl:
            for item in stmt.items:
                if item.name in scope.states or item.name in scope.env:
                    raise SpecError(f"'{item.name}' is already defined", item.span)
                init, start = self._state_init(item, scope)
                scope.states[item.name] = _StateSlot(
                    StateDef(item.name, self._type(item.type, scope), init, item.span),
                    start=start)
        elif kind is ast.Loss:
            self._loss(stmt, scope)
        elif kind is ast.Train:
            if scope.frames:
                raise SpecError("a train clause belongs at the top level, not in a block", stmt.span)
            if self.train:
                raise SpecError("the spec has two train clauses", stmt.span, "merge them into one")
            self.train_spans = clause_spans(stmt)
            self.train = evaluate_train(stmt, lambda e: self._scalar(e, scope))
        elif kind is ast.Share:
            if stmt.call.name not in self.blocks and stmt.call.name not in OPS:
                raise self._unknown_layer(stmt.call, scope)
            scope.shared[stmt.name] = _Shared(stmt.name, stmt.call)
            self._bind(scope, stmt.name, scope.shared[stmt.name], stmt.span, used=True)
        elif kind is ast.For:
            self._for(stmt, scope)
        elif kind is ast.In:
            self._bind_ins(stmt, scope)
        elif kind is ast.Out:
            if scope.inputs is None:
                raise SpecError("`out` belongs inside a block", stmt.span,
                                "a network's results are its losses")
            if scope.outputs is not None:
                raise SpecError("a block has one `out` line", stmt.span, "list all outputs on it: out a, b")
            scope.outputs = [self._tensor(self._eval(v, scope), v) for v in stmt.values]

    def _declare_io(self, stmt: ast.IODecl, scope: _Scope) -> None:
        if scope.frames:
            raise SpecError(f"an {stmt.kind} is declared at the top level, not in a block", stmt.span,
                            "a block receives tensors through `in`")
        type_ = self._type(stmt.type, scope)
        if stmt.name in self.nodes or stmt.name in scope.env:
            earlier = self.nodes[stmt.name].span if stmt.name in self.nodes else scope.env[stmt.name].span
            raise SpecError(f"'{stmt.name}' is already defined", stmt.span,
                            f"it is first defined at {earlier}; give this one another name")
        self.nodes[stmt.name] = NodeDef(stmt.name, stmt.kind, stmt.span, type=type_)
        self._bind(scope, stmt.name, Value(stmt.name), stmt.span)

    def _state_init(self, item: ast.StateItem, scope: _Scope):
        """(the initial value, the node of a tensor it starts from or None)."""
        if item.init is None:
            return "zeros", None
        if isinstance(item.init, ast.Name) and item.init.id in ("zeros", "learned"):
            return item.init.id, None
        value = self._eval(item.init, scope)
        if isinstance(value, Value) and not isinstance(value, _Poison):
            return StartFrom(source_text(item.init)), value.node  # a decoder's encoder state
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError("a state starts as zeros, learned, a number or a tensor",
                            item.init.span, f"for example: state {item.name} : [64] = learned, "
                            f"or = last(encoded)")
        return float(value), None

    def _loss(self, stmt: ast.Loss, scope: _Scope) -> None:
        if scope.frames:
            raise SpecError("a loss belongs at the top level, not in a block", stmt.span,
                            "return the value with `out` and write the loss in the network")
        value = self._tensor(self._eval(stmt.value, scope), stmt.value)
        if isinstance(value, _Poison):
            return
        name = stmt.name or ("loss" if "loss" not in self.losses else f"loss{len(self.losses) + 1}")
        if name in self.losses:
            raise SpecError(f"two losses are named '{name}'", stmt.span)
        self.losses[name] = self._rename(value, scope, name).node

    def _for(self, stmt: ast.For, scope: _Scope) -> None:
        start = self._whole(stmt.start, scope, "the loop bound")
        stop = self._whole(stmt.stop, scope, "the loop bound")
        if stop - start > 100_000:
            raise SpecError(f"a loop of {stop - start + 1} iterations is too long", stmt.span)
        saved = scope.env.get(stmt.var)
        with self._multiplied(max(stop - start + 1, 0), _size(stmt.body, self.sizes),
                              f"for {stmt.var}", stmt.span) as factor:
            for i in range(start, stop + 1):
                factor[3] = stop + 1 - i
                scope.env[stmt.var] = _Binding(stmt.var, i, stmt.span, used=True)
                self._exec_body(stmt.body, scope)
        if saved is None:
            scope.env.pop(stmt.var, None)
        else:
            scope.env[stmt.var] = saved

    @contextmanager
    def _multiplied(self, count: int, size: int, what: str, span: Span):
        """Run a loop or repeat of `count` rounds of a body of `size` statements and layers
        (at least), once the product with the loops and repeats around it is known to fit
        in the budget."""
        factor = [count, what, span, count]
        self.factors.append(factor)
        try:
            planned = self.work + math.prod(f[3] for f in self.factors) * max(size, 1)
            if count > 1 and planned > EXPANSION_BUDGET:
                raise self._over_budget(planned, span, size)
            yield factor
        finally:
            self.factors.pop()

    def _over_budget(self, planned: int, span: Span, size: int = 1) -> _OverBudget:
        """The error for an expansion past the budget, with the product that reaches it."""
        factors = [f"{n:,} ({what}, {where})" for n, what, where, _ in self.factors if n > 1]
        if size > 1:
            factors.append(f"{size:,} (statements and layers in each round)")
        product = f": {' x '.join(factors)}" if factors else ""
        return _OverBudget(
            f"the spec expands to at least {planned:,} statements and layers, more than the "
            f"{EXPANSION_BUDGET:,} a spec may have{product}", span,
            "make these loops or repeats shorter, or nest fewer of them")

    def _bind_ins(self, stmt: ast.In, scope: _Scope) -> None:
        if scope.inputs is None:
            raise SpecError("`in` belongs inside a block", stmt.span, "a network declares `input x : [...]`")
        if len(stmt.names) != len(scope.inputs):
            block = scope.frames[-1].block
            for name in stmt.names:
                self._bind(scope, name, POISON, stmt.span, used=True)
            raise SpecError(
                f"block '{block}' takes {len(stmt.names)} input(s) ({', '.join(stmt.names)}) "
                f"but was given {len(scope.inputs)}", scope.frames[-1].span,
                f"pass its tensors first: {block}({', '.join(stmt.names)}, ...)")
        for name, value in zip(stmt.names, scope.inputs):
            self._bind(scope, name, value, stmt.span, used=True)

    def _bind(self, scope: _Scope, name: str, value, span, used: bool = False) -> None:
        binding = _Binding(name, value, span, used or name in scope.used_early)
        scope.env[name] = binding
        scope.history.append(binding)

    def _report_one(self, scope: _Scope, error: SpecError, independent: bool = False) -> None:
        self._report([error], scope, independent)

    def _finish_scope(self, scope: _Scope) -> None:
        for name, slot in scope.states.items():
            binding = scope.env.get(name)
            if binding is None:
                self._report_one(scope, SpecError(f"state '{name}' is never assigned", slot.decl.span,
                                             f"give its value for this step: {name} = ..."))
                continue
            if not slot.delayed and not slot.misused:
                self._report_one(scope, SpecError(f"state '{name}' is never read as {name}[t-1]",
                                             slot.decl.span, "declare it as a plain value instead"),
                                 independent=True)
            binding.used = True
            if isinstance(binding.value, _Poison) or not isinstance(binding.value, Value):
                continue
            for delay, node in slot.delayed.items():
                start = [(slot.start, 0)] if slot.start is not None else []
                self.nodes[node].inputs = [(binding.value.node, delay)] + start
        for binding in scope.history:
            if not binding.used and isinstance(binding.value, Value) and not isinstance(binding.value, _Poison):
                kind = self.nodes[binding.value.node].kind
                what = {"input": "input", "target": "target"}.get(kind, "value")
                self._report_one(scope, SpecError(f"{what} '{binding.name}' is never used", binding.span,
                                             "use it, or delete it"), independent=True)

    # ---- expressions
    def _eval(self, expr, scope: _Scope, want: int = 1):
        kind = type(expr)  # the syntax classes have no subclasses: one test per kind
        if kind is ast.Name:
            return self._lookup(expr, scope)
        if kind is ast.Pipeline:  # before the rarer kinds: most statements are one
            return self._pipeline(expr, scope, want)
        if kind is ast.Number or kind is ast.String:
            return expr.value
        if kind is ast.Call:
            if expr.name == dims.SHAPE:
                return dims.shape_of(self._tensor_type(expr, scope))
            return self._call(expr, scope, None, want)
        if kind is ast.BinOp:
            return self._binop(expr, scope)
        if kind is ast.ListExpr:
            return [self._scalar(item, scope) for item in expr.items]
        if kind is ast.Neg:
            operand = self._eval(expr.operand, scope)
            if isinstance(operand, Value):
                return self._op_node("scale", [operand], {"factor": -1.0}, expr.span, scope)
            return -self._number(operand, expr.operand)
        if kind is ast.Dimension:
            return dims.dimension(self._tensor_type(expr, scope), expr.tensor.id, expr.name,
                                  expr.span, expr.name_span)
        if kind is ast.Index:
            return self._index(expr, scope)
        if kind is ast.Delayed:
            return self._delayed(expr, scope)
        raise SpecError(f"cannot evaluate {type(expr).__name__}", getattr(expr, "span", None))

    def _tensor_type(self, expr: ast.Dimension | ast.Call, scope: _Scope) -> TensorType:
        """The type of the tensor `x.channels` or `shape(x)` reads, as the shapes pass
        will infer it."""
        args = getattr(expr, "args", ())
        if isinstance(expr, ast.Dimension):
            name = expr.tensor
        elif len(args) == 1 and args[0].name is None and isinstance(args[0].value, ast.Name):
            name = args[0].value
        else:
            raise SpecError(f"{dims.SHAPE} takes one named tensor", expr.span,
                            f"name the tensor first: y = ..., then {dims.SHAPE}(y)[0]")
        value = self._lookup(name, scope)
        if isinstance(value, _Poison):
            raise SpecErrors([])  # the statement that defines it failed, and was reported
        if not isinstance(value, Value):
            raise SpecError(f"'{name.id}' is {describe(value)}, not a tensor: only a tensor has "
                            "dimensions", name.span)
        return self._type_of(value.node, expr.span, source_text(expr))

    def _type_of(self, node_id: str, span: Span, reading: str) -> TensorType:
        """The type of a node made so far, and of those it reads, inferred once each."""
        pending = [node_id]
        while pending:
            node = self.nodes[pending[-1]]
            if node.id in self.types:
                pending.pop()
                continue
            unknown = [source for source, _ in node.inputs if source not in self.types]
            if node.kind == "op" and unknown:
                pending.extend(unknown)
                continue
            pending.pop()
            try:
                inputs = [self.types.get(source) for source, _ in node.inputs]
                self.types[node.id] = node_type(node.kind, node.type, node.op, inputs)
            except ShapeError as exc:  # the error the shapes pass would report, found sooner
                raise SpecError(exc.message, node.span, exc.hint, call_notes(node.scope, node.span)
                                + ((f"reading {reading}", span),)) from None
        return self.types[node_id]

    def _index(self, expr: ast.Index, scope: _Scope):
        """`shape(x)[i]`: an item of a list, from 0 (or from -1 at the end)."""
        values = self._eval(expr.value, scope)
        if not isinstance(values, list):
            raise SpecError(f"[i] reads an item of a list, but {source_text(expr.value)} is "
                            f"{'a tensor' if isinstance(values, Value) else describe(values)}",
                            expr.span, f"for example {dims.SHAPE}(x)[0]")
        index = self._whole(expr.index, scope, "the index")
        return dims.item(values, index, source_text(expr.value), expr.index.span)

    def _lookup(self, name: ast.Name, scope: _Scope):
        binding = scope.env.get(name.id)
        if binding is not None:
            binding.used = True
            if isinstance(binding.value, _Shared):
                raise SpecError(f"'{name.id}' is a shared layer, not a value", name.span,
                                f"apply it: x -> {name.id}")
            return binding.value
        if name.id in CONSTANTS:
            return CONSTANTS[name.id]
        if name.id in scope.states:
            scope.states[name.id].misused = True
            raise SpecError(
                f"'{name.id}' is used before it is computed in this step: a cycle without a delay",
                name.span, f"write {name.id}[t-1] for its value at the previous step")
        if name.id in OPS or name.id in self.blocks:
            raise SpecError(f"'{name.id}' is a layer, not a value", name.span,
                            f"apply it to a value: x -> {name.id}")
        if name.id == DISCARD:
            raise SpecError("'_' discards a value: it cannot be read", name.span,
                            "give the value a name to use it")
        later = self._defined_at(scope, name.id)
        if later is not None and (later.line, later.col) > (name.span.line, name.span.col):
            scope.used_early.add(name.id)  # its definition is not also reported as unused
            raise SpecError(f"'{name.id}' is defined later, at line {later.line}", name.span,
                            f"statements run in order: move this use below line {later.line}, "
                            f"or define '{name.id}' before it")
        known = [*scope.env, *scope.states, *CONSTANTS]
        meant = None
        if self.guesses_left > 0:  # each guess reads every name: not for thousands of errors
            self.guesses_left -= 1
            meant = closest(name.id, known)
        if meant in scope.env:  # the value meant is used, if misspelt
            scope.env[meant].used = True
        raise SpecError(f"undefined name '{name.id}'", name.span,
                        f"did you mean '{meant}'?" if meant else None)

    def _definitions_of(self, body) -> dict[str, Span]:
        """Where a body defines each of its names: found once per body, however often the
        body runs (a block called 30,000 times)."""
        defined = self.definitions.get(id(body))
        if defined is None:
            defined = self.definitions[id(body)] = _definitions(body, {})
        return defined

    def _defined_at(self, scope: _Scope, name: str) -> Span | None:
        """Where the bodies a scope has run define `name`, the first that does; so a name
        used too early can say where it comes. Asked only when a name is missing, not
        worked out for every body run."""
        for body in scope.bodies.values():
            span = self._definitions_of(body).get(name)
            if span is not None:
                return span
        return None

    def _scalar(self, expr, scope: _Scope, what: str = "a number"):
        """A number or setting; `what` names it in errors: "the repeat count"."""
        value = self._eval(expr, scope)
        if isinstance(value, Value):
            used = "a tensor is used where a number is needed" if what == "a number" else \
                f"{what} must be a number, not a tensor"
            raise SpecError(used, expr.span)
        return value

    def _whole(self, expr, scope: _Scope, what: str) -> int:
        value = self._scalar(expr, scope, what)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise SpecError(f"{what} must be a whole number, got {describe(value)}", expr.span,
                            _whole_hint(expr))
        return int(value)

    @staticmethod
    def _number(value, expr):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"arithmetic needs numbers or tensors, got {value!r}", expr.span)
        return value

    def _tensor(self, value, expr):
        if not isinstance(value, Value):
            raise SpecError(f"expected a tensor, got the number {value!r}" if isinstance(value, (int, float))
                            else f"expected a tensor, got {value!r}", expr.span)
        return value

    def _binop(self, expr: ast.BinOp, scope: _Scope):
        left, right = self._eval(expr.left, scope), self._eval(expr.right, scope)
        if isinstance(left, _Poison) or isinstance(right, _Poison):
            return POISON
        if isinstance(left, Value) and isinstance(right, Value):
            return self._op_node(_TENSOR_OPS[expr.op], [left, right], {}, expr.span, scope)
        if isinstance(left, Value) or isinstance(right, Value):
            return self._scaled(expr, left, right, scope)
        a, b = self._number(left, expr.left), self._number(right, expr.right)
        if expr.op == "/":
            if b == 0:
                raise SpecError("division by zero", expr.right.span)
            result = a // b if isinstance(a, int) and isinstance(b, int) and a % b == 0 else a / b
        else:
            result = _SCALAR_OPS[expr.op](a, b)
        if not abs(result) <= 2**63:  # not finite, or far beyond any size: a typing mistake
            raise SpecError(f"the value {result:g} is too large", expr.span,
                            "numbers in a spec are sizes and rates, below 2**63")
        return result

    def _scaled(self, expr: ast.BinOp, left, right, scope: _Scope) -> Value:
        """A tensor with a number: one `scale` node, y = factor * x + shift."""
        tensor_left = isinstance(left, Value)
        tensor, number = (left, right) if tensor_left else (right, left)
        k = float(self._number(number, expr.right if tensor_left else expr.left))
        if expr.op == "+":
            attrs = {"shift": k}
        elif expr.op == "-":
            attrs = {"shift": -k} if tensor_left else {"factor": -1.0, "shift": k}
        elif expr.op == "*":
            attrs = {"factor": k}
        elif tensor_left:
            if k == 0:
                raise SpecError("division by zero", expr.right.span)
            attrs = {"factor": 1.0 / k}
        else:
            raise SpecError("a number divided by a tensor is not supported", expr.span,
                            "write the reciprocal with exp(-log(x)) or rearrange")
        return self._op_node("scale", [tensor], attrs, expr.span, scope)

    def _pipeline(self, expr: ast.Pipeline, scope: _Scope, want: int):
        source = expr.source  # most often a name: `x -> ...`
        value = self._lookup(source, scope) if type(source) is ast.Name else self._eval(source, scope)
        last_index = len(expr.stages) - 1
        stage_ops = None if scope.shared else self.stage_ops  # a shared instance may be `relu`
        for index, stage in enumerate(expr.stages):
            last = index == last_index
            if stage.repeat is None and stage_ops is not None and type(value) is Value \
                    and (want == 1 or not last):
                call = stage.call  # `-> dense(16)` as an earlier stage's op, if one was kept
                op = stage_ops.get(_stage_key(call) if call.args else call.name)
                if op is not None:
                    value = self._node(op, [value], call.span, scope)
                    continue
            if stage.repeat is None:  # most stages: one call of the tensor so far
                piped = value if type(value) is Value else self._piped(value, stage, expr)
                value = self._call(stage.call, scope, piped, want if last else 1)
                continue
            count = 1 if stage.repeat is None else self._whole(stage.repeat, scope, "the repeat count")
            if count < 0:  # x 0 skips the stage, so `x (n - 1)` works for n = 1
                raise SpecError(f"the repeat count must be 0 or more, got x {count}",
                                stage.repeat.span)
            if count > 10_000:
                raise SpecError(f"a stage repeated {count} times is too many", stage.repeat.span,
                                "repeat a stage at most 10000 times")
            if count == 1:  # one round multiplies nothing: no factor for the budget to weigh
                value = self._call(stage.call, scope, self._piped(value, stage, expr),
                                   want if last else 1)
                continue
            repeat = f"{scope.prefix}{stage.call.name}@{stage.span.line}:{stage.span.col}" if count > 1 else None
            block = self.blocks.get(stage.call.name)
            size = 1 if block is None else _size(block.body, self.sizes)
            with self._multiplied(count, size, f"{stage.call.name} x {count}",
                                  stage.repeat.span if stage.repeat else stage.span) as factor:
                for done in range(count):
                    factor[3] = count - done
                    which = f", the {_ordinal(done + 1)} repetition of '{_stage_text(stage)}'"
                    value = self._call(stage.call, scope, self._piped(value, stage, expr),
                                       want if last else 1, repeat, which)
        return value

    def _piped(self, value, stage: ast.Stage, expr: ast.Pipeline) -> Value:
        """The one tensor a pipeline carries into a stage."""
        if isinstance(value, tuple):
            raise SpecError(f"'{stage.call.name}' receives {len(value)} values; a "
                            "pipeline carries one", stage.span, "name the values: a, b = ...")
        return self._tensor(value, expr.source)

    def _delayed(self, expr: ast.Delayed, scope: _Scope) -> Value:
        slot = scope.states.get(expr.name)
        if slot is None:
            binding = scope.env.get(expr.name)
            if binding is not None and isinstance(binding.value, _Poison):
                return POISON  # its declaration failed and was reported
            meant = closest(expr.name, scope.states)
            if meant is not None:  # the state meant is read, if misspelt
                scope.states[meant].misused = True
            hint = (f"declare it: state {expr.name} : [n]" if binding is not None
                    else suggest(expr.name, scope.states))
            raise SpecError(f"'{expr.name}' is not a declared state", expr.span, hint)
        node = slot.delayed.get(expr.delay)
        if node is None:
            node = f"{scope.prefix}{expr.name}[t-{expr.delay}]"
            self.nodes[node] = NodeDef(node, "state", slot.decl.span, scope.frames,
                                       type=slot.decl.type, state=slot.decl)
            slot.delayed[expr.delay] = node
        return Value(node)

    # ---- calls: layers, blocks and shared instances
    def _call(self, call: ast.Call, scope: _Scope, piped: Value | None, want: int, repeat=None,
              which: str = ""):
        if piped is not None and not call.args:  # `-> relu`: the piped tensor alone
            tensors, scalars, keywords = [piped], [], {}
        else:
            tensors, scalars, keywords = self._arguments(call, scope, piped)
        if tensors[0] is POISON if len(tensors) == 1 else POISON in tensors:  # the one _Poison
            self._check_poisoned(call, scalars, keywords, scope)
            return POISON if want == 1 else (POISON,) * want
        shared = scope.shared.get(call.name)
        if shared is not None:
            if scalars or keywords:
                raise SpecError(f"'{call.name}' is a shared instance; its arguments are fixed where "
                                "it is declared", call.span,
                                f"apply it as x -> {call.name}, or share another instance for "
                                "other arguments")
            return self._use_shared(shared, tensors, call, scope, want)
        if call.name in self.blocks:
            return self._inline(self.blocks[call.name], tensors, scalars, keywords, call, scope, want,
                                repeat, which=which)
        cls = OPS.get(call.name)
        if cls is not None:
            if want == 1 and cls.arity == len(tensors) and not cls.multi_output and not keywords:
                # _apply_op's common case, without the call
                op = self._bind_op(cls, call, scalars, {}, keywords)
                if type(piped) is Value and self.stage_ops is not None and len(tensors) == 1:
                    self._keep_stage_op(call, cls, scalars, op)
                return self._node(op, tensors, call.span, scope)
            return self._apply_op(call, tensors, scalars, keywords, scope, want)
        raise self._unknown_layer(call, scope)

    def _keep_stage_op(self, call: ast.Call, cls, scalars, op: Op) -> None:
        """Keep the op of a stage of numbers written out for equal stages, when binding
        its arguments again gives that very op (plain values, shared)."""
        key = _stage_key(call)
        if key is not None and key not in self.stage_ops and call.name not in self.blocks \
                and bind(cls, [v for v, _ in scalars], {}, self.ops) is op:
            self.stage_ops[key] = op

    def _check_poisoned(self, call: ast.Call, scalars, keywords, scope: _Scope) -> None:
        """A call on a failed value: what does not depend on the value is still checked."""
        if call.name in scope.shared or call.name in self.blocks:
            return
        cls = OPS.get(call.name)
        if cls is None:
            raise self._unknown_layer(call, scope)
        if not cls.multi_output:
            self._bind_op(cls, call, scalars, {k: v for k, (v, _) in keywords.items()}, keywords)

    def _unknown_layer(self, call: ast.Call, scope: _Scope) -> SpecError | SpecErrors:
        binding = scope.env.get(call.name)
        if binding is not None and isinstance(binding.value, Value):
            binding.used = True  # used, though wrongly
            return SpecError(f"'{call.name}' is a value, not a layer", call.name_span or call.span,
                             f"combine values with an op, e.g. concat(x, {call.name})")
        if self.failed_imports:  # it may live in the module that failed to load: stop, report nothing
            return SpecErrors([])
        known = list(OPS) + list(self.blocks) + list(scope.shared)
        guess = None
        if self.guesses_left > 0:  # as for names: a guess compares with every layer
            self.guesses_left -= 1
            guess = suggest(call.name, known)
        hint = guess or "see the list of layers in docs/language.md"
        return SpecError(f"unknown layer '{call.name}'", call.name_span or call.span, hint)

    def _arguments(self, call: ast.Call, scope: _Scope, piped: Value | None):
        tensors: list[Value] = [piped] if piped is not None else []
        scalars: list[tuple[Any, Any]] = []
        keywords: dict[str, tuple[Any, Any]] = {}
        for arg in call.args:
            expr = arg.value  # a number written out, `dense(16)`, is most arguments
            value = expr.value if type(expr) is ast.Number else self._eval(expr, scope)
            if isinstance(value, tuple):
                raise SpecError("a value with several outputs cannot be an argument", arg.span,
                                "name the outputs first: a, b = ...")
            if arg.name is not None:
                if isinstance(value, Value):
                    raise SpecError(f"'{arg.name}=' takes a number or setting, not a tensor", arg.span,
                                    "pass tensors first, by position")
                if arg.name in keywords:
                    raise SpecError(f"argument '{arg.name}' is given twice", arg.span)
                keywords[arg.name] = (value, arg.span)
            elif isinstance(value, Value):
                if scalars:
                    raise SpecError("a tensor argument follows a number", arg.span,
                                    f"put tensors first: {call.name}(x, ...)")
                tensors.append(value)
            else:
                scalars.append((value, arg.span))
        return tensors, scalars, keywords

    def _apply_op(self, call, tensors, scalars, keywords, scope, want):
        cls = OPS[call.name]
        if want == 1 and cls.arity == len(tensors) and not cls.multi_output:  # the common case
            kw = {k: v for k, (v, _) in keywords.items()} if keywords else {}
            return self._node(self._bind_op(cls, call, scalars, kw, keywords), tensors, call.span, scope)
        low, high = (cls.arity, cls.arity) if isinstance(cls.arity, int) else cls.arity
        if len(tensors) < low or (high is not None and len(tensors) > high):
            expected = str(low) if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            got = len(tensors)
            hint = (f"write {call.name}(x, ...) or x -> {call.name}(...)" if got < low
                    else f"{call.name} takes numbers after its input(s)")
            raise SpecError(f"{call.name} takes {expected} tensor input(s), got {got}", call.span, hint)
        multi = getattr(cls, "multi_output", False)
        if want > 1 and not multi:
            raise SpecError(f"{call.name} gives one value, not {want}", call.span)
        kw = {k: v for k, (v, _) in keywords.items()} if keywords else {}
        if multi and "parts" not in kw and not scalars:
            kw["parts"] = want
        if multi and "index" not in kw:
            parts = self._bind_op(cls, call, scalars, kw, keywords).parts
            if parts != want:
                hint = (f"name each part: a, b = {call.name}(x, 2)" if want == 1
                        else f"make {want} parts: {call.name}(x, {want}), or assign {parts} names")
                raise SpecError(f"{call.name} gives {parts} values but {want} "
                                f"{'is' if want == 1 else 'are'} used", call.span, hint)
        if not multi or want == 1 and "index" in kw:  # one node, the common case
            op = self._bind_op(cls, call, scalars, kw, keywords)
            return self._node(op, tensors, call.span, scope)
        indices = range(want) if want > 1 else [None]
        values = []
        for index in indices:
            extra = {} if index is None else {"index": index}
            op = self._bind_op(cls, call, scalars, {**kw, **extra}, keywords)
            values.append(self._node(op, tensors, call.span, scope))
        return values[0] if len(values) == 1 else tuple(values)

    def _bind_op(self, cls, call, scalars, kw, keywords) -> Op:
        try:
            return bind(cls, [v for v, _ in scalars] if scalars else [], kw, self.ops)
        except ArgError as exc:
            if isinstance(exc.where, int) and exc.where < len(scalars):
                span = scalars[exc.where][1]
            elif isinstance(exc.where, str) and exc.where in keywords:
                span = keywords[exc.where][1]
                if exc.where not in {a.name for a in cls.args}:  # an unknown keyword: the name is wrong
                    span = leading(span, exc.where)
            else:
                span = call.span
            raise SpecError(exc.message, span, exc.hint) from None

    def _op_node(self, name: str, tensors, attrs, span, scope) -> Value:
        if POISON in tensors:  # the one _Poison; a Value compares by identity
            return POISON
        try:
            op = bind(OPS[name], [], attrs, self.ops)
        except ArgError as exc:
            raise SpecError(exc.message, span, exc.hint) from None
        return self._node(op, tensors, span, scope)

    def _node(self, op: Op, tensors, span, scope: _Scope) -> Value:
        # scope.fresh, written out: a call less for every node
        counters, base, taken = scope.counters, op.name, self.nodes
        while True:
            count = counters[base] = counters.get(base, 0) + 1
            node_id = f"{scope.prefix}{base}{count}"
            if node_id not in taken:
                break
        shares = None
        if scope.share is not None:
            shared, path = scope.share
            local = node_id[len(path):]
            shares = shared.owners.setdefault(local, node_id)
            shares = None if shares == node_id else shares
        self.work += 1
        if len(tensors) == 1:  # most layers
            source = tensors[0].node
            inputs = [(source, 0)]
            self.consumed.add(source)
        else:
            inputs = [(tensor.node, 0) for tensor in tensors]
            self.consumed.update([tensor.node for tensor in tensors])
        self.nodes[node_id] = op_node(node_id, span, scope.frames, op, inputs, shares)
        return Value(node_id)

    def _rename(self, value: Value, scope: _Scope, name: str) -> Value:
        """Give the node that computes a named value that name, when it is fresh and free."""
        node = self.nodes.get(value.node)
        if (node is None or node["kind"] != "op" or node["scope"] != scope.frames
                or node["shares"] is not None or value.node in self.consumed or scope.share is not None
                or scope.shared and any(value.node in s.owners.values()
                                        for s in scope.shared.values())):
            return value
        target = f"{scope.prefix}{name}"
        while target in self.nodes:  # a rebound name: x, x_2, x_3
            count = scope.counters["=" + name] = scope.counters.get("=" + name, 0) + 1
            target = f"{scope.prefix}{name}_{count + 1}"
        del self.nodes[value.node]
        if value.node in self.types:
            self.types[target] = self.types.pop(value.node)
        node.id = target
        self.nodes[target] = node
        self.named.add(target)
        return Value(target)

    def _inline(self, block: ast.Block, tensors, scalars, keywords, call, scope, want, repeat=None,
                instance: str | None = None, share=None, which: str = ""):
        self.depth += 1
        try:
            if any(frame.block == block.name for frame in scope.frames):
                chain = [frame.block for frame in scope.frames]
                calls = " -> ".join(chain[chain.index(block.name):] + [block.name])
                raise SpecError(f"block '{block.name}' calls itself ({calls})", call.span,
                                "a block cannot contain itself; repeat a stage with `x N` instead")
            if self.depth > 64:
                raise SpecError(f"blocks are nested more than 64 deep at '{block.name}'", call.span)
            name = instance or scope.fresh(block.name, self.nodes)[len(scope.prefix):]
            key = template = None
            if self.templates is not None and share is None and self._replayable(block):
                key = _template_key(block, tensors, scalars, keywords, want)
                template = self.templates.get(key) if key is not None else None
            text = template.call_text if template is not None else \
                _call_text(block.name, scalars, keywords)
            frame = Frame(name, block.name, call.span, repeat, block.span.file, text + which)
            prefix, frames = f"{scope.prefix}{name}/", scope.frames + (frame,)
            if template is not None:
                outputs = self._replay(template, prefix, frames, tensors)
                if outputs is not None:
                    return outputs[0] if want == 1 else tuple(outputs)
            inner = _Scope(prefix, frames, inputs=list(tensors), share=share)
            before = (len(self.errors), len(self.independent), self.work, len(self.nodes))
            self._bind_params(block, inner, scalars, keywords, call, scope)
            if tensors and not self._takes_input(block):
                raise SpecError(f"block '{block.name}' takes no input but was given {len(tensors)}",
                                call.span, f"add `in x` to block '{block.name}'")
            self._exec_body(block.body, inner)
            self._finish_scope(inner)
        finally:
            self.depth -= 1
        outputs = inner.outputs
        if outputs is None:
            raise SpecError(f"block '{block.name}' has no `out` line", block.span,
                            "end it with out <value>")
        if len(outputs) != want:
            raise SpecError(f"block '{block.name}' gives {len(outputs)} value(s) but {want} are used",
                            call.span)
        if key is not None and (len(self.errors), len(self.independent)) == before[:2]:
            self._record(key, text, inner, tensors, self.work - before[2],
                         len(self.nodes) - before[3])
        return outputs[0] if want == 1 else tuple(outputs)

    def _replayable(self, block: ast.Block) -> bool:
        """Whether every walk of the block's body depends on its arguments alone: asked
        once per block. Its statements name, take and give tensors through layers and
        arithmetic; nothing reads a shape, a state, a shared instance or another block
        (whose names could come from the nodes made around the call)."""
        found = self.replayable.get(block.name)
        if found is None:
            found = self.replayable[block.name] = all(
                _replayable_statement(stmt, self.blocks) for stmt in block.body)
        return found

    def _record(self, key, call_text: str, inner: _Scope, tensors, work: int, made: int) -> None:
        """Keep what a block call's walk made as a template for later equal calls, when
        it made nodes of its own instance only, from its inputs and its ops shared."""
        if self.templates is None:
            return
        prefix = inner.prefix
        ids = list(islice(reversed(self.nodes), made))[::-1]
        local_index = {node_id: i for i, node_id in enumerate(ids)}
        input_index: dict[str, int] = {}
        for k, tensor in enumerate(tensors):
            input_index.setdefault(tensor.node, k)
        shared_ops = {id(op) for op in self.ops.values()}

        def source(node_id: str):  # a node made by the call (>= 0) or an input (< 0)
            if node_id in local_index:
                return local_index[node_id]
            if node_id in input_index:
                return -1 - input_index[node_id]
            return None

        nodes = []
        for node_id in ids:
            node = self.nodes[node_id]
            if (not node_id.startswith(prefix) or node.kind != "op" or node.scope is not inner.frames
                    or node.shares is not None or id(node.op) not in shared_ops
                    or node_id in self.types):
                return
            sources = []
            for source_id, delay in node.inputs:
                where = source(source_id)
                if where is None or delay:
                    return
                sources.append(where)
            nodes.append((node.span, node.op, tuple(sources), (0,) * len(sources)))
        outputs = []
        for value in inner.outputs:
            where = source(value.node) if type(value) is Value else None
            if where is None:
                return
            outputs.append(where)
        self.templates[key] = _Template(
            call_text, tuple(node_id[len(prefix):] for node_id in ids), tuple(nodes),
            tuple(outputs), tuple({i for _, _, sources, _ in nodes for i in sources}),
            tuple(i for i, node_id in enumerate(ids) if node_id in self.named), work)

    def _replay(self, template: "_Template", prefix: str, frames, tensors) -> list[Value] | None:
        """What walking the body would make, from a template; None when the walk could
        end otherwise (a name taken, or the budget passed: the walk says where)."""
        nodes = self.nodes
        if self.work + template.work > EXPANSION_BUDGET:
            return None
        ids = list(map(prefix.__add__, template.ids))  # (maps and zips: no frame each)
        for node_id in ids:
            if node_id in nodes:
                return None
        # a source i >= 0 is ids[i]; -1 - k, the input k, is names[-1 - k]
        names = ids + [tensors[0].node] if len(tensors) == 1 else \
            ids + [tensor.node for tensor in reversed(tensors)]
        name_of = names.__getitem__
        for node_id, (span, op, sources, delays) in zip(ids, template.nodes):
            nodes[node_id] = op_node(node_id, span, frames, op,
                                     list(zip(map(name_of, sources), delays)), None)
        self.consumed.update(map(name_of, template.consumed))
        if template.named:
            self.named.update(map(ids.__getitem__, template.named))
        self.work += template.work
        return [Value(ids[i]) if i >= 0 else tensors[-1 - i] for i in template.outputs]

    def _takes_input(self, block: ast.Block) -> bool:
        """Whether a block's body has an `in` line: asked once per block."""
        found = self.takes_input.get(block.name)
        if found is None:
            found = self.takes_input[block.name] = any(isinstance(s, ast.In) for s in block.body)
        return found

    def _bind_params(self, block, inner: _Scope, scalars, keywords, call, outer: _Scope) -> None:
        names = [p.name for p in block.params]
        if len(scalars) > len(names):
            raise SpecError(f"block '{block.name}' takes {len(names)} parameter(s), got {len(scalars)}",
                            scalars[len(names)][1], f"usage: {_block_usage(block)}")
        given = {p.name: value for p, (value, _) in zip(block.params, scalars)}
        for key, (value, span) in keywords.items():
            if key not in names:
                raise SpecError(f"block '{block.name}' has no parameter '{key}'", leading(span, key),
                                suggest(key, names) or f"usage: {_block_usage(block)}")
            if key in given:
                raise SpecError(f"parameter '{key}' is given twice", span)
            given[key] = value
        for param in block.params:
            if param.name in given:
                value = given[param.name]
            elif param.default is not None:
                value = self._scalar(param.default, inner, f"the default of '{param.name}'")
            else:
                raise SpecError(f"block '{block.name}' needs parameter '{param.name}'", call.span,
                                f"usage: {_block_usage(block)}")
            inner.env[param.name] = _Binding(param.name, value, param.span, used=True)

    def _use_shared(self, shared: _Shared, tensors, call, scope: _Scope, want: int):
        shared.uses += 1
        instance = shared.name if shared.uses == 1 else f"{shared.name}.{shared.uses}"
        tensors_d, scalars, keywords = self._arguments(shared.call, scope, None)
        if tensors_d:
            raise SpecError("a shared instance is declared without tensor arguments", shared.call.span)
        if shared.call.name in self.blocks:
            # an instance named by the spec (`share pair1 = pair(16)`) may take the names
            # of a later call's nodes: from here on each call is walked, to see them
            self.templates = None
            share = (shared, f"{scope.prefix}{instance}/")
            return self._inline(self.blocks[shared.call.name], tensors, scalars, keywords, call, scope,
                                want, instance=instance, share=share)
        value = self._apply_op(shared.call, tensors, scalars, keywords, scope, want)
        node = self.nodes.pop(value.node)
        self.types.pop(value.node, None)
        node.id, node.span = f"{scope.prefix}{instance}", call.span  # located where it is used
        first = shared.owners.setdefault("", node.id)
        node.shares = None if first == node.id else first
        self.nodes[node.id] = node
        return Value(node.id)

    def _type(self, type_: ast.TypeExpr, scope: _Scope) -> TensorType:
        dims = []
        for dim in type_.dims:
            value = self._whole(dim, scope, "a dimension")
            if value < 1:
                raise SpecError(f"a dimension must be at least 1, got {value}", dim.span)
            dims.append(value)
        classes = None
        if type_.classes is not None:
            classes = self._whole(type_.classes, scope, "the number of classes")
            if classes < 2:
                raise SpecError(f"class(n) needs at least 2 classes, got {classes}", type_.classes.span)
        elif not dims:
            raise SpecError("a shape needs at least one dimension", type_.span, "for example [64]")
        dtype = "int64" if classes is not None else "float32"
        return TensorType(tuple(dims), dtype, classes, type_.seq)


@dataclass(frozen=True, slots=True)
class _Template:
    """What a block call made, to replay for an equal call: its call text; its nodes' ids
    within the instance, in order; each node's (span, op, sources, delays), a source a
    node of the call (its index) or an input (-1 - its index), each delay 0; its outputs
    alike; the sources read (consumed); the nodes renamed for a name (named); and the
    budget the walk spent."""

    call_text: str
    ids: tuple[str, ...]
    nodes: tuple
    outputs: tuple[int, ...]
    consumed: tuple[int, ...]
    named: tuple[int, ...]
    work: int


# plain argument values: a call's key tells 1, 1.0 and True apart by their types
_KEY_TYPES = frozenset((int, float, bool, str, type(None)))


def _template_key(block: ast.Block, tensors, scalars, keywords, want: int):
    """A block call's arguments as a key, or None when they are not plain values. Inputs
    given twice (`pair(x, x)`) key apart from distinct ones."""
    key = [block.name, want, len(tensors)]
    for value, _ in scalars:
        if type(value) not in _KEY_TYPES:
            return None
        key += (type(value), value)
    for name, (value, _) in keywords.items():
        if type(value) not in _KEY_TYPES:
            return None
        key += (name, type(value), value)
    if len(tensors) > 1:
        first: dict[str, int] = {}
        key.append(tuple(first.setdefault(t.node, k) for k, t in enumerate(tensors)))
    return tuple(key)


def _stage_key(call: ast.Call):
    """A layer call of numbers written out (`dense(16)`, `relu`) as a key: the name alone,
    or the name, the numbers and their types (1 and 1.0 bind apart); None for any other."""
    args = call.args
    if not args:
        return call.name
    key = [call.name]
    for arg in args:
        value = arg.value
        if arg.name is not None or type(value) is not ast.Number:
            return None
        key += (value.value, type(value.value))
    return tuple(key)


def _replayable_statement(stmt, blocks) -> bool:
    """Whether a block body's statement runs alike for equal arguments (see _replayable)."""
    kind = type(stmt)
    if kind is ast.In:
        return True
    if kind is ast.Out:
        return all(_replayable_expr(value, blocks) for value in stmt.values)
    if kind is ast.Assign:
        return len(stmt.targets) == 1 and _replayable_expr(stmt.value, blocks)
    return False


def _replayable_expr(expr, blocks) -> bool:
    """Whether an expression gives alike for equal arguments, with ops shared."""
    kind = type(expr)
    if kind is ast.Name or kind is ast.Number or kind is ast.String:
        return True
    if kind is ast.BinOp:
        return _replayable_expr(expr.left, blocks) and _replayable_expr(expr.right, blocks)
    if kind is ast.Neg:
        return _replayable_expr(expr.operand, blocks)
    if kind is ast.Call:
        return (expr.name in OPS and expr.name not in blocks
                and all(_replayable_expr(arg.value, blocks) for arg in expr.args))
    if kind is ast.Pipeline:
        return _replayable_expr(expr.source, blocks) and all(
            stage.repeat is None and _replayable_expr(stage.call, blocks) for stage in expr.stages)
    return False  # lists (ops bound afresh), shapes, dimensions, states


def _stdlib_meant(item: ast.Import) -> str | None:
    """The standard library module a quoted import that failed names: import "rnn.net"."""
    if not item.is_path:
        return None
    stem = os.path.splitext(os.path.basename(item.target))[0]
    # which modules ship is a fact of the installed package, not of any spec
    modules = {p.name[:-4] for p in resources.files("netdsl.stdlib").iterdir() if p.name.endswith(".net")}
    return closest(stem, modules) if stem.lower() in {m.lower() for m in modules} else None


def _definitions(body, defined: dict[str, Span]) -> dict[str, Span]:
    """`defined`, given the span of each name a body's statements define (loops' bodies
    included) that it has none for yet."""
    for stmt in body:
        kind = type(stmt)
        if kind is ast.Assign:
            targets = stmt.targets
            if len(targets) == 1:  # most statements
                if targets[0] not in defined:
                    defined[targets[0]] = stmt.target_spans[0] if stmt.target_spans else stmt.span
                continue
            for name, span in zip(targets, stmt.target_spans or (stmt.span,) * len(targets)):
                defined.setdefault(name, span)
        elif kind is ast.IODecl or kind is ast.Share:
            defined.setdefault(stmt.name, stmt.span)
        elif kind is ast.StateDecl:
            for item in stmt.items:
                defined.setdefault(item.name, item.span)
        elif kind is ast.For:
            _definitions(stmt.body, defined)
    return defined


def _size(body, sizes: dict[int, int]) -> int:
    """The statements and layer calls written in a body (a nested loop's body once): the
    least one run of it costs."""
    found = sizes.get(id(body))
    if found is None:
        found = 0
        stack = list(body)
        while stack:
            item = stack.pop()
            if isinstance(item, _COUNTED):
                found += 1
            if isinstance(item, tuple):
                stack.extend(item)
            elif hasattr(item, "__dataclass_fields__"):
                stack.extend(getattr(item, f) for f in item.__dataclass_fields__ if f != "span")
        sizes[id(body)] = found
    return found


# what `_size` counts: statements, and the expressions that make a node
_COUNTED = (ast.IODecl, ast.StateDecl, ast.Assign, ast.Loss, ast.Train, ast.Share, ast.For,
            ast.In, ast.Out, ast.Call, ast.BinOp, ast.Neg)


def _names_in(node) -> set[str]:
    """Every name an AST node mentions."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, (ast.Name, ast.Delayed)):
            found.add(item.id if isinstance(item, ast.Name) else item.name)
        elif isinstance(item, tuple):
            stack.extend(item)
        elif hasattr(item, "__dataclass_fields__"):
            stack.extend(getattr(item, f) for f in item.__dataclass_fields__ if f != "span")
    return found


def _call_text(name: str, scalars, keywords) -> str:
    """A block call with its arguments' values: basic(32, stride=2)."""
    args = [describe(v) for v, _ in scalars] + [f"{k}={describe(v)}" for k, (v, _) in keywords.items()]
    return f"{name}({', '.join(args)})"


def _stage_text(stage: ast.Stage) -> str:
    text = source_text(stage.call)
    return text if stage.repeat is None else f"{text} x {source_text(stage.repeat)}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _whole_hint(expr) -> str | None:
    """Where a computed count came from: `n / 2` gives a fraction when n is odd."""
    if isinstance(expr, ast.BinOp) and expr.op == "/":
        return "a division gives a fraction unless it is exact; check the values divided"
    return None


def _block_usage(block: ast.Block) -> str:
    parts = [p.name if p.default is None else f"{p.name}=..." for p in block.params]
    return f"{block.name}({', '.join(parts)})"


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] or "network"
