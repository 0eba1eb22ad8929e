"""Local traces: the collector ``just up`` runs, the store it writes, and ``just traces`` / ``just trace``."""
