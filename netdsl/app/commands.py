"""`netc run`, `netc eval` and `netc predict`: a session (app.session) and what each does."""
from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import sys

import networkx as nx
import numpy as np

from netdsl.app import workers
from netdsl.app.diagnose import DiagnosticsRecorder
from netdsl.app.launch import launch_workers
from netdsl.app.memory_check import (check_training, fitting_batch, forward_estimate,
                                     sequence_length)
from netdsl.app.progress import RichReporter, metric_text
from netdsl.app.record import RecordingReporter, read_run, run_folder
from netdsl.app.terminal import console as terminal
from netdsl.app.session import Session, prepare
from netdsl.atomic import check_writable, write_bytes, write_text
from netdsl.cost import param_count
from netdsl.driver import check_file
from netdsl.errors import SpecError, UsageError
from netdsl.export.weights import decode, match
from netdsl.lower import scored_values
from netdsl.runtime.checkpoint import CHECKPOINT, CheckpointError, prepare_folder
from netdsl.runtime.data import data_fields
from netdsl.runtime.data.sequences import ALPHABET, decode_text, encode_text
from netdsl.runtime.generate import fed_scores, generate
from netdsl.runtime.host import on_host, to_host
from netdsl.runtime.nccl import NcclCommunicator
from netdsl.runtime.replicas import DataParallel
from netdsl.runtime.train import Reporter

__all__ = ["run", "evaluate", "predict"]

# the flags of `netc run` that override the train clause
OVERRIDES = ("epochs", "batch", "lr", "seed", "steps", "init", "val")


def _session(args, network=None) -> Session:
    """The spec of the command line (checked, unless `network` is it), its settings with
    the flags, on --device."""
    overrides = {key: getattr(args, key, None) for key in OVERRIDES}
    if getattr(args, "normalize", False):
        overrides["normalize"] = True
    return prepare(network or check_file(args.spec, args.import_path), overrides, args.device,
                   args.native)


def _data(args, session: Session, only=None, examples=None):
    return session.load_data(args.data, examples or args.examples,
                             getattr(args, "length", None), only)


def _folder(args, name: str, new_run: bool = False) -> str:
    """--checkpoint, else the spec's run folder (record.run_folder): a new run's, or the
    one a reader finds."""
    return args.checkpoint or run_folder(name, args.spec, new_run)


def run(args) -> int:
    """Train a spec; checkpoints go to --checkpoint (default runs/NAME). With --workers N,
    or started by mpirun or srun, as data-parallel workers (app.workers)."""
    if (getattr(args, "workers", None) or 1) > 1:
        name = check_file(args.spec, args.import_path).graph.graph["name"]
        return launch_workers(args, _folder(args, name, not args.resume))
    comm = workers.join(args)
    out = terminal(quiet=comm.rank != 0)           # the epoch lines
    console = terminal(stderr=True, quiet=comm.rank != 0)  # progress and notices
    if args.device == "gpu":
        workers.take_local_gpu(comm)  # before the first allocation

    def ready():
        network = check_file(args.spec, args.import_path)
        session = _session(args, network)
        check_training(session.lowered, session.settings, force=args.force)
        if comm.rank == 0:  # the only writer, checked before the data is read
            _writable_folder(_folder(args, session.name, not args.resume))
        data = _data(args, session)
        # a recurrent network's activations, at its data's length
        check_training(session.lowered, session.settings, data, args.force)
        return (network, session, data), workers.data_digest(data)

    network, session, data = workers.prepared(comm, args, ready)
    folder = _folder(args, session.name, not args.resume)
    base = os.path.join("runs", session.name)
    if args.checkpoint is None and folder != base:
        console.print(f"{base} holds the run of {read_run(base).get('spec')}: this run is "
                      f"recorded in {folder}")
    path = os.path.join(folder, CHECKPOINT)
    with workers.training(comm, folder):
        if comm.size > 1 and not on_host(session.xp):
            comm = NcclCommunicator(comm, session.xp)
        train, val = session.split(data)
        reporter = RichReporter(out, console, args.quiet) if comm.rank == 0 else Reporter()
        parallel = DataParallel(comm, overlap=not args.no_overlap) if comm.size > 1 else None
        trainer = session.trainer(folder, args.checkpoint_every, reporter, parallel)
        trainer.on_write_error = args.on_write_error
        if args.resume and args.init_from:
            raise UsageError("--resume continues from the checkpoint, --init-from starts from "
                             "a file: give one of them", None, None)
        if args.init_partial and not args.init_from:
            raise UsageError("--init-partial loads what fits of the file --init-from names: "
                             "there is none", None, "add --init-from FILE.safetensors")
        if args.init_from:
            _init_from(trainer, args.init_from, args.init_partial, console)
            console.print(f"starting from the weights in {args.init_from}")
        if args.resume:
            try:
                trainer.restore(folder)
            except CheckpointError as exc:
                raise SpecError(str(exc), None, "run without --resume to start over") from None
            console.print(f"resuming from {path} at epoch {trainer.position.epoch + 1}, "
                          f"step {trainer.position.iteration}")
        elif os.path.exists(path) and comm.rank == 0:
            _keep_previous(path, os.path.join(folder, "previous.npz"))
            console.print(f"starting over; the earlier checkpoint is kept as "
                          f"{os.path.join(folder, 'previous.npz')}")
        resumed_at = trainer.position.iteration if args.resume else None
        record = None
        if comm.rank == 0:  # the run record: spec, settings, metrics.jsonl (app.record)
            record = RecordingReporter(trainer, folder, network, args.spec, resumed_at,
                                       "netc " + shlex.join(args.argv), args.device)
            if args.diagnose:  # per-node statistics of rank 0's part of the batches
                DiagnosticsRecorder(trainer, folder, args.diagnose, record, resumed_at)
        console.print(f"{session.name}: {param_count(session.graph):,} parameters, "
                      f"run record and checkpoints in {folder}/"
                      + _shared_out(comm, trainer, len(train)))
        try:
            trainer.fit(train, val if len(val) else None, data.description)
        finally:
            if record is not None:
                record.close()
    if trainer.unsaved:
        raise SpecError(f"could not write the final checkpoint ({trainer.unsaved}); {path} "
                        "holds the last one written", None,
                        "free space (or fix the folder) and rerun with --resume")
    console.print(f"saved {path}")
    return 0


def _keep_previous(path: str, previous: str) -> None:
    try:
        shutil.copyfile(path, previous)
    except OSError as exc:  # a full disk: better now than after the first epoch
        raise SpecError(f"could not keep the earlier checkpoint as {previous} "
                        f"({exc.strerror or exc})", None,
                        "free space, or rerun with --resume to continue from it") from None


def _writable_folder(folder: str) -> None:
    """Stale temporary files of killed writes removed, and checkpoints writable there."""
    try:
        prepare_folder(folder)
    except CheckpointError as exc:
        raise SpecError(str(exc), None, "name a writable folder with --checkpoint DIR") from None


def _shared_out(comm, trainer, examples: int) -> str:
    """How the workers share each batch, for the first line (nothing for one process)."""
    if comm.size == 1:
        return ""
    batch, n = trainer.settings.batch, comm.size
    each = f"{batch // n + 1} or {batch // n}" if batch % n else f"{batch // n}"
    text = f"\n{n} workers ({comm.name}), {each} examples each of every batch of {batch}"
    rest = examples % batch
    if 0 < rest < n:
        text += (f"; the epoch's last batch of {rest} example{'s' * (rest > 1)} is left out: "
                 "fewer than the workers")
    return text


def _init_from(trainer, path: str, partial: bool = False, console=None) -> None:
    """Set the trainer's parameters and buffers to those of a safetensors file (with
    `partial`, those that fit, saying which did and which did not)."""
    if not os.path.isfile(path):
        raise SpecError(f"--init-from {path}: no such file", None,
                        "write one with: netc export SPEC --to safetensors")
    with open(path, "rb") as handle:
        tensors = decode(handle.read(), path)
    ex = trainer.executor
    found = match(trainer.plan, tensors, path, partial)
    for source, value in found.loaded.items():
        if source[0] == "param":
            ex.params[source[1]][...] = ex.xp.asarray(value, dtype=ex.dtype)
        else:
            ex.buffers.setdefault(source[1], {})[source[2]] = ex.xp.asarray(value, dtype=ex.dtype)
    if partial:
        console.print(f"loaded {len(found.names)} tensors from {path}: "
                      f"{', '.join(found.names)}", soft_wrap=True, markup=False)  # names unbroken
        left = [*found.missing, *found.differ]
        if left:
            console.print(f"left at their initial values: {', '.join(left)}", soft_wrap=True,
                          markup=False)
        for problem in found.problems():
            console.print(f"  {problem}", soft_wrap=True, markup=False)


def _trained(args, batch: int | None = None):
    """The session of the spec, a trainer holding its checkpoint (or the weights of
    --init-from, a file of netc export's or netc import's), and the batch to run forward
    at: `batch` (else the evaluation's), smaller where that would not fit in memory; a
    network whose parameters alone do not fit is refused before any is made."""
    session = _session(args)
    estimate = forward_estimate(session.lowered, batch or max(session.settings.batch, 256))
    batch = fitting_batch(estimate, args.force)
    if getattr(args, "init_from", None):
        trainer = session.trainer()
        _init_from(trainer, args.init_from)
        return session, trainer, batch
    trainer = session.trained(_folder(args, session.name), f"train it first: netc run {args.spec}")
    return session, trainer, batch


def _fitting_sequences(args, session: Session, data, batch: int) -> int:
    """`batch`, or the largest smaller one whose forward pass over the data's sequences
    fits (a network with a time axis is planned at its data's length, as `netc run`
    plans it); refused when not even one example fits."""
    steps = sequence_length(session.lowered, data)
    if steps is None:  # no time axis: planned whole before the data was read
        return batch
    return fitting_batch(forward_estimate(session.lowered, batch, steps), args.force)


def evaluate(args) -> int:
    """Losses and accuracy of a trained spec on --data (default: the held-out split)."""
    session, trainer, batch = _trained(args)
    data = _data(args, session)
    if args.data is None:
        _, data = data.split(session.settings.val, session.settings.seed)
    if session.normalizer:
        data = session.normalizer.apply(data)
    batch = _fitting_sequences(args, session, data, batch)
    metrics = trainer.evaluate(data, batch)
    if args.json:
        print(json.dumps({"examples": len(data), **metrics}))
    else:
        print(f"{len(data):,} examples: "
              + "  ".join(metric_text(k, v) for k, v in metrics.items()))
    return 0


def predict(args) -> int:
    """The network's outputs for --data, written to -o (npz or csv) or printed."""
    if args.output is not None:
        _writable_output(args.output)
    if args.prompt is not None and not args.generate:
        raise UsageError("--prompt is the text --generate continues", None,
                         f"netc predict {args.spec} --generate INPUT --prompt ...")
    if args.generate and args.json:
        raise UsageError("--json gives the outputs of a forward pass; --generate prints "
                         "what it decodes", None, "leave out one of them")
    session, trainer, batch = _trained(args, 256)
    if args.generate:
        return _generate(args, session, trainer)
    plan = session.lowered.plan
    outputs = scored_values(plan)
    data = _data(args, session, only=_fields_needed(plan, outputs))
    if session.normalizer:
        data = session.normalizer.apply(data)
    batch = _fitting_sequences(args, session, data, batch)
    parts = {name: [] for name in outputs}
    for part in data.batches(batch, None):
        out = trainer.executor.forward(part, False, set(outputs), losses=False)
        for name in outputs:
            parts[name].append(to_host(trainer.xp, out[name]))
    results = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    classes = {name: r.argmax(axis=2 if plan.types[name].seq else 1)
               for name, r in results.items() if name in _class_outputs(plan)}
    if args.output is None and args.json:
        print(json.dumps({**{name: v.tolist() for name, v in results.items()},
                          **{f"{name}_class": v.tolist() for name, v in classes.items()}}))
        return 0
    if args.output is None:
        for name, values in (classes or results).items():
            print(f"{name}: {np.array2string(values[:20], threshold=40)}"
                  + (f" ... ({len(values):,} in all)" if len(values) > 20 else ""))
        return 0
    _write_predictions(args.output, results, classes)
    if args.json:
        print(json.dumps({"wrote": args.output, "examples": len(data)}))
    elif not args.quiet:
        print(f"wrote {len(data):,} predictions to {args.output}", file=sys.stderr)
    return 0


def _writable_output(path: str) -> None:
    """Refuse -o before any work when its folder does not exist or cannot be written."""
    hint = "name a file in a folder that exists and is writable"
    if not path.endswith((".npz", ".csv")):
        raise UsageError(f"cannot write predictions to {path}", None, "name an .npz or .csv file")
    if os.path.isdir(path):
        raise SpecError(f"cannot write predictions to {path}: it is a folder", None, hint)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SpecError(f"cannot write predictions to {path}: the folder {folder} does not "
                        "exist", None, hint)
    why = check_writable(path)
    if why is not None:
        raise SpecError(f"cannot write predictions to {path} ({why})", None, hint)


def _write_predictions(path: str, results: dict, classes: dict) -> None:
    """The outputs (and their argmax classes) as .npz arrays or .csv columns, atomically."""
    try:
        _write_table(path, results, classes)
    except OSError as exc:  # the disk filled up since the check
        raise SpecError(f"could not write predictions to {path} ({exc.strerror or exc})",
                        None, "free space and run it again") from None


def _write_table(path: str, results: dict, classes: dict) -> None:
    if path.endswith(".npz"):
        buffer = io.BytesIO()
        np.savez(buffer, **results, **{f"{k}_class": v for k, v in classes.items()})
        write_bytes(path, buffer.getvalue())
    elif path.endswith(".csv"):
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
        write_text(path, "\n".join(lines) + "\n")
    else:
        raise SpecError(f"cannot write predictions to {path}", None, "name an .npz or .csv file")


def _generate(args, session: Session, trainer) -> int:
    """`predict --generate INPUT`: the network writes INPUT itself, step by step."""
    plan, settings = session.lowered.plan, session.settings
    scores = fed_scores(plan, args.generate)  # a clear error before any data is read
    as_text = (args.data or settings.data) == "text"
    others = [n for n in _fields_needed(plan, [scores])
              if n != args.generate and plan.graph.nodes[n]["kind"] == "input"]
    batch, steps = {}, args.length or 200
    if others:  # a decoder's other inputs (the source sentence) come from the data
        data = _data(args, session, only=others + [args.generate], examples=args.examples or 5)
        batch = {n: data.arrays[n] for n in others}
        steps = args.length or data.arrays[args.generate].shape[1]
    prompt = ()
    if args.prompt:
        bad = sorted(set(args.prompt) - set(ALPHABET)) if as_text else []
        if not as_text or bad:
            raise UsageError("--prompt gives the text a model of the bundled text starts from"
                             + (f"; it has characters outside printable ASCII: {bad}" if bad
                                else ""), None, "for example --prompt 'def '")
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


def _fields_needed(plan, outputs) -> list[str]:
    """The inputs (and targets, rarely) that the outputs are computed from: what a data
    file for predictions must hold."""
    needed = set().union(*(nx.ancestors(plan.graph, node) for node in outputs))
    return [f.name for f in data_fields(plan.graph) if f.name in needed]


def _class_outputs(plan) -> set[str]:
    return {plan.step_of(n).inputs[0] for n in plan.losses.values()
            if plan.step_of(n).op.accuracy == "class"}
