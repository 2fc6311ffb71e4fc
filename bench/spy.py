"""Summarize py-spy's raw (collapsed-stack) output: self and total time per function and per package."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def short_file(path: str) -> str:
    """A readable location: package-relative (py-spy already shortens most paths that way)."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    for top in ("kpi_core/", "streams/", "kpimon/", "alerts/", "bench/", "tests/"):
        i = path.find("/" + top)
        if i >= 0:
            return path[i + 1 :]
    m = re.search(r"lib/python3\.\d+/(.*)$", path)
    if m:
        return m.group(1)
    return path


def package(path: str) -> str:
    """Which component a file belongs to: kpi_core, streams, faust, aiokafka, stdlib:asyncio, ..."""
    f = short_file(path)
    if f.startswith("<frozen "):
        return "stdlib:" + f[len("<frozen ") :].rstrip(">")
    top = f.split("/", 1)[0].removesuffix(".py")
    return f"stdlib:{top}" if top in sys.stdlib_module_names else top


def parse_frame(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?"
    return m.group("func"), m.group("file")


def summarize(raw_path: Path, top: int = 20) -> dict[str, Any]:
    """Self time (the innermost frame), total time (anywhere on the stack) and per-package self time.

    With ``py-spy record --threads`` each stack starts with its thread; the function tables then
    cover the main thread only (the one running the event loop, the agents and Python code under
    the GIL), and ``threads`` gives each thread's share of all samples.
    """
    threads: Counter[str] = Counter()
    total = 0
    self_time: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg_self: Counter[str] = Counter()
    pkg_incl: Counter[str] = Counter()
    for line in raw_path.read_text(errors="replace").splitlines():
        line = line.rstrip()
        if not line:
            continue
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        parts = [f for f in stack.split(";") if f]
        if parts and parts[0].startswith("thread ("):
            name = parts[0].split(":", 1)[-1].strip()
            threads[name] += count
            if name != "MainThread":
                continue
            parts = parts[1:]
        frames = [parse_frame(f) for f in parts]
        if not frames:
            continue
        total += count
        func, file = frames[-1]
        self_time[f"{func} ({short_file(file)})"] += count
        pkg_self[package(file)] += count
        seen: set[str] = set()
        seen_pkg: set[str] = set()
        for func, file in frames:
            key = f"{func} ({short_file(file)})"
            if key not in seen:
                seen.add(key)
                incl[key] += count
            p = package(file)
            if p not in seen_pkg:
                seen_pkg.add(p)
                pkg_incl[p] += count

    def pct(c: int) -> float:
        return round(100 * c / total, 1) if total else 0.0

    own = ("kpi_core/", "streams/", "alerts/", "kpimon/")
    all_threads = sum(threads.values())
    return {
        "samples": total,
        "threads": [(k, round(100 * v / all_threads, 1)) for k, v in threads.most_common()] if all_threads else [],
        "self": [(k, pct(v)) for k, v in self_time.most_common(top)],
        "total": [(k, pct(v)) for k, v in incl.most_common(top * 3) if pct(v) < 99.5][:top],
        "own_total": [(k, pct(v)) for k, v in incl.most_common() if any(f"({o}" in k for o in own)][:top],
        "packages_self": [(k, pct(v)) for k, v in pkg_self.most_common(15)],
        "packages_total": [(k, pct(v)) for k, v in pkg_incl.most_common(15)],
    }
