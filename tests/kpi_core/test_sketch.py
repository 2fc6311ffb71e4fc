"""HyperLogLog distinct counts: exact while small, close while large, and mergeable."""

from __future__ import annotations

import pytest

from kpi_core import sketch


def filled(values: range | list[str], prefix: str = "v") -> sketch.Sketch:
    registers = sketch.new()
    for v in values:
        registers.add(f"{prefix}{v}")
    return registers


def test_an_empty_sketch_estimates_zero() -> None:
    assert sketch.new().estimate() == 0.0
    assert len(sketch.new().registers()) == sketch.M == 2048


@pytest.mark.parametrize("n", [1, 2, 10, 40])
def test_small_counts_are_exact(n: int) -> None:
    # linear counting, M·ln(M / zeros), rounds to n while n²/2M < ½
    assert filled(range(n)).estimate() == float(n)


def test_repeats_count_once() -> None:
    registers = filled(range(30))
    before = registers.copy()
    for v in range(30):
        registers.add(f"v{v}")
    assert registers == before
    assert registers.estimate() == 30.0


@pytest.mark.parametrize(
    ("n", "tolerance"),
    [
        # linear counting, no longer exact
        (100, 0.03),
        # linear-counting range
        (1_000, 0.05),
        # HLL range: a few standard errors of 2.3 %
        (20_000, 0.07),
    ],
)
def test_large_counts_are_close(n: int, tolerance: float) -> None:
    assert abs(filled(range(n)).estimate() / n - 1) < tolerance


def test_merge_estimates_the_union() -> None:
    a, b = filled(range(0, 25)), filled(range(15, 40))
    union = a.copy()
    union.merge(b)
    assert union.estimate() == 40.0
    assert union == filled(range(40))  # register-wise max is exactly the sketch of the union
    again = union.copy()
    again.merge(b)
    assert again == union  # merging twice changes nothing


def test_merge_is_commutative() -> None:
    a, b = filled(range(30)), filled(range(20, 90))
    ab, ba = a.copy(), b.copy()
    ab.merge(b)
    ba.merge(a)
    assert ab == ba


def test_encode_decode_round_trip() -> None:
    registers = filled(range(500))
    text = registers.encode()
    assert isinstance(text, str)
    assert sketch.decode(text) == registers


def test_the_hash_is_stable_across_processes() -> None:
    # blake2b, not Python's salted hash(): this register index and rank hold in every process
    registers = sketch.new()
    registers.add("visitor-1")
    assert [(i, r) for i, r in enumerate(registers.registers()) if r] == [_expected_register("visitor-1")]


def _expected_register(value: str) -> tuple[int, int]:
    from hashlib import blake2b

    h = int.from_bytes(blake2b(value.encode(), digest_size=8).digest(), "big")
    rest = h & ((1 << 53) - 1)
    return h >> 53, 53 - rest.bit_length() + 1


@pytest.mark.parametrize("n", [0, 1, 30, 100, 5_000])  # empty, sparse, and past the dense switch
def test_encode_round_trips_sparse_and_dense(n: int) -> None:
    from kpi_core import sketch as hll

    registers = hll.new()
    for i in range(n):
        registers.add(f"visitor-{i}")
    encoded = registers.encode()
    assert hll.decode(encoded) == registers
    assert isinstance(encoded, list if n <= 100 else str)


@pytest.mark.parametrize(("a", "b"), [(10, 20), (10, 300), (300, 10), (300, 400)])  # sparse/dense, both ways
def test_merge_is_the_same_whatever_each_side_holds(a: int, b: int) -> None:
    left, right = filled(range(a)), filled(range(1000, 1000 + b))
    merged = left.copy()
    merged.merge(right)
    assert merged == filled([*range(a), *range(1000, 1000 + b)])


@pytest.mark.parametrize("n", [sketch.SPARSE_MAX, sketch.SPARSE_MAX + 5, 110, 200])
def test_the_encoding_depends_on_the_registers_not_on_how_they_are_held(n: int) -> None:
    # n values set ~n registers: around SPARSE_MAX memory turns dense, the wire form
    # stays a list up to M/16 set registers either way
    grown = filled(range(n))
    rebuilt = sketch.decode(sketch.Sketch.encode(grown))
    assert rebuilt.encode() == grown.encode()
    set_registers = sum(1 for r in grown.registers() if r)
    assert isinstance(grown.encode(), list) == (set_registers < sketch.M // 16)
    if isinstance(grown.encode(), list):
        flat = grown.encode()
        assert flat[0::2] == sorted(flat[0::2])  # ordered by index, so equal state encodes equally


def test_a_sparse_estimate_equals_the_dense_one() -> None:
    small = filled(range(40))
    dense = sketch.decode(__import__("base64").b64encode(small.registers()).decode())
    assert small.estimate() == dense.estimate() == 40.0
