"""Pure domain logic for kpimon: events, windows, measures, KPIs and targets.

Nothing here imports Faust or Kafka or does network I/O, so every rule can be
unit-tested on its own and the same code runs live (``streams``) and offline
(``kpimon replay``).
"""
