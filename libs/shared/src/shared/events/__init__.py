"""Events between services: contracts, topology, outbox and relay, consumers, dead letters.

Services import what they need from the modules: ``contracts`` (the published language), ``tables``
(outbox and inbox in their schema), ``outbox`` (``Outbox.add``), ``consumer`` (``EventHandlers``),
``replicas`` (``upsert_if_newer``); ``permissions`` is generated from ``streams`` (and so is the AsyncAPI
document, by ``devtools.asyncapi``).
"""
