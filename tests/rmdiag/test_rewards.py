"""Reward models: one interface, baselines exact on hand-made logs, learnt models beat the means."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rmdiag.data import Interactions, load
from rmdiag.rewards import (
    BiasModel,
    GlobalMean,
    ItemMean,
    LightGBMRewardModel,
    RewardEnsemble,
    SequenceRewardModel,
    UserMean,
    last_event_split,
    make_reward_model,
)
from rmdiag.sequences import event_sequences
from trainers.protocols import Context, EnsembleRewardFn, RewardFn

SMALL_LGBM = {"n_rounds": 60, "history_len": 20}
SMALL_SEQ = {"epochs": 4, "dim": 16, "history_len": 20, "batch_size": 64}


def _log(rows: list[tuple[int, int, int, float]]) -> Interactions:
    users, items, times, rewards = zip(*rows, strict=True)
    return load(
        pa.table(
            {
                "user_id": list(users),
                "item_id": list(items),
                "timestamp": list(times),
                "reward": list(rewards),
            }
        )
    )




def _rmse(model, fit: Interactions, test: Interactions) -> float:
    prediction = model.predict_events(fit, test)
    return float(np.sqrt(np.mean((prediction - test.rewards) ** 2)))


def test_global_user_item_means_follow_the_shrinkage_formula() -> None:
    log = _log([(1, 1, 0, 5.0), (1, 2, 1, 3.0), (2, 1, 0, 4.0), (2, 3, 1, 1.0), (2, 2, 2, 2.0)])
    mean = (5 + 3 + 4 + 1 + 2) / 5
    assert GlobalMean().fit(log).mean_ == pytest.approx(mean)
    user = UserMean(shrinkage=2.0).fit(log)
    context = Context(torch.tensor([1, 2]), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1))
    items = torch.tensor([[1, 2], [3, 1]])
    expected_user = [(8 + 2 * mean) / 4, (7 + 2 * mean) / 5]
    np.testing.assert_allclose(
        user(context, items).numpy(), np.repeat([expected_user], 2, 0).T, rtol=1e-6
    )
    item = ItemMean(shrinkage=1.0).fit(log)
    expected_item = {1: (9 + mean) / 3, 2: (5 + mean) / 3, 3: (1 + mean) / 2}
    got = item(context, items).numpy()
    np.testing.assert_allclose(
        got, [[expected_item[1], expected_item[2]], [expected_item[3], expected_item[1]]], rtol=1e-6
    )
    # ids the model never saw fall back to the global mean
    unseen = item(context, torch.tensor([[99, 1], [1, 1]]))
    assert unseen[0, 0].item() == pytest.approx(mean)


def test_shrinkage_is_chosen_on_validation_data() -> None:
    # pure-noise rewards; each item has two training events: validation prefers strong shrinkage
    rng = np.random.default_rng(0)
    n = 200
    rows = [
        (u, (u + k) % n + 1, k, float(3 + rng.choice([-2, 2])))
        for u in range(1, n + 1)
        for k in range(3)
    ]
    fit, tune = last_event_split(_log(rows))
    strong = ItemMean().fit(fit, tune)
    assert strong.shrinkage_ >= 10
    # user means with a large true per-user offset: validation prefers little shrinkage
    rows = [(u, i, i, float(1 + 4 * (u % 2))) for u in range(1, 30) for i in range(1, 8)]
    fit, tune = last_event_split(_log(rows))
    assert UserMean().fit(fit, tune).shrinkage_ <= 1


def test_bias_model_recovers_an_additive_log() -> None:
    rng = np.random.default_rng(1)
    user_bias, item_bias = rng.normal(0, 1, 41), rng.normal(0, 1, 31)
    rows = [
        (u, i, i, 3.0 + user_bias[u] + item_bias[i])
        for u in range(1, 41)
        for i in range(1, 31)
        if rng.random() < 0.6
    ]
    log = _log(rows)
    model = BiasModel(user_reg=0.01, item_reg=0.01, n_iter=50).fit(log)
    prediction = model.predict_events(log, log)
    assert np.max(np.abs(prediction - log.rewards)) < 0.05


def test_every_model_is_a_reward_fn_with_batch_shape(world_split) -> None:
    fit, tune, test = world_split
    models = [
        GlobalMean(),
        UserMean(),
        ItemMean(),
        BiasModel(),
        LightGBMRewardModel(**SMALL_LGBM),
        SequenceRewardModel(**SMALL_SEQ),
    ]
    context = event_sequences(fit, test, 20).context(slice(0, 7))
    items = torch.randint(1, fit.n_items + 1, (7, 5))
    for model in models:
        model.fit(fit, tune)
        assert isinstance(model, RewardFn)
        scores = model(context, items)
        assert scores.shape == (7, 5) and scores.dtype == torch.float32
        assert torch.isfinite(scores).all()


def test_unfitted_model_says_so() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        LightGBMRewardModel().predict_events(_log([(1, 1, 0, 1.0)]), _log([(1, 1, 0, 1.0)]))


def test_lightgbm_out_of_fold_statistics_never_see_the_row_itself() -> None:
    # every item has exactly one event: out of fold, its item mean is the global mean
    rows = [(u, u, 0, float(1 + u % 5)) for u in range(1, 60)]
    log = _log(rows)
    model = LightGBMRewardModel(n_folds=5)
    weight = np.ones(len(log))
    model._fit_statistics(log, weight)
    item_oof, _ = model._out_of_fold(log, weight)
    np.testing.assert_allclose(item_oof, model.global_mean_)


def test_learnt_models_beat_the_means_on_a_learnable_world(world_split) -> None:
    fit, tune, test = world_split
    item_mean = _rmse(ItemMean().fit(fit, tune), fit, test)
    user_mean = _rmse(UserMean().fit(fit, tune), fit, test)
    lgbm = _rmse(LightGBMRewardModel(**SMALL_LGBM).fit(fit, tune), fit, test)
    sequence = _rmse(SequenceRewardModel(**SMALL_SEQ).fit(fit, tune), fit, test)
    assert lgbm < min(item_mean, user_mean)
    assert sequence < min(item_mean, user_mean)


def test_sequence_model_ignores_extra_left_padding(world_split) -> None:
    fit, tune, test = world_split
    model = SequenceRewardModel(**SMALL_SEQ).fit(fit, tune)
    seqs = event_sequences(fit, test, 10)
    context = seqs.context(slice(0, 6))
    items = torch.as_tensor(seqs.targets[:6, None])
    padded = Context(
        context.users,
        torch.nn.functional.pad(context.history_items, (5, 0)),
        torch.nn.functional.pad(context.history_rewards, (5, 0)),
    )
    torch.testing.assert_close(model(context, items), model(padded, items))


def test_sequence_model_validation_loss_in_batches_equals_one_pass(
    world_split, monkeypatch
) -> None:
    # Batches keep the tuning pass's memory bounded on big logs (one pass over 222,000 users held
    # 13.9 GB of attention scores); the figure must not depend on the batch size.
    from rmdiag.rewards import sequence_model

    fit, tune, _ = world_split
    model = SequenceRewardModel(**{**SMALL_SEQ, "epochs": 1}).fit(fit, tune)
    v = event_sequences(fit, tune, model.history_len)
    batch = (
        torch.as_tensor(v.history_items, dtype=torch.long),
        torch.as_tensor(v.history_rewards, dtype=torch.float32),
        torch.as_tensor(v.targets, dtype=torch.long),
        torch.as_tensor(v.target_rewards, dtype=torch.float32),
    )
    one_pass = model._validation_loss(batch)
    monkeypatch.setattr(sequence_model, "PREDICT_BATCH", 37)  # 400 rows: 11 batches, one short
    assert model._validation_loss(batch) == pytest.approx(one_pass, rel=1e-6)


def test_sequence_model_reuses_the_policy_block_trains_through_the_loop_and_stops_early(
    world_split, monkeypatch
) -> None:
    import rmdiag.rewards.sequence_model as sequence_module
    from trainers.loop import train_loop
    from trainers.model import TransformerBlock

    fit, tune, test = world_split
    calls = []

    def recording_loop(*args, **kwargs):
        calls.append(args[3])
        return train_loop(*args, **kwargs)

    monkeypatch.setattr(sequence_module, "train_loop", recording_loop)
    params = {**SMALL_SEQ, "epochs": 30, "patience": 2}
    model = SequenceRewardModel(**params).fit(fit, tune)
    assert len(calls) == 1 and calls[0].early_stopping_metric == "neg_valid_mse"
    blocks = list(model.network_.blocks)
    assert len(blocks) == 2 and all(type(b) is TransformerBlock for b in blocks)
    # early stopping on the tuning events: it stopped before 30 epochs, and kept the weights of
    # the best epoch evaluated
    history = model.validation_history_
    assert 2 < len(history) < 30
    best = max(h["neg_valid_mse"] for h in history)
    assert history[-1]["neg_valid_mse"] < best
    seqs = event_sequences(fit, tune, model.history_len)
    prediction = model.predict_arrays(seqs.users, seqs.history_items, seqs.history_rewards,
                                      seqs.targets)
    assert -np.mean((prediction - tune.rewards) ** 2) == pytest.approx(best, rel=1e-5)
    # deterministic with a seed, on CPU
    again = SequenceRewardModel(**params).fit(fit, tune)
    np.testing.assert_array_equal(again.predict_events(fit, test), model.predict_events(fit, test))


def test_sequence_model_loads_weights_saved_with_its_former_block(world_split) -> None:
    from rmdiag.rewards.sequence_model import _RewardTransformer

    fit, tune, test = world_split
    model = SequenceRewardModel(**{**SMALL_SEQ, "epochs": 1}).fit(fit, tune)
    expected = model.predict_events(fit, test)
    former = {"attn_norm.": "norm1.", "attn_out.": "out.", "ffn_norm.": "norm2.", "ffn.": "mlp."}
    old_state = {}
    for key, value in model.network_.state_dict().items():
        for new, old in former.items():
            key = key.replace(f".{new}", f".{old}") if key.startswith("blocks.") else key
        old_state[key] = value
    assert "blocks.0.norm1.weight" in old_state and "blocks.1.mlp.2.bias" in old_state
    network = _RewardTransformer(fit.n_items, model.dim, model.n_layers, model.n_heads, 0.1)
    network.load_state_dict(old_state)
    model.network_ = network.eval()
    np.testing.assert_array_equal(model.predict_events(fit, test), expected)


def test_ensemble_members_mean_spread_and_bootstrap(world_split) -> None:
    fit, tune, test = world_split
    ensemble = RewardEnsemble(
        kinds=("lightgbm", "bias"), n_members=3, seed=3, params={"lightgbm": SMALL_LGBM}
    ).fit(fit, tune)
    assert isinstance(ensemble, EnsembleRewardFn)
    assert [type(m).__name__ for m in ensemble.members_] == [
        "LightGBMRewardModel",
        "BiasModel",
        "LightGBMRewardModel",
    ]
    context = event_sequences(fit, test, 20).context(slice(0, 4))
    items = torch.randint(1, fit.n_items + 1, (4, 6))
    members = ensemble.members(context, items)
    assert members.shape == (3, 4, 6)
    torch.testing.assert_close(ensemble(context, items), members.mean(0))
    spread = ensemble.spread(context, items)
    assert (spread > 0).all()  # bootstrap resamples and seeds make members disagree
    # the same seed gives the same ensemble
    again = RewardEnsemble(
        kinds=("lightgbm", "bias"), n_members=3, seed=3, params={"lightgbm": SMALL_LGBM}
    ).fit(fit, tune)
    torch.testing.assert_close(again.members(context, items), members)


def test_user_weight_zero_drops_a_user() -> None:
    log = _log([(1, 1, 0, 5.0), (1, 2, 1, 5.0), (2, 1, 0, 1.0), (2, 2, 1, 1.0)])
    weight = np.array([0.0, 1.0, 0.0])
    assert GlobalMean().fit(log, user_weight=weight).mean_ == pytest.approx(5.0)
    with pytest.raises(ValueError, match="user_weight must have shape"):
        GlobalMean().fit(log, user_weight=np.ones(2))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown reward model kind"):
        make_reward_model("xgboost")


def test_parallel_fitting_gives_the_same_ensemble(world_split) -> None:
    fit, tune, test = world_split
    params = {"lightgbm": SMALL_LGBM, "sequence": {**SMALL_SEQ, "epochs": 1}}
    kwargs = {"kinds": ("lightgbm", "sequence"), "n_members": 2, "seed": 5, "params": params}
    serial = RewardEnsemble(**kwargs, n_jobs=1).fit(fit, tune)
    parallel = RewardEnsemble(**kwargs, n_jobs=2).fit(fit, tune)
    np.testing.assert_allclose(
        serial.member_events(fit, test), parallel.member_events(fit, test), rtol=1e-5, atol=1e-5
    )
