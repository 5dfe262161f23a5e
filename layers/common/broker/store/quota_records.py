"""QuotaRecords: the reads and writes of quota records (quota.py): a connection's own item,
or its group's `#quota:<group>` item in the connections table."""

from __future__ import annotations

import contextlib
from typing import Any

from broker.store.items import Connection, key, plain
from broker.store.quota import ALERT_RANK, QuotaRecord, RateLimit, group_key
from broker.store.table import ConnectionTable, StaleWrite

# Connections whose quota group this container has seen, so the proxy reads the connection
# and its group's record in one BatchGetItem (bounded: a container serves many connections).
GROUP_HINTS = 10_000


class QuotaRecords(ConnectionTable):
    def __init__(self, dynamodb, table: str, *, shards: int):
        super().__init__(dynamodb, table, shards=shards)
        self._group_hints: dict[str, str] = {}  # connection_id -> quota group, as last read

    def get_with_quota(self, connection_id: str) -> tuple[Connection | None, QuotaRecord | None]:
        """The connection and its quota record. One call: a GetItem for a connection without a
        group; a BatchGetItem of both items once this container knows the connection's group.
        The first read of a grouped connection in a container, or one whose group changed since,
        costs a second read (its group's record)."""
        group = self._group_hints.get(connection_id)
        if group is None:
            conn = self.get(connection_id)
            if conn is None:
                return None, None
        else:
            items = self._batch_get([connection_id, group_key(group)], consistent=True)
            if connection_id not in items:
                self._group_hints.pop(connection_id, None)
                return None, None
            conn = Connection.from_item(items[connection_id])
            if conn.quota_group == group:
                return conn, QuotaRecord.from_attributes(group, plain(items.get(group_key(group))))
        if conn.quota_group is None:
            self._group_hints.pop(connection_id, None)
            return conn, QuotaRecord.of_connection(conn)
        if len(self._group_hints) >= GROUP_HINTS:
            self._group_hints.pop(next(iter(self._group_hints)))
        self._group_hints[connection_id] = conn.quota_group
        return conn, self.quota_record(conn.quota_group)

    def quota_record(self, group: str) -> QuotaRecord:
        answer = self._db.get_item(TableName=self._table, Key=key(group_key(group)), ConsistentRead=True)
        return QuotaRecord.from_attributes(group, plain(answer.get("Item")))

    def quota_records(self, groups: list[str]) -> dict[str, QuotaRecord]:
        """The records of up to 100 groups (a listing page's), in one BatchGetItem."""
        if not groups:
            return {}
        items = self._batch_get([group_key(g) for g in groups])
        return {g: QuotaRecord.from_attributes(g, plain(items.get(group_key(g)))) for g in groups}

    def record_quota(self, record: QuotaRecord, *, sets: dict[str, Any], remove: list[str],
                     observed: RateLimit | None, alert_event: bool) -> bool:
        """What an Insightly answer showed of the daily quota, on the record it belongs to: no
        version bump, nothing about credentials, never a write that recreates a deleted
        connection. Conditional, so concurrent writers of one record never step back: an
        observation older and higher than the stored one, the end of a throttle someone else
        started, or an alert already sent, writes nothing (False)."""
        conditions = [] if record.group is not None else ["attribute_exists(connection_id)"]
        names: dict[str, str] = {"#q_rl": "rate_limit", "#q_at": "observed_at", "#q_rem": "remaining",
                                 "#q_tu": "throttled_until", "#q_al": "quota_alert"}
        values: dict[str, Any] = {}
        probe_answer = "throttled_until" in remove and record.throttled_until is not None
        if observed is not None and not probe_answer:  # the probe's answer is the newest there is
            fresher = "#q_rl.#q_at < :q_at" if observed.remaining is not None else "#q_rl.#q_at <= :q_at"
            lower = " OR #q_rl.#q_rem >= :q_rem" if observed.remaining is not None else ""
            conditions.append(f"attribute_not_exists(#q_rl) OR {fresher}{lower}")
            values[":q_at"] = observed.observed_at
            if observed.remaining is not None:
                values[":q_rem"] = observed.remaining
        if "throttled_until" in remove:
            if record.throttled_until is None:
                conditions.append("attribute_not_exists(#q_tu)")
            else:
                conditions.append("attribute_not_exists(#q_tu) OR #q_tu = :q_tu")
                values[":q_tu"] = record.throttled_until
        if alert_event:  # QuotaLow / QuotaExhausted once per record: the writer that moves the alert up
            ranked = [a for a, rank in ALERT_RANK.items() if a and rank >= ALERT_RANK[sets["quota_alert"]]]
            values.update({f":q_al{n}": alert for n, alert in enumerate(ranked)})
            conditions.append(f"attribute_not_exists(#q_al) OR NOT #q_al IN "
                              f"({', '.join(f':q_al{n}' for n in range(len(ranked)))})")
        if record.group is not None:
            sets = {**sets, "quota_group": record.group}
        # _update brackets the whole; DynamoDB refuses brackets around a lone clause.
        condition = " AND ".join(f"({c})" if len(conditions) > 1 and " OR " in c else c for c in conditions)
        try:
            self._update(record.key, sets=sets, remove=remove, condition=condition or None, extra_values=values,
                         extra_names={k: v for k, v in names.items() if k in condition})
        except StaleWrite:
            return False
        return True

    def mark_used(self, connection_id: str, *, now: int) -> None:
        """A grouped connection's credential worked (its own item: the quota is on the group's)."""
        with contextlib.suppress(StaleWrite):
            self._update(connection_id, sets={"last_used_at": now}, condition="attribute_exists(connection_id)")

    def claim_probe(self, record: QuotaRecord, *, until: int) -> bool:
        """After a quota throttle passed, one caller may call Insightly to see if the quota is
        back: the one whose write moves throttled_until on from the value everyone read."""
        try:
            self._update(record.key, sets={"throttled_until": until},
                         condition="throttled_until = :seen",
                         extra_values={":seen": record.throttled_until})
        except StaleWrite:
            return False
        return True
