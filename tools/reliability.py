"""Reliability run: fuzzed specs, damaged checkpoints and data files, and kills during
training, each through `netc` as a user would run it.

    python tools/reliability.py [--seed 0] [--specs N] [--checkpoints N] [--data N]
                                [--kills N] [--out DIR]

Specs are the bundled specs and the standard library, mutated (spans deleted, lines
doubled or swapped, numbers replaced by odd ones, keywords and symbols inserted, the
text cut short) and checked with `netc check`. Checkpoints are a trained MLP's,
damaged (cut short, bytes flipped, emptied, members dropped, retyped, reshaped or made
non-finite, a folder in the file's place) and read by `netc eval` and `netc run
--resume`. Data files are a valid .npz and .csv for the MLP, damaged in the same
spirit (and with text, ragged rows, object arrays, wrong keys and shapes) and read by
`netc eval --data`. Each runs in this process (netdsl.cli.main) under a 10 s alarm and
passes when netc exits with 0, 1 or 2, prints no traceback and takes under 10 s.

A kill starts `netc run` on the MLP in a subprocess, checkpointing every 0.2 s, and
sends SIGKILL at a random moment; then the checkpoint, if one was written, must load
(`netc eval` exits 0), `netc run --resume` must finish, and no temporary file of the
killed write may survive it.

Failing inputs are kept under --out with what netc printed. The summary gives the
inputs tried and failed per kind, the slowest input, and this process's peak memory.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from netdsl.cli import main as netc

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "specs" / "mlp.net"
LIMIT_S = 10
ODD_NUMBERS = ["0", "-1", "1e9", "1e308", "1.5", "0.0", "99999999999999999999", "nan",
               "-0", "1e-320", "3"]
TOKENS = ["block", "network", "import", "state", "input", "target", "loss", "train", "out",
          "in", "for", "x", "->", "(", ")", "{", "}", "[", "]", ",", "=", "+", "*", ":",
          "seq", "class(", "h[t-1]", "..", "\\", "#", '"', "import rnn", "\n", "  ", "_"]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"ran past {LIMIT_S} s")


def run_netc(argv: list[str]) -> tuple[str | None, float, str]:
    """(why it failed or None, seconds, what it printed) for netc with `argv`."""
    out, err = io.StringIO(), io.StringIO()
    failure = None
    began = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = netc(argv)
        if code not in (0, 1, 2):
            failure = f"exit code {code}"
    except SystemExit as exc:
        if exc.code not in (0, 1, 2, None):
            failure = f"exit code {exc.code}"
    except Hang as exc:
        failure = f"hang: {exc}"
    except BaseException:  # noqa: BLE001  any escape is what this run looks for
        failure = "traceback:\n" + traceback.format_exc()
    finally:
        signal.alarm(0)
    seconds = time.perf_counter() - began
    printed = err.getvalue()
    if failure is None and "Traceback (most recent call last)" in printed:
        failure = "traceback on stderr"
    return failure, seconds, out.getvalue() + printed


# ---- inputs


def mutated_spec(rng: random.Random, texts: list[str]) -> str:
    text = rng.choice(texts)
    for _ in range(rng.randint(1, 4)):
        if not text:
            break
        kind = rng.randrange(6)
        i = rng.randrange(len(text))
        if kind == 0:
            text = text[:i] + text[i + rng.randint(1, 20):]
        elif kind == 1:
            lines = text.splitlines(keepends=True)
            j = rng.randrange(len(lines))
            lines.insert(j, lines[rng.randrange(len(lines))])
            text = "".join(lines)
        elif kind == 2:
            lines = text.splitlines(keepends=True)
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text = "".join(lines)
        elif kind == 3:
            digits = [k for k, c in enumerate(text) if c.isdigit()]
            if digits:
                k = rng.choice(digits)
                end = k
                while end < len(text) and (text[end].isdigit() or text[end] in ".e-"):
                    end += 1
                text = text[:k] + rng.choice(ODD_NUMBERS) + text[end:]
        elif kind == 4:
            text = text[:i] + " " + rng.choice(TOKENS) + " " + text[i:]
        else:
            text = text[:i]
    return text


def damaged_checkpoint(rng: random.Random, good: Path, folder: Path) -> str:
    """Copy of the folder `good` into `folder` with its checkpoint damaged; the damage."""
    shutil.copytree(good, folder)
    path = folder / "checkpoint.npz"
    raw = path.read_bytes()
    kind = rng.randrange(8)
    if kind == 0:
        path.write_bytes(raw[:rng.randrange(len(raw))])
        return "cut short"
    if kind == 1:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        return "bytes flipped"
    if kind == 2:
        path.write_bytes(b"")
        return "empty"
    if kind == 3:
        path.unlink()
        path.mkdir()
        return "a folder in its place"
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    name = rng.choice(sorted(arrays))
    if kind == 4:
        del arrays[name]
        how = f"{name} dropped"
    elif kind == 5:
        arrays[name] = arrays[name].astype(rng.choice(["int32", "float16", "uint8", "bool"]))
        how = f"{name} retyped"
    elif kind == 6:
        arrays[name] = np.resize(arrays[name], max(0, arrays[name].size + rng.randint(-5, 5)))
        how = f"{name} reshaped"
    else:
        values = np.array(arrays[name], dtype=float if arrays[name].dtype.kind == "f" else None)
        if values.dtype.kind == "f" and values.size:
            values.reshape(-1)[rng.randrange(values.size)] = rng.choice([np.nan, np.inf])
        arrays[name] = values
        how = f"{name} made non-finite"
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return how


def damaged_data(rng: random.Random, folder: Path, n: int = 40) -> tuple[Path, str]:
    """A data file for the MLP (x: [64], y: class(10)), damaged; the damage."""
    data_rng = np.random.default_rng(rng.randrange(2 ** 32))
    x = data_rng.random((n, 64), dtype=np.float32)
    y = data_rng.integers(0, 10, n)
    kind = rng.randrange(10)
    if kind < 5:
        path = folder / "data.npz"
        arrays = {"x": x, "y": y}
        how = "npz "
        if kind == 0:
            arrays["x"] = x[:, :rng.randrange(64)]
            how += "x narrower"
        elif kind == 1:
            arrays["y"] = data_rng.integers(-5, 50, n)
            how += "labels out of range"
        elif kind == 2:
            arrays = {rng.choice(["x", "y", "z"]): x}
            how += "a member missing"
        elif kind == 3:
            arrays["x"] = np.array(["a"] * n)
            how += "text instead of numbers"
        else:
            arrays["y"] = y[:rng.randrange(n)]
            how += "fewer labels than inputs"
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
        if rng.random() < 0.3:
            raw = path.read_bytes()
            path.write_bytes(raw[:rng.randrange(len(raw))])
            how += ", cut short"
        return path, how
    path = folder / "data.csv"
    rows = [",".join(f"{v:.3f}" for v in row) + f",{label}" for row, label in zip(x, y)]
    header = ",".join([f"x{i}" for i in range(64)] + ["y"])
    how = "csv "
    if kind == 5:
        rows[rng.randrange(n)] += ",1"
        how += "a ragged row"
    elif kind == 6:
        rows[rng.randrange(n)] = "text,more text"
        how += "a row of text"
    elif kind == 7:
        header = ""
        how += "no header"
    elif kind == 8:
        rows = [bytes(rng.randrange(256) for _ in range(40)).decode("latin-1")
                for _ in range(5)]
        how += "binary junk"
    else:
        rows = []
        how += "a header alone"
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="latin-1")
    return path, how


# ---- the run


class Tally:
    def __init__(self, out: Path):
        self.out = out
        self.tried: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.slowest = (0.0, "")

    def record(self, kind: str, what: str, failure: str | None, seconds: float, printed: str,
               keep: list[Path] = ()) -> None:
        self.tried[kind] = self.tried.get(kind, 0) + 1
        if seconds > self.slowest[0]:
            self.slowest = (seconds, f"{kind}: {what}")
        if failure is None:
            return
        self.failed[kind] = self.failed.get(kind, 0) + 1
        case = self.out / f"{kind}-{self.tried[kind]}"
        case.mkdir(parents=True, exist_ok=True)
        for path in keep:
            target = case / path.name
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            elif path.exists():
                shutil.copy(path, target)
        (case / "what.txt").write_text(f"{what}\n{failure}\n\n{printed}", encoding="utf-8")

    def summary(self) -> dict:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"tried": self.tried, "failed": self.failed,
                "slowest_s": round(self.slowest[0], 3), "slowest": self.slowest[1],
                "peak_rss_mib": round(peak, 1)}


def fuzz_specs(rng, count: int, work: Path, tally: Tally) -> None:
    paths = sorted(glob.glob(str(ROOT / "specs" / "*.net")))
    paths += sorted(glob.glob(str(ROOT / "netdsl" / "stdlib" / "*.net")))
    texts = [Path(p).read_text(encoding="utf-8") for p in paths]
    spec = work / "fuzzed.net"
    for _ in range(count):
        text = mutated_spec(rng, texts)
        spec.write_text(text, encoding="utf-8")
        failure, seconds, printed = run_netc(["check", str(spec)])
        tally.record("spec", text[:200], failure, seconds, printed, [spec])


def trained_checkpoint(work: Path) -> Path:
    folder = work / "trained"
    failure, _, printed = run_netc(["run", str(MLP), "--checkpoint", str(folder), "--steps",
                                    "3", "--epochs", "1", "--quiet", "--seed", "0"])
    if failure or not (folder / "checkpoint.npz").exists():
        raise SystemExit(f"could not train the MLP to damage its checkpoint:\n{printed}")
    return folder


def damage_checkpoints(rng, count: int, work: Path, good: Path, tally: Tally) -> None:
    for i in range(count):
        folder = work / f"damaged{i}"
        how = damaged_checkpoint(rng, good, folder)
        if i % 2:
            argv = ["run", str(MLP), "--checkpoint", str(folder), "--resume", "--steps", "1",
                    "--quiet"]
        else:
            argv = ["eval", str(MLP), "--checkpoint", str(folder)]
        failure, seconds, printed = run_netc(argv)
        tally.record("checkpoint", f"{argv[0]}: {how}", failure, seconds, printed, [folder])
        shutil.rmtree(folder, ignore_errors=True)


def damage_data(rng, count: int, work: Path, good: Path, tally: Tally) -> None:
    for i in range(count):
        folder = work / f"data{i}"
        folder.mkdir()
        path, how = damaged_data(rng, folder)
        failure, seconds, printed = run_netc(["eval", str(MLP), "--checkpoint", str(good),
                                              "--data", str(path)])
        tally.record("data", how, failure, seconds, printed, [path])
        shutil.rmtree(folder, ignore_errors=True)


def kills(rng, count: int, work: Path, tally: Tally) -> None:
    for i in range(count):
        folder = work / f"killed{i}"
        argv = [sys.executable, "-m", "netdsl.cli", "run", str(MLP), "--checkpoint",
                str(folder), "--epochs", "50", "--checkpoint-every", "0.2", "--quiet"]
        began = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 5.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        what = f"killed after {time.perf_counter() - began:.1f} s"
        if not (folder / "checkpoint.npz").exists():
            tally.record("kill", what + ", before any checkpoint", None, 0.0, "")
            continue
        failure, seconds, printed = run_netc(["eval", str(MLP), "--checkpoint", str(folder)])
        if failure is None and "error" in printed.lower():
            failure = "the checkpoint a kill left does not load"
        if failure is None:
            failure, more, printed = run_netc(["run", str(MLP), "--checkpoint", str(folder),
                                               "--resume", "--steps", "1", "--quiet"])
            seconds += more
        leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")
                     or p.name.startswith(".tmp")]
        if failure is None and leftovers:
            failure = f"temporary files left: {leftovers}"
        tally.record("kill", what, failure, seconds, printed, [folder])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--specs", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--data", type=int, default=200)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("reliability-failures"))
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    tally = Tally(args.out)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        fuzz_specs(rng, args.specs, work, tally)
        good = trained_checkpoint(work) if args.checkpoints or args.data else None
        damage_checkpoints(rng, args.checkpoints, work, good, tally)
        damage_data(rng, args.data, work, good, tally)
        kills(rng, args.kills, work, tally)
    result = tally.summary()
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["seed"] = args.seed
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
