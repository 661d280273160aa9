"""The gradients of data-parallel workers summed in buckets while backward runs.

Every gradient lives in one flat vector, which is what an allreduce wants. Backward
writes it segment by segment in reverse, so the last layers' gradients are final long
before the first layers' are. `GradientBuckets` cuts an optimiser's part of the vector
into contiguous buckets of about `bucket_bytes`, at parameter boundaries, and starts the
sum of a bucket (a non-blocking allreduce) as soon as backward has written the last
gradient it holds; communication then hides behind the rest of backward, as PyTorch's
DistributedDataParallel does. With overlap off, the whole part is summed in one call
after backward, for comparison.

A worker's gradients are those of its own examples' mean loss; scaled by its share of
the global batch (`weight`) before the sum, they add up to the gradient of the global
batch's mean loss. Buckets start in one fixed order on every worker, as MPI and NCCL
require of collectives, whatever order backward finishes them in.
"""
from __future__ import annotations

import time

from netdsl.lower.schedule import LoopSegment
from netdsl.runtime.distributed import Communicator

__all__ = ["GradientBuckets", "BUCKET_BYTES"]

# the gradient bytes per bucket: big enough that a sum is not all latency, small enough
# that the first starts early in backward (PyTorch's DDP uses 25 MB on fast networks)
BUCKET_BYTES = 1 << 20


class GradientBuckets:
    """Sums the gradients of parameters `keys` (contiguous in the executor's flat vector)
    over the workers of `comm`.

    With `overlap`, pass it as `hook` to `Executor.backward`: the executor reports each
    step (and each loop) whose backward has run, and `finish()` waits for the sums.
    Without, `finish()` does the whole sum. `seconds` adds up the time spent waiting for
    sums after backward (what overlap did not hide), `launched` the sums started.
    """

    def __init__(self, comm: Communicator, executor, keys, overlap: bool = True,
                 bucket_bytes: int = BUCKET_BYTES):
        self.comm, self.executor, self.overlap = comm, executor, overlap
        self.grads = executor.flat_grads
        spans = sorted((executor.offsets[k], k) for k in keys)
        self.part = slice(spans[0][0][0], spans[-1][0][1]) if spans else slice(0, 0)
        limit = max(1, bucket_bytes // self.grads.itemsize)
        # from the end of the layout, where backward starts, to its beginning
        self.buckets: list[slice] = []
        self.members: list[list[str]] = []
        self.bucket_of: dict[str, int] = {}
        for (start, stop), key in reversed(spans):
            bucket = self.buckets[-1] if self.buckets else None
            if bucket is None or stop != bucket.start or bucket.stop - start > limit:
                self.buckets.append(slice(start, stop))
                self.members.append([])
            else:
                self.buckets[-1] = slice(start, bucket.stop)
            self.members[-1].append(key)
            self.bucket_of[key] = len(self.buckets) - 1
        self.weight = 1.0
        self.seconds = 0.0
        self.launched = 0
        self._plans: dict = {}
        self._pending: list = []

    # ---- the executor's hook

    def begin(self, schedule, backward) -> None:
        """Backward starts: which parameters each step or loop finishes."""
        key = (id(schedule), id(backward))
        if key not in self._plans:
            self._plans[key] = (schedule, backward, self._finishing(schedule, backward))
        self._finishes = self._plans[key][2]
        self._left = [len(keys) for keys in self.members]
        self._next = 0
        self._pending = []

    def step_done(self, step) -> None:
        """A straight segment's step has written its parameter gradients."""
        self._finished(self._finishes.get(step.node))

    def loop_done(self, segment: LoopSegment) -> None:
        """A loop's backward through time has written its parameters' gradients."""
        self._finished(self._finishes.get(segment.loop.name))

    def end(self) -> None:
        """Backward is over (gradients it never reached are zero now): start the rest."""
        self._start(len(self.buckets))

    # ---- the training loop's side

    def finish(self) -> None:
        """The summed gradients are in the flat vector once this returns (on a GPU, once
        the compute stream reaches it)."""
        started = time.perf_counter()
        if not self.overlap:
            part = self.grads[self.part]
            if self.weight != 1.0:
                part *= self.weight
            self.comm.sum(part)
            self.launched += 1
        else:
            for pending in self._pending:
                pending.wait()
            self._pending = []
        self.seconds += time.perf_counter() - started

    def _finishing(self, schedule, backward) -> dict[str, list[str]]:
        """Per step node (or loop name), the parameters of these buckets whose gradient
        is final once its backward has run: the last to write them, in backward order."""
        wanted, last = set(backward.order), {}
        for segment in reversed(schedule.segments):
            if isinstance(segment, LoopSegment):
                unit = segment.loop.name
                keys = [k for s in segment.steps if s.node in wanted for k in s.params.values()]
                keys += [state.param for state in segment.loop.states if state.param]
                for key in keys:
                    last[key] = unit
                continue
            for step in reversed(segment.steps):
                if step.node in wanted:
                    for key in step.params.values():
                        last[key] = step.node
        finishes: dict[str, list[str]] = {}
        for key, unit in last.items():
            if key in self.bucket_of:
                finishes.setdefault(unit, []).append(key)
        return finishes

    def _finished(self, keys) -> None:
        if keys:
            written = self.executor.grad_written
            for key in keys:
                if written(key):  # one backward left unwritten is zeroed at the end
                    self._left[self.bucket_of[key]] -= 1
            ready = self._next
            while ready < len(self.buckets) and self._left[ready] == 0:
                ready += 1
            self._start(ready)
        for pending in self._pending:  # MPI moves a sum on only inside its calls
            if not pending.test():
                break

    def _start(self, until: int) -> None:
        """Start the sums of buckets `_next` .. `until` - 1, in order."""
        for index in range(self._next, until):
            part = self.grads[self.buckets[index]]
            if self.weight != 1.0:
                part *= self.weight
            self._pending.append(self.comm.start_sum(part))
            self.launched += 1
        self._next = max(self._next, until)
