"""The op contract and its registry: an op is defined once and found by its spec name."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, ClassVar

from netdsl.errors import ShapeError, suggest
from netdsl.ops.layouts import NCHW_ONLY
from netdsl.types import TensorType

__all__ = ["Op", "Arg", "Ctx", "OPS", "register", "ArgError", "REQUIRED", "bind", "describe",
           "input_names", "positions", "NoLowering"]

OPS: dict[str, type["Op"]] = {}
REQUIRED = object()


class ArgError(Exception):
    """A bad argument; `where` is the positional index or keyword it refers to (None: the call)."""

    def __init__(self, message: str, where: int | str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.where, self.hint = message, where, hint


class Ctx:
    """Per-node execution context: the array module, the mode, and what a node remembers.

    An executor makes one Ctx per graph node and hands it to that node's `forward` and,
    later, its `backward`. Ops never import numpy or cupy: they use `ctx.xp`.

    Parameters
    ----------
    xp : module
        `numpy` or `cupy`; every array an op makes comes from it.
    training : bool
        Training mode: dropout and gaussian_noise are active and batchnorm uses batch
        statistics (and updates its running ones). In eval mode they are identities or
        use the running statistics.
    rng : Generator, optional
        An `xp.random` Generator for dropout masks, noise and `normal` (ops call only
        `random` and `standard_normal`, with `dtype`, which CuPy's Generator has too); by
        default `xp.random.default_rng()`, made on first use (on a GPU making one launches
        a kernel, and most contexts never draw).
    buffers : dict, optional
        Persistent per-node state that outlives a step (batchnorm's `running_mean` and
        `running_var`). Ops create their entries on first use; an executor keeps the dict
        across steps and may checkpoint it.
    batch : int, optional
        The batch size; only source ops (`normal`), which have no input to read it from,
        need it.
    dtype : str
        The float dtype source ops make (inputs set it for every other op).

    `saved` is what forward keeps for backward: arrays under the names the op's `keeps`
    declares (a reference to a parameter counts), plus small Python values such as input
    shapes. Forward writes it with `ctx.save(name=array, ...)`; the planner may free the
    arrays once backward has run. Saved arrays and inputs must not be changed in place.

    Example
    -------
    >>> import numpy as np
    >>> from netdsl.ops import OPS
    >>> ctx = Ctx(np, training=True, rng=np.random.default_rng(0))
    >>> y = OPS["relu"]().forward(ctx, np.array([[-1.0, 2.0]]))
    >>> OPS["relu"]().backward(ctx, np.ones_like(y))
    ((array([[0., 1.]]),), {})
    """

    def __init__(self, xp, training: bool = False, rng=None, buffers: dict | None = None,
                 batch: int | None = None, dtype: str = "float32"):
        self.xp = xp
        self.training = training
        self._rng = rng
        self.saved: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {} if buffers is None else buffers
        self.batch = batch
        self.dtype = dtype
        # set by an executor for an op with `inplace`: forward may write its result here
        # (the storage of its first input, which nothing reads afterwards)
        self.out = None
        # set by an executor before backward: which inputs need a gradient (None: all),
        # so an op may skip work nobody reads (the input gradient of a first layer)
        self.needs_input_grad: tuple[bool, ...] | None = None
        # False when an executor computes the parameter gradients later (Op.stackable)
        self.needs_param_grads = True
        # for a whole-sequence op: each example's number of real steps, when a batch pads
        # sequences of different lengths (None: every step is real); for an op reading
        # inputs whole (`Op.whole`, attention's memory), those of its whole input
        self.lengths = None
        # set by an executor before backward: where a parameter's gradient is stored (a
        # view of the flat gradient vector). An op may write it there (`out=`) and return
        # that very array, which saves a temporary and a copy; or return a new one
        self.grad_out: dict[str, Any] = {}
        # the step's Op.geometry, set by an executor; an op called alone derives it itself
        self.geometry = None
        # set by an executor before backward: gy is an array of this pass's own that
        # nothing reads afterwards, so an op may write its input's gradient over it
        self.gy_owned = False
        # set by an executor whose target compiled the op's `Op.programs`: run them
        self.compiled = False

    @property
    def rng(self):
        """The random generator; `xp.random.default_rng()` unless one was given."""
        if self._rng is None:
            self._rng = self.xp.random.default_rng()
        return self._rng

    @rng.setter
    def rng(self, value) -> None:
        self._rng = value

    def needs(self, index: int) -> bool:
        """Whether backward must compute the gradient of input `index`."""
        return self.needs_input_grad is None or self.needs_input_grad[index]

    def save(self, **values) -> None:
        """Keep arrays (named as in the op's `keeps`) and shapes for backward."""
        self.saved.update(values)


class NoLowering(Exception):
    """An op has no lowering to an export format; `nearest` names what comes closest there."""

    def __init__(self, op: "Op", format: str, nearest: str | None = None):
        super().__init__(f"{op.name} has no {format} lowering")
        self.op, self.format, self.nearest = op, format, nearest


@dataclass(frozen=True)
class Arg:
    """One attribute of an op: its name, a converter that validates it, and a default."""

    name: str
    convert: Callable[[Any], Any]
    default: Any = REQUIRED
    doc: str = ""


class Op:
    """One op: shape rule, parameters and FLOPs now; forward and backward live here too.

    Subclasses set `args` (the attribute schema) and `arity` (tensor inputs: an int, or
    (min, None) for variadic ops like concat). Attributes bound from a call are set on
    the instance (`self.channels`). Shape rules take and return per-step TensorTypes and
    raise ShapeError saying what they expected and what they saw.
    """

    name: ClassVar[str] = ""
    arity: ClassVar[int | tuple[int, int | None]] = 1
    args: ClassVar[tuple[Arg, ...]] = ()
    elementwise: ClassVar[bool] = False
    # which tensors backward keeps, e.g. ("y",) for relu: the planner reads it for lifetimes.
    # Names are inputs as the shape rule names them, "y" the output (unless an input is y),
    # parameters by name, or arrays forward makes (mask, indices, xhat); see Ctx.saved
    keeps: ClassVar[tuple[str, ...]] = ("x",)
    # ops that see the whole sequence (last, reverse) set this False
    per_step: ClassVar[bool] = True
    # inputs of a per-step op that it reads as whole sequences, time-major (attention's
    # memory): they do not make the result a sequence, and a recurrence passes them whole
    whole: ClassVar[tuple[str, ...]] = ()
    # losses reduce to one number per batch; the graph treats them as outputs
    is_loss: ClassVar[bool] = False
    # `a, b = split(z, 2)`: expansion makes one node per output and binds its `index`
    multi_output: ClassVar[bool] = False
    # forward honours ctx.out: it may write its result over its first input (fusion)
    inplace: ClassVar[bool] = False
    # forward writes its result into ctx.out when an executor gives one (an array of the
    # result's shape and dtype, which no input overlaps): a value may then live in the
    # memory plan's place for it (netdsl.lower.memory)
    fills_out: ClassVar[bool] = False
    # backward reads the inputs the shape rule leaves unnamed (`*xs`), which `keeps`
    # cannot name: a fused chain that recomputes from its inputs
    keeps_variadic: ClassVar[bool] = False
    # forward splits its work over the host's threads (ops.parallel): an executor runs a
    # pass with such ops with BLAS on one thread (runtime.host.one_blas_thread)
    host_split: ClassVar[bool] = False
    # backward honours ctx.needs_param_grads, and its parameter gradients are sums over
    # the batch rows of its saved `keeps` (named after its inputs and parameters): a loop
    # may then skip them per step and run backward once over all steps stacked
    stackable: ClassVar[bool] = False
    # forward returns a new array, never a view of an input or a parameter, so a reader may
    # overwrite it (flatten, split and crop return views; dropout in eval mode returns x)
    fresh: ClassVar[bool] = False
    # backward returns new arrays as its inputs' gradients, never gy or a view of it, so
    # the executor may add later contributions into them
    fresh_grads: ClassVar[bool] = False
    # backward writes its (only) input's gradient over gy when the executor owns gy
    # (Ctx.gy_owned): the memory plan gives both one buffer
    grad_over_gy: ClassVar[bool] = False
    # backward first takes gy back through an elementwise chain the op applied to its
    # output (lower.conv_chain): over gy when the executor owns it, else into an array
    # of the output's size, which the memory plan counts during the op's backward
    masks_gy: ClassVar[bool] = False
    # forward_then and backward_then apply an elementwise chain after the op as it writes
    # its output (lower.conv_chain): in a "convolution"'s kernels or a "gemm"'s output
    # pass, each joined unless its switch there is off
    chain_in: ClassVar[str | None] = None
    # inputs, by name, that no gradient flows back through (stop_gradient's x, crop's like)
    nondifferentiable: ClassVar[tuple[str, ...]] = ()
    # for each export format ("ONNX", "PyTorch") the op has no lowering to, the format's
    # nearest counterpart: the error at the op's line names it
    nearest: ClassVar[dict[str, str]] = {}
    # an activation: the initialisation `init=auto` gives the layer feeding it ("he" before
    # ReLU-like units, "xavier" before squashing ones)
    init_scheme: ClassVar[str | None] = None
    # between a layer and its activation, `init=auto` looks through this op (batchnorm,
    # dropout, pooling, reshaping): it changes neither the kind nor the scale of the units
    init_transparent: ClassVar[bool] = False
    # the infix operator that writes this op in a spec (`a + b`), and the label a drawing
    # gives it when it draws the op as a small join of its inputs
    operator: ClassVar[str | None] = None
    join: ClassVar[str | None] = None
    # a loss whose first input are scores a prediction reads: how they are judged right
    # ("class": the argmax is the label; "binary": positive means 1; "sign")
    accuracy: ClassVar[str | None] = None
    # a loss whose float target must lie in a range (sigmoid cross-entropy's
    # probabilities): generated and bundled data scale their targets into it
    target_range: ClassVar[tuple[float, float] | None] = None
    # y = x W^T (+ b) of a vector x: W may be split into blocks of input columns, each
    # applied to its part of x (hoisting takes the parts known before a loop out of it)
    column_linear: ClassVar[bool] = False
    # y = [x_1; x_2; ...]: the inputs laid end to end (of vectors: blocks of columns)
    concatenates: ClassVar[bool] = False
    # what `netc run --diagnose` reads in the op's output: the value a unit gives when it is
    # off (ReLU's 0), which counts it dead when every example of a batch gets it; and a
    # squashing op's asymptotes (sigmoid's 0 and 1), near which its outputs are saturated
    dead_value: ClassVar[float | None] = None
    asymptotes: ClassVar[tuple[float, float] | None] = None
    # forward draws from ctx.rng in training (masks, noise, samples): a recomputation
    # must replay the draws (bptt(checkpoint=k) restores the generator's state)
    draws: ClassVar[bool] = False
    # per-channel programs (ops.channels) stating the op's work as formulas: a target that
    # generates code compiles them, and its executor sets Ctx.compiled so that the op runs
    # them instead of its NumPy code (batchnorm's statistics, normalisation and gradient)
    programs: ClassVar[tuple] = ()

    def __init__(self, **attrs):
        self.attrs = attrs
        for key, value in attrs.items():
            setattr(self, key, value)

    def shape(self, *xs: TensorType) -> TensorType:
        raise NotImplementedError

    def params(self, *xs: TensorType) -> dict[str, tuple[int, ...]]:
        """Shapes of the learned parameters, in PyTorch's layout, given the input types."""
        return {}

    def buffers(self, *xs: TensorType) -> dict[str, Any]:
        """What forward keeps in `ctx.buffers` across steps, unlearned, with the values it
        starts from (batchnorm's running statistics): exporters write it beside the
        parameters, and an untrained network exports these."""
        return {}

    def flops(self, y: TensorType, *xs: TensorType) -> int:
        """Forward FLOPs for one example (one step of a sequence); a multiply-add is 2."""
        return y.size

    def mult_adds(self, y: TensorType, *xs: TensorType) -> int:
        """Multiply-adds for one example (one step), as torchinfo counts them: each
        parameter once (a dense layer's weights and bias, a batchnorm's scale and shift);
        ops without parameters count none. Ops that apply their weights at every output
        position (convolutions) count them once per position. FLOPs are twice this."""
        return sum(math.prod(shape) for shape in self.params(*xs).values())

    def fans(self, weight: tuple[int, ...]) -> tuple[int, int] | None:
        """(fan_in, fan_out) of a weight of this shape, for the initialisation schemes that
        scale by them (He, Xavier, 1/sqrt(n)); None where no scheme rescales the op's
        parameters."""
        return None

    def geometry(self, *xs: TensorType):
        """What forward and backward derive from the input types alone (a convolution's
        padding and output size): computed once per step by the planner and given to
        them as `ctx.geometry`; None for most ops."""
        return None

    def scratch(self, *xs: TensorType) -> tuple[int, int]:
        """Bytes per example of the work arrays a call makes and frees inside it (a
        convolution's im2col columns), as (what sizes its chunks, what a chunk holds):
        the op works through the batch in chunks of about ops.parallel.CHUNK_BYTES of the
        first (one example at least), so the memory plan can bound it. (0, 0): none."""
        return 0, 0

    def convolves(self, *xs: TensorType):
        """(geometry, groups) of the ops.convolve.conv_nd a call runs forward, for a target
        that chooses a kernel per convolution ahead of training; None: none."""
        return None

    def layouts(self, *xs: TensorType) -> frozenset[str]:
        """The layouts (ops.layouts) the op can run its (C, H, W) values in, given its
        input types: NCHW alone, unless it has an NHWC kernel (`in_layout`) or treats
        every element alike (an elementwise op of inputs of one shape: either)."""
        return NCHW_ONLY

    def in_layout(self, layout: str, *xs: TensorType) -> "Op":
        """The op that does this one's work in `layout`, one of `layouts(*xs)`: itself
        where the layout changes nothing it does (netdsl.lower.layout)."""
        return self

    def time_steps(self, step: int | None, steps: int) -> list[int]:
        """The time steps (1..steps) of a sequence input that the output at `step` reads
        (None: an output without a time axis), as an unrolled drawing links them: step t
        itself for a per-step op, and every step for an output without a time axis."""
        return [step] if step is not None else list(range(1, steps + 1))

    def over_time(self, sequences: tuple[bool, ...]) -> tuple[str, str] | None:
        """Why this op, as called, cannot take its inputs with (True) or without (False)
        a time axis as they come, and a hint; None where it can (a causal mask needs a
        query sequence). The shapes pass asks it, for per-step ops."""
        return None

    def in_recurrence(self) -> str | None:
        """Why this op, as called, cannot run one step at a time inside a recurrence (a
        causal mask orders a whole query sequence); None where it can."""
        return None

    def grad_region(self, ctx):
        """For an op whose input gradient is a zero array with gy in one region (split's
        chunk): (the input's shape, the region's index), so that an executor may add gy
        into a gradient it holds already instead of making a zero array; else None."""
        return None

    def column_block(self, width: int) -> int | None:
        """For an op whose output is a block of its vector input's columns (a split's
        chunk) taken from an input `width` wide: the block's first column, so that a
        generated loop reads it in place; else None."""
        return None

    def init(self, rng, *xs: TensorType) -> dict[str, Any]:
        """Default parameter values as float32 numpy arrays, one per `params` entry.

        Parameters
        ----------
        rng : numpy.random.Generator
        xs : TensorType
            The input types, as for `params`.

        Raises
        ------
        NotImplementedError
            When the op has parameters but no init rule.
        """
        if self.params(*xs):
            raise NotImplementedError(f"no init rule for `{self.name}`")
        return {}

    def forward(self, ctx: Ctx, *xs, **params):
        """Compute the output for a batch.

        Parameters
        ----------
        ctx : Ctx
            This node's context; forward saves into it what `keeps` declares.
        xs : arrays
            The tensor inputs with the batch axis first: dims (C,H,W) arrive as
            (B,C,H,W), class indices as integer arrays (B, *dims). Whole-sequence ops
            (`per_step` False) get (T,B,*dims), time-major; per-step ops never see a time axis.
        params : arrays
            The learned parameters, named as `params` names them, in PyTorch's layout.

        Returns an array (B, *dims) of the output type; a loss returns a 0-d array, the
        mean over the batch.

        Raises
        ------
        NotImplementedError
            When the op has no forward rule.
        """
        raise NotImplementedError(f"no forward rule for `{self.name}`")

    def backward(self, ctx: Ctx, gy):
        """Gradients of the inputs and parameters, given gy = dL/dy.

        Returns `(input_grads, param_grads)`: a tuple with one entry per tensor input
        (None where no gradient flows: class inputs, stop_gradient, the `like` of crop)
        and a dict from parameter name to its gradient. Reads only `ctx.saved`. The arrays
        may be gy itself or views of it: an executor that accumulates into one copies first.
        Never called for an output that holds class labels.

        Raises
        ------
        NotImplementedError
            When the op has no gradient rule.
        """
        raise NotImplementedError(f"no gradient rule for `{self.name}`")

    def onnx(self, g, step, inputs: list[str], params: dict[str, str]) -> str:
        """Emit this op as ONNX nodes through the builder `g` (netdsl.export.onnx.Builder);
        return the name of the value it computes.

        `step` is the plan's Step (its input types, per step, and geometry); `inputs` the
        names of the input values and `params` those of the parameters, by parameter name.
        Values are laid out as forward sees them: the batch (or, for a sequence outside a
        recurrence, batch and time folded into one axis) first, then the per-example dims;
        inputs listed in `whole` arrive as (B, T, *dims).

        Raises
        ------
        NoLowering
            When ONNX has no counterpart (naming the nearest one, `nearest`).
        """
        raise NoLowering(self, "ONNX", self.nearest.get("ONNX"))

    def torch(self, t, step, inputs: list[str]) -> str:
        """This op as PyTorch code, through the writer `t` (netdsl.export.torch.Writer):
        return a Python expression of the input expressions `inputs`, laid out as for
        `onnx`. A layer with parameters is a submodule declared with `t.layer`, whose
        parameters have the names `params` gives them.

        Raises
        ------
        NoLowering
            When PyTorch has no counterpart (naming the nearest one, `nearest`).
        """
        raise NoLowering(self, "PyTorch", self.nearest.get("PyTorch"))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.attrs.items())
        return f"{self.name}({inner})"


@lru_cache(maxsize=None)
def input_names(op: type["Op"]) -> tuple[str, ...]:
    """The names an op's shape rule gives its tensor inputs (what `keeps` and `whole`
    refer to)."""
    signature = inspect.signature(op.shape)
    return tuple(p.name for p in signature.parameters.values()
                 if p.name != "self" and p.kind is not p.VAR_POSITIONAL)


def positions(op: Op, names: tuple[str, ...]) -> frozenset[int]:
    """The argument positions of the inputs called `names` by the op's shape rule (its
    `whole` or `nondifferentiable` inputs)."""
    if not names:
        return frozenset()
    return frozenset(i for i, name in enumerate(input_names(type(op))) if name in names)


def register(name: str, *aliases: str):
    """Class decorator: register an op under its spec name (and aliases)."""

    def wrap(cls: type[Op]) -> type[Op]:
        cls.name = name
        for key in (name, *aliases):
            if key in OPS:
                raise ValueError(f"op {key!r} registered twice")
            OPS[key] = cls
        return cls

    return wrap


def bind(cls: type[Op], positional: list, keyword: dict[str, Any], made: dict | None = None) -> Op:
    """Match call arguments to an op's schema and convert them; raise ArgError on misuse.

    `made` (a dict the caller keeps, empty at first) shares ops: a call of the same op
    with equal plain arguments gets the op made for the first, not a new one. An op is
    not changed once bound, so one network's nodes may share it: expansion keeps one
    `made` per network."""
    if keyword:
        try:  # the types too: True and 1 are equal keys, but a converter tells them apart
            key = (cls, tuple(positional), tuple(keyword.items()), tuple(map(type, positional)),
                   tuple(map(type, keyword.values())))
            op = made.get(key) if made is not None else None
            found = _BOUND.get(key) if op is None else None
        except TypeError:  # a list among them: bound afresh
            key = found = op = None
    elif positional:  # the common call, `dense(64)`: one flat key
        try:
            key = (cls, len(positional), *positional, *map(type, positional))
            op = made.get(key) if made is not None else None
            found = _BOUND.get(key) if op is None else None
        except TypeError:  # a list among them: bound afresh
            key = found = op = None
    else:
        key = cls
        op = made.get(cls) if made is not None else None
        found = _BOUND.get(cls) if op is None else None
    if op is not None:  # made for an equal call of this network's
        return op
    if found is not None and found[0] is cls.args:  # (a test may give a class other args)
        values = found[1]
    else:
        values = _bind_values(cls, positional, keyword)
        if key is not None and all(map(_plain, values.values())) \
                and all(map(_plain, positional)) and all(map(_plain, keyword.values())):
            if len(_BOUND) >= _BOUND_KEPT:
                _BOUND.clear()
            _BOUND[key] = found = (cls.args, values)
        else:
            found = None
    op = _made(cls, values)
    if made is not None and found is not None:  # plain arguments, kept: the op may be shared
        made[key] = op
    return op


def _made(cls: type[Op], values: dict[str, Any]) -> Op:
    """An op of class `cls` with these converted attribute values."""
    plain = _PLAIN_INIT.get(cls)
    if plain is None:
        plain = _PLAIN_INIT[cls] = _plain_init(cls)
    if not plain:
        return cls(**values)
    op = cls.__new__(cls)  # as Op.__init__ makes it, without its call by keywords
    op.attrs = dict(values)
    for name, value in values.items():  # not through op.__dict__, which would make a dict
        setattr(op, name, value)         # of the fields Python otherwise keeps more compactly
    return op


# A big spec calls the same layer with the same arguments thousands of times: their
# converted values are kept, by op and arguments, for calls whose values are all plain
# (no list, no zero or NaN float: 0.0 and -0.0 are equal keys), at most this many
_BOUND_KEPT = 4096
_BOUND: dict[Any, tuple[tuple[Arg, ...], dict[str, Any]]] = {}


_PLAIN_INIT: dict[type, bool] = {}  # _plain_init's answer, by class


def _plain_init(cls: type[Op]) -> bool:
    """Whether making an instance of `cls` is Op.__init__'s alone: its attributes stored
    as they are, with no __init__, __setattr__ or property of the op's own in between."""
    return (cls.__init__ is Op.__init__ and cls.__setattr__ is object.__setattr__
            and not any(isinstance(getattr(cls, arg.name, None), property) for arg in cls.args))


def _plain(value) -> bool:
    kind = type(value)
    if kind is float:
        return value == value and value != 0.0
    return kind is int or kind is str or kind is bool or value is None


def _bind_values(cls: type[Op], positional: list, keyword: dict[str, Any]) -> dict[str, Any]:
    """The converted value of each of an op's arguments, in the schema's order."""
    schema, defaults = _schema(cls)
    if len(positional) > len(cls.args):
        raise ArgError(
            f"{cls.name} takes at most {len(cls.args)} argument(s) besides its input(s), "
            f"got {len(positional)}",
            len(cls.args),
            hint=_usage(cls),
        )
    values: dict[str, Any] = {}
    for index, (arg, value) in enumerate(zip(cls.args, positional)):
        values[arg.name] = _convert(cls, arg, value, index)
    for key, value in keyword.items():
        if key not in schema:
            hint = suggest(key, schema) or _usage(cls)
            raise ArgError(f"{cls.name} has no argument '{key}'", key, hint)
        if key in values:
            raise ArgError(f"{cls.name}: argument '{key}' given twice", key)
        values[key] = _convert(cls, schema[key], value, key)
    if len(values) < len(cls.args):
        for arg in cls.args:
            if arg.name not in values:
                if arg.default is REQUIRED:
                    raise ArgError(f"{cls.name} needs argument '{arg.name}'", None, _usage(cls))
                default = defaults.get(arg.name, _UNSHARED)
                # defaults pass the converter too, so attributes have one canonical form
                values[arg.name] = arg.convert(arg.default) if default is _UNSHARED else default
    return {arg.name: values[arg.name] for arg in cls.args}


_UNSHARED = object()
_SCHEMAS: dict[type, tuple[dict[str, Arg], dict[str, Any], tuple[Arg, ...]]] = {}


def _schema(cls: type[Op]) -> tuple[dict[str, Arg], dict[str, Any]]:
    """An op's arguments by name, and its converted defaults that every instance may share
    (the immutable ones), made once per op rather than once per call."""
    found = _SCHEMAS.get(cls)
    if found is None or found[2] is not cls.args:  # made anew for a class given other args
        defaults = {}
        for arg in cls.args:
            if arg.default is REQUIRED:
                continue
            value = arg.default if arg.default is None else arg.convert(arg.default)
            if _immutable(value):
                defaults[arg.name] = value
        found = _SCHEMAS[cls] = ({a.name: a for a in cls.args}, defaults, cls.args)
    return found[0], found[1]


def _immutable(value) -> bool:
    if isinstance(value, tuple):
        return all(map(_immutable, value))
    return value is None or isinstance(value, (bool, int, float, str, frozenset))


def _convert(cls, arg: Arg, value, where):
    try:
        return arg.convert(value)
    except (TypeError, ValueError) as exc:
        raise ArgError(f"{cls.name}: argument '{arg.name}' {exc}", where, _usage(cls)) from None


def _usage(cls: type[Op]) -> str:
    parts = [a.name if a.default is REQUIRED else f"{a.name}={describe(a.default)}" for a in cls.args]
    return f"usage: {cls.name}({', '.join(parts)})"


# ---- argument converters: each raises ValueError("expects ..., got ...")


def describe(value) -> str:
    """A value as a spec writes it: true, none, 'same', [1, 1]."""
    if isinstance(value, (bool, type(None))):
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(describe, value))}]"
    return repr(value)


def integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"expects a whole number, got {describe(value)}")
    return int(value)


def positive(value) -> int:
    value = integer(value)
    if value < 1:
        raise ValueError(f"expects a positive whole number, got {value}")
    return value


def natural(value) -> int:
    value = integer(value)
    if value < 0:
        raise ValueError(f"expects a whole number >= 0, got {value}")
    return value


def number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expects a number, got {describe(value)}")
    return float(value)


def probability(value) -> float:
    value = number(value)
    if not 0 <= value < 1:
        raise ValueError(f"expects a probability in [0, 1), got {value:g}")
    return value


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expects true or false, got {describe(value)}")
    return value


def ints(convert=positive):
    """A number or a list of numbers (a kernel size of 3 or [3, 5]), as a tuple."""

    def to_tuple(value) -> tuple[int, ...]:
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise ValueError("expects at least one number, got []")
        return tuple(convert(v) for v in items)

    return to_tuple


def numbers(value) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expects a list of numbers, got {describe(value)}")
    return tuple(number(v) for v in value)


def choice(*options: str):
    def check(value) -> str:
        if value not in options:
            listed = ", ".join(f"'{o}'" for o in options)
            raise ValueError(f"expects one of {listed}, got {describe(value)}")
        return value

    return check


def optional(convert):
    def check(value):
        return None if value is None else convert(value)

    return check


def expand_to(values: tuple[int, ...], rank: int, what: str) -> tuple[int, ...]:
    """Broadcast a per-dimension setting (kernel 3 -> (3, 3)) or fail naming it."""
    if len(values) == 1:
        return values * rank
    if len(values) != rank:
        raise ShapeError(f"{what} has {len(values)} values but the input has {rank} spatial dims")
    return values
