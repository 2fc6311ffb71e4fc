"""The small exception tree every kpimon package raises from."""

from __future__ import annotations


class KpimonError(Exception):
    """Base class for kpimon's own errors."""


class ConfigError(KpimonError):
    """The configuration is invalid.

    Fix the field named in the message (its dotted path is given) and start again;
    ``kpimon check-config PATH`` lists every problem at once.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {msg}" if path else msg for path, msg in problems))


class InvalidEvent(KpimonError):
    """An event broke the event contract; it belongs in the dead-letter topic."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        self.reason = reason  # a short, bounded code: safe as a Prometheus label
        self.detail = detail
        self.field = field  # the contract field at fault, when one is (a tracker format names its own)
        super().__init__(f"{reason}: {detail}")
