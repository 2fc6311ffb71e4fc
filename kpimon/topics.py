"""Create the topics the pipeline reads and writes (kafka-python admin)."""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from kpi_core import wire
from kpi_core.config import Config
from kpi_core.errors import KpimonError
from streams.security import KafkaSecurity
from streams.settings import WorkerSettings

log = logging.getLogger("kpimon.topics")


class TopicError(KpimonError):
    """A topic exists with a partition count the pipeline can't work with.

    Delete it (or use another KPIMON_APP_ID) so it is created again.
    """


def wanted_topics(config: Config, settings: WorkerSettings) -> dict[str, int]:
    """Every topic and its partition count."""
    n = config.topics.partitions
    names = [*config.topics.sources, config.topics.dead_letters, config.topics.late_events, config.topics.snapshots, config.topics.alerts]
    topics = {name: n for name in names}
    topics[settings.events_topic] = n
    topics[settings.partials_topic] = n
    return topics


def ensure_topics(config: Config, settings: WorkerSettings, *, security: KafkaSecurity | None = None) -> list[str]:
    """Create missing topics; return the names created. ``security`` defaults to the ``KAFKA_SECURITY_*`` environment."""
    if security is None:
        security = KafkaSecurity.from_env()
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap.split(","), client_id="kpimon-admin", **security.kafka_python_options()
    )
    try:
        existing = set(admin.list_topics())
        wanted = wanted_topics(config, settings)
        # One window's partials for a stage-2 partition are one message, which may be large (wire.MAX_PARTIALS_BYTES).
        big = {settings.partials_topic: {"max.message.bytes": str(wire.MAX_PARTIALS_BYTES)}}
        missing = [NewTopic(name, n, 1, topic_configs=big.get(name, {})) for name, n in wanted.items() if name not in existing]
        # The tables' changelogs too, as Faust would make them (compacted). Left to Faust, two
        # workers starting at once can join the group while these are still missing from the
        # metadata and wait for recovery of partitions they were never assigned.
        missing += [NewTopic(name, config.topics.partitions, 1, topic_configs={"cleanup.policy": "compact"})
                    for name in settings.changelog_topics if name not in existing]
        # Slack feedback: compacted, one partition (like silences); created here so an opening
        # delivered before the watcher starts cannot auto-create it with delete retention.
        if config.topics.feedback not in existing:
            missing.append(NewTopic(config.topics.feedback, 1, 1, topic_configs={"cleanup.policy": "compact"}))
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker starting at the same moment created them: same names, same config
        internal = [settings.events_topic, settings.partials_topic]
        for desc in admin.describe_topics([t for t in internal if t in existing]):
            if len(desc["partitions"]) != wanted[desc["name"]]:
                raise TopicError(
                    f"topic {desc['name']} has {len(desc['partitions'])} partitions, "
                    f"but topics.partitions is {wanted[desc['name']]}"
                )
        return [t.name for t in missing]
    finally:
        admin.close()
