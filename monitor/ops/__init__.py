"""Running it: Prometheus metrics and health, heartbeat, sd_notify, structured logs."""
