"""The ceiling: a plain consumer that reads every source message and orjson-decodes it.

Two clients: aiokafka (pure Python, what Faust and the router use) and confluent-kafka
(librdkafka, C); the ceiling is the faster of the two. Prints JSON: seconds from start to the first and the last message, and the rates. Run by
bench/run.py in its own process, with a fresh group id, against the preloaded topics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import orjson
from aiokafka import AIOKafkaConsumer


class Tally:
    """Messages decoded so far, their bytes, and when the first and the last arrived."""

    def __init__(self, expect: int, timeout: float) -> None:
        self.expect = expect
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout
        self.t_first: float | None = None
        self.n = self.decoded_bytes = 0

    def more(self) -> bool:
        return self.n < self.expect and time.monotonic() < self.deadline

    def take(self, values: list[bytes]) -> None:
        if self.t_first is None and values:
            self.t_first = time.monotonic()
        for value in values:
            orjson.loads(value)
            self.decoded_bytes += len(value)
            self.n += 1

    def rates(self) -> dict[str, float]:
        t_last = time.monotonic()
        t_first = self.t_first or t_last
        return {
            "messages": self.n,
            "complete": self.n >= self.expect,
            "start_to_first_s": round(t_first - self.t0, 3),
            "start_to_last_s": round(t_last - self.t0, 3),
            "rate_from_start": round(self.n / (t_last - self.t0)),
            "rate_from_first": round(self.n / max(t_last - t_first, 1e-9)),
            "mb_per_s": round(self.decoded_bytes / max(t_last - t_first, 1e-9) / 1e6, 1),
        }


async def consume(bootstrap: str, topics: list[str], group: str, expect: int, timeout: float) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=True,
    )
    tally = Tally(expect, timeout)
    await consumer.start()
    try:
        while tally.more():
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                tally.take([m.value for m in msgs])
        return tally.rates()
    finally:
        await consumer.stop()


def consume_confluent(bootstrap: str, topics: list[str], group: str, expect: int, timeout: float) -> dict[str, float]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": True})
    tally = Tally(expect, timeout)
    consumer.subscribe(topics)
    try:
        while tally.more():
            tally.take([m.value() for m in consumer.consume(num_messages=10_000, timeout=0.5) if not m.error()])
        return tally.rates()
    finally:
        consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--client", choices=("aiokafka", "confluent"), default="aiokafka")
    ap.add_argument("topics", nargs="+")
    args = ap.parse_args()
    if args.client == "confluent":
        out = consume_confluent(args.bootstrap, args.topics, args.group, args.expect, args.timeout)
    else:
        out = asyncio.run(consume(args.bootstrap, args.topics, args.group, args.expect, args.timeout))
    print(json.dumps({"client": args.client, **out}))


if __name__ == "__main__":
    main()
