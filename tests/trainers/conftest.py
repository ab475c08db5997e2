"""Fixtures for the trainers tests: a tiny known-reward world and tiny policies (pure trainers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from trainers import ModelConfig, SequentialRecommender
from trainers.data import TensorData
from trainers.testing import ToyWorld, ToyWorldConfig


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tests run beside other jobs on two cores: one thread avoids oversubscription stalls.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def world() -> ToyWorld:
    return ToyWorld(ToyWorldConfig(seed=0))


@pytest.fixture(scope="session")
def world_data(world: ToyWorld) -> TensorData:
    return world.generate()


@pytest.fixture
def make_model() -> Callable[..., SequentialRecommender]:
    def make(n_items: int = 60, seed: int = 0, **overrides: object) -> SequentialRecommender:
        torch.manual_seed(seed)
        settings: dict[str, object] = {
            "hidden": 32, "n_blocks": 1, "n_heads": 2, "max_len": 20, "dropout": 0.0
        }
        settings.update(overrides)
        return SequentialRecommender(ModelConfig(n_items=n_items, **settings))  # type: ignore[arg-type]

    return make
