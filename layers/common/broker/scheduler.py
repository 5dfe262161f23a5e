"""The scheduled refresh: walk the due-time index shard by shard and refresh what is due."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .connections import ConnectionStore
from .observability import logger
from .tokens import TokenService

# Stop taking new work with this much time left, so the run ends cleanly before its timeout.
RESERVE_SECONDS = 30


def run_due_refreshes(store: ConnectionStore, tokens: TokenService, *, shards: int, now: int,
                      seconds_left: Callable[[], float]) -> dict[str, int]:
    outcomes: Counter[str] = Counter()
    for shard in range(shards):
        for connection_id in store.due_connection_ids(shard, now=now):
            if seconds_left() < RESERVE_SECONDS:
                # Still due: the next run picks it up.
                outcomes["deferred"] += 1
                logger.warning("scheduled run out of time", extra={"outcomes": dict(outcomes)})
                return dict(outcomes)
            outcomes[tokens.refresh_if_due(connection_id)] += 1
    logger.info("scheduled run finished", extra={"outcomes": dict(outcomes)})
    return dict(outcomes)
