"""Events between services: contracts, the stream topology, the outbox and its relay, idempotent
consumers with retries and dead letters, replicas, NATS permissions and the AsyncAPI document.

Services import what they need from the modules: ``contracts`` (the published language), ``tables``
(outbox and inbox in their schema), ``outbox`` (``Outbox.add``), ``consumer`` (``EventHandlers``).
"""
