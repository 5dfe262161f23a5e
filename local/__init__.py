"""The Docker-free local stack behind `make local` (`python -m local`).

aws.py (moto server + the template's resources), gateway.py (HTTP API with SigV4 in front
of the real handlers; lambda_events.py builds its events), schedule.py (schedules and SQS
event sources), fake_insightly/ (the provider's logic: OAuth server, accounts and keys, CRM
records, quota, fault switches), standin.py (that provider over HTTP; standin_control.py
its /_control switches), demo_app.py (a demo SaaS; demo_pages.py its page,
demo_webhooks.py its webhook receiver), server.py (the run-an-HTTP-server-in-a-thread
helper the stand-in, the demo app and the gateway share) and __main__.py (the orchestrator).

    from local import start_local_stack
    local = start_local_stack()      # free ports; local.gateway_url, local.demo_url, ...
    local.stop()
"""


def __getattr__(name):  # lazy: importing a submodule must not start importing all of them
    if name in ("start_local_stack", "LocalStack"):
        from local import __main__ as orchestrator

        return getattr(orchestrator, name)
    raise AttributeError(name)
