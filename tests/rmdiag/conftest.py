"""The fixed hypothesis profile of the hostile-file fuzz (tests/rmdiag/test_fuzz.py): the same
examples on every run, no example database, no deadline (two shared cores stall at times); and
the learnable world the reward-model tests fit on."""

import pytest
from hypothesis import HealthCheck, settings

from rmdiag.data import Interactions, load
from rmdiag.rewards import last_event_split
from rmdiag.simulate import SimulationConfig, World
from rmdiag.split import leave_last_out

settings.register_profile(
    "fuzz",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def world_split() -> tuple[Interactions, Interactions, Interactions]:
    """A learnable world: (fit part, tuning part, held-out test)."""
    config = SimulationConfig.preset("learnable", n_users=400, n_items=150, mean_events=25)
    split = leave_last_out(load(World(config).generate()))
    fit, tune = last_event_split(split.train)
    return fit, tune, split.test
