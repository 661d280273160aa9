"""The training runs that tests/test_distributed.py makes with two MPI workers and
compares with one process, float64; tests/distributed_worker.py runs them under mpirun.

A case's reference is "plain" (one process training on the whole global batch: the
network has no random draws and no batchnorm, or synchronised batchnorm) or "workers"
(one process doing each worker's part in turn with that worker's random stream and
batchnorm statistics, then one update: dropout, noise and per-worker batchnorm).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from netdsl.driver import check_text
from netdsl.lower import lower
from netdsl.runtime.data import load_data
from netdsl.runtime.host import to_host
from netdsl.settings import resolve_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
# small buckets, so that a step sums several of them while backward runs
BUCKET_BYTES = 4096
# what an epoch's record is compared by (NaN where a run has none)
HISTORY = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class Case:
    spec: str
    overrides: dict
    examples: int
    reference: str = "plain"
    edits: tuple = ()                 # (old, new) replacements in the spec's text
    length: int | None = None         # time steps of generated sequences
    val: float = 0.0                  # the validation fraction
    overlap: bool = True
    extra: dict = field(default_factory=dict)


CASES = {
    "mlp": Case("specs/mlp.net", {"batch": 32, "steps": 4}, 160, "workers"),
    "mlp_no_dropout": Case("specs/mlp.net", {"batch": 32, "steps": 4}, 160,
                           edits=(("-> dropout(0.2)", ""),)),
    "mlp_no_overlap": Case("specs/mlp.net", {"batch": 32, "steps": 4}, 160,
                           edits=(("-> dropout(0.2)", ""),), overlap=False),
    # 33 examples a batch: parts of 17 and 16, weighted by their shares; 70 examples to
    # train on: the epoch's last batch has 4; 11 to validate on: parts of 6 and 5
    "mlp_uneven": Case("specs/mlp.net", {"batch": 33, "epochs": 2}, 81,
                       edits=(("-> dropout(0.2)", ""),), val=0.14),
    "lenet5": Case("specs/lenet5.net", {"batch": 16, "steps": 3}, 64),
    "resnet20": Case("specs/resnet20.net", {"batch": 8, "steps": 3}, 48, "workers"),
    "resnet20_sync_bn": Case("specs/resnet20.net", {"batch": 8, "steps": 3, "sync_bn": True},
                             48),
    "lstm_tbptt": Case("specs/lstm.net", {"batch": 8, "steps": 3}, 48, length=40),
    "gan": Case("specs/gan.net", {"batch": 16, "steps": 3, "gan_k": 2}, 64, "workers"),
}


def build(name: str):
    """The case's lowered network, settings, training data and validation data (None
    without)."""
    case = CASES[name]
    with open(os.path.join(ROOT, case.spec)) as handle:
        text = handle.read()
    for old, new in case.edits:
        assert old in text, (name, old)
        text = text.replace(old, new)
    net = check_text(text, case.spec)
    overrides = {"epochs": 1, "val": case.val, **case.overrides}
    settings = resolve_settings(net.graph.graph["train"], overrides)
    length = {"steps": case.length} if case.length else {}
    data = load_data(net.graph, settings.data, settings.seed, case.examples, **length)
    train, val = data.split(settings.val, settings.seed)
    return lower(net), settings, train, (val if len(val) else None)


def results(trainer) -> dict[str, np.ndarray]:
    """What a run is compared by: its per-step losses, parameters and statistics."""
    names = sorted(trainer.plan.losses)
    losses = np.array([[step[n] for n in names] for step in trainer.position.losses])
    history = np.array([[record.get(k, np.nan) for k in HISTORY]
                        for record in trainer.position.history]).reshape(-1, len(HISTORY))
    xp = trainer.xp
    out = {"losses": losses, "history": history,
           "params": np.array(to_host(xp, trainer.executor.flat_params))}
    for node, entries in trainer.executor.buffers.items():
        for key, value in entries.items():
            out[f"buffer/{node}:{key}"] = np.array(to_host(xp, value))
    return out
