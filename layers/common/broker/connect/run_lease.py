"""ScheduledRunLease: one scheduled run at a time, through a conditional write on one item of
the flow table (the scheduler's role may put no other item there)."""

from __future__ import annotations

from botocore.exceptions import ClientError

from broker.connect.flow_table import FlowTable

# The scheduled run's lease; every other key is "<kind>#<sha256>", so it cannot collide.
SCHEDULED_RUN_KEY = "scheduler-run"


class ScheduledRunLease(FlowTable):
    def claim_scheduled_run(self, run_id: str, *, now: int, until: int) -> bool:
        """One scheduled run at a time: True when this run now holds the lease. Free when
        none is held, when the holder's has lapsed (`until` is the end of the holder's
        invocation: a run killed at its timeout frees it then), or when the holder is this
        same run_id (Lambda retries an asynchronous invocation with its request id)."""
        try:
            self._db.put_item(
                TableName=self._table,
                Item={"flow_key": {"S": SCHEDULED_RUN_KEY}, "run_id": {"S": run_id},
                      "expires_at": {"N": str(until)}},
                ConditionExpression="attribute_not_exists(flow_key) OR expires_at <= :now OR run_id = :me",
                ExpressionAttributeValues={":now": {"N": str(now)}, ":me": {"S": run_id}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def release_scheduled_run(self, run_id: str) -> None:
        try:
            self._db.delete_item(TableName=self._table, Key={"flow_key": {"S": SCHEDULED_RUN_KEY}},
                                 ConditionExpression="run_id = :me",
                                 ExpressionAttributeValues={":me": {"S": run_id}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise  # not ours any more (it lapsed and another run took it): leave it
