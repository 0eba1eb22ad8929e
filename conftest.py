"""Every test gets the shared fixtures: real Postgres, real NATS, token signing."""

pytest_plugins = ["shared.testing.plugin"]
