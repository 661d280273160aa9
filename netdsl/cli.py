"""`netc`: check, compile, draw, format, train and evaluate .net specs."""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys

from netdsl import __version__
from netdsl.atomic import write_text
from netdsl.driver import CheckFailed, check_file, cycle_collection_paused, read_spec
from netdsl.errors import SpecError, SpecErrors, UsageError, errors_of, render
from netdsl.fmt import format_text
from netdsl.imports import ENV_VAR, not_a_folder, unusable_env_folders
from netdsl.optimizers import configure
from netdsl.settings import resolve_settings
from netdsl.switches import SwitchError

# The back end (netdsl.lower, netdsl.report, netdsl.diff, the runtime's devices) and the
# stages' printers (netdsl.emit) are imported inside the functions of the commands that
# use them: `netc check`, run once per save by editors and the builder, needs none of
# it, and importing it took 0.1 s of each check.

__all__ = ["main"]


def _emit_stages(passes) -> tuple[str, ...]:
    """The front end's stages, then the back end's passes (netdsl.lower.PASSES), then views."""
    return ("ast", "expanded", "graph", "shapes", *(name for name, _ in passes), "plan",
            "unrolled", "kernels")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line after the usage, exit code 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _output_flags(cmd, quiet: str) -> None:
    """--quiet and --json, for the commands whose results a script reads."""
    cmd.add_argument("-q", "--quiet", action="store_true", help=quiet)
    cmd.add_argument("--json", action="store_true", help="results as JSON on stdout")


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """netc's command line; for `command` "check", that command's alone: the others'
    choices and defaults come from the back end, which a check does not import."""
    root = _Parser(prog="netc", description="Check, compile, draw, format and train .net network specs.")
    root.add_argument("--version", action="version", version=f"netc {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    check = sub.add_parser("check", help="parse and shape-check specs; exit 1 on any error",
                           description="Parse and shape-check each spec. Prints located errors and "
                                       "exits 1 if any spec has an error.")
    check.add_argument("specs", nargs="+", metavar="SPEC", help=".net file(s) to check")
    _output_flags(check, "print errors alone: nothing when every spec checks")
    _import_flag(check)
    if command == "check":  # the usage and every message of `netc check ...` are the same
        return root
    # the back end's passes, targets, report steps and devices, and completion's shells
    from netdsl.completion import SHELLS
    from netdsl.lower.pipeline import PASSES, TARGETS  # see the note at the module's imports
    from netdsl.report import REPORT_STEPS  # see the note at the module's imports
    from netdsl.runtime.device import DEVICES  # see the note at the module's imports

    comp = sub.add_parser("compile",
                          help="per-node table: op, inputs, shape, parameters, mult-adds, memory",
                          description="Print what each node costs, or any pipeline stage with --emit.")
    comp.add_argument("spec", metavar="SPEC")
    _import_flag(comp)
    comp.add_argument("--emit", choices=_emit_stages(PASSES),
                      help="print a pipeline stage instead of the table")
    comp.add_argument("--batch", type=_positive, default=1, help="batch size for FLOPs and memory (1)")
    comp.add_argument("--depth", type=_positive, metavar="N",
                      help="one row per block N levels deep (1: the network's own blocks), "
                           "as torchinfo's depth")
    comp.add_argument("--unroll", type=_steps, metavar="T", help="steps for --emit unrolled (3)")
    comp.add_argument("--steps", type=_sequence_length, metavar="T", default=REPORT_STEPS,
                      help="sequence length a recurrence's stored states are reported at "
                           f"({REPORT_STEPS})")
    comp.add_argument("--target", choices=tuple(TARGETS), default="host",
                      help="what the back end's passes lower for: host (NumPy), native (generated C, "
                           "compiled here) or cuda (generated kernels)")
    comp.add_argument("--time-layouts", action="store_true",
                      help="with --target native: time each region of 4-D values in NCHW and "
                           "NHWC at the train clause's batch (a few training steps each way), "
                           "keep the times for later runs, and print the layout chosen")
    _output_flags(comp, "the totals alone, not a line per node")

    draw = sub.add_parser("draw", help="draw the network with Graphviz (svg, png, pdf, dot)",
                          description="Draw the network. Blocks are clusters; shapes label the edges.")
    draw.add_argument("spec", metavar="SPEC")
    _import_flag(draw)
    draw.add_argument("-o", "--output", required=True, metavar="FILE",
                      help="output file; its extension picks the format: .svg .png .pdf .dot")
    draw.add_argument("--collapse", nargs="?", const=1, type=_natural, default=0, metavar="DEPTH",
                      help="draw blocks below DEPTH (default 1: every block) as single boxes")
    draw.add_argument("--unroll", type=_steps, metavar="T", help="draw a recurrence unrolled over T steps")

    run = sub.add_parser("run", help="train a spec (bundled data unless --data)",
                         description="Train a spec. Without --data it trains on data that ships "
                                     "with the install (digits, MNIST) or on generated data, and "
                                     "says which. Checkpoints go to --checkpoint (runs/NAME).")
    _data_flags(run, DEVICES)
    run.add_argument("--epochs", type=_positive, help="epochs (the spec's train clause, else 10)")
    run.add_argument("--batch", type=_positive, help="batch size (train clause, else 32)")
    run.add_argument("--lr", type=_positive_float, help="learning rate (train clause)")
    run.add_argument("--seed", type=_natural, help="random seed: same seed, same numbers (0)")
    run.add_argument("--steps", type=_positive, help="stop after this many optimiser steps")
    run.add_argument("--val", type=_fraction, help="fraction held out for validation (0.1)")
    run.add_argument("--init", choices=("auto", "torch", "he", "xavier", "fan_in"),
                     help="parameter initialisation (auto: He before ReLU, Xavier before tanh)")
    run.add_argument("--normalize", action="store_true", help="standardise inputs per feature")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    run.add_argument("--init-from", metavar="FILE.safetensors",
                     help="start from these weights (netc export --to safetensors): fine-tuning, "
                          "or a spec whose tensors have the same names and shapes")
    run.add_argument("--init-partial", action="store_true",
                     help="with --init-from: load the tensors whose names and shapes fit, "
                          "leave the others initial, and list both (a network with a new head)")
    run.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
                     help="also checkpoint during an epoch this often (30)")
    run.add_argument("--on-write-error", choices=("continue", "stop"), default="continue",
                     help="when a checkpoint cannot be written (a full disk): continue "
                          "training and try again at the next interval (the default), or "
                          "stop with exit code 1, the previous checkpoint kept for --resume")
    run.add_argument("--quiet", action="store_true", help="no progress bar, one line per epoch")
    run.add_argument("--diagnose", nargs="?", const=50, type=_every, metavar="N",
                     help="every N steps (50) record each node's activations, dead units, "
                          "gradient and update/weight ratio in the run record, and warn "
                          "about vanishing or exploding gradients, dead or saturated units "
                          "(netc diagnose RUN shows them)")
    run.add_argument("--workers", type=_positive, metavar="N",
                     help="train data-parallel in N processes on this machine (starts mpirun; "
                          "across machines run mpirun -np N netc run ... yourself)")
    run.add_argument("--no-overlap", action="store_true",
                     help="data-parallel: sum the gradients after backward, not during it")
    run.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                     help="data-parallel: how long a worker waits for the others before it "
                          "stops (300; until its first step has ended, 120 at least)")
    for name, helptext in (("eval", "losses and accuracy of a trained spec"),
                           ("predict", "outputs of a trained spec for --data")):
        cmd = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:]
                             + ", from the checkpoint that `netc run` wrote.")
        _data_flags(cmd, DEVICES)
        cmd.add_argument("--init-from", metavar="FILE.safetensors",
                         help="these weights instead of the checkpoint (netc export --to "
                              "safetensors, or netc import's NAME.safetensors)")
        _output_flags(cmd, "no notices on stderr (predict -o: no 'wrote' line)")
        if name == "predict":
            cmd.add_argument("-o", "--output", metavar="FILE", help="write .npz or .csv")
            cmd.add_argument("--generate", metavar="INPUT",
                             help="decode: feed the network's own guesses into INPUT step by step "
                                  "(a decoder's target_in, a language model's text)")
            cmd.add_argument("--prompt", metavar="TEXT", help="text to continue (with --generate)")
            cmd.add_argument("--temperature", type=_nonnegative, default=0.0, metavar="T",
                             help="sample from softmax(scores / T); 0, the default, is greedy")

    export = sub.add_parser(
        "export", help="write a network with its trained weights as ONNX, PyTorch or safetensors",
        description="Write SPEC's network with the weights of its checkpoint (runs/NAME, or "
                    "--checkpoint; the initial weights, with a warning, when there is none): "
                    "an ONNX model, a PyTorch module (a folder with model.py and "
                    "model.safetensors), or its tensors as safetensors. The inference graph "
                    "unless --train-graph: dropout off, batchnorm on its running statistics.")
    export.add_argument("spec", metavar="SPEC")
    _import_flag(export)
    export.add_argument("--to", required=True, choices=("onnx", "torch", "safetensors"),
                        help="the format")
    export.add_argument("-o", metavar="PATH",
                        help="where to write (NAME.onnx, NAME_torch/, NAME.safetensors)")
    export.add_argument("--checkpoint", metavar="DIR", help="checkpoint folder (runs/NAME)")
    export.add_argument("--batch", type=_positive, metavar="N",
                        help="ONNX: a fixed batch size instead of a symbolic one")
    export.add_argument("--output", action="append", metavar="NAME",
                        help="a value to output, by the spec's name for it (repeatable; "
                             "default: what the losses score)")
    export.add_argument("--train-graph", action="store_true",
                        help="ONNX: the training graph (dropout and noise on, batch statistics)")
    export.add_argument("--native-rnn", action="store_true",
                        help="ONNX: the standard library's lstm, gru_reset_after and elman "
                             "cells as ONNX's LSTM, GRU and RNN ops (other recurrences stay "
                             "Scans)")

    fmt = sub.add_parser("fmt", help="print the canonical form of specs",
                         description="Print the canonical form of each SPEC (comments kept), "
                                     "or check or rewrite it.")
    fmt.add_argument("specs", nargs="+", metavar="SPEC")
    how = fmt.add_mutually_exclusive_group()
    how.add_argument("-w", "--write", action="store_true", help="rewrite the files in place (atomically)")
    how.add_argument("--check", action="store_true",
                     help="print nothing for canonical files; for the others a diff, and exit 1")
    how.add_argument("--diff", action="store_true", help="print what formatting would change, as a diff")

    imp = sub.add_parser(
        "import", help="an ONNX model as a .net spec and its weights (NAME.safetensors)",
        description="Translate an ONNX model into a readable spec, NAME.net, with repeated "
                    "structure folded into blocks, and its weights into NAME.safetensors (the "
                    "names netc export and --init-from use). Unsupported operators are all "
                    "listed, and nothing is written.")
    imp.add_argument("model", metavar="MODEL.onnx")
    imp.add_argument("-o", metavar="NAME.net", help="the spec to write (default: MODEL.net)")

    tui = sub.add_parser("tui", help="the terminal builder: edit, draw, inspect and train a spec",
                         description="Open the terminal builder on SPEC (a new spec when SPEC "
                                     "does not exist yet, or an untitled one without SPEC).")
    tui.add_argument("spec", nargs="?", metavar="SPEC")
    _import_flag(tui)
    tui.add_argument("--device", choices=tuple(DEVICES), default="cpu",
                     help="where its runs train (cpu)")

    runs = sub.add_parser("runs", help="list recorded runs with their best metrics",
                          description="List the runs recorded in DIR (runs/): spec, epochs, "
                                      "steps and the best loss and accuracy of each.")
    runs.add_argument("folder", nargs="?", default="runs", metavar="DIR",
                      help="folder of runs, or one run's folder (runs)")
    runs.add_argument("--json", action="store_true", help="a JSON array instead of the table")

    diagnose = sub.add_parser(
        "diagnose", help="per-node diagnostics of a run trained with --diagnose",
        description="Show the last recorded diagnostics of each node of RUN (runs/NAME or a "
                    "folder), trained with netc run --diagnose: its line in the spec, "
                    "activation mean and std, dead and saturated units, gradient norms, "
                    "update/weight ratio, and the warnings given.")
    diagnose.add_argument("run", metavar="RUN", help="run name or folder")
    diagnose.add_argument("--json", action="store_true", help="the same as JSON")

    plot = sub.add_parser("plot", help="loss and accuracy curves of runs",
                          description="Draw the loss and accuracy curves of one or more runs "
                                      "(runs/NAME or a folder): to a file with -o (matplotlib, "
                                      "the plot extra), else as a chart in the terminal.")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run name or folder")
    plot.add_argument("-o", "--output", metavar="FILE", help=".png, .svg or .pdf")

    diff = sub.add_parser("diff", help="what changed between two specs, by block path",
                          description="Compare two specs: parameters, mult-adds and memory, "
                                      "then each node (or, with --depth, block) added, removed "
                                      "or changed in op, output shape, parameters or mult-adds.")
    diff.add_argument("specs", nargs=2, metavar="SPEC", help="the two .net files, old then new")
    diff.add_argument("--batch", type=_positive, default=1, help="batch size for the costs (1)")
    diff.add_argument("--depth", type=_positive, metavar="N",
                      help="compare blocks N levels deep as wholes")
    diff.add_argument("--json", action="store_true", help="the differences as JSON")
    _import_flag(diff)

    completion = sub.add_parser("completion", help="print a shell completion script",
                                description="Print the completion script of SHELL: "
                                            "eval \"$(netc completion bash)\" in ~/.bashrc; "
                                            "netc completion zsh > ~/.zfunc/_netc; netc "
                                            "completion fish > ~/.config/fish/completions/"
                                            "netc.fish.")
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")

    sub.add_parser("lsp", help="the language server editors start: errors as you type, hover, "
                               "go to definition, completion",
                   description="Serve the Language Server Protocol over stdin and stdout for "
                               "an editor (needs the lsp extra: pip install 'netdsl[lsp]'). "
                               "See docs/editors.md.")
    return root


def _import_flag(cmd) -> None:
    cmd.add_argument("--import-path", action="append", default=[], metavar="DIR",
                     type=_import_folder,
                     help="a folder quoted imports may also read (repeatable); by default "
                          "only the spec's own folder tree, the standard library and "
                          "NETDSL_IMPORT_PATH's folders")


def _import_folder(text: str) -> str:
    """--import-path DIR: a folder that exists (a mistyped one would only make imports
    fail later, with no word about the flag)."""
    why = not_a_folder(text)
    if why is not None:
        raise argparse.ArgumentTypeError(why)
    return text


def _data_flags(cmd, devices) -> None:
    cmd.add_argument("spec", metavar="SPEC")
    _import_flag(cmd)
    cmd.add_argument("--force", action="store_true",
                     help="run even when the planned peak memory exceeds what this process "
                          "has available (refused by default, with the largest batch that fits)")
    cmd.add_argument("--data", metavar="FILE", help=".npz or .csv with the spec's inputs and "
                     "targets, or a bundled dataset: parity, adding, text, skipgram, cbow")
    cmd.add_argument("--examples", type=_positive, metavar="N", help="use at most N examples")
    cmd.add_argument("--length", type=_positive, metavar="T",
                     help="time steps of generated or named sequence data (default 20)")
    cmd.add_argument("--checkpoint", metavar="DIR", help="checkpoint folder (runs/NAME)")
    cmd.add_argument("--device", choices=tuple(devices), default="cpu", help="where to run (cpu)")
    cmd.add_argument("--native", action=argparse.BooleanOptionalAction, default=None,
                     help="on the CPU, run elementwise chains, convolutions and recurrences "
                          "as C compiled here and cached (default: specs with a recurrence or "
                          "a convolution, where a C compiler works); --no-native: NumPy alone")


def _number(text: str, accept, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0, "a positive number")


def _nonnegative(text: str) -> float:
    return _number(text, lambda v: v >= 0, "a number >= 0")


def _fraction(text: str) -> float:
    return _number(text, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def _positive(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _every(text: str) -> int:
    """--diagnose N: steps between records; a spec's name there means the flag came first."""
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of steps of at least 1, got {text!r} (N is optional: "
            "put --diagnose after the spec, netc run SPEC --diagnose)") from None


def _steps(text: str, example: str = "--unroll 3") -> int:
    """--unroll T: time steps, a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps of at least 1 "
                                         f"(for example {example}), got {text!r}")
    return value


def _sequence_length(text: str) -> int:
    """compile --steps T: the sequence length a recurrence's stored states are reported at."""
    from netdsl.report import REPORT_STEPS  # see the note at the module's imports

    return _steps(text, f"--steps {REPORT_STEPS}")


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run netc; returns the exit code (0 ok, 1 for an error in a spec, a data file or a
    checkpoint, 2 for a command line that cannot work)."""
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _parser(given[0] if given else None)
    except SwitchError as exc:  # read as the back end the parser names loads
        _report([exc], {})
        return 1
    args = parser.parse_args(given)
    args.argv = given  # what --workers passes on
    if hasattr(args, "import_path"):  # a command that reads specs
        for why in unusable_env_folders():
            sys.stderr.write(f"warning: {ENV_VAR}: {why}; imports cannot read from it\n")

    args.ends_process = argv is None  # netc itself, not a caller in Python
    try:
        return COMMANDS[args.command](args)
    except CheckFailed as exc:
        _report(exc.errors, exc.sources)
    except SpecErrors as exc:
        _report(exc.errors, {})
    except UsageError as exc:
        _report([exc], {})
        return 2
    except SpecError as exc:
        _report([exc], {})
    except BrokenPipeError:  # `netc compile ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return 1


def _end_process(code: int) -> None:
    """End a process that only checked, once its output is out, without freeing what the
    check made: a big spec's passes leave hundreds of thousands of objects (freeing
    valid_100k's took 0.5 s, more than some passes), and a check has no file to close."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `netc check ... | head`: nothing more can be said
        pass
    os._exit(code)


def _report(errors, sources) -> None:
    for error in errors:
        sys.stderr.write(render(error, sources) + "\n")
    if len(errors) > 1:
        sys.stderr.write(f"{len(errors)} errors\n")


def _check(args) -> int:
    # what a check makes is freed by reference counting once its spec is reported; with
    # the collector back on before that, its first pass would walk all of it (a second
    # or more for a big spec) and free nothing
    with cycle_collection_paused():
        checked: list = []  # the last spec's network, freed here, not in _check_specs
        code = _check_specs(args, checked)
        if args.ends_process:  # the process ends with the collector off, freeing nothing
            _end_process(code)
        del checked
    return code


def _check_specs(args, checked: list) -> int:
    """Check and report each spec; `checked` keeps the last network made."""
    failed, results = 0, []
    for path in args.specs:
        checked.clear()
        try:
            net = check_file(path, args.import_path)
            checked.append(net)
        except CheckFailed as exc:
            if args.json:
                results.append({"spec": path, "ok": False,
                                "errors": [_error_json(e) for e in exc.errors]})
            else:
                _report(exc.errors, exc.sources)
            failed += 1
            continue
        nodes, params = net.graph.number_of_nodes(), net.param_count()
        if args.json:
            results.append({"spec": path, "ok": True, "name": net.name, "nodes": nodes,
                            "parameters": params})
        elif not args.quiet:
            print(f"{path}: ok ({nodes} nodes, {params:,} parameters)")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _error_json(error: SpecError) -> dict:
    """An error as `netc check --json` gives it: its place (where known), message, hint."""
    span = error.span
    place = {"file": span.file, "line": span.line, "col": span.col} if span else {}
    return {**place, "message": error.message, "hint": error.hint}


def _compile(args) -> int:
    if args.unroll is not None and args.emit != "unrolled":
        raise UsageError("--unroll goes with --emit unrolled", None,
                        f"netc compile {args.spec} --emit unrolled --unroll {args.unroll}")
    if args.time_layouts and (args.target != "native" or args.emit):
        raise UsageError("--time-layouts goes with --target native and the table", None,
                         f"netc compile {args.spec} --target native --time-layouts")
    # the back end: see the note at the module's imports
    from netdsl.lower import lower, printers
    from netdsl.lower.pipeline import PASSES  # likewise
    from netdsl.report import (cost_json, format_cost_table,  # likewise
                               format_loop_memory, format_totals, format_training_memory,
                               trained_params)
    from netdsl.unroll import unroll  # likewise: for --emit unrolled
    from netdsl import emit  # the front end's printers, for --emit alone

    net = check_file(args.spec, args.import_path)
    if args.emit in dict(PASSES):
        print(printers.format_pass(lower(net, args.target), args.emit, args.batch))
        return 0
    if args.emit:
        text = {
            "ast": lambda: emit.format_ast(net.module),
            "expanded": lambda: emit.format_program(net.program),
            "graph": lambda: emit.format_graph(net.graph),
            "shapes": lambda: emit.format_shapes(net.graph),
            "plan": lambda: printers.format_plan(lower(net.graph), args.batch),
            "unrolled": lambda: emit.format_unrolled(unroll(net.graph, args.unroll or 3)),
            "kernels": lambda: printers.format_kernels(lower(net.graph, "cuda"),
                                                       *_optimizer(net)),
        }[args.emit]()
        print(text)
        return 0
    trained = trained_params(net)
    if args.json:
        print(json.dumps(cost_json(net, args.batch, args.depth, trained), indent=2))
        return 0
    print(format_totals(net, args.batch, trained) if args.quiet
          else format_cost_table(net, args.batch, args.depth, trained))
    threads = 1
    if args.target == "native":
        from netdsl.runtime.host import host_threads  # the threads a native run splits over

        threads = host_threads()
    memory = format_training_memory(net, args.batch, args.target, threads)
    if memory and not args.quiet:
        print(memory)
    for line in [] if args.quiet else format_loop_memory(net, args.batch, args.steps,
                                                         args.target):
        print(line)
    if args.target == "native":
        from netdsl.runtime import native  # the C compiler's wrapper, for this target alone

        from netdsl.runtime.native import conv as native_conv  # likewise: its convolutions

        if args.time_layouts:
            from netdsl.runtime import layout_costs  # likewise: the layout pass's timings

            print(f"timing each region NCHW and NHWC at batch {_train_batch(net)}: a few "
                  "training steps each way", file=sys.stderr)
            layout_costs.measure(net, "native", batch=_train_batch(net))
        lowered = lower(net, "native")
        print(native.build_report(lowered))
        print(printers.format_layout(lowered.laid_out))
        line = native_conv.report(native_conv.layers(lowered), _train_batch(net))
        if line:
            print(line)
    return 0


def _train_batch(net) -> int:
    """The batch size training runs at: the train clause's, else the default (32)."""
    try:
        return resolve_settings(net.graph.graph.get("train", {}), {},
                                net.program.train_spans).batch
    except (SpecError, SpecErrors):
        return resolve_settings({}).batch


def _optimizer(net) -> tuple:
    """The update rule of the optimiser the spec's train clause resolves to, the arrays it
    keeps, and its name."""
    try:
        settings = resolve_settings(net.graph.graph["train"], {}, net.program.train_spans)
    except (SpecError, SpecErrors) as exc:
        raise CheckFailed(errors_of(exc), net.sources) from None
    _, rule = configure(settings.optimizer, settings.optimizer_settings)
    return rule, rule.state, settings.optimizer


def _draw(args) -> int:
    from netdsl import draw  # Graphviz loads for this command alone

    net = check_file(args.spec, args.import_path)
    fmt = os.path.splitext(args.output)[1].lstrip(".").lower()
    draw.render(net.graph, args.output, fmt, collapse=args.collapse, unroll=args.unroll,
                warn=lambda text: print(f"warning: {text}", file=sys.stderr))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _fmt(args) -> int:
    status = 0
    for path in args.specs:
        try:
            text = read_spec(path)
            pretty = format_text(text, path)
        except SpecError as exc:
            _report([exc], {path: text} if exc.span else {})
            status = 1
            continue
        if args.write:
            if pretty != text:
                write_text(path, pretty)
        elif args.check or args.diff:
            changes = "".join(difflib.unified_diff(text.splitlines(True), pretty.splitlines(True),
                                                   f"{path} (as it is)", f"{path} (formatted)"))
            sys.stdout.write(changes)
            if args.check and changes:
                sys.stderr.write(f"{path}: not in canonical form; `netc fmt -w {path}` rewrites it\n")
                status = 1
        else:
            sys.stdout.write(pretty)
    return status


def _tui(args) -> int:
    from netdsl.tui import main as tui_main  # imported here: Textual loads only for this command

    return tui_main(args.spec, args.device, args.import_path)


def _lsp(args) -> int:
    try:
        from netdsl.lsp import serve  # pygls, an optional extra, loads for this command alone
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in ("pygls", "lsprotocol"):
            raise
        raise SpecError(f"netc lsp needs the {package} package, which is not installed", None,
                        "pip install 'netdsl[lsp]'") from None
    return serve()


def _training(command: str):
    """A command of app.commands, loaded when it runs: the runtime loads for training and
    its results, never for checking, compiling or drawing."""
    def run(args) -> int:
        from netdsl.app import commands  # the runtime, for run, eval and predict alone

        return getattr(commands, command)(args)
    return run


def _diff(args) -> int:
    from netdsl.diff import diff_json, format_diff  # the back end's costs: see the module's imports

    first, second = (check_file(path, args.import_path) for path in args.specs)
    if args.json:
        print(json.dumps(diff_json(first, second, args.batch, args.depth), indent=2))
    else:
        print(format_diff(first, second, tuple(args.specs), args.batch, args.depth))
    return 0


def _completion(args) -> int:
    from netdsl.completion import completion_script  # for this command alone

    sys.stdout.write(completion_script(_parser(), args.shell))
    return 0


def _runs(args) -> int:
    from netdsl.app.runs import runs_command  # the application's record readers, for this command
    from netdsl.app.terminal import console  # rich's console, for this command's table

    return runs_command(args, console())


def _diagnose(args) -> int:
    from netdsl.app.diagnostics import diagnose_command  # the record's reader, for this command
    from netdsl.app.terminal import console  # rich's console, for this command's table

    return diagnose_command(args, console())


def _plot(args) -> int:
    from netdsl.app.plot import plot_command  # matplotlib, when asked for, loads in there

    return plot_command(args)


def _export(args) -> int:
    from netdsl.app.export import export  # the runtime and the formats' packages, for export alone

    return export(args)


def _import(args) -> int:
    try:
        from netdsl.app.importer import import_onnx  # the onnx package, for import alone
    except ImportError:
        raise SpecError("netc import needs the onnx package", None,
                        "pip install 'netdsl[export]'") from None
    return import_onnx(args)


COMMANDS = {"import": _import, "check": _check, "compile": _compile, "draw": _draw, "fmt": _fmt,
            "export": _export,
            "run": _training("run"), "eval": _training("evaluate"),
            "predict": _training("predict"), "tui": _tui, "runs": _runs, "plot": _plot,
            "diagnose": _diagnose,
            "completion": _completion, "diff": _diff,
            "lsp": _lsp}

if __name__ == "__main__":
    sys.exit(main())
