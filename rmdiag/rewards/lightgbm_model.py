"""A gradient-boosted reward model (LightGBM) on features computed without leakage.

Each (history, candidate) row gets:
- target statistics of the candidate item and of the user, shrunk toward the global mean. For
  the training rows they are *out of fold*: the training events are split into K folds and a
  row's statistics come from the other folds only, so a row never sees its own reward;
- counts of the item and the user, and the item's recency (when it was last seen, and which share
  of its events fall in the most recent tenth of the log's time span);
- aggregates of the history in the context: its length, mean and spread of rewards, the mean of
  the last ``last_n`` rewards, the user's mean residual against item means;
- similarity of the candidate to the history through co-occurrence embeddings (a truncated SVD
  of the binary user x item matrix): mean and max cosine, a similarity-weighted mean of the
  history's reward deviations (item-kNN style), and the dot product of the candidate with the
  reward-weighted history direction.
The history of a training row is the user's strictly earlier training events
(``rmdiag.sequences.event_sequences``), exactly what a held-out event's context holds.

The trees train in this process (``lightgbm.train``) or, with ``dask_scheduler``, on a Dask
cluster through ``lightgbm.dask`` (the optional ``rmdiag[dask]`` extra): the same features
(computed here), parameters, validation set and early stopping, LightGBM's data-parallel learner
over one block of rows per worker. Its trees are another draw, not a copy, of the in-process
ones: each worker draws its bagging subsample from its own rows and finds the bin boundaries of
its share of the features from them, so the trees differ about as much as two seeds' do.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Self

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from rmdiag.data import Interactions
from rmdiag.rewards.base import RewardModel, columns, event_weights
from rmdiag.sequences import event_sequence_blocks
from trainers.protocols import Context

FEATURES: tuple[str, ...] = (
    "item_mean",
    "item_log_count",
    "item_age",
    "item_recent_share",
    "user_mean",
    "user_log_count",
    "hist_len",
    "hist_mean",
    "hist_std",
    "hist_last_mean",
    "hist_item_residual",
    "sim_mean",
    "sim_max",
    "knn_deviation",
    "preference_dot",
)
CHUNK = 8192  # rows per feature block: bounds the [rows, history, dim] similarity tensor

DASK_EXTRA = "LightGBM on a Dask cluster needs the dask extra: pip install 'rmdiag[dask]'"
# lightgbm.dask trains through the scikit-learn API, which has its own names (and defaults) for
# these parameters: each is given under that name, so no default of the wrapper competes with an
# alias of it. num_threads is left out: lightgbm.dask sets it to each worker's thread count.
_SCIKIT_LEARN_NAMES = {
    "min_data_in_leaf": "min_child_samples",
    "feature_fraction": "colsample_bytree",
    "bagging_fraction": "subsample",
    "bagging_freq": "subsample_freq",
    "lambda_l2": "reg_lambda",
    "seed": "random_state",
}
_LOCAL_CLUSTER = re.compile(r"local:(\d+)")
# a scheme (tcp://, tls://, ...) and anything after it, or host:port
_SCHEDULER_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S+|[^\s:/]+:\d+")


def dask_local_workers(scheduler: str) -> int | None:
    """The worker count N of a ``local:N`` Dask scheduler, None for a running scheduler's
    address (``tcp://host:8786``, ``host:8786``); a ValueError for anything else, "" included."""
    local = _LOCAL_CLUSTER.fullmatch(scheduler)
    if local is not None and int(local.group(1)) >= 1:
        return int(local.group(1))
    if not scheduler.startswith("local:") and _SCHEDULER_ADDRESS.fullmatch(scheduler):
        return None
    raise ValueError(
        "a Dask scheduler is 'local:N' (N >= 1 worker processes started for the fit) or a "
        f"running scheduler's address such as tcp://host:8786, got {scheduler!r}"
    )


def import_dask() -> tuple[ModuleType, ModuleType, ModuleType]:
    """(dask.array, distributed, lightgbm.dask), imported only when asked; an ImportError that
    names the extra when they are missing."""
    try:
        import dask.array as dask_array
        import distributed
        import pandas  # noqa: F401 - lightgbm.dask refuses to train without pandas
        import sklearn  # noqa: F401 - and scikit-learn, whose estimator API it uses
        from lightgbm import dask as lightgbm_dask
    except ImportError as error:
        raise ImportError(f"{DASK_EXTRA} ({error})") from error
    if tuple(int(part) for part in lgb.__version__.split(".")[:2]) < (4, 7):  # eval_X, eval_y
        raise ImportError(f"{DASK_EXTRA} (it needs lightgbm >= 4.7, found {lgb.__version__})")
    return dask_array, distributed, lightgbm_dask


@contextmanager
def dask_client(scheduler: str) -> Iterator[Any]:
    """A ``distributed.Client`` of ``scheduler`` (``dask_local_workers``), closed on exit; a
    ``local:N`` cluster is started for the block and shut down after it."""
    n_workers = dask_local_workers(scheduler)
    _, distributed, _ = import_dask()
    if n_workers is None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    # Processes, one thread each, as the in-process members train: every LightGBM worker needs
    # its own process (they meet over sockets), and threads beyond the cores only slow it down.
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _blocks_on_workers(
    client: Any, dask_array: ModuleType, blocks: list[np.ndarray], workers: list[str]
) -> Any:
    """One dask array whose chunk i is ``blocks[i]``, held by ``workers[i]``: lightgbm.dask
    trains each worker on the chunks it holds, so this fixes which rows each worker learns from."""
    futures = [
        client.scatter(block, workers=[worker], hash=False)  # equal blocks: one per worker
        for block, worker in zip(blocks, workers, strict=True)
    ]
    return dask_array.concatenate(
        [
            dask_array.from_delayed(future, shape=block.shape, dtype=block.dtype)
            for future, block in zip(futures, blocks, strict=True)
        ]
    )


class LightGBMRewardModel(RewardModel):
    """Gradient-boosted trees (``lightgbm.train``) on leakage-free features (module docstring).

    Defaults follow LightGBM's own (num_leaves 31, learning rate 0.1) with early stopping on
    ``valid``; ``min_data_in_leaf`` is raised to 50 because rating noise is large.
    ``dask_scheduler``: "" trains in this process; ``local:N`` starts an N-process Dask
    ``LocalCluster`` for the fit (so a script needs the ``if __name__ == "__main__":`` guard) and
    closes it afterwards; an address (``tcp://host:8786``) trains on that running cluster, each
    worker with its own thread count. Needs the ``rmdiag[dask]`` extra.
    """

    kind = "lightgbm"

    def __init__(
        self,
        n_rounds: int = 200,
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        min_data_in_leaf: int = 50,
        early_stopping_rounds: int = 30,
        n_folds: int = 5,
        shrinkage: float = 5.0,
        history_len: int = 50,
        last_n: int = 5,
        embedding_dim: int = 16,
        n_threads: int = 1,
        seed: int = 0,
        dask_scheduler: str = "",
    ) -> None:
        self.n_rounds = n_rounds
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.early_stopping_rounds = early_stopping_rounds
        self.n_folds = n_folds
        self.shrinkage = shrinkage
        self.history_len = history_len
        self.last_n = last_n
        self.embedding_dim = embedding_dim
        self.n_threads = n_threads
        self.seed = seed
        self.dask_scheduler = dask_scheduler

    @property
    def fits_on_cluster(self) -> bool:
        return bool(self.dask_scheduler)  # the Dask workers train, not this process

    # -- statistics learned from the training log ------------------------------------------
    def _shrunk(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return (sums + self.shrinkage * self.global_mean_) / (counts + self.shrinkage)

    def _item_embeddings(
        self, users: np.ndarray, items: np.ndarray, shape: tuple[int, int]
    ) -> np.ndarray:
        matrix = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=shape, dtype=np.float64)
        matrix.data[:] = 1.0  # duplicates count once: co-occurrence, not frequency
        k = min(self.embedding_dim, min(shape) - 2)
        embeddings = np.zeros((shape[1], self.embedding_dim), dtype=np.float32)
        if k >= 1 and matrix.nnz > 0:
            rng = np.random.default_rng(self.seed)
            _, singular, vt = svds(matrix, k=k, v0=rng.random(min(shape)))
            factors = vt.T * np.sqrt(singular)
            norms = np.linalg.norm(factors, axis=1, keepdims=True)
            embeddings[:, :k] = factors / np.where(norms > 0, norms, 1.0)
        return embeddings

    def _fit_statistics(self, train: Interactions, weight: np.ndarray) -> None:
        users, items, reward = columns(train)
        timestamps = train.table.column("timestamp").to_numpy().astype(np.float64)
        n_users, n_items = train.n_users + 1, train.n_items + 1
        self.global_mean_ = float(np.average(reward, weights=weight))
        item_count = np.bincount(items, weights=weight, minlength=n_items)
        user_count = np.bincount(users, weights=weight, minlength=n_users)
        self.item_count_ = item_count
        self.user_count_ = user_count
        self.item_mean_ = self._shrunk(
            np.bincount(items, weights=weight * reward, minlength=n_items), item_count
        )
        self.user_mean_ = self._shrunk(
            np.bincount(users, weights=weight * reward, minlength=n_users), user_count
        )
        t_min, t_max = float(timestamps.min()), float(timestamps.max())
        span = max(t_max - t_min, 1.0)
        last_seen = np.full(n_items, t_min)
        np.maximum.at(last_seen, items, timestamps)
        self.item_age_ = (t_max - last_seen) / span
        recent = (timestamps >= t_max - 0.1 * span).astype(np.float64)
        recent_count = np.bincount(items, weights=recent, minlength=n_items)
        self.item_recent_share_ = recent_count / np.maximum(
            np.bincount(items, minlength=n_items), 1
        )
        self.item_embeddings_ = self._item_embeddings(users, items, (n_users, n_items))

    def _out_of_fold(
        self, train: Interactions, weight: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per training row: item and user mean reward computed from the other folds only."""
        users, items, reward = columns(train)
        rng = np.random.default_rng(self.seed)
        folds = rng.integers(0, self.n_folds, size=len(reward))
        item_oof = np.empty(len(reward))
        user_oof = np.empty(len(reward))
        n_users, n_items = train.n_users + 1, train.n_items + 1
        item_total = np.bincount(items, weights=weight * reward, minlength=n_items)
        item_weight = np.bincount(items, weights=weight, minlength=n_items)
        user_total = np.bincount(users, weights=weight * reward, minlength=n_users)
        user_weight = np.bincount(users, weights=weight, minlength=n_users)
        for fold in range(self.n_folds):
            rows = folds == fold
            fw, fr = weight[rows], reward[rows]
            i_sum = item_total - np.bincount(items[rows], weights=fw * fr, minlength=n_items)
            i_cnt = item_weight - np.bincount(items[rows], weights=fw, minlength=n_items)
            u_sum = user_total - np.bincount(users[rows], weights=fw * fr, minlength=n_users)
            u_cnt = user_weight - np.bincount(users[rows], weights=fw, minlength=n_users)
            item_oof[rows] = self._shrunk(i_sum, np.maximum(i_cnt, 0))[items[rows]]
            user_oof[rows] = self._shrunk(u_sum, np.maximum(u_cnt, 0))[users[rows]]
        return item_oof, user_oof

    # -- features ---------------------------------------------------------------------------
    def _safe(self, table: np.ndarray, ids: np.ndarray, default: float) -> np.ndarray:
        inside = ids < len(table)
        return np.where(inside, table[np.where(inside, ids, 0)], default)

    def _features(
        self,
        users: np.ndarray,
        hist_items: np.ndarray,
        hist_rewards: np.ndarray,
        candidates: np.ndarray,
        item_mean: np.ndarray | None = None,
        user_mean: np.ndarray | None = None,
    ) -> np.ndarray:
        """Feature matrix [B * K, len(FEATURES)] for users [B], histories [B, L], candidates [B, K].

        ``item_mean`` [B, K] and ``user_mean`` [B] override the fitted statistics (out-of-fold
        values for training rows).
        """
        b, k = candidates.shape
        hist_items = hist_items[:, -self.history_len :] if self.history_len else hist_items[:, :0]
        hist_rewards = hist_rewards[:, -hist_items.shape[1] :].astype(np.float64)
        hist_items = np.where(hist_items < len(self.item_mean_), hist_items, 0)
        valid = hist_items > 0
        n = valid.sum(axis=1)
        has = n > 0
        safe_n = np.maximum(n, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            hist_mean = np.where(has, (hist_rewards * valid).sum(1) / safe_n, np.nan)
            centred = np.where(valid, hist_rewards - np.nan_to_num(hist_mean)[:, None], 0.0)
            hist_std = np.where(has, np.sqrt((centred**2).sum(1) / safe_n), np.nan)
            tail = valid[:, -self.last_n :]
            tail_n = tail.sum(1)
            hist_last = np.where(
                tail_n > 0,
                (hist_rewards[:, -self.last_n :] * tail).sum(1) / np.maximum(tail_n, 1),
                np.nan,
            )
            residual = np.where(valid, hist_rewards - self.item_mean_[hist_items], 0.0)
            hist_residual = np.where(has, residual.sum(1) / safe_n, np.nan)

        cand = np.where(candidates < len(self.item_mean_), candidates, 0)
        known = candidates < len(self.item_mean_)
        emb = self.item_embeddings_
        cand_emb = np.where(known[..., None], emb[cand], 0.0)  # [B, K, d]
        sim = np.einsum("bkd,bld->bkl", cand_emb, emb[hist_items])  # [B, K, L]
        sim = np.where(valid[:, None, :], sim, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            sim_mean = np.where(has[:, None], sim.sum(2) / safe_n[:, None], np.nan)
            sim_max = np.where(has[:, None], np.where(valid[:, None, :], sim, -1.0).max(2), np.nan)
            knn_weight = np.clip(sim, 0.0, None) ** 2
            knn = (knn_weight * centred[:, None, :]).sum(2) / (knn_weight.sum(2) + 1e-3)
            knn = np.where(has[:, None], knn, np.nan)
            preference = np.where(
                has[:, None], (sim * centred[:, None, :]).sum(2) / safe_n[:, None], np.nan
            )

        if item_mean is None:
            item_mean = self._safe(self.item_mean_, candidates, self.global_mean_)
        if user_mean is None:
            user_mean = self._safe(self.user_mean_, users, self.global_mean_)
        user_count = self._safe(self.user_count_, users, 0.0)

        def per_row(values: np.ndarray) -> np.ndarray:  # [B] -> [B, K]
            return np.broadcast_to(np.asarray(values, dtype=np.float64)[:, None], (b, k))

        columns_ = [
            item_mean,
            np.log1p(self._safe(self.item_count_, candidates, 0.0)),
            self._safe(self.item_age_, candidates, np.nan),
            self._safe(self.item_recent_share_, candidates, np.nan),
            per_row(user_mean),
            per_row(np.log1p(user_count)),
            per_row(n),
            per_row(hist_mean),
            per_row(hist_std),
            per_row(hist_last),
            per_row(hist_residual),
            sim_mean,
            sim_max,
            knn,
            preference,
        ]
        return np.stack([np.asarray(c, dtype=np.float64).reshape(b * k) for c in columns_], axis=1)

    def _features_chunked(
        self,
        users: np.ndarray,
        hist_items: np.ndarray,
        hist_rewards: np.ndarray,
        targets: np.ndarray,
        item_mean: np.ndarray | None = None,
        user_mean: np.ndarray | None = None,
    ) -> np.ndarray:
        blocks = []
        for start in range(0, len(users), CHUNK):
            rows = slice(start, start + CHUNK)
            blocks.append(
                self._features(
                    users[rows],
                    hist_items[rows],
                    hist_rewards[rows],
                    targets[rows, None],
                    None if item_mean is None else item_mean[rows, None],
                    None if user_mean is None else user_mean[rows],
                )
            )
        if not blocks:
            return np.zeros((0, len(FEATURES)))
        return np.concatenate(blocks)

    def _event_features(
        self,
        history: Interactions,
        events: Interactions,
        item_mean: np.ndarray | None = None,
        user_mean: np.ndarray | None = None,
        keep: np.ndarray | None = None,
    ) -> np.ndarray:
        """Feature rows of `events` (their histories from `history`), the rows `keep` selects,
        built block by block into one matrix: a 10M-event log's whole [events, history]
        windows, their temporaries and a copy of the kept rows would hold over 16 GB."""
        out = np.empty((len(events) if keep is None else int(keep.sum()), len(FEATURES)))
        first = filled = 0
        for seqs in event_sequence_blocks(history, events, max(self.history_len, 1), CHUNK):
            rows = slice(first, first + len(seqs))
            first += len(seqs)
            block = self._features_chunked(
                seqs.users,
                seqs.history_items,
                seqs.history_rewards,
                seqs.targets,
                None if item_mean is None else item_mean[rows],
                None if user_mean is None else user_mean[rows],
            )
            if keep is not None:
                block = block[keep[rows]]
            out[filled : filled + len(block)] = block
            filled += len(block)
        return out

    # -- estimator interface ----------------------------------------------------------------
    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_weight: np.ndarray | None = None,
    ) -> Self:
        self._refuse_empty(train)
        if self.dask_scheduler:  # refused before the features are computed, not after
            dask_local_workers(self.dask_scheduler)
            import_dask()
        _, _, reward = columns(train)
        weight = event_weights(train, user_weight)
        self._fit_statistics(train, weight)
        item_oof, user_oof = self._out_of_fold(train, weight)
        keep = weight > 0  # bootstrap resamples drop the users they did not draw
        x_train = self._event_features(train, train, item_oof, user_oof, keep)
        validation = None
        if valid is not None and len(valid.table) > 0:
            validation = (self._event_features(train, valid), valid.rewards.astype(np.float32))
        if self.dask_scheduler:
            self.booster_ = self._train_on_dask(x_train, reward[keep], weight[keep], validation)
        else:
            self.booster_ = self._train_here(x_train, reward[keep], weight[keep], validation)
        self.fitted_ = True
        return self

    def _booster_params(self) -> dict[str, Any]:
        return {
            "objective": "regression",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": self.seed,
            "num_threads": self.n_threads,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def _train_here(
        self,
        x: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None,
    ) -> lgb.Booster:
        train_set = lgb.Dataset(
            x, label=label, weight=weight, feature_name=list(FEATURES), free_raw_data=True
        )
        callbacks = []
        valid_sets = []
        if validation is not None:
            x_valid, y_valid = validation
            valid_sets = [lgb.Dataset(x_valid, label=y_valid, reference=train_set)]
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        return lgb.train(
            self._booster_params(),
            train_set,
            num_boost_round=self.n_rounds,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )

    def _train_on_dask(
        self,
        x: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None,
    ) -> lgb.Booster:
        """``_train_here`` through ``lightgbm.dask``: the rows in one contiguous block per worker,
        the whole validation set on every worker."""
        params = self._booster_params()
        del params["num_threads"]
        estimator_params = {_SCIKIT_LEARN_NAMES.get(name, name): v for name, v in params.items()}
        dask_array, _, lightgbm_dask = import_dask()
        with dask_client(self.dask_scheduler) as client:
            client.wait_for_workers(1, timeout=120)
            workers = sorted(client.scheduler_info()["workers"])[: len(x)]

            def spread(values: np.ndarray) -> Any:  # rows, labels and weights split alike
                blocks = np.array_split(values, len(workers))
                return _blocks_on_workers(client, dask_array, blocks, workers)

            fit_kwargs: dict[str, Any] = {"feature_name": list(FEATURES)}
            if validation is not None:
                # Each worker scores its own share of the validation set and early stopping decides
                # on each worker apart: with a share each they could stop at different rounds
                # (and a worker with none fails). The whole set on each makes every decision one.
                x_valid, y_valid = validation
                everywhere = len(workers)
                fit_kwargs["eval_X"] = _blocks_on_workers(
                    client, dask_array, [x_valid] * everywhere, workers
                )
                fit_kwargs["eval_y"] = _blocks_on_workers(
                    client, dask_array, [y_valid] * everywhere, workers
                )
                fit_kwargs["callbacks"] = [
                    lgb.early_stopping(self.early_stopping_rounds, verbose=False)
                ]
            estimator = lightgbm_dask.DaskLGBMRegressor(
                client=client, n_estimators=self.n_rounds, **estimator_params
            )
            with warnings.catch_warnings():
                # lightgbm.dask warns of the scikit-learn n_jobs it overrides even when unset
                warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored")
                estimator.fit(spread(x), spread(label), sample_weight=spread(weight), **fit_kwargs)
            return estimator.booster_

    def predict(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        users = context.users.cpu().numpy()
        candidates = items.cpu().numpy().astype(np.int64)
        x = self._features(
            users,
            context.history_items.cpu().numpy(),
            context.history_rewards.cpu().numpy(),
            candidates,
        )
        pred = self.booster_.predict(x, num_threads=self.n_threads)
        return torch.as_tensor(pred.reshape(candidates.shape), dtype=torch.float32)

    def predict_arrays(
        self,
        users: np.ndarray,
        history_items: np.ndarray,
        history_rewards: np.ndarray,
        targets: np.ndarray,
    ) -> np.ndarray:
        self._check_fitted()
        x = self._features_chunked(users, history_items, history_rewards, targets)
        return np.asarray(self.booster_.predict(x, num_threads=self.n_threads), dtype=np.float64)
