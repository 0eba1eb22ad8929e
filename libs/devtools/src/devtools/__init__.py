"""Relay Shop's development tooling: only in the dev environment, never in a service image.

``devtools.stack`` runs the local system (``just up``), ``devtools.testing`` is the pytest plugin
with real Postgres and NATS, ``devtools.asyncapi`` writes and checks ``docs/asyncapi.json``.
"""
