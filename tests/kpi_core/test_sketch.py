"""HyperLogLog distinct counts: exact while small, close while large, and mergeable."""

from __future__ import annotations

import pytest

from kpi_core import sketch


def filled(values: range | list[str], prefix: str = "v") -> bytearray:
    registers = sketch.new()
    for v in values:
        sketch.add(registers, f"{prefix}{v}")
    return registers


def test_an_empty_sketch_estimates_zero() -> None:
    assert sketch.estimate(sketch.new()) == 0.0
    assert len(sketch.new()) == sketch.M == 2048


@pytest.mark.parametrize("n", [1, 2, 10, 40])
def test_small_counts_are_exact(n: int) -> None:
    # linear counting, M·ln(M / zeros), rounds to n while n²/2M < ½
    assert sketch.estimate(filled(range(n))) == float(n)


def test_repeats_count_once() -> None:
    registers = filled(range(30))
    before = bytearray(registers)
    for v in range(30):
        sketch.add(registers, f"v{v}")
    assert registers == before
    assert sketch.estimate(registers) == 30.0


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
    assert abs(sketch.estimate(filled(range(n))) / n - 1) < tolerance


def test_merge_estimates_the_union() -> None:
    a, b = filled(range(0, 25)), filled(range(15, 40))
    union = bytearray(a)
    sketch.merge(union, b)
    assert sketch.estimate(union) == 40.0
    assert union == filled(range(40))  # register-wise max is exactly the sketch of the union
    again = bytearray(union)
    sketch.merge(again, b)
    assert again == union  # merging twice changes nothing


def test_merge_is_commutative() -> None:
    a, b = filled(range(30)), filled(range(20, 90))
    ab, ba = bytearray(a), bytearray(b)
    sketch.merge(ab, b)
    sketch.merge(ba, a)
    assert ab == ba


def test_encode_decode_round_trip() -> None:
    registers = filled(range(500))
    text = sketch.encode(registers)
    assert isinstance(text, str)
    assert sketch.decode(text) == registers


def test_the_hash_is_stable_across_processes() -> None:
    # blake2b, not Python's salted hash(): this register index and rank hold in every process
    registers = sketch.new()
    sketch.add(registers, "visitor-1")
    assert [(i, r) for i, r in enumerate(registers) if r] == [_expected_register("visitor-1")]


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
        hll.add(registers, f"visitor-{i}")
    encoded = hll.encode(registers)
    assert hll.decode(encoded) == registers
    assert isinstance(encoded, list if n <= 100 else str)
