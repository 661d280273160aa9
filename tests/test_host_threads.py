"""BLAS's thread count as runtime/host.py reads it (`blas_threads`, `host_threads`):
OpenBLAS's own getter called straight (NETDSL_BLAS_COUNT_DIRECT, on by default) or
threadpoolctl's query (off), either following every change of the count: threadpoolctl's
limits (as --threads and the benchmarks set them), a pass's one-thread BLAS section
(one_blas_thread), an op's split (splitting), the wake of OpenBLAS (runtime.native.blas),
a forked child's."""
from __future__ import annotations

import os

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from netdsl.runtime import host


def _threadpoolctl() -> int:
    return max((c.num_threads for c in ThreadpoolController().select(user_api="blas")
                .lib_controllers), default=1)


@pytest.fixture(params=[True, False], ids=["direct", "threadpoolctl"])
def reader(request, monkeypatch):
    """The count read either way, its getter made afresh."""
    monkeypatch.setattr(host, "DIRECT_COUNT", request.param)
    monkeypatch.setattr(host, "_count", None)
    if not host._blas_controllers():
        pytest.skip("no BLAS threadpoolctl controls")
    return request.param


def test_the_count_follows_threadpoolctls_limits(reader):
    for threads in (1, 2, 3, 1):
        with threadpool_limits(threads, user_api="blas"):
            assert host.blas_threads() == host.host_threads() == _threadpoolctl() == threads
    assert host.blas_threads() == _threadpoolctl()


def test_the_count_follows_a_pass_and_a_split(reader):
    with threadpool_limits(2, user_api="blas"):
        with host.one_blas_thread(np):
            assert (host.host_threads(), host.blas_threads()) == (2, 1)
            with host.splitting(2):
                assert (host.host_threads(), host.blas_threads()) == (2, 1)
        assert (host.host_threads(), host.blas_threads()) == (2, 2)
        with host.splitting(2):
            assert (host.host_threads(), host.blas_threads()) == (1, 1)
        assert host.blas_threads() == 2
        with host.one_blas_thread(np, active=False):
            assert (host.host_threads(), host.blas_threads()) == (2, 2)


def test_the_count_follows_the_wake(reader, monkeypatch):
    from netdsl.runtime.native import blas

    monkeypatch.setattr(blas, "WAKE", True)
    blas.wake.cache_clear()
    try:
        with threadpool_limits(1, user_api="blas"):
            blas.wake()
            assert host.blas_threads() == host.host_threads() == 1
    finally:
        blas.wake.cache_clear()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_reads_its_own_count(reader):
    with threadpool_limits(2, user_api="blas"):
        host.blas_threads()   # the getter made in the parent
        pid = os.fork()
        if pid == 0:
            try:
                with threadpool_limits(1, user_api="blas"):
                    ok = host.blas_threads() == 1
                os._exit(0 if ok and host.blas_threads() == 2 else 1)
            finally:
                os._exit(2)
        assert os.waitpid(pid, 0)[1] == 0
