"""HyperLogLog: approximate distinct counts that merge across partitions and windows.

A distinct count can't be summed across stage-1 partitions (a visitor may appear
in several), but HLL registers merge by taking the maximum, and the estimate of
the merge is the estimate of the union. 2^11 registers give about 2.3% standard
error in 2 KiB; small cardinalities use linear counting and are nearly exact.
The hash is blake2b, not Python's salted ``hash``, so live and replay agree.
"""

from __future__ import annotations

import base64
import math
from hashlib import blake2b

P = 11
M = 1 << P
_REST_BITS = 64 - P
_REST_MASK = (1 << _REST_BITS) - 1
_ALPHA = 0.7213 / (1 + 1.079 / M)


def new() -> bytearray:
    return bytearray(M)


def add(registers: bytearray, value: str) -> None:
    """Count one value."""
    h = int.from_bytes(blake2b(value.encode(), digest_size=8).digest(), "big")
    rest = h & _REST_MASK
    rank = _REST_BITS - rest.bit_length() + 1  # position of the first 1 bit
    idx = h >> _REST_BITS
    if rank > registers[idx]:
        registers[idx] = rank


def merge(into: bytearray, other: bytearray) -> None:
    """Fold ``other`` into ``into``: afterwards ``into`` estimates the union."""
    into[:] = bytes(map(max, into, other))


def estimate(registers: bytearray) -> float:
    """The approximate number of distinct values added."""
    zeros = registers.count(0)
    if zeros == M:
        return 0.0
    raw = _ALPHA * M * M / sum(2.0 ** -r for r in registers)
    if raw <= 2.5 * M and zeros:
        return float(round(M * math.log(M / zeros)))  # linear counting: exact-ish while sparse
    return float(round(raw))


def encode(registers: bytearray) -> str | list[int]:
    """A JSON-safe form: sparse (index, rank pairs, flattened) while few registers are set.

    Most cells see few distinct values per window, and every state write carries the
    sketch: the dense 2 KiB form made it 90% of the changelog bytes.
    """
    nonzero = [i for i, r in enumerate(registers) if r]
    if len(nonzero) * 2 < M // 8:
        return [x for i in nonzero for x in (i, registers[i])]
    return base64.b64encode(bytes(registers)).decode()


def decode(raw: str | list[int]) -> bytearray:
    if isinstance(raw, str):
        return bytearray(base64.b64decode(raw))
    registers = bytearray(M)
    for i in range(0, len(raw), 2):
        registers[raw[i]] = raw[i + 1]
    return registers
