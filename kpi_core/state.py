"""Change tracking shared by the stateful stages: what to write to the changelog, in order."""

from __future__ import annotations

from typing import Any, Callable

import orjson

Key = tuple[Any, ...]
Change = tuple[str, Any]  # (encoded key, value); value None deletes the key


def encode_key(key: Key) -> str:
    return orjson.dumps(key).decode()


def drain(dirty: set[Key], deleted: set[Key], value: Callable[[Key], Any], *, last: Key | None = None,
          after: tuple[str, ...] = ()) -> list[Change]:
    """Writes for the dirty keys (those of the kinds in ``after`` behind the rest), then deletes,
    then ``last`` (if given and anything changed) after them all."""
    out: list[Change] = [(encode_key(k), value(k)) for k in dirty if k != last and k[0] not in after]
    out += [(encode_key(k), value(k)) for k in dirty if k != last and k[0] in after]
    out += [(encode_key(k), None) for k in deleted - dirty]
    if last is not None and (last in dirty or out):
        out.append((encode_key(last), value(last)))
    dirty.clear()
    deleted.clear()
    return out
