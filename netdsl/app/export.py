"""`netc export`: a network with its trained weights, as ONNX, PyTorch or safetensors.

The weights are the checkpoint's that `netc run` wrote (runs/NAME, or --checkpoint),
else the initial ones, with a warning. Every file is written atomically, the torch
folder as a whole.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from netdsl.app.record import run_folder
from netdsl.app.session import prepare
from netdsl.atomic import check_writable, write_bytes, write_folder
from netdsl.driver import check_file, read_spec
from netdsl.errors import SpecError
from netdsl.export import select
from netdsl.export.weights import encode, network_tensors, normalize_tensors, spec_metadata
from netdsl.runtime.checkpoint import CHECKPOINT
from netdsl.runtime.host import to_host

__all__ = ["export"]


def export(args) -> int:
    """Write SPEC's network as --to says, to -o (NAME.onnx, NAME_torch/, NAME.safetensors)."""
    net = check_file(args.spec, args.import_path)
    view = select(net.graph, args.output)
    session = prepare(net, native=False)   # nothing trains: no C to compile
    params, buffers, origin, warning = _weights(args, session)
    # the statistics training standardised the inputs by: the exported model applies them
    normalize = {name: stats for name, stats in session.normalizer.stats.items()
                 if name in view.inputs} if session.normalizer else {}
    metadata = spec_metadata(view.name, read_spec(args.spec))
    path = args.o or _default_path(view.name, args.to)
    # before any work: a path that cannot be written is found in a moment (for the torch
    # folder, the folder it goes in: nothing is made before the export succeeds)
    why = check_writable(path)
    if why is not None:
        raise SpecError(f"cannot write {path} ({why})", None, "name another place with -o")
    if args.to == "onnx":
        wrote = _onnx(view, params, buffers, args, metadata, path, normalize)
    elif args.to == "torch":
        wrote = _torch(view, params, buffers, net.sources, f" from {args.spec}", metadata,
                       path, normalize)
    else:
        tensors = network_tensors(session.lowered.plan, params, buffers)
        tensors.update(normalize_tensors(normalize))
        write_bytes(path, encode(tensors, metadata))
        wrote = f"{path} ({len(tensors)} tensors)"
    if warning:  # after the export: an error in it is what to fix first
        sys.stderr.write(f"warning: {warning}\n")
    # a notice, as every command's "wrote": stdout stays for results
    print(f"wrote {wrote}, with {origin}" + (
        f"; it standardises {', '.join(normalize)} as training did" if normalize else ""),
          file=sys.stderr)
    return 0


def _weights(args, session) -> tuple[dict, dict, str, str | None]:
    """The parameters (by key) and buffers (node -> name -> array) to export, where they
    come from (the checkpoint, else the initial ones), and a warning for the user."""
    folder = args.checkpoint or run_folder(session.name, args.spec, new_run=False)
    if args.checkpoint is None and not os.path.isfile(os.path.join(folder, CHECKPOINT)):
        warning = (f"no checkpoint in {folder}/: exported the initial weights (train "
                   f"first with: netc run {args.spec})")
        trainer = session.trainer()
        origin = "the initial weights"
    else:
        if not os.path.isfile(os.path.join(folder, CHECKPOINT)):
            raise SpecError(f"--checkpoint {folder}: there is no checkpoint there "
                            f"({os.path.join(folder, CHECKPOINT)} does not exist)", None,
                            f"train it first: netc run {args.spec} --checkpoint {folder}")
        trainer = session.trained(folder, f"train it again: netc run {args.spec} "
                                          f"--checkpoint {folder}")
        origin = f"the weights of {os.path.join(folder, CHECKPOINT)}"
        warning = None
    ex = trainer.executor
    params = {key: to_host(ex.xp, value) for key, value in ex.params.items()}
    buffers = {node: {name: to_host(ex.xp, v) for name, v in entries.items()}
               for node, entries in ex.buffers.items() if entries}
    return params, buffers, origin, warning


def _default_path(name: str, to: str) -> str:
    return {"onnx": f"{name}.onnx", "torch": f"{name}_torch",
            "safetensors": f"{name}.safetensors"}[to]


def _onnx(view, params, buffers, args, metadata, path, normalize) -> str:
    try:
        from netdsl.export.onnx import to_onnx  # the onnx package, for this format alone
    except ImportError:
        raise SpecError("exporting to ONNX needs the onnx package", None,
                        "pip install 'netdsl[export]'") from None
    if args.native_rnn:
        from netdsl.export.cells import native_cells  # for this flag alone
        view, kept = native_cells(view)
        if kept:
            sys.stderr.write(f"note: --native-rnn: {len(kept)} recurrence(s) stay Scans (of "
                             f"{'; of '.join(kept)}): only the standard library's lstm, "
                             "gru_reset_after and elman cells have native ops\n")
    model = to_onnx(view, params, buffers, training=args.train_graph, batch=args.batch,
                    metadata=metadata, normalize=normalize)
    if model.ByteSize() >= 2**31:  # protobuf's limit on one message
        raise SpecError(f"the ONNX model would be {model.ByteSize() / 2**30:.1f} GiB; one "
                        "ONNX file holds at most 2 GiB", None,
                        "export --to safetensors for the weights, or --to torch")
    data = model.SerializeToString()
    write_bytes(path, data)
    return f"{path} (opset {model.opset_import[0].version}, {len(data) / 1e6:.1f} MB)"


def _torch(view, params, buffers, sources, description, metadata, folder, normalize) -> str:
    """model.py and model.safetensors, its state_dict, in `folder`."""
    from netdsl.export.torch import to_torch  # generates code: for this format alone

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise SpecError(f"{folder} is a file; --to torch writes a folder", None,
                        "name a folder with -o")
    module = to_torch(view, sources, description, normalize)
    state = {}
    for name, source in module.state.items():
        if source[0] == "param":
            state[name] = params[source[1]]
        elif source[0] == "buffer":
            state[name] = buffers.get(source[1], {}).get(source[2])
            if state[name] is None:  # not trained yet: as the op starts it
                step = view.plan.step_of(source[1])
                state[name] = step.op.buffers(*step.input_types)[source[2]]
        else:
            state[name] = source[1]
    files = {"model.py": module.source.encode("utf-8"),
             "model.safetensors": encode({k: np.asarray(v) for k, v in state.items()},
                                         metadata)}
    try:  # the folder made whole beside, then renamed into place
        write_folder(folder, files, replaces={"__pycache__"})
    except FileExistsError as exc:
        raise SpecError(f"cannot write {folder}: {exc}, which --to torch would delete in "
                        "replacing the folder", None,
                        "name a new folder (or one an export wrote) with -o") from None
    return f"{folder}/model.py and {folder}/model.safetensors"

