"""Recovering repeated structure: a flat list of layers as blocks, calls and repeats.

A network with one input and one output is a sequence of single-entry, single-exit
segments: the values every path from the input to the output passes through cut it.
A segment of several layers (a residual unit, a dense layer) becomes a block; segments
of the same wiring and ops share one block, the settings in which they differ (channel
counts, strides) its parameters. Then, over the sequence of calls:

- consecutive identical calls fold into a repeat, `-> residual(64) x 2`;
- a run of calls that recurs (a stage: a strided unit, then plain ones) becomes a block
  of its own, whose calls differ in their settings and repeat counts only;

until nothing recurs. The layers stay those translation made: only the text changes, so
the weights follow them whatever the blocks (netdsl.onnx_import.names matches them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from netdsl.onnx_import.layers import CELLS, Layer, Network
from netdsl.onnx_import.write import (
    KEYWORDS, Names, call_text, identifier, in_order, pipeline_text, pipelines, value_text,
)
from netdsl.ops import OPS

__all__ = ["recover", "Structured"]

# what a parameter is called after the setting it stands for
PARAM_NAMES = {"channels": "c", "units": "units", "stride": "stride", "kernel": "k",
               "pad": "pad", "count": "n", "groups": "groups", "dilation": "dilation"}


class Param(str):
    """A block parameter standing for a setting: written as its name."""


@dataclass
class Unit:
    """One stage of a sequence: a layer or a block call (`name(args)`), `count` times."""

    name: str
    args: dict
    count: int = 1
    block: bool = False
    joins: tuple = ()   # names of values from outside the trunk it reads after its input

    def key(self) -> tuple:
        return (self.name, tuple(self.args), self.block, self.joins)

    def settings(self) -> dict:
        return {**self.args, "count": self.count}


@dataclass
class Block:
    """A block to write: its parameters and body lines; for a segment's block, the
    segments it stands for and each one's call arguments."""

    name: str
    params: list[str]
    body: list[str]
    members: list = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)


@dataclass
class Structured:
    """The statements of a structured spec: blocks, then the trunk's pipelines (one, or
    one per stretch between the values side branches read and where it reads theirs),
    the names given to the values where they meet, and the side branches' layers, left
    to the flat writer: those the trunk reads (`feeders`, written before it) and the
    others (`side`, after it)."""

    blocks: list[Block] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    taps: dict[str, str] = field(default_factory=dict)
    side: list[Layer] = field(default_factory=list)
    feeders: list[Layer] = field(default_factory=list)


def trunk_output(net: Network) -> str:
    """The output the most layers lead to: the trunk's (an auxiliary classifier's head
    branches off it)."""
    return max(net.outputs, key=lambda output: len(_ancestors(net.layers, output)))


def _ancestors(layers: list[Layer], output: str) -> set[str]:
    needed = {output}
    for layer in reversed(layers):
        if layer.output in needed:
            needed.update(layer.inputs)
    return needed


def _descendants(layers: list[Layer], value: str) -> set[str]:
    reached = {value}
    for layer in layers:
        if reached.intersection(layer.inputs):
            reached.add(layer.output)
    return reached


def recover(net: Network, inputs: dict[str, str], output_name: str) -> Structured | None:
    """The network's statements with blocks and repeats along its trunk: the path from
    an input to `trunk_output`. Layers off it are side branches, which read values
    between two parts of the trunk (an auxiliary head) or which a single layer of the
    trunk reads after its trunk input (another input's branch, joined by `concat` or
    `+`). None when a branch meets the trunk inside a part (a residual unit), which the
    flat writer then writes."""
    if not net.layers:
        return None
    _chain_concats(net.layers)  # in place: the names pass matches the chained layers
    main = trunk_output(net)
    leading = _ancestors(net.layers, main)
    entry = max((i for i in net.inputs if i in leading),
                key=lambda i: len(_descendants(net.layers, i) & leading), default=None)
    if entry is None:
        return None
    on_trunk = leading & _descendants(net.layers, entry)
    layers = [layer for layer in net.layers if layer.output in on_trunk]
    off = [layer for layer in net.layers if layer.output not in on_trunk]
    fed = {name for layer in layers for name in layer.inputs if name not in on_trunk}
    feeding = set().union(*(_ancestors(off, name) for name in fed)) if fed else set()
    feeders = [layer for layer in off if layer.output in feeding]
    side = [layer for layer in off if layer.output not in feeding]
    if any(name in on_trunk for layer in feeders for name in layer.inputs):
        return None  # a branch that leaves the trunk and comes back (a U-Net's skip)
    segments = _segments(layers, entry, main, fed) if layers else None
    if segments is None:
        return None
    segments = _absorb_activations(segments)
    if any(name in fed for segment in segments if len(segment) > 1
           for layer in segment for name in layer.inputs):
        return None  # a branch joins inside a part
    # the trunk's values that side branches read, or that are outputs themselves
    tapped = {name for layer in side for name in layer.inputs if name in on_trunk} | \
        {output for output in net.outputs if output != main and output in on_trunk}
    ends = [segment[-1].output for segment in segments]
    if not tapped <= set(ends) | {entry}:
        return None
    structured = Structured(side=side, feeders=feeders)
    blocks: dict[tuple, Block] = {}
    names = Names(KEYWORDS | set(OPS) | set(inputs.values()) | {output_name})
    outer = dict(inputs)  # by their names in the spec, as a join may read them
    for layer in feeders:
        if layer.output in fed:
            outer[layer.output] = names.make(identifier(layer.origin, layer.op))
    units = []
    for segment in segments:
        joins = segment[0].inputs[1:] if len(segment) == 1 else []
        if any(name in fed for name in joins):
            layer = segment[0]
            if layer.inputs[0] not in on_trunk:
                return None  # the trunk's value read first, the branch's after it
            units.append(Unit(layer.op, dict(layer.args),
                              joins=tuple(outer[name] for name in joins)))
        else:
            units.append(_segment_unit(segment, layers, blocks, names, structured))
    if any(len(block.members) == 1 for block in blocks.values()):
        # a part with skips across it that occurs once (an FCN's or a U-Net's decoder)
        # reads better as its named lines than as a block called once
        return None
    for block in blocks.values():
        _finish_segment_block(block)
    units = [Unit(u.name, u.args["_block"].calls[u.args["_segment"]], 1, True) if u.block else u
             for u in units]
    # the trunk cut after each value a side branch reads: each stretch one pipeline, its
    # repeats and stages folded between the joins (a join is in no repeat)
    stretches, start = [], 0
    for i, end in enumerate(ends):
        if end in tapped or i == len(ends) - 1:
            stretches.append((units[start:i + 1], segments[i][-1]))
            start = i + 1
    source = inputs[entry]
    structured.taps = {**outer}
    for k, (stretch, last) in enumerate(stretches):
        runs = [[]]
        for unit in stretch:
            if unit.joins:
                runs += [[unit], []]
            else:
                runs[-1].append(unit)
        stages = [unit for run in runs for unit in
                  (run if run and run[0].joins else _folded_run(run, names, structured))]
        name = output_name if k == len(stretches) - 1 else \
            names.make(identifier(last.origin, last.op))
        structured.taps[last.output] = name
        structured.lines.append(f"{name} = {source} -> "
                                + " -> ".join(_unit_text(u) for u in stages))
        source = name
    return structured


def _folded_run(units: list[Unit], names: Names, structured: Structured) -> list[Unit]:
    """A run of units with identical consecutive ones as repeats and recurring runs of
    them as stage blocks, until nothing recurs."""
    units = _repeats(units)
    while True:
        pattern = _best_pattern(units)
        if pattern is None:
            return units
        units = _repeats(_fold(units, *pattern, names, structured))


def _chain_concats(layers: list[Layer]) -> list[Layer]:
    """concat(a, b, c) after concat(a, b) as concat(ab, c): DenseNet's layers each
    concatenate all earlier features; chained, each layer reads its predecessor's."""
    made: dict[tuple, str] = {}
    result = []
    for layer in layers:
        if layer.op == "concat":
            inputs = list(layer.inputs)
            for cut in range(len(inputs) - 1, 1, -1):
                prefix = (layer.args.get("axis", 0), tuple(inputs[:cut]))
                if prefix in made:
                    inputs = [made[prefix], *inputs[cut:]]
                    break
            made[(layer.args.get("axis", 0), tuple(layer.inputs))] = layer.output
            layer = Layer(layer.op, layer.args, inputs, layer.output, layer.origin,
                          layer.params, layer.buffers)
        result.append(layer)
    layers[:] = result
    return result


def _segments(layers: list[Layer], entry: str, output: str,
              outside: set = frozenset()) -> list[list[Layer]] | None:
    """The layers cut at the values every path from `entry` passes through, or None;
    the values `outside` the layers (side branches') cut nothing."""
    if layers[-1].output != output:
        return None
    position = {entry: 0, **{layer.output: i + 1 for i, layer in enumerate(layers)}}
    reach = [0] * (len(layers) + 1)
    for i, layer in enumerate(layers):
        for name in layer.inputs:
            if name in outside:
                continue
            if name not in position:
                return None
            reach[position[name]] = max(reach[position[name]], i + 1)
    segments, current, furthest = [], [], 0
    for i, layer in enumerate(layers):
        furthest = max(furthest, reach[i])
        current.append(layer)
        if furthest <= i + 1:  # nothing read before this value is read after it
            segments.append(current)
            current = []
    if current:
        return None
    return segments


def _absorb_activations(segments: list[list[Layer]]) -> list[list[Layer]]:
    """An activation right after a segment of several layers ends that segment: a
    residual unit's last relu is part of the unit."""
    merged: list[list[Layer]] = []
    for segment in segments:
        layer = segment[0]
        if merged and len(merged[-1]) > 1 and len(segment) == 1 and not layer.args and \
                layer.op in OPS and OPS[layer.op].init_scheme is not None and \
                len(layer.inputs) == 1:
            merged[-1] = merged[-1] + segment
        else:
            merged.append(segment)
    return merged


def _wiring(segment: list[Layer]) -> tuple:
    """What makes two segments the same block: ops, setting names and wiring."""
    index = {layer.output: i for i, layer in enumerate(segment)}
    return tuple((layer.op, tuple(sorted(layer.args)),
                  tuple(index.get(n, -1) for n in layer.inputs)) for layer in segment)


def _segment_unit(segment, layers, blocks, names, structured) -> Unit:
    if len(segment) == 1 and segment[0].inputs and len(segment[0].inputs) == 1:
        return Unit(segment[0].op, dict(segment[0].args))
    wiring = _wiring(segment)
    if wiring not in blocks:
        blocks[wiring] = _segment_block(segment, layers, wiring, names)
        structured.blocks.append(blocks[wiring])
    block = blocks[wiring]
    block.members.append(segment)
    return Unit(block.name, {"_segment": len(block.members) - 1, "_block": block}, block=True)


def _finish_segment_block(block: Block) -> None:
    """A segment block's parameters (the settings its members differ in), body, and the
    arguments of each member's call."""
    members = block.members
    columns: dict[tuple, list[tuple]] = {}
    for i, layer in enumerate(members[0]):
        for key in layer.args:
            column = tuple(repr(_plain(m[i].args[key])) for m in members)
            if len(set(column)) > 1:
                columns.setdefault(column, []).append((i, key))
    place, taken = {}, set()
    for group in columns.values():
        base = PARAM_NAMES.get(group[0][1], re.sub(r"\W", "", group[0][1])[:8] or "p")
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}{n}"
        taken.add(name)
        block.params.append(name)
        for where in group:
            place[where] = Param(name)
    body = [Layer(layer.op, {k: place.get((i, k), v) for k, v in layer.args.items()},
                  layer.inputs, layer.output, layer.origin) for i, layer in enumerate(members[0])]
    lines, order = _body_lines(body)
    block.body = ["in x", *lines]
    for member in members:
        for position, i in enumerate(order):
            member[i].rank = position
    block.calls = [{name: member[group[0][0]].args[group[0][1]]
                    for name, group in zip(block.params, columns.values())}
                   for member in members]


def _body_lines(layers: list[Layer]) -> tuple[list[str], list[int]]:
    """A segment's layers as pipelines inside a block (its entry is `x`, its last value
    the block's `out`), and the order the lines write the layers in (their indices)."""
    inside = {layer.output for layer in layers}
    readers: dict[str, int] = {}
    for layer in layers:
        for name in layer.inputs:
            readers[name] = readers.get(name, 0) + 1
    chains = pipelines(layers, lambda first: first in inside and readers.get(first) == 1)
    entry = next(name for layer in layers for name in layer.inputs if name not in inside)
    names = {entry: "x"}
    local = Names(KEYWORDS | set(OPS) | {"x"})
    lines = []
    chains = in_order(chains)
    index = {id(layer): i for i, layer in enumerate(layers)}
    order = [index[id(layer)] for chain in chains for layer in chain]
    for chain in chains:
        text = pipeline_text(chain, names)
        if chain[-1] is layers[-1]:  # the segment's value: what the block gives
            lines.append(f"out {text}")
        else:
            last = chain[-1]
            names[last.output] = local.make(_local_name(last))
            lines.append(f"{names[last.output]} = {text}")
    return lines, order


def _local_name(layer: Layer) -> str:
    """A value's name inside a block: the last part of its ONNX node's module path."""
    parts = [p for p in layer.origin.split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]
    last = parts[-1] if parts else ""
    last = re.sub(r"(\.\d+)+$", "", last)   # downsample.1 -> downsample
    name = re.sub(r"\W+", "_", last.split(".")[-1]).strip("_").lower()
    if not name or name[0].isdigit() or name in OPS or name in KEYWORDS:
        name = layer.op + "_out"
    return name


def _segment_block(segment, layers, wiring, names) -> Block:
    ops = [OPS[layer.op] for layer in segment if layer.op in OPS]
    strided = any(layer.args.get("stride") not in (None, 1) for layer in segment)
    inside = {layer.output for layer in segment}
    entry = next(name for layer in segment for name in layer.inputs if name not in inside)
    joins = [layer for layer in segment if layer.op in OPS and OPS[layer.op].concatenates]
    # a sum with the entry is a residual unit, a concatenation with it a dense one; a
    # concatenation of recurrent cells reads both ways, of other paths side by side
    base = "residual" if any(op.operator == "+" for op in ops) else \
        "dense_unit" if any(entry in layer.inputs for layer in joins) else \
        "bidirectional" if joins and any(layer.op in CELLS for layer in segment) else \
        "branches" if joins else \
        "_".join(dict.fromkeys(layer.op for layer in segment[:2]))
    base += "_down" if strided else ""
    return Block(names.make(base), [], [])


def _unit_text(unit: Unit) -> str:
    if unit.block:
        args = ", ".join(value_text(v) for v in unit.args.values())
        text = f"{unit.name}({args})" if unit.args else unit.name
    else:
        text = call_text(unit.name, unit.args, list(unit.joins))
    if isinstance(unit.count, Param):
        return f"{text} x {unit.count}"
    return f"{text} x {unit.count}" if unit.count != 1 else text


def _repeats(units: list[Unit]) -> list[Unit]:
    out: list[Unit] = []
    for unit in units:
        prev = out[-1] if out else None
        if prev is not None and prev.key() == unit.key() and prev.args == unit.args and \
                not isinstance(prev.count, Param) and not isinstance(unit.count, Param):
            prev.count += unit.count
        else:
            out.append(Unit(unit.name, dict(unit.args), unit.count, unit.block))
    return out


def _best_pattern(units: list[Unit]):
    """(length, starts) of the run of stages worth a block, or None."""
    best, best_score = None, None
    for length in range(2, len(units) // 2 + 1):
        seen: dict[tuple, list[int]] = {}
        for start in range(len(units) - length + 1):
            key = tuple(u.key() for u in units[start:start + length])
            starts = seen.setdefault(key, [])
            if not starts or start >= starts[-1] + length:
                starts.append(start)
        for key, starts in seen.items():
            occurrences = len(starts)
            if occurrences < 2:
                continue
            # lines saved: each occurrence becomes one call, the block costs its own
            saved = occurrences * (length - 1) - (length + 3)
            plain = not any(u.block for u in units[starts[0]:starts[0] + length])
            if saved <= 0 and (occurrences < 3 or plain):
                continue  # a run of blocks recurring 3 times is a stage even so
            params = len(_columns([units[s:s + length] for s in starts])[1])
            if plain and params > 2:
                continue  # a block of bare layers differing in everything: no clearer
            score = (saved, -params, -starts[0])
            if best_score is None or score > best_score:
                best, best_score = (length, starts), score
    return best


def _columns(runs: list[list[Unit]]):
    """The settings of several runs of units: those equal in all (constants) and the
    distinct columns of those that differ (parameters)."""
    keys = [(i, k) for i, u in enumerate(runs[0]) for k in u.settings()]
    constants, varying = {}, {}
    for i, k in keys:
        column = tuple(_plain(run[i].settings()[k]) for run in runs)
        if len(set(map(repr, column))) == 1:
            constants[(i, k)] = runs[0][i].settings()[k]
        else:
            varying.setdefault(tuple(map(repr, column)), []).append((i, k))
    return constants, list(varying.values())


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _fold(units, length, starts, names, structured) -> list[Unit]:
    runs = [units[s:s + length] for s in starts]
    constants, varying = _columns(runs)
    params, taken = [], set()
    place = {}
    for group in varying:
        i, k = group[0]
        base = PARAM_NAMES.get(k, re.sub(r"\W", "", k)[:8] or "p")
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}{n}"
        taken.add(name)
        params.append(name)
        for where in group:
            place[where] = Param(name)
    block = Block(names.make("stage"), params, [])
    stages = []
    for i, unit in enumerate(runs[0]):
        settings = {k: place.get((i, k), constants.get((i, k))) for k in unit.settings()}
        count = settings.pop("count")
        stages.append(_unit_text(Unit(unit.name, settings, count, unit.block)))
    block.body = ["in x", "out x -> " + " -> ".join(stages)]
    structured.blocks.append(block)
    folded, i = [], 0
    while i < len(units):
        if i in starts:
            run = units[i:i + length]
            args = {}
            for group, name in zip(varying, params):
                j, k = group[0]
                args[name] = run[j].settings()[k]
            folded.append(Unit(block.name, args, 1, True))
            i += length
        else:
            folded.append(units[i])
            i += 1
    return folded
