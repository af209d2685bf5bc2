"""Fuzzed graphs: random CNNs compiled for the host, bit-exact with the NumPy reference and
free of int32 overflow (tools/fuzz.py).  A small seeded run, and every saved failing case
(tests/fuzz_cases/*.json) replayed; the long run is ``python -m tools.fuzz --graphs N``."""

import glob
import json
import os

import pytest

from tools import fuzz

CASES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fuzz_cases", "*.json")))


def _load(path):
    with open(path) as f:
        spec = json.load(f)
    return {k: spec[k] for k in ("seed", "input", "ops", "head")}


@pytest.mark.host
@pytest.mark.parametrize("seed", range(8))
def test_random_graph_is_bit_exact(seed):
    result = fuzz.check_spec(fuzz.random_spec(seed))
    assert result == "clean" or result.startswith("refused: ")


@pytest.mark.host
@pytest.mark.parametrize("path", CASES, ids=[os.path.basename(p) for p in CASES])
def test_saved_case_is_bit_exact(path):
    assert fuzz.check_spec(_load(path)) == "clean"


@pytest.mark.unit
def test_generator_is_seeded_and_varied():
    assert fuzz.random_spec(3) == fuzz.random_spec(3)
    specs = [fuzz.random_spec(s) for s in range(60)]
    ops = [op for s in specs for op in s["ops"]]
    kinds = {op["op"] for op in ops}
    assert kinds == {"conv", "add", "maxpool"}
    convs = [op for op in ops if op["op"] == "conv"]
    assert any(op["groups"] == s_in for op in convs for s_in in [op["cout"]] if op["groups"] > 1)
    assert {op["stride"] for op in convs} == {1, 2} and {op["dilation"] for op in convs} == {1, 2}
    assert {op["act"] for op in convs} == {"relu", "relu6", "none"}
    scales = [op["scale"] for op in convs]
    assert min(scales) < 1e-2 and max(scales) > 1e2
    assert {s["head"]["gap"] for s in specs} == {True, False}
    assert {s["head"]["bias"] for s in specs} == {True, False}
