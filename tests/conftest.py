import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = os.path.join(ROOT, "specs")


def run_netc(*args: str, cwd: str | None = None):
    """Run `netc` in a subprocess, as a user would; returns the CompletedProcess."""
    import subprocess

    code = "import sys; from netdsl.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


def cli_main(*args: str, cwd: str | None = None):
    """`netc ARGS` called in this process (netdsl.cli.main), for a test of what a command
    does rather than of its process (exit by signal, a crash, a kill): the same
    CompletedProcess as run_netc, without the seconds a fresh Python spends importing the
    runtime, scikit-learn and TensorBoard's writer for each call."""
    import contextlib
    import io
    import subprocess

    from netdsl.cli import main

    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors, as a process would exit
                if isinstance(exc.code, str):
                    err.write(exc.code + "\n")
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["netc", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def check():
    """check(text) -> Network, for spec text written in a test."""
    from netdsl.driver import check_text

    return lambda text, file="t.net": check_text(text, file)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/ from the current output instead of comparing")


def assert_golden(path: str, text: str, update: bool) -> None:
    """`text` equals the golden file at `path`; with --update-golden it is written first."""
    if update:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    assert os.path.exists(path), f"no golden file {path}: run pytest --update-golden"
    with open(path, encoding="utf-8") as handle:
        assert text == handle.read(), f"{path} changed; rerun with --update-golden if intended"


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture
def kernels_on_host(monkeypatch):
    """Every GPU kernel launched runs its CUDA source compiled for the host
    (tests/cpu_cuda.py), so the GPU ops run on NumPy arrays."""
    from cpu_cuda import launch_on_host

    launch_on_host(monkeypatch)


def tensorboard_values(folder) -> tuple[dict, dict]:
    """The scalars and histograms in a folder's TensorBoard event files, each as
    {tag: {step: value}} (a histogram's value is its HistogramProto)."""
    import struct
    from pathlib import Path

    from tensorboardX.proto import event_pb2  # the tensorboard extra, which tests install

    scalars, histograms = {}, {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):  # TFRecord: length, its CRC, the event, its CRC
            (size,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + size])
            at += 16 + size
            for value in event.summary.value:
                if value.HasField("histo"):
                    histograms.setdefault(value.tag, {})[event.step] = value.histo
                else:
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars, histograms
