"""One router module per resource: cases, models, and the open health/readiness/metrics endpoints."""
