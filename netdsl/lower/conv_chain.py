"""Lowering pass for the native target: a convolution or a dense layer takes the
elementwise chain after it.

A fused chain (lower.fuse's FusedChain) with one input whose gradient follows from its
output (codegen.from_output: relu, tanh, ...) and which reads the output of an op that
can apply a chain as it writes its output (`Op.chain_in`: conv, dense), where nothing else
reads that output, joins that op: one `ConvChain` step, named after the chain's last
node. On the native target the convolution's kernels apply the chain to each output as
they write it (no pass of its own forward), and backward takes gy back through the chain
in the pass that sums the bias's gradient, over gy itself where the executor owns it
(runtime.native.conv); a dense layer's GEMM is the one chosen for its shape, one pass
after it adds the bias and applies the chain, and one pass in backward takes gy back
and sums the bias's gradient (runtime.native.dense). Elsewhere the op's forward and the
chain run one after the other.

`ABSORB` off (NETDSL_CONV_CHAINS=0) keeps the convolutions' chains apart, as before this
pass; `GEMM_CHAINS` (NETDSL_NATIVE_DENSE=1) joins the dense layers' too, off by default
since it did not pay in the measurements so far.
"""
from __future__ import annotations

from dataclasses import replace

from netdsl.lower.codegen import Chain, chain_backward, chain_forward, run_program
from netdsl.lower.native_conv import Chained
from netdsl.lower.plan import Plan, Step
from netdsl.ops.base import Op
from netdsl.switches import flag

__all__ = ["ABSORB", "GEMM_CHAINS", "Epilogue", "ConvChain", "into_convolutions"]

# join chains to the convolutions before them (False, or NETDSL_CONV_CHAINS=0 in the
# environment: the chains stay steps of their own)
ABSORB = flag("NETDSL_CONV_CHAINS", True)
# join chains to the dense layers (GEMMs) before them, their passes compiled on the
# native target (True, or NETDSL_NATIVE_DENSE=1; read here only); off by default: W1's
# step alternating with the layers apart was no shorter on one thread and moved either
# way with the load on two (docs/cpu.md)
GEMM_CHAINS = flag("NETDSL_NATIVE_DENSE", False)


class Epilogue:
    """An elementwise chain of one input as a convolution's epilogue: its programs (for
    the C kernels, lower.native_conv.Chained) and their evaluation on arrays, over the
    arrays given (ops.convolve.conv_nd_then's generic path)."""

    def __init__(self, chain: Chain):
        self.chain = chain
        self.programs = Chained(chain_forward(chain),
                                chain_backward(chain, (True,), output=True))

    def apply(self, xp, y):
        """The chain over y, written over y."""
        return run_program(xp, self.programs.forward, {"x0": y, "y": y},
                           dtype=str(y.dtype))["y"]

    def gradient(self, xp, y, gy, into=None):
        """gy taken back through the chain from its output y: into `into` (gy itself, say)
        or a new array."""
        arrays = {"y": y, "gy": gy}
        if into is not None:
            arrays["dx0"] = into
        return run_program(xp, self.programs.gradient, arrays, dtype=str(y.dtype))["dx0"]


class ConvChain(Op):
    """A convolution and the elementwise chain after it as one step: inputs, parameters
    and geometry the convolution's; keeps its input (and weight) and the chain's output.
    Its backward first takes gy back through the chain, over gy when the executor owns
    it, else into an array of the output's size (`masks_gy`: the memory plan counts it)."""

    name = "fused"
    fresh = True
    keeps = ("x", "y")
    masks_gy = True

    def __init__(self, head: Op, chain: Chain, nodes: tuple[str, ...]):
        super().__init__()
        self.head, self.nodes = head, nodes
        self.epilogue = Epilogue(chain)
        self.name = f"{head.name}_{chain.name}"   # the convolution's work, which it mostly is
        self.host_split = head.host_split
        self.fresh_grads = head.fresh_grads
        self.fills_out = head.fills_out   # forward_then writes y where told as forward does

    def shape(self, x):
        return self.head.shape(x)   # names the input "x" for `keeps`

    def params(self, x):
        return self.head.params(x)

    def scratch(self, x):
        return self.head.scratch(x)

    def convolves(self, x):
        return self.head.convolves(x)

    def flops(self, y, x) -> int:
        return self.head.flops(y, x)

    def forward(self, ctx, x, **params):
        return self.head.forward_then(ctx, self.epilogue, x, **params)

    def backward(self, ctx, gy):
        return self.head.backward_then(ctx, self.epilogue, gy)


def _takes_chain(step: Step) -> bool:
    """Whether a step's op may apply the chain after it as it writes its output (its
    `chain_in`, where that kind's switch is on)."""
    switch = {"convolution": ABSORB, "gemm": GEMM_CHAINS}.get(step.op.chain_in, False)
    return (switch and len(step.inputs) == 1 and not step.slices and not step.borrows)


def into_convolutions(plan: Plan, kept: set[str]) -> Plan:
    """`plan` with each fused chain of one input whose gradient follows from its output
    joined to the convolution that makes that input, where nothing else reads it and
    neither lies in a loop."""
    if not (ABSORB or GEMM_CHAINS):
        return plan
    in_loops = {s.node for loop in plan.loops for s in loop.steps}
    readers: dict[str, int] = {}
    for step in plan.steps:
        for source in step.inputs:
            readers[source] = readers.get(source, 0) + 1
    by_node = {s.node: s for s in plan.steps}
    joined: dict[str, Step] = {}
    heads: set[str] = set()
    for step in plan.steps:
        # a fused chain (lower.fuse imports this module: its class is known by its facts)
        chain = getattr(step.op, "chain", None)
        if (not getattr(step.op, "from_output", False) or chain.inputs != 1
                or step.node in in_loops):
            continue
        [source] = step.inputs
        head = by_node.get(source)
        if (head is not None and _takes_chain(head) and readers[source] == 1
                and source not in kept and source not in in_loops):
            op = ConvChain(head.op, chain, (head.node, *step.op.nodes))
            joined[step.node] = Step(step.node, op, head.inputs, head.input_types,
                                     dict(head.params), geometry=head.geometry)
            heads.add(source)
    if not joined:
        return plan
    return replace(plan, steps=[joined.get(s.node, s) for s in plan.steps
                                if s.node not in heads])
