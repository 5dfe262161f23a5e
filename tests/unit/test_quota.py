"""The quota guard's rules (issue 19): priorities, the reserve line, the UTC day."""

from datetime import datetime, timezone

import pytest

from broker.platform.errors import InvalidRequest
from broker.store.quota import RateLimit, next_utc_midnight, priority, reserve_reached

NOON = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(("headers", "expected"), [
    (None, "interactive"), ({}, "interactive"), ({"X-Broker-Priority": "background"}, "background"),
    ({"x-broker-priority": " Interactive "}, "interactive")])
def test_the_priority_header_defaults_to_interactive(headers, expected):
    assert priority(headers) == expected


def test_an_unknown_priority_is_refused_without_echo():
    with pytest.raises(InvalidRequest) as refused:
        priority({"X-Broker-Priority": "urgent<script>"})
    assert refused.value.code == "invalid_priority" and "urgent" not in refused.value.message


def test_the_next_utc_midnight():
    assert next_utc_midnight(NOON) == datetime(2026, 3, 5, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(("remaining", "percent", "reached"), [
    (200, 20, True), (201, 20, False), (0, 20, True), (200, 0, False), (999, 100, True)])
def test_the_reserve_is_reached_at_or_below_its_share_of_the_limit(remaining, percent, reached):
    assert reserve_reached(RateLimit(1000, remaining, int(NOON) - 60), percent, NOON) is reached


def test_yesterdays_figure_does_not_hold_background_work_today():
    yesterday = RateLimit(1000, 10, int(NOON) - 86400)
    assert not reserve_reached(yesterday, 20, NOON)
    assert not reserve_reached(None, 20, NOON) and not reserve_reached(RateLimit(None, 5, int(NOON)), 20, NOON)
