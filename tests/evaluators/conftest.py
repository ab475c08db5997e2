"""Hypothesis runs derandomized and without a database so CI is deterministic."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "evaluators",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
