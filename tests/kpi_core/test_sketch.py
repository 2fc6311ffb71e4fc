"""Distinct counts (Apache DataSketches HLL): exact while small, close while large, mergeable,
and the same however the values were split across partitions."""

from __future__ import annotations

import base64
import random

import pytest

from kpi_core import sketch


def filled(values: range | list[int], prefix: str = "visitor-") -> sketch.Sketch:
    s = sketch.new()
    for v in values:
        s.add(f"{prefix}{v}")
    return s


def test_an_empty_sketch_estimates_zero() -> None:
    assert sketch.new().estimate() == 0.0
    assert sketch.decode(sketch.new().encode()).estimate() == 0.0


@pytest.mark.parametrize("n", [1, 2, 10, 40, 199, 200, 201, 384])
def test_counts_up_to_384_are_exact(n: int) -> None:
    assert filled(range(n)).estimate() == float(n)


def test_repeats_count_once() -> None:
    s = filled(range(30))
    for v in range(30):
        s.add(f"visitor-{v}")
    assert s.estimate() == 30.0


@pytest.mark.parametrize("n", [1_000, 20_000, 200_000])
def test_large_counts_are_within_a_few_standard_errors(n: int) -> None:
    # 4,096 registers: ~1.6% standard error
    assert abs(filled(range(n)).estimate() / n - 1) < 0.05


def test_merge_estimates_the_union() -> None:
    a, b = filled(range(0, 25)), filled(range(15, 40))
    union = a.copy()
    union.merge(b)
    assert union.estimate() == 40.0
    assert a.estimate() == 25.0  # copy() left a alone
    again = union.copy()
    again.merge(b)
    assert again.estimate() == 40.0  # merging twice changes nothing


@pytest.mark.parametrize("n", [50, 300, 1_000, 5_000, 60_000])
def test_split_over_partitions_or_kept_in_one_reads_the_same(n: int) -> None:
    # Live spreads a group's visitors over stage-1 partitions, replay keeps them in one:
    # the count must not depend on that, nor on the order of merges.
    rng = random.Random(n)
    parts = [sketch.new() for _ in range(4)]
    for v in range(n):
        parts[rng.randrange(4)].add(f"visitor-{v}")
    forward, backward = sketch.new(), sketch.new()
    for p in parts:
        forward.merge(p)
    for p in reversed(parts):
        backward.merge(p)
    whole = filled(range(n))
    one = sketch.new()
    one.merge(whole)
    assert forward.estimate() == backward.estimate() == whole.estimate() == one.estimate()
    assert forward == whole


@pytest.mark.parametrize("n", [0, 1, 30, 300, 5_000])  # empty, list, set and HLL modes
def test_encode_decode_round_trip(n: int) -> None:
    s = filled(range(n))
    text = s.encode()
    assert isinstance(text, str) and text.startswith("h:")
    back = sketch.decode(text)
    assert back.estimate() == s.estimate() == (n if n <= 384 else back.estimate())
    back.add("visitor-new")  # a decoded sketch keeps counting
    assert back.estimate() >= s.estimate()


def test_the_hash_is_stable_across_processes() -> None:
    # MurmurHash3 with DataSketches' fixed seed: this encoding holds in every process and version
    s = sketch.new()
    s.add("visitor-1")
    assert filled([1]).encode() == s.encode()
    assert sketch.decode(s.encode()).estimate() == 1.0


@pytest.mark.parametrize("legacy", [[5, 3, 17, 1], base64.b64encode(bytes(2048)).decode()])
def test_the_old_hand_rolled_hll_state_reads_as_empty(legacy: object) -> None:
    assert sketch.decode(legacy).estimate() == 0.0  # type: ignore[arg-type]
