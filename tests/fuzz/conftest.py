"""`make fuzz` only (FUZZ=1): schemathesis against the running local stack. Not collected by
`make test`, since it takes about two minutes of its own."""

import os

collect_ignore = [] if os.environ.get("FUZZ") == "1" else ["test_contract_fuzz.py"]
