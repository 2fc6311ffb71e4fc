"""The typed configuration: defaults, durations, cross-checks with dotted paths, targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kpi_core import config
from kpi_core.config import Target, format_duration, parse_duration
from kpi_core.errors import ConfigError

MEASURES = {"clicks": {"event": "click"}, "impressions": {"event": "impression"}}
KPIS = {"ctr": {"ratio": ["clicks", "impressions"], "unit": "percent"}}


def raw(**overrides: Any) -> dict[str, Any]:
    return {"measures": MEASURES, "kpis": KPIS, **overrides}


def problems(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        config.from_dict(doc)
    return info.value.problems


# -- the built-in default ------------------------------------------------------------


def test_default_config_loads_with_its_documented_values() -> None:
    cfg = config.load()
    assert [(w.size, w.step, w.name) for w in cfg.windows] == [(60_000, 60_000, "1m"), (3_600_000, 3_600_000, "1h")]
    assert cfg.allowed_lateness == 10_000
    assert cfg.session_timeout == 1_800_000
    assert cfg.idle_timeout == 10_000
    assert cfg.breakdowns == [["campaign"], ["channel"], ["device"], []]
    assert cfg.targets == {}
    assert cfg.dimensions == ["campaign", "channel", "device"]
    # a few catalogue entries, exactly as the catalogue defines them
    kpis = cfg.kpis
    assert (kpis["ctr"].ratio, kpis["ctr"].direction) == (("clicks", "impressions"), "higher")
    assert (kpis["cpc"].ratio, kpis["cpc"].direction) == (("click_cost", "clicks"), "lower")
    assert (kpis["cpm"].ratio, kpis["cpm"].scale) == (("cost", "impressions"), 1000)
    assert (kpis["bounce_rate"].ratio, kpis["bounce_rate"].direction) == (("bounced_sessions", "sessions"), "lower")
    assert (kpis["roi"].difference, kpis["roi"].over) == (("revenue", "cost"), "cost")
    assert kpis["sales_growth"].change == "revenue"
    assert cfg.measures["cost"].add == ["click_cost", "spend"]
    assert cfg.measures["unique_visitors"].distinct == "visitor_id"


def test_default_file_and_explicit_path_give_the_same_config() -> None:
    path = Path(config.__file__).with_name("default.yaml")
    assert config.load(path) == config.load()


def test_load_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_load_of_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("windows: [\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert "is not valid YAML" in str(info.value)


def test_a_non_mapping_document_is_rejected() -> None:
    assert problems(["windows"]) == [("", "the config must be a YAML mapping")]


def test_omitted_windows_default_to_one_minute() -> None:
    cfg = config.from_dict(raw())
    assert [(w.size, w.step, w.name) for w in cfg.windows] == [(60_000, 60_000, "1m")]


# -- durations -----------------------------------------------------------------------

DURATIONS = [
    # milliseconds: "ms" must not be read as minutes
    ("500ms", 500),
    # seconds
    ("30s", 30_000),
    # minutes
    ("1m", 60_000),
    # hours
    ("1h", 3_600_000),
    # days
    ("1d", 86_400_000),
    # weeks
    ("2w", 1_209_600_000),
    # surrounding and inner spaces are allowed
    (" 15 m ", 900_000),
    # a bare number is seconds
    (45, 45_000),
]


@pytest.mark.parametrize(("text", "ms"), DURATIONS)
def test_parse_duration(text: Any, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["5 minutes", "1.5m", "-1s", "", "m", True, -3])
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)


FORMATS = [
    # an exact number of minutes
    (60_000, "1m"),
    # 90 seconds is not whole minutes
    (90_000, "90s"),
    # a day
    (86_400_000, "1d"),
    # below a second
    (250, "250ms"),
]


@pytest.mark.parametrize(("ms", "text"), FORMATS)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_durations_parse_in_the_config() -> None:
    cfg = config.from_dict(
        raw(
            windows=[{"size": "1m", "step": "30s"}, {"size": "1h", "name": "hourly"}, {"size": "1d"}],
            allowed_lateness="500ms",
            session_timeout="1h",
            idle_timeout="30s",
        )
    )
    assert [(w.size, w.step, w.name) for w in cfg.windows] == [
        (60_000, 30_000, "1m"),
        (3_600_000, 3_600_000, "hourly"),
        (86_400_000, 86_400_000, "1d"),
    ]
    assert (cfg.allowed_lateness, cfg.session_timeout, cfg.idle_timeout) == (500, 3_600_000, 30_000)


def test_bad_window_duration_names_its_path() -> None:
    assert problems(raw(windows=[{"size": "5 minutes"}])) == [
        ("windows[0].size", "expected a duration such as 30s, 1m, 1h or 1d, got '5 minutes'")
    ]


def test_bad_duration_in_the_second_window_names_index_1() -> None:
    assert [p for p, _ in problems(raw(windows=[{"size": "1m"}, {"size": "1m", "step": "soon"}]))] == ["windows[1].step"]


def test_bad_top_level_duration_names_the_field() -> None:
    assert [p for p, _ in problems(raw(allowed_lateness="later"))] == ["allowed_lateness"]


@pytest.mark.parametrize(
    ("window", "message"),
    [
        # 45s does not divide 1m
        ({"size": "1m", "step": "45s"}, "step must divide size"),
        # a step longer than the window
        ({"size": "1m", "step": "2m"}, "step must divide size"),
        # a zero size
        ({"size": "0s"}, "size must be positive"),
    ],
)
def test_window_shape_errors(window: dict[str, Any], message: str) -> None:
    assert problems(raw(windows=[window])) == [("windows[0]", message)]


def test_duplicate_window_names_are_rejected() -> None:
    assert problems(raw(windows=[{"size": "1m"}, {"size": 60}])) == [("windows", "window names must be unique")]


# -- cross-checks ---------------------------------------------------------------------


def test_unknown_measure_in_a_kpi_names_its_ratio_index() -> None:
    doc = raw(kpis={"ctr": {"ratio": ["clicks", "impresions"]}})
    assert problems(doc) == [("kpis.ctr.ratio[1]", "unknown measure 'impresions'; expected one of clicks, impressions")]


def test_unknown_numerator_names_index_0() -> None:
    assert [p for p, _ in problems(raw(kpis={"ctr": {"ratio": ["klicks", "impressions"]}}))] == ["kpis.ctr.ratio[0]"]


def test_typo_in_a_target_names_it_and_suggests_the_close_match() -> None:
    assert problems(raw(targets={"crt": {"value": "2%"}})) == [("targets.crt", "unknown KPI 'crt' (did you mean 'ctr'?)")]


def test_unrelated_target_name_gets_no_suggestion() -> None:
    assert problems(raw(targets={"zzzzzz": {"value": 1}})) == [("targets.zzzzzz", "unknown KPI 'zzzzzz'")]


def test_every_cross_check_problem_is_reported_at_once() -> None:
    doc = {
        "measures": {"clicks": {"event": "clik"}, "rev": {"event": "click", "sum": "revenue"}},
        "breakdowns": [["colour"]],
        "kpis": {"ctr": {"ratio": ["clicks", "nope"]}},
        "targets": {"ctrr": {"value": 1}},
    }
    assert [p for p, _ in problems(doc)] == [
        "measures.clicks.event",
        "measures.rev.sum",
        "kpis.ctr.ratio[1]",
        "breakdowns[0][0]",
        "targets.ctrr",
    ]


def test_filter_on_an_attribute_the_event_does_not_carry_is_rejected() -> None:
    doc = raw(measures={**MEASURES, "x": {"event": "click", "where": {"colour": "red"}}})
    assert problems(doc) == [
        (
            "measures.x.where.colour",
            "no click event carries the attribute 'colour'; expected a field of click events or one of attributes: "
            "device, country, region, landing_page, browser, os, utm_source, utm_medium, utm_campaign",
        )
    ]


def test_a_declared_attribute_may_be_filtered_on_and_broken_down_by() -> None:
    doc = raw(
        attributes=["colour"],
        breakdowns=[["colour"], ["campaign", "colour"]],
        measures={**MEASURES, "red_clicks": {"event": "click", "where": {"colour": "red"}}},
    )
    cfg = config.from_dict(doc)
    assert cfg.dimensions == ["colour", "campaign"]


def test_breakdown_on_an_undeclared_attribute_names_its_position() -> None:
    assert problems(raw(breakdowns=[["campaign"], ["campaign", "colour"]])) == [
        ("breakdowns[1][1]", "no event type carries the attribute 'colour'; declare it under attributes:")
    ]


MEASURE_ERRORS = [
    # add: refers to a measure that does not exist
    ({"cost": {"add": ["clicks", "spend"]}}, "measures.cost.add[1]"),
    # add: refers to another derived measure
    ({"a": {"add": ["clicks"]}, "b": {"add": ["a"]}}, "measures.b.add[0]"),
    # add: together with event:
    ({"cost": {"add": ["clicks"], "event": "click"}}, "measures.cost"),
    # neither event: nor add:
    ({"x": {}}, "measures.x"),
    # both sum and distinct
    ({"x": {"event": "pageview", "sum": "page", "distinct": "page"}}, "measures.x"),
    # a distinct count of a field clicks do not carry
    ({"x": {"event": "click", "distinct": "visitor_id"}}, "measures.x.distinct"),
    # a sum of a field that is not numeric
    ({"x": {"event": "order", "sum": "order_id"}}, "measures.x.sum"),
]


@pytest.mark.parametrize(("extra", "path"), MEASURE_ERRORS)
def test_measure_errors_name_their_path(extra: dict[str, Any], path: str) -> None:
    assert [p for p, _ in problems(raw(measures={**MEASURES, **extra}))] == [path]


KPI_ERRORS = [
    # difference without over
    ({"roi": {"difference": ["clicks", "impressions"]}}, "kpis.roi"),
    # over names an unknown measure
    ({"roi": {"difference": ["clicks", "impressions"], "over": "cost"}}, "kpis.roi.over"),
    # two kinds at once
    ({"x": {"ratio": ["clicks", "impressions"], "measure": "clicks"}}, "kpis.x"),
    # no kind at all
    ({"x": {"unit": "count"}}, "kpis.x"),
    # change of an unknown measure
    ({"g": {"change": "revenue"}}, "kpis.g.change"),
    # measure: an unknown measure
    ({"m": {"measure": "revenue"}}, "kpis.m.measure"),
    # a format that Python cannot apply
    ({"m": {"measure": "clicks", "format": ".2q"}}, "kpis.m"),
    # an unknown direction
    ({"m": {"measure": "clicks", "direction": "up"}}, "kpis.m.direction"),
]


@pytest.mark.parametrize(("kpis", "path"), KPI_ERRORS)
def test_kpi_errors_name_their_path(kpis: dict[str, Any], path: str) -> None:
    assert [p for p, _ in problems(raw(kpis=kpis))] == [path]


def test_unknown_top_level_key_is_rejected() -> None:
    assert problems(raw(windowz=[])) == [("windowz", "Extra inputs are not permitted")]


def test_where_shorthand_means_eq() -> None:
    cfg = config.from_dict(raw(measures={**MEASURES, "checkout": {"event": "pageview", "where": {"page": "/checkout"}}}))
    f = cfg.measures["checkout"].where["page"]
    assert (f.eq, f.in_, f.prefix) == ("/checkout", None, None)


def test_a_filter_needs_exactly_one_condition() -> None:
    doc = raw(measures={**MEASURES, "x": {"event": "pageview", "where": {"page": {"eq": "/a", "prefix": "/b"}}}})
    assert problems(doc) == [("measures.x.where.page", "give exactly one of eq, in, prefix")]


def test_enabled_kpis_leave_out_disabled_ones() -> None:
    cfg = config.from_dict(raw(kpis={**KPIS, "cpm": {"ratio": ["impressions", "clicks"], "enabled": False}}))
    assert list(cfg.enabled_kpis()) == ["ctr"]


# -- targets ------------------------------------------------------------------------------

TARGET_VALUES = [
    # a percent string is a fraction
    ("2%", 0.02),
    # spaces around a percent are fine
    (" 12.5 % ", 0.125),
    # a plain number stays as it is
    (0.3, 0.3),
    # a numeric string is still a number
    ("4", 4.0),
]


@pytest.mark.parametrize(("given", "value"), TARGET_VALUES)
def test_target_value_parses(given: Any, value: float) -> None:
    assert config.from_dict(raw(targets={"ctr": {"value": given}})).targets["ctr"].value == value


def test_min_denominator_defaults_to_zero() -> None:
    cfg = config.from_dict(raw(targets={"ctr": {"value": "2%", "min_denominator": 1000}}))
    assert (cfg.targets["ctr"].min_denominator, Target().min_denominator) == (1000.0, 0.0)


def test_target_override_percent_parses() -> None:
    cfg = config.from_dict(raw(targets={"ctr": {"value": "2%", "overrides": {"campaign": {"brand-*": "5%"}}}}))
    assert cfg.targets["ctr"].value == 0.02
    assert cfg.targets["ctr"].for_group({"campaign": "brand-new"}) == 0.05


def test_an_override_replaces_only_the_fields_it_names() -> None:
    target = config.from_dict(
        raw(targets={"ctr": {"value": "2%", "min_denominator": 100, "overrides": {"campaign": {"brand-*": {"min_denominator": 10}}}}})
    ).targets["ctr"]
    rule = target.rule_for({"campaign": "brand-x"})
    assert (rule.value, rule.min_denominator) == (0.02, 10.0)
    assert target.rule_for({"campaign": "other"}) is target


def test_nested_overrides_are_rejected() -> None:
    doc = raw(targets={"ctr": {"value": 0.02, "overrides": {"campaign": {"brand-*": {"overrides": {"channel": {"email": 0.1}}}}}}})
    assert problems(doc) == [("targets.ctr", "overrides.campaign.brand-*: overrides do not nest")]


def test_a_bad_override_field_names_the_override_path() -> None:
    doc = raw(targets={"ctr": {"value": 0.02, "overrides": {"campaign": {"brand-*": {"value": "lots"}}}}})
    with pytest.raises(ConfigError) as info:
        config.from_dict(doc)
    assert str(info.value) == (
        "targets.ctr: overrides.campaign.brand-*.value: Input should be a valid number, unable to parse string as a number"
    )


TARGET = Target(value=0.02, overrides={"campaign": {"brand-*": 0.05, "brand-exact": 0.07, "*-sale": 0.03}})

FOR_GROUP = [
    # an exact match beats a glob that also matches (the glob is listed first)
    ({"campaign": "brand-exact"}, 0.07),
    # a glob match
    ({"campaign": "brand-new"}, 0.05),
    # another glob
    ({"campaign": "spring-sale"}, 0.03),
    # globs are case-sensitive
    ({"campaign": "Brand-new"}, 0.02),
    # no match: the default
    ({"campaign": "spring"}, 0.02),
    # the dimension is not in the group at all: the default
    ({"channel": "brand-exact"}, 0.02),
    # the global total has no dimensions: the default
    ({}, 0.02),
]


@pytest.mark.parametrize(("group", "value"), FOR_GROUP)
def test_target_for_group(group: dict[str, str], value: float) -> None:
    assert TARGET.for_group(group) == value


def test_target_without_default_and_no_match_is_none() -> None:
    assert Target(overrides={"campaign": {"a": 1.0}}).for_group({"campaign": "b"}) is None


def test_an_exact_match_in_any_dimension_beats_a_glob() -> None:
    target = Target(value=0.01, overrides={"campaign": {"brand-*": 0.05}, "channel": {"email": 0.03}})
    assert target.for_group({"campaign": "brand-x", "channel": "email"}) == 0.03


def test_config_is_frozen() -> None:
    cfg = config.load()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.allowed_lateness = 1  # type: ignore[misc]


def test_config_model_rejects_missing_measures() -> None:
    assert [p for p, _ in problems({"kpis": {}})] == ["measures"]


def test_slack_controls_and_digests_are_checked_naming_the_field() -> None:
    base = {"measures": {"clicks": {"event": "click"}}, "kpis": {"n": {"measure": "clicks"}}}
    bad = {**base, "alerting": {"slack": {"allowed_users": ["@anna"]},
                                "digests": [{"at": "25:00"}, {"window": "1d", "breakdown": ["device"], "kpis": ["ctr"], "timezone": "Mars/Base"}]}}
    with pytest.raises(ConfigError) as exc:
        config.from_dict(bad)
    paths = sorted(p for p, _ in exc.value.problems)
    assert paths == ["alerting.digests[0].at", "alerting.digests[1].timezone", "alerting.slack.allowed_users"], exc.value.problems
    with pytest.raises(ConfigError) as exc:
        config.from_dict({**base, "alerting": {"digests": [{"window": "1d", "breakdown": ["device"], "kpis": ["ctr"]}]}})
    assert sorted(p for p, _ in exc.value.problems) == ["alerting.digests[0].breakdown", "alerting.digests[0].kpis[0]", "alerting.digests[0].window"]


def test_a_digest_window_must_tumble_and_fit_the_zones_days() -> None:
    base = {"measures": {"clicks": {"event": "click"}}, "kpis": {"n": {"measure": "clicks"}}}
    with pytest.raises(ConfigError) as exc:
        config.from_dict({**base, "windows": [{"size": "1h", "step": "15m", "name": "hop"}, {"size": "1h"}, {"size": "1d"}],
                          "alerting": {"digests": [{"window": "hop"}, {"window": "1d", "timezone": "Europe/Berlin"},
                                                   {"window": "1h", "timezone": "Asia/Kolkata"}]}})
    problems = dict(exc.value.problems)
    assert list(problems) == ["alerting.digests[0].window", "alerting.digests[1].window", "alerting.digests[2].window"]
    assert "hops" in problems["alerting.digests[0].window"] and "Europe/Berlin" in problems["alerting.digests[1].window"]
    assert "5:30" in problems["alerting.digests[2].window"]
    ok = config.from_dict({**base, "windows": [{"size": "15m"}], "alerting": {"digests": [{"timezone": "Asia/Kolkata"}]}})
    assert ok.alerting.digests[0].at == "09:00"
