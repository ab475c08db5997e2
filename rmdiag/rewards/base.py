"""The one interface every reward predictor shares (DESIGN.md, Protocols).

A reward model is estimator-shaped (scikit-learn): hyper-parameters in ``__init__``, ``fit(train,
valid)`` learns from an interaction log, and calling it on ``(context, items[B, K])`` returns the
predicted reward ``FloatTensor[B, K]`` -- which is exactly ``trainers.protocols.RewardFn``.
``predict_events(history, events)`` is the convenience the audit uses: one prediction per event,
given the events of ``history`` that precede it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Self

import numpy as np
import torch

from rmdiag.data import Interactions
from rmdiag.sequences import event_sequences
from rmdiag.split import position_from_end
from trainers.protocols import Context

# Rows per forward pass when predicting many events: bounds memory, not a tuning knob.
PREDICT_BATCH = 4096


def columns(log: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, reward) of a log as numpy arrays (the log's cached, read-only columns)."""
    return log.users, log.items, log.rewards


def event_weights(log: Interactions, user_weight: np.ndarray | None) -> np.ndarray:
    """Per-event weight from a per-user weight vector (index = encoded user id); ones if None."""
    users = log.users
    if user_weight is None:
        return np.ones(len(users), dtype=np.float64)
    user_weight = np.asarray(user_weight, dtype=np.float64)
    if user_weight.shape != (log.n_users + 1,):
        raise ValueError(
            f"user_weight must have shape (n_users + 1,) = ({log.n_users + 1},), "
            f"got {user_weight.shape}"
        )
    return user_weight[users]


def last_event_split(log: Interactions, min_events: int = 3) -> tuple[Interactions, Interactions]:
    """Hold out each user's last event (users with at least ``min_events`` events) for tuning.

    Returns (fit part, validation part); the validation part is empty when no user qualifies.
    """
    from_end, counts = position_from_end(log)
    held = (from_end == 0) & (counts >= min_events)
    return log.take(~held), log.take(held)


def pad_last(array: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` columns of a left-padded [N, L] array (zero-padded on the left)."""
    have = array.shape[1]
    if have >= length:
        return array[:, have - length :]
    out = np.zeros((array.shape[0], length), dtype=array.dtype)
    out[:, length - have :] = array
    return out


@contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run a block with ``n_threads`` torch threads (None: leave the setting alone)."""
    if n_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class RewardModel(ABC):
    """Base class: fit on an interaction log, predict rewards of candidates given a history.

    Subclasses implement ``fit`` and ``predict``. ``history_len`` is how many past events the
    model reads from a context (0 for models that only use statistics learned at fit time).
    """

    kind: ClassVar[str] = "reward_model"
    history_len: int = 0

    @property
    def fits_on_cluster(self) -> bool:
        """Whether ``fit`` hands its training to a cluster of its own (LightGBM through Dask):
        an ensemble then fits it in its own process, not in one of its worker processes."""
        return False

    @abstractmethod
    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_weight: np.ndarray | None = None,
    ) -> Self:
        """Learn from ``train``; ``valid`` (later events of the same users) tunes what needs it.

        ``user_weight[u]`` (index = encoded user id, length n_users + 1) weights each user's
        events; the ensemble uses it for bootstrap resamples of users.
        """

    @abstractmethod
    def predict(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        """Predicted reward of each candidate: (context, LongTensor[B, K]) -> FloatTensor[B, K]."""

    def __call__(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        return self.predict(context, items)

    def _refuse_empty(self, train: Interactions) -> None:
        if len(train) == 0:
            raise ValueError(f"cannot fit {type(self).__name__} on an empty log")

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train) first")

    def predict_events(self, history: Interactions, events: Interactions) -> np.ndarray:
        """One prediction per row of ``events``, given its user's earlier events in ``history``.

        Returns float64 [len(events)].
        """
        self._check_fitted()
        seqs = event_sequences(history, events, max(self.history_len, 1))
        return self.predict_arrays(
            seqs.users, seqs.history_items, seqs.history_rewards, seqs.targets
        )

    def predict_arrays(
        self,
        users: np.ndarray,
        history_items: np.ndarray,
        history_rewards: np.ndarray,
        targets: np.ndarray,
    ) -> np.ndarray:
        """Batched ``predict`` over numpy arrays of N events (one candidate each) -> float64 [N]."""
        self._check_fitted()
        out = np.empty(len(users), dtype=np.float64)
        for start in range(0, len(users), PREDICT_BATCH):
            rows = slice(start, start + PREDICT_BATCH)
            context = Context(
                torch.as_tensor(users[rows], dtype=torch.long),
                torch.as_tensor(history_items[rows], dtype=torch.long),
                torch.as_tensor(history_rewards[rows], dtype=torch.float32),
            )
            with torch.no_grad():
                pred = self.predict(
                    context, torch.as_tensor(targets[rows], dtype=torch.long)[:, None]
                )
            out[rows] = pred[:, 0].double().numpy()
        return out

    def __repr__(self) -> str:
        params = ", ".join(
            f"{k}={v!r}"
            for k, v in vars(self).items()
            if not k.endswith("_") and not k.startswith("_")
        )
        return f"{type(self).__name__}({params})"
