"""An ensemble of reward models: bootstrap resamples of users, distinct seeds, mixed kinds.

Member m is of kind ``kinds[m % len(kinds)]``, seeded ``seed + m``, and fitted with a
multinomial bootstrap of users (each user's events weighted by how often the user was drawn), so
members disagree where the data is thin. It satisfies ``trainers.protocols.EnsembleRewardFn``:
``members(context, items) -> [M, B, K]``, ``__call__`` is their mean, ``spread`` their standard
deviation. With ``n_jobs > 1`` members are fitted in "spawn" worker processes, so a script
that calls ``fit`` must guard its entry point with ``if __name__ == "__main__":``; members that
train on a cluster of their own (LightGBM with ``dask_scheduler``) are fitted in this process,
one after another, meanwhile. Under torchrun (``rmdiag.distributed``) every rank fits all
members in-process (the sequence members data-parallel across the ranks, the LightGBM ones
identically on each).
"""

from __future__ import annotations

import inspect
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Self

import numpy as np
import torch

from rmdiag import distributed
from rmdiag.data import Interactions
from rmdiag.rewards.base import RewardModel
from rmdiag.sequences import event_sequences
from trainers.protocols import Context


def model_class(kind: str) -> type[RewardModel]:
    """The class registered under ``kind`` in ``rmdiag.rewards.REWARD_MODELS``."""
    from rmdiag.rewards import REWARD_MODELS  # registry lives in the package's __init__

    if kind not in REWARD_MODELS:
        raise ValueError(f"unknown reward model kind {kind!r}; known: {sorted(REWARD_MODELS)}")
    return REWARD_MODELS[kind]


def make_reward_model(kind: str, **params: Any) -> RewardModel:
    """A reward model of a registered kind (``REWARD_MODELS``) with the given parameters."""
    return model_class(kind)(**params)


def _fit_member(
    model: RewardModel,
    train: Interactions,
    valid: Interactions | None,
    user_weight: np.ndarray,
    threads: int,
) -> RewardModel:
    """Fit one member (module level so worker processes can run it)."""
    torch.set_num_threads(threads)
    return model.fit(train, valid, user_weight=user_weight)


class RewardEnsemble(RewardModel):
    """M reward models fitted on bootstrap resamples of users with distinct seeds."""

    kind = "ensemble"

    def __init__(
        self,
        kinds: Sequence[str] = ("lightgbm", "sequence"),
        n_members: int = 5,
        bootstrap: bool = True,
        seed: int = 0,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        n_jobs: int = 1,
    ) -> None:
        self.kinds = tuple(kinds)
        self.n_members = n_members
        self.bootstrap = bootstrap
        self.seed = seed
        self.params = dict(params or {})
        self.n_jobs = n_jobs

    @property
    def member_kinds(self) -> list[str]:
        return [self.kinds[m % len(self.kinds)] for m in range(self.n_members)]

    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_weight: np.ndarray | None = None,
    ) -> Self:
        if self.n_members < 1 or not self.kinds:
            raise ValueError("an ensemble needs n_members >= 1 and at least one kind")
        rng = np.random.default_rng(self.seed)
        present = np.bincount(train.table.column("user").to_numpy(), minlength=train.n_users + 1)
        users = np.flatnonzero(present)
        models: list[RewardModel] = []
        weights: list[np.ndarray] = []
        for m, kind in enumerate(self.member_kinds):
            weight = (
                np.ones(train.n_users + 1) if user_weight is None else np.array(user_weight, float)
            )
            if self.bootstrap:
                draws = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users)))
                resample = np.zeros(train.n_users + 1)
                resample[users] = draws
                weight = weight * resample
            params = dict(self.params.get(kind, {}))
            if "seed" in inspect.signature(model_class(kind)).parameters:
                params["seed"] = self.seed + m
            models.append(make_reward_model(kind, **params))
            weights.append(weight)
        fitted: dict[int, RewardModel] = {}
        # A member that trains on a cluster (LightGBM through Dask) is fitted in this process,
        # one after another: the cluster is its parallelism, and a cluster started inside a pool
        # worker would add processes the pool does not count.
        on_cluster = [m for m, model in enumerate(models) if model.fits_on_cluster]
        pooled = [m for m, model in enumerate(models) if not model.fits_on_cluster]
        threads = torch.get_num_threads()
        # Under torchrun the members are fitted in this process, one after another: a worker
        # would inherit torchrun's RANK and WORLD_SIZE and join (or wait for) the process group,
        # and each sequence member trains data-parallel with the other ranks anyway.
        if self.n_jobs > 1 and len(pooled) > 1 and not distributed.active():
            # One member per process, one thread each: small models do not scale with threads,
            # and oversubscribed threads slow torch and LightGBM by an order of magnitude.
            # "spawn" because forking a process that already ran OpenMP can deadlock.
            context = multiprocessing.get_context("spawn")
            workers = min(self.n_jobs, len(pooled))
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    futures = {
                        m: pool.submit(_fit_member, models[m], train, valid, weights[m], 1)
                        for m in pooled
                    }
                    for m in on_cluster:  # while the pool fits the others
                        fitted[m] = _fit_member(models[m], train, valid, weights[m], threads)
                    for m, future in futures.items():
                        fitted[m] = future.result()
            except BrokenProcessPool as error:
                # A worker only dies this way when it is killed; on Linux that is the kernel's
                # out-of-memory killer. Say so, not a pool traceback.
                raise MemoryError(
                    f"a worker fitting an ensemble member ({workers} at once, "
                    f"{len(train):,} events) was killed, most likely by the system for lack of "
                    "memory; fit fewer members at once (--threads 1) or on fewer events"
                ) from error
        else:
            for m, model in enumerate(models):
                fitted[m] = _fit_member(model, train, valid, weights[m], threads)
        self.members_ = [fitted[m] for m in range(len(models))]
        self.history_len = max(member.history_len for member in self.members_)
        self.fitted_ = True
        return self

    def members(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        """Every member's predictions, FloatTensor[M, B, K]."""
        self._check_fitted()
        return torch.stack([member(context, items) for member in self.members_])

    def predict(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        return self.members(context, items).mean(0)

    def spread(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        """Standard deviation of the members' predictions, FloatTensor[B, K]."""
        return self.members(context, items).std(0, unbiased=False)

    def member_events(self, history: Interactions, events: Interactions) -> np.ndarray:
        """Each member's prediction of each event given its earlier history: float64 [M, N]."""
        self._check_fitted()
        seqs = event_sequences(history, events, max(self.history_len, 1))
        return np.stack(
            [
                member.predict_arrays(
                    seqs.users, seqs.history_items, seqs.history_rewards, seqs.targets
                )
                for member in self.members_
            ]
        )

    def predict_events(self, history: Interactions, events: Interactions) -> np.ndarray:
        return self.member_events(history, events).mean(0)
