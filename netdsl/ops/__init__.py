"""The op library: importing it registers every family, so OPS holds them all."""
from netdsl.ops import (  # noqa: F401  imported for their @register side effects
    activation,
    arith,
    attention,
    conv,
    linear,
    loss,
    norm,
    pool,
    sequence,
    shape,
    source,
)
from netdsl.ops.base import OPS, ArgError, Op, bind, register

__all__ = ["OPS", "Op", "register", "bind", "ArgError", "ELEMENTWISE", "LOSSES"]

# named groups, as tinygrad's GroupOp: the fuser and the graph read these
ELEMENTWISE = frozenset(name for name, op in OPS.items() if op.elementwise)
LOSSES = frozenset(name for name, op in OPS.items() if op.is_loss)
