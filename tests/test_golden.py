"""`netc compile --emit shapes` of every spec, against tests/golden/ (update with --update-golden)."""
import glob
import os

import pytest

from conftest import ROOT, SPECS, assert_golden
from netdsl.driver import check_file
from netdsl.emit import format_shapes
from netdsl.shapes import verify_shapes

GOLDEN = os.path.join(ROOT, "tests", "golden")
SPEC_FILES = sorted(glob.glob(os.path.join(SPECS, "*.net")))


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: os.path.basename(p)[:-4])
def test_emit_shapes_matches_golden(path, update_golden):
    graph = check_file(path).graph
    verify_shapes(graph)  # the invariant cost, drawing and execution rely on
    text = format_shapes(graph) + "\n"
    assert_golden(os.path.join(GOLDEN, os.path.basename(path)[:-4] + ".shapes"), text,
                  update_golden)


def test_every_golden_file_has_a_spec():
    names = {os.path.basename(p)[:-4] for p in SPEC_FILES}
    stale = [f for f in os.listdir(GOLDEN) if os.path.splitext(f)[0] not in names]
    assert not stale, f"golden files without a spec: {stale}"
