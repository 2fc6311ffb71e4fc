"""An incident's chart in its Slack thread: one PNG, through upload failures and a crash in doubt."""

from __future__ import annotations

import io
from dataclasses import replace

import matplotlib.image

from alerts import DeliveryState
from alerts.charts import HEIGHT, WIDTH
from tests.alerts.test_delivery import CHANNEL, bot, deliver_all
from tests.support.incidents import MAY_1_NOON, make_event
from tests.support.slack_api import SlackAPIServer

HISTORY = {"ctr": [[MAY_1_NOON - (5 - i) * 60_000, 0.04] for i in range(5)] + [[MAY_1_NOON, 0.0042]]}
OPENING = make_event(extra={"history": HISTORY})


def charts(slack_api: SlackAPIServer) -> list:
    (root,) = slack_api.channel_messages(CHANNEL)
    return slack_api.files(CHANNEL, thread_ts=root.ts)


def test_an_opening_uploads_one_png_into_its_thread(slack_api: SlackAPIServer) -> None:
    deliver_all(bot(slack_api), [OPENING])
    (chart,) = charts(slack_api)
    image = matplotlib.image.imread(io.BytesIO(chart.content), format="png")
    assert image.shape[:2] == (HEIGHT, WIDTH) and chart.name == "kpimon-1m_campaign_spring-sale_1.png"
    (root,) = slack_api.channel_messages(CHANNEL)
    assert [f["name"] for r in root.replies for f in r.files or []] == [chart.name]  # the thread shows it


def test_a_failed_upload_is_tried_again_with_a_new_upload_url(slack_api: SlackAPIServer) -> None:
    slack_api.fail_uploads(1)
    deliver_all(bot(slack_api), [OPENING])
    assert len(charts(slack_api)) == 1


def test_an_opening_in_doubt_after_a_crash_gets_no_second_chart(slack_api: SlackAPIServer) -> None:
    state = deliver_all(bot(slack_api), [OPENING])
    # The crash came after the chart, before the delivered state was stored: a new worker finds it pending.
    pending = replace(DeliveryState(), pending_id=OPENING.id)
    again = deliver_all(bot(slack_api), [OPENING], pending)
    assert len(charts(slack_api)) == 1 and len(slack_api.channel_messages(CHANNEL)) == 1
    assert (again.root_ts, again.incident) == (state.root_ts, OPENING.id)


def test_no_history_no_chart_and_a_refused_upload_still_delivers_the_alert(slack_api: SlackAPIServer) -> None:
    deliver_all(bot(slack_api), [make_event()])
    assert charts(slack_api) == []
    slack_api.fail_uploads(10)  # more than the retries
    deliver_all(bot(slack_api, max_retries=1), [make_event(thread="1m|campaign|autumn", group={"campaign": "autumn"},
                                                           extra={"history": HISTORY})])
    assert len(slack_api.channel_messages(CHANNEL)) == 2 and slack_api.files(CHANNEL) == []
