"""FlowStore: single-use connect sessions, OAuth states and pending completions in the flow table,
and the scheduled run's lease.

Built from parts, one responsibility each, over one table (flow_table.py: items keyed by a
hash of the random value, expiry checked in the consuming delete): connect sessions and
OAuth states (sessions.py), pending completions (completions.py) and the scheduled run's
lease (run_lease.py). The parts' names stay importable from here.
"""

from __future__ import annotations

from broker.connect.completions import PendingCompletions
from broker.connect.run_lease import SCHEDULED_RUN_KEY, ScheduledRunLease
from broker.connect.sessions import AuthState, ConnectSession, ConnectSessions, OAuthStates

__all__ = ["SCHEDULED_RUN_KEY", "AuthState", "ConnectSession", "FlowStore"]


class FlowStore(ConnectSessions, OAuthStates, PendingCompletions, ScheduledRunLease):
    """The flow table as the connect flows and the scheduled run use it: `FlowStore(dynamodb, table)`."""
