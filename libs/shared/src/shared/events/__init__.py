"""Events between services: NATS connections now; contracts, outbox, relay and consumers build on it."""
