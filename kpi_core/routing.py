"""Which partition a piece of work lives in: the co-location rules both stages rely on.

Stage 1 is keyed by campaign, so all of a campaign's events, whatever their source topic, meet in
one ``<app>-events`` partition. Stage 2 puts every breakdown that includes the campaign with the
campaign, so a campaign's alert can name the channel or device behind it from local state; other
breakdowns spread by a hash of the whole group.
"""

from __future__ import annotations

import zlib

import orjson

from kpi_core.plan import Plan


def partition_of(campaign: str, partitions: int) -> int:
    """Stage 1's partition for a campaign: a stable hash, the same in every worker and language."""
    return zlib.crc32(campaign.encode()) % partitions


def combine_partition(plan: Plan, breakdown: int, group: tuple[str, ...], partitions: int) -> int:
    """Stage 2's partition for one group of one breakdown."""
    dims = plan.breakdowns[breakdown]
    if "campaign" in dims:
        return partition_of(group[dims.index("campaign")], partitions)
    return zlib.crc32(orjson.dumps((breakdown, *group))) % partitions
