"""The arena (netdsl/lower/arena.py): the values whose ops write where told kept in one
block per executor, each at a fixed offset. Values alive at once never overlap in it, the
plan's peak stays what it was, a step with it is the step without it bit for bit, and each
op that fills out writes the very array it is handed."""
import glob
import os

import numpy as np
import pytest

from conftest import ROOT
from netdsl.driver import check_file, check_text
from netdsl.lower import lower
from netdsl.lower import memory as memory_plan
from netdsl.lower.arena import ALIGN, aliases_end, roots
from netdsl.report import format_training_memory
from netdsl.runtime import execute
from netdsl.runtime.execute import Executor
from netdsl.runtime.init import initial_params

SPECS = sorted(glob.glob(os.path.join(ROOT, "specs", "*.net"))
               + glob.glob(os.path.join(ROOT, "benchmarks", "specs", "*.net")))

RESIDUAL = """
network block
input  x : [4, 8, 8]
target y : class(3)
a = x -> conv(6, 3, pad=1) -> batchnorm -> relu
b = a -> conv(6, 3, pad=1) -> batchnorm
c = relu(b + (x -> conv(6, 1)))
logits = c -> maxpool(2) -> flatten -> dense(3)
loss cross_entropy(logits, y)
"""

SEQUENCE = """
network rnn
input  x : seq[5]
target y : seq class(3)
state  h : [6] = zeros
h = tanh(dense(x, 6) + dense(h[t-1], 6, bias=false))
logits = h -> dense(3)
loss cross_entropy(logits, y)
"""


@pytest.fixture(autouse=True)
def arena_on(monkeypatch):
    """The arena planned, as NETDSL_ARENA=1 has it (each test names the executors' side)."""
    monkeypatch.setattr(memory_plan, "ARENA", True)


def _native_or_skip(target):
    if target == "native":
        from netdsl.runtime.native.toolchain import compiler
        if compiler() is None:
            pytest.skip("no C compiler")


# ---- the layout


@pytest.mark.parametrize("path", SPECS, ids=lambda p: os.path.basename(p))
def test_values_alive_at_once_never_share_the_arena(path, monkeypatch):
    net = check_file(path)
    for target in ("host", "native"):
        memory = lower(net.graph, target).memory
        if memory is None:
            continue   # sequences keep their values apart, as the lodging does
        plan = memory.plan
        for batch in (7, 128):
            placed = memory.at(batch)
            monkeypatch.setattr(memory_plan, "ARENA", False)
            apart = memory.at(batch)
            monkeypatch.setattr(memory_plan, "ARENA", True)
            arena = placed.arena
            if arena is None:
                assert placed.slots == apart.slots
                continue
            # the arena replaces the slots it takes: the peak rises by its alignment at most
            assert placed.peak <= apart.peak + 4 * ALIGN * len(arena.offsets)
            # nor does it raise the most bytes alive at once (what a traced step reaches)
            rest = [b for b in placed.buffers if b.name not in placed.lodged]
            live = np.zeros(max(b.end for b in rest) + 1, dtype=np.int64)
            held = live.copy()
            for b in rest:
                live[b.start:b.end + 1] += b.bytes
                if b.name in arena.offsets:
                    held[b.start:b.end + 1] += b.bytes
            assert (arena.bytes + live - held).max() <= live.max() + 4 * ALIGN * len(arena.offsets)
            assert placed.slots[placed.arena_slot] == arena.bytes
            values = {b.name: b for b in placed.buffers if b.kind == "value"}
            last = aliases_end(plan, placed.value_ends())
            spans = []
            for name, at in arena.offsets.items():
                assert at % ALIGN == 0
                assert name not in placed.lodged and placed.lodgeable[name]
                assert arena.sizes[name] == placed.lodgeable[name] * batch
                assert at + arena.sizes[name] <= arena.elements
                start, end = arena.intervals[name]
                assert start == values[name].start and end >= last[name]
                spans.append((name, at, at + arena.sizes[name], start, end))
            # and every step that reads a value, through a view or not, reads it in its place
            held = roots(plan)
            for i, step in enumerate(plan.steps):
                for source in step.inputs:
                    for root in held.get(source, ()):
                        if root in arena.intervals:
                            assert arena.intervals[root][1] >= i, (path, root, step.node)
            for i, (a, lo, hi, s, e) in enumerate(spans):
                for b, lo2, hi2, s2, e2 in spans[i + 1:]:
                    if s <= e2 and s2 <= e:   # alive at once
                        assert hi <= lo2 or hi2 <= lo, (path, target, batch, a, b)


def test_a_view_keeps_its_value_s_place_taken():
    """flatten returns a view of maxpool's output: the place stays taken until the view's
    last reader, not only maxpool's own."""
    lowered = lower(check_text(RESIDUAL, "block.net"), "host")
    memory = lowered.memory.at(16)
    values = {b.name: b for b in memory.buffers if b.kind == "value"}
    last = aliases_end(lowered.plan, {n: b.end for n, b in values.items()})
    [flatten] = [s.node for s in lowered.plan.steps if s.op.name == "flatten"]
    pooled = lowered.plan.step_of(flatten).inputs[0]
    assert last[pooled] >= values[flatten].end > values[pooled].end


def test_netc_compile_prints_the_arena_s_size():
    from netdsl.lower.printers import _format_memory
    from netdsl.report import human
    net = check_file(os.path.join(ROOT, "specs", "lenet5.net"))
    line = format_training_memory(net, 32, "native")
    memory = lower(net.graph, "native").memory.at(32)
    count = len(memory.arena.offsets)
    assert (f"; arena {human(memory.arena.bytes, 'B')} of them, made once for {count} "
            f"value{'s' if count > 1 else ''})") in line
    listed = _format_memory(memory)
    assert f"(arena: one block of {human(memory.arena.bytes, 'B')} made once" in listed
    assert "  arena     value  relu1 " in listed


# ---- the steps


def _batches(lowered, sizes, seed=0):
    rng = np.random.default_rng(seed)
    made = []
    for n in sizes:
        batch = {}
        for name, t in lowered.plan.inputs.items():
            shape = (n, 4, *t.dims) if t.seq else (n, *t.dims)
            if t.classes is not None:
                batch[name] = rng.integers(0, t.classes, shape[:2] if t.seq else (n,))
            else:
                batch[name] = rng.standard_normal(shape).astype("float32")
        made.append(batch)
    return made


def _train(lowered, batches, arena: bool, dtype: str, observer=None):
    ex = Executor(lowered, initial_params(lowered.built, "he", seed=5), seed=2, dtype=dtype)
    ex.lodge_values, ex.arena_values, ex.observer = True, arena, observer
    [loss] = lowered.plan.losses.values()
    losses = []
    for batch in batches:
        out = ex.forward(batch, True)
        ex.backward()
        losses.append(float(out[loss]))
        ex.flat_params -= 0.05 * ex.flat_grads
    return losses, ex.flat_params.copy(), ex


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("target", ["host", "native"])
@pytest.mark.parametrize("spec", ["w1_mlp", "lenet5", "residual", "sequence"])
def test_a_step_with_the_arena_is_the_step_without_it(spec, target, dtype):
    """Same bits, over two full batches and an epoch's last, smaller one (which writes
    the front of each value's place)."""
    _native_or_skip(target)
    net = {"w1_mlp": lambda: check_file(os.path.join(ROOT, "benchmarks", "specs", "w1_mlp.net")),
           "lenet5": lambda: check_file(os.path.join(ROOT, "specs", "lenet5.net")),
           "residual": lambda: check_text(RESIDUAL, "block.net"),
           "sequence": lambda: check_text(SEQUENCE, "rnn.net")}[spec]()
    lowered = lower(net, target)
    full = 128 if spec == "w1_mlp" else 16   # W1's values lodge in its gradients below
    batches = _batches(lowered, (full, full, 5))
    with_arena = _train(lowered, batches, True, dtype)
    without = _train(lowered, batches, False, dtype)
    assert with_arena[0] == without[0]
    assert with_arena[1].tobytes() == without[1].tobytes()
    made = with_arena[2]._arena_layout
    # an evaluation pass at a larger batch leaves the arena as it was; its values match
    larger = _batches(lowered, (2 * full,), seed=1)[0]
    [loss] = lowered.plan.losses.values()
    assert (with_arena[2].forward(larger, False)[loss].tobytes()
            == without[2].forward(larger, False)[loss].tobytes())
    assert with_arena[2]._arena_layout is made
    if spec == "sequence":
        assert made is None   # a network with sequences keeps its values apart
    else:
        assert made is not None and made.batch == full and without[2]._arena is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("target", ["host", "native"])
def test_ops_that_fill_out_write_the_very_array_they_are_handed(target, dtype, monkeypatch):
    """Every step whose op fills out is handed an array of its own (not only those the
    arena holds): its value is that array, and the step's values are those without."""
    _native_or_skip(target)
    lowered = lower(check_text(RESIDUAL, "block.net"), target)
    plan = lowered.plan
    filling = [s.node for s in plan.steps if s.op.fills_out and not s.in_place
               and s.node not in plan.losses.values() and s.node != "logits"]
    kinds = {type(plan.step_of(n).op).__name__ for n in filling}
    assert {"host": {"Conv", "BatchNorm", "MaxPool"},
            "native": {"ChannelChain", "Conv", "MaxPool"}}[target] <= kinds
    seen = {}

    def placed(self, batch, outputs, training=True):
        homes = {n: self.xp.empty((batch, *plan.types[n].dims), dtype=self.dtype)
                 for n in filling}
        seen.update({n: [h, None] for n, h in homes.items()})
        return homes

    class Watch:
        def value(self, name, y):
            if name in seen:
                seen[name][1] = y

        def gradient(self, name, gy):
            pass

    batches = _batches(lowered, (6,))
    monkeypatch.setattr(Executor, "_placed", placed)
    handed = _train(lowered, batches, True, dtype, Watch())
    monkeypatch.undo()
    plain = _train(lowered, batches, False, dtype)
    for node in filling:
        out, y = seen[node]
        assert y is out, node
    assert handed[0] == plain[0]
    assert handed[1].tobytes() == plain[1].tobytes()


# ---- the peaks


def _peak(lowered, batch, arena: bool, monkeypatch) -> int:
    from train_speed import netdsl_peak_bytes
    monkeypatch.setattr(execute, "ARENA", arena)
    return netdsl_peak_bytes(lowered, initial_params(lowered.built, "he", seed=0), batch)


# what an executor keeps to find the arena's places (dicts, views), and the memory plan
# at the batch it makes at the arena's first pass, which lingers until a collection:
# 22-26 KiB on W3
BOOKKEEPING = 64 * 1024
# W3's step reaches one of two peaks 0.5 MiB apart, on either path (which slab's arrays
# are alive when the most is): each path's highest of a few runs is compared
RUNS = 3


@pytest.mark.parametrize("workload", ["W1", "W3"])
def test_the_peak_with_the_arena_is_no_higher(workload, monkeypatch):
    """As train_speed.py measures it: building the executor and two steps, traced."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from train_speed import WORKLOADS, make_batch
    _native_or_skip("native")
    [w] = [w for w in WORKLOADS if w.id == workload]
    lowered = lower(check_file(os.path.join(ROOT, "benchmarks", "specs", w.spec)), "native")
    batch = make_batch(w)[:2]
    _peak(lowered, batch, True, monkeypatch)   # kernels compiled and chosen before tracing
    runs = [_peak(lowered, batch, arena, monkeypatch) for arena in (True, False) * RUNS]
    with_arena, without = max(runs[0::2]), max(runs[1::2])
    assert with_arena <= without + BOOKKEEPING, (with_arena, without)


# ---- the convolutions' slab scratch kept between calls


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kept_slab_scratch_gives_the_same_steps_within_the_plan_s_bound(dtype, monkeypatch):
    from netdsl.runtime.host import host_threads
    from netdsl.runtime.native import slabs
    _native_or_skip("native")
    lowered = lower(check_text(RESIDUAL, "block.net"), "native")
    batches = _batches(lowered, (16, 16, 5))
    monkeypatch.setattr(slabs, "KEEP_SCRATCH", False)
    plain = _train(lowered, batches, True, dtype)
    monkeypatch.setattr(slabs, "KEEP_SCRATCH", True)
    slabs.release_scratch()
    try:
        kept = _train(lowered, batches, True, dtype)
        held = [sum(b.nbytes for b in k.values()) for k in slabs._kept_by_thread]
        threads = host_threads()
        bound = lowered.memory.at(16, threads=threads).scratch_bytes // threads
        assert slabs._bound[0] == bound
        assert any(held) and max(held) <= bound
        # the same buffers serve the next step
        before = {id(b) for k in slabs._kept_by_thread for b in k.values()}
        kept[2].forward(batches[0], True)
        kept[2].backward()
        assert before & {id(b) for k in slabs._kept_by_thread for b in k.values()}
    finally:
        slabs.release_scratch()
        slabs.bound_scratch(None)
    assert kept[0] == plain[0]
    assert kept[1].tobytes() == plain[1].tobytes()
    # a bound below what a slab asks for keeps nothing: each call makes its own again
    slabs.bound_scratch(16)
    try:
        monkeypatch.setattr(Executor, "_bound_scratch", lambda self, batch: None)
        again = _train(lowered, batches, True, dtype)
        assert not any(k for k in slabs._kept_by_thread)
    finally:
        slabs.release_scratch()
        slabs.bound_scratch(None)
    assert again[1].tobytes() == plain[1].tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("native", [False, True])
def test_max_pooling_writes_its_maxima_where_told(native, stride, dtype):
    """Both of the NumPy path's routes (a flat run for stride 1, windows otherwise) and
    the compiled kernels."""
    from netdsl.ops import pool
    from netdsl.ops.windows import Geometry
    from netdsl.runtime.native import conv as native_conv
    if native:
        _native_or_skip("native")
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((3, 5, 9, 7)).astype(dtype)
    geometry = Geometry.of(x.shape[2:], (3, 3), (stride, stride), (1, 1), ((1, 0), (0, 1)))
    with native_conv.in_use(native):
        y, indices = pool.max_pool(np, x, geometry)
        out = np.full_like(y, np.nan)
        placed, placed_indices = pool.max_pool(np, x, geometry, out=out)
    assert placed is out
    assert out.tobytes() == y.tobytes() and placed_indices.tobytes() == indices.tobytes()


@pytest.mark.parametrize("target", ["host", "native"])
def test_a_value_read_through_a_view_keeps_its_place_in_the_gradient_vector(target):
    """LeNet-5's pooled features reach dense1 through flatten's view, which dense1 keeps
    for its backward: lodged in the gradient vector, they must outlive that view's reader
    (before, the weight gradient written there overwrote them)."""
    _native_or_skip(target)
    lowered = lower(check_file(os.path.join(ROOT, "specs", "lenet5.net")), target)
    assert "features" in lowered.memory.at(4).lodgeable
    batches = _batches(lowered, (4, 4))
    runs = []
    for lodge in (True, False):
        ex = Executor(lowered, initial_params(lowered.built, "he", seed=5), seed=2,
                      dtype="float64")
        ex.lodge_values, ex.arena_values = lodge, False
        for batch in batches:
            ex.forward(batch, True)
            ex.backward()
            ex.flat_params -= 0.05 * ex.flat_grads
        runs.append(ex.flat_params.tobytes())
    assert runs[0] == runs[1]
