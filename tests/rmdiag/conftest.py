"""The fixed hypothesis profile of the hostile-file fuzz (tests/rmdiag/test_fuzz.py): the same
examples on every run, no example database, no deadline (two shared cores stall at times)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
