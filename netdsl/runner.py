"""`netc run`, `netc eval` and `netc predict`: a checked spec, data, and the runtime."""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from netdsl.errors import SpecError

__all__ = ["run", "evaluate", "predict", "array_module"]


INSTALL_HELP = ("install it with pip install 'netdsl[gpu]' (CUDA 13; 'netdsl[gpu-cuda12]' "
                "for CUDA 12), or run with --device cpu")
DRIVER_HELP = ("check that nvidia-smi lists the GPU and that its driver supports the CUDA "
               "of the CuPy wheel (cupy-cuda13x needs CUDA 13), or run with --device cpu")


def array_module(device: str):
    """numpy for the CPU; cupy for the GPU, once a tiny array has been made and computed
    on it. Otherwise a SpecError of one line saying what is missing: CuPy, a CUDA device
    it can see, or a device it can use (a driver too old for the CUDA of the wheel, a
    missing CUDA library, a device that is out of memory or busy)."""
    if device == "cpu":
        return np
    what = "--device gpu needs CuPy and an NVIDIA GPU"
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001  not installed, or an install failing inside
        if isinstance(exc, ModuleNotFoundError) and exc.name == "cupy":
            raise SpecError(f"{what}, but CuPy is not installed; {INSTALL_HELP}", None) from None
        raise SpecError(f"{what}, but CuPy failed to import ({_why(exc)}); {INSTALL_HELP}",
                        None) from None
    try:
        available = cupy.cuda.is_available()
    except Exception as exc:  # noqa: BLE001  a CUDA runtime that cannot start
        raise SpecError(f"{what}, but CuPy cannot start CUDA ({_why(exc)}); {DRIVER_HELP}",
                        None) from None
    if not available:
        raise SpecError(f"{what}, but CuPy sees no CUDA device; {DRIVER_HELP}", None)
    try:  # the first allocation, and a kernel (compiled by NVRTC), read back
        probe = cupy.arange(4, dtype=cupy.float32)
        if float((probe * 2).sum()) != 12.0:
            raise RuntimeError("a test computation on the GPU gave a wrong result")
    except Exception as exc:  # noqa: BLE001  cupy.cuda.runtime.CUDARuntimeError and kin
        raise SpecError(f"{what}, but CuPy could not use the GPU ({_why(exc)}); {DRIVER_HELP}",
                        None) from None
    return cupy


def _why(exc: Exception) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class RichReporter:
    """A progress bar per epoch and one line of metrics when it ends."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.progress = None

    def start(self, description, settings, epochs, steps):
        self.epochs = epochs
        if description:
            self.console.print(f"data: {description}")
        opt = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in settings.optimizer_settings.items())
        self.console.print(f"training: {settings.optimizer}({opt}), batch {settings.batch}, "
                           f"{epochs} epochs of {steps} steps, seed {settings.seed}")

    def step(self, epoch, done, total, metrics):
        if self.quiet or not self.console.is_terminal:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"),
                                     TextColumn("{task.fields[metrics]}"), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=total, epoch="", metrics="")
        text = "  ".join(_fmt(k, v) for k, v in metrics.items())
        self.progress.update(self.task, completed=done, total=total,
                             epoch=f"{epoch + 1}/{self.epochs}", metrics=text)

    def epoch(self, record):
        self._close()
        self.console.print("  ".join(_fmt(k, v) for k, v in record.items()), soft_wrap=True)

    def stopped(self, reason):
        self._close()
        self.console.print(reason)

    def should_stop(self):
        return False

    def _close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _fmt(key: str, value) -> str:
    if key == "epoch":
        return f"epoch {value}"
    if "accuracy" in key:
        return f"{key} {100 * value:.2f}%"
    if key == "samples/s":
        return f"{value:,.0f} samples/s"
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"


def _prepare(args):
    """Check the spec and resolve its settings with the flags."""
    from netdsl.driver import CheckFailed, check_file
    from netdsl.errors import SpecErrors, errors_of
    from netdsl.lower import lower
    from netdsl.settings import resolve_settings

    net = check_file(args.spec)
    lowered = lower(net.graph, "cuda" if getattr(args, "device", "cpu") == "gpu" else "host")
    overrides = {key: getattr(args, key, None) for key in
                 ("epochs", "batch", "lr", "seed", "steps", "init", "val")}
    if getattr(args, "normalize", False):
        overrides["normalize"] = True
    try:
        settings = resolve_settings(net.graph.graph["train"], overrides, net.program.train_spans)
    except (SpecError, SpecErrors) as exc:  # with the spec's text, to show the line
        raise CheckFailed(errors_of(exc), net.sources) from None
    return net, lowered, settings


def _source(args, settings) -> str | None:
    """--data, else the train clause's data='NAME', else None: bundled or generated."""
    return args.data or settings.data


def _length(args) -> dict:
    """Time steps of generated and named sequence data, when --length gives them."""
    return {"steps": args.length} if getattr(args, "length", None) else {}


def _folder(args, net) -> str:
    return args.checkpoint or os.path.join("runs", net.name)


def run(args) -> int:
    """Train a spec; checkpoints go to --checkpoint (default runs/NAME)."""
    from netdsl.runtime.checkpoint import CHECKPOINT, CheckpointError
    from netdsl.runtime.data import load_data, normalize
    from netdsl.runtime.train import Trainer

    console = Console(stderr=False, highlight=False)
    net, lowered, settings = _prepare(args)
    plan = lowered.plan
    xp = array_module(args.device)
    data = load_data(net.graph, _source(args, settings), settings.seed, args.examples,
                     **_length(args))
    train, val = data.split(settings.val, settings.seed)
    norm = None
    if settings.normalize and data.normalize:
        norm, (train, val) = normalize(train, val)
    folder = _folder(args, net)
    trainer = Trainer(lowered, settings, folder, args.checkpoint_every, xp,
                      RichReporter(console, args.quiet))
    trainer.extra_arrays = {f"normalize/{k}": v for k, v in (norm.state_dict() if norm else {}).items()}
    path = os.path.join(folder, CHECKPOINT)
    if args.resume:
        try:
            trainer.restore(folder)
        except CheckpointError as exc:
            raise SpecError(str(exc), None, "run without --resume to start over") from None
        console.print(f"resuming from {path} at epoch {trainer.position.epoch + 1}, "
                      f"step {trainer.position.iteration}")
    elif os.path.exists(path):
        shutil.copyfile(path, os.path.join(folder, "previous.npz"))
        console.print(f"starting over; the earlier checkpoint is kept as "
                      f"{os.path.join(folder, 'previous.npz')}")
    console.print(f"{net.name}: {net.param_count():,} parameters, checkpoints in {folder}/")
    trainer.fit(train, val if len(val) else None, data.description)
    console.print(f"saved {path}")
    return 0


def _trained(args):
    """A checked spec with the parameters of its checkpoint."""
    from netdsl.runtime.checkpoint import CheckpointError, load_checkpoint
    from netdsl.runtime.data import Normalizer
    from netdsl.runtime.train import Trainer

    net, lowered, settings = _prepare(args)
    plan = lowered.plan
    folder = _folder(args, net)
    trainer = Trainer(lowered, settings, None, xp=array_module(args.device))
    try:
        trainer.restore(folder)
        arrays, _ = load_checkpoint(folder)
    except CheckpointError as exc:
        raise SpecError(str(exc), None, f"train it first: netc run {args.spec}") from None
    stats = {k[len("normalize/"):]: v for k, v in arrays.items() if k.startswith("normalize/")}
    return net, plan, settings, trainer, Normalizer.from_state(stats) if stats else None


def evaluate(args) -> int:
    """Losses and accuracy of a trained spec on --data (default: the held-out split)."""
    from netdsl.runtime.data import load_data

    net, plan, settings, trainer, norm = _trained(args)
    data = load_data(net.graph, _source(args, settings), settings.seed, args.examples,
                     **_length(args))
    if args.data is None:
        _, data = data.split(settings.val, settings.seed)
    if norm:
        data = norm.apply(data)
    metrics = trainer.evaluate(data)
    print(f"{len(data):,} examples: " + "  ".join(_fmt(k, v) for k, v in metrics.items()))
    return 0


def predict(args) -> int:
    """The network's outputs for --data, written to -o (npz or csv) or printed."""
    from netdsl.atomic import write_bytes, write_text
    from netdsl.runtime.data import load_data

    net, plan, settings, trainer, norm = _trained(args)
    if args.generate:
        return _generate(args, net, plan, settings, trainer)
    outputs = _outputs(plan)
    data = load_data(net.graph, _source(args, settings), settings.seed, args.examples,
                     only=_fields_needed(plan, outputs.values()), **_length(args))
    if norm:
        data = norm.apply(data)
    from netdsl.runtime.host import to_host

    parts = {name: [] for name in outputs}
    for batch in data.batches(256, None):
        out = trainer.executor.forward(batch, False, set(outputs.values()), losses=False)
        for name, node in outputs.items():
            parts[name].append(to_host(trainer.xp, out[node]))
    results = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    classes = {name: r.argmax(axis=2 if plan.types[name].seq else 1)
               for name, r in results.items() if name in _class_outputs(plan)}
    if args.output is None:
        for name, values in (classes or results).items():
            print(f"{name}: {np.array2string(values[:20], threshold=40)}"
                  + (f" ... ({len(values):,} in all)" if len(values) > 20 else ""))
        return 0
    if args.output.endswith(".npz"):
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **results, **{f"{k}_class": v for k, v in classes.items()})
        write_bytes(args.output, buffer.getvalue())
    elif args.output.endswith(".csv"):
        columns, names = [], []
        for name, values in results.items():
            flat = values.reshape(len(values), -1)
            columns.append(flat)
            names += [f"{name}{i}" for i in range(flat.shape[1])] if flat.shape[1] > 1 else [name]
        for name, values in classes.items():
            columns.append(values.reshape(-1, 1))
            names.append(f"{name}_class")
        table = np.concatenate(columns, axis=1)
        lines = [",".join(names)] + [",".join(f"{v:.6g}" for v in row) for row in table]
        write_text(args.output, "\n".join(lines) + "\n")
    else:
        raise SpecError(f"cannot write predictions to {args.output}", None,
                        "name an .npz or .csv file")
    print(f"wrote {len(data):,} predictions to {args.output}")
    return 0


def _generate(args, net, plan, settings, trainer) -> int:
    """`predict --generate INPUT`: the network writes INPUT itself, step by step."""
    from netdsl.runtime.data import load_data
    from netdsl.runtime.generate import fed_scores, generate
    from netdsl.runtime.data.sequences import ALPHABET, decode_text, encode_text

    fed_scores(plan, args.generate)  # a clear error before any data is read
    as_text = _source(args, settings) == "text"
    others = [n for n in _fields_needed(plan, [fed_scores(plan, args.generate)])
              if n != args.generate and plan.graph.nodes[n]["kind"] == "input"]
    batch, steps = {}, args.length or 200
    if others:  # a decoder's other inputs (the source sentence) come from the data
        data = load_data(net.graph, _source(args, settings), settings.seed, args.examples or 5,
                         only=others + [args.generate], **_length(args))
        batch = {n: data.arrays[n] for n in others}
        steps = args.length or data.arrays[args.generate].shape[1]
    prompt = ()
    if args.prompt:
        bad = sorted(set(args.prompt) - set(ALPHABET)) if as_text else []
        if not as_text or bad:
            raise SpecError("--prompt gives the text a model of the bundled text starts from"
                            + (f"; it has characters outside printable ASCII: {bad}" if bad else ""),
                            None, "for example --prompt 'def '")
        prompt = encode_text(args.prompt)
    tokens = generate(trainer.executor, plan, batch, args.generate, steps, prompt,
                      args.temperature, np.random.default_rng(settings.seed))
    for i, row in enumerate(tokens):
        if as_text:
            print(args.prompt + decode_text(row))
        else:
            source = "  ".join(f"{n} {np.array2string(batch[n][i])}" for n in others)
            print((source + "  ->  " if source else "") + np.array2string(row))
    return 0


def _outputs(plan) -> dict[str, str]:
    """What a prediction reports: the value each loss scores (logits, reconstructions)."""
    outputs = {}
    for name, node in plan.losses.items():
        step = plan.step_of(node)
        source = step.inputs[0] if step.inputs else node
        if plan.graph.nodes[source]["kind"] == "op":
            outputs[source] = source
    return outputs


def _fields_needed(plan, outputs) -> list[str]:
    """The inputs (and targets, rarely) that the outputs are computed from: what a data
    file for predictions must hold."""
    import networkx as nx

    from netdsl.runtime.data import data_fields

    needed = set().union(*(nx.ancestors(plan.graph, node) for node in outputs))
    return [f.name for f in data_fields(plan.graph) if f.name in needed]


def _class_outputs(plan) -> set[str]:
    return {plan.step_of(n).inputs[0] for n in plan.losses.values()
            if plan.step_of(n).op.accuracy == "class"}
