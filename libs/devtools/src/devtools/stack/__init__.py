"""What ``just up`` runs: real Postgres and NATS servers and the service processes, on one machine."""
