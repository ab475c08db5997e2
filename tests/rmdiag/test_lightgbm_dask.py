"""LightGBM members trained through lightgbm.dask (the rmdiag[dask] extra, part of dev): the same
parameters and validation as in-process training, predictions as close as LightGBM's
data-parallel learner allows, wired from AuditConfig down to the members; a clear error without
the extra, and scheduler strings checked before any work."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys

import numpy as np
import pytest

from rmdiag.audit import AuditConfig
from rmdiag.audit.models import fit_models
from rmdiag.cli import UsageError, build_parser, dataclass_from_args
from rmdiag.pipeline.config import RunConfig
from rmdiag.pipeline.resume import StageKeys
from rmdiag.policies import PolicyConfig
from rmdiag.rewards import GlobalMean, LightGBMRewardModel
from rmdiag.rewards.lightgbm_model import dask_local_workers

HAVE_DASK = all(
    importlib.util.find_spec(name) is not None
    for name in ("dask", "distributed", "sklearn", "pandas")
)
needs_dask = pytest.mark.skipif(
    not HAVE_DASK, reason="the rmdiag[dask] extra (dask[distributed], scikit-learn, pandas) is "
    "not installed; `make test` installs it with .[dev]"
)
SMALL = {"n_rounds": 60, "history_len": 20}
# Booster parameters that say where and how the trees were trained, not what they learn from
NETWORK = {"machines", "local_listen_port", "num_machines", "tree_learner", "num_threads"}




def _booster_parameters(model: LightGBMRewardModel) -> dict[str, str]:
    """The resolved parameters a booster's model text records, `[name: value]` per line."""
    text = model.booster_.model_to_string()
    block = text.split("\nparameters:\n", 1)[1].split("\nend of parameters", 1)[0]
    pairs = (line.strip("[]").partition(": ") for line in block.splitlines() if line)
    return {name: value for name, _, value in pairs}


def _rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction - truth) ** 2)))


@needs_dask
def test_two_worker_local_cluster_fit_is_another_draw_of_the_in_process_fit(world_split) -> None:
    fit, tune, test = world_split
    here = LightGBMRewardModel(**SMALL).fit(fit, tune)
    other_seed = LightGBMRewardModel(**SMALL, seed=1).fit(fit, tune)
    children = set(multiprocessing.active_children())
    on_dask = LightGBMRewardModel(**SMALL, dask_scheduler="local:2").fit(fit, tune)
    assert set(multiprocessing.active_children()) <= children  # the cluster was closed

    # the same parameters reached LightGBM, trained data-parallel on both workers, and the
    # validation set stopped it early as in-process (without one best_iteration stays 0)
    dask_parameters, here_parameters = _booster_parameters(on_dask), _booster_parameters(here)
    differing = {
        name for name in dask_parameters.keys() | here_parameters.keys()
        if dask_parameters.get(name) != here_parameters.get(name)
    }
    assert differing <= NETWORK, differing
    assert (dask_parameters["num_machines"], dask_parameters["tree_learner"]) == ("2", "data")
    assert 0 < on_dask.booster_.best_iteration <= SMALL["n_rounds"]

    # The data-parallel learner is not the serial one with its sums reordered: each worker draws
    # its bagging subsample from its own rows and finds the bin boundaries of its share of the
    # features from them, and early stopping then picks its own round. So the trees are another
    # draw of the same model, and the yardstick is how far another seed moves the in-process
    # fit. Measured here: dask vs in-process mean |diff| 0.11, max 0.51, RMSE-to-truth -0.010;
    # seed 1 vs seed 0 mean 0.13, max 0.70 (seeds 1-5: mean 0.13-0.14, max 0.52-0.70, RMSE
    # within 0.005). With `local:1` (one worker, serial learner) predictions are identical.
    heldout_here = here.predict_events(fit, test)
    heldout_dask = on_dask.predict_events(fit, test)
    seed_gap = np.abs(other_seed.predict_events(fit, test) - heldout_here).mean()
    gap = np.abs(heldout_dask - heldout_here)
    assert gap.mean() <= 1.5 * seed_gap, (gap.mean(), seed_gap)
    assert gap.max() <= 1.0, gap.max()
    truth = test.rewards
    assert abs(_rmse(heldout_dask, truth) - _rmse(heldout_here, truth)) <= 0.025


@needs_dask
def test_audit_config_sends_lightgbm_members_to_dask_from_this_process(
    world_split, monkeypatch
) -> None:
    """`--audit-lightgbm-dask` reaches every LightGBM member, and with `threads` 2 they are
    still fitted here, one after another, not in the ensemble's worker processes."""
    fit, _, _ = world_split
    calls: list[tuple[str, int]] = []

    def train_here_instead(self, x, label, weight, validation):  # no cluster: records the call
        calls.append((self.dask_scheduler, os.getpid()))
        return self._train_here(x, label, weight, validation)

    monkeypatch.setattr(LightGBMRewardModel, "_train_on_dask", train_here_instead)
    config = AuditConfig(
        kinds="lightgbm", n_members=2, lightgbm_rounds=10, threads=2, lightgbm_dask="local:2"
    )
    _, ensemble = fit_models(fit, config)
    assert calls == [("local:2", os.getpid())] * 2
    assert [member.dask_scheduler for member in ensemble.members_] == ["local:2"] * 2


def test_missing_extra_is_named(world_split, monkeypatch) -> None:
    fit, tune, _ = world_split
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    with pytest.raises(ImportError, match=r"pip install 'rmdiag\[dask\]'"):
        LightGBMRewardModel(**SMALL, dask_scheduler="local:2").fit(fit, tune)
    # the config itself does not need the extra (audit.json's is read back anywhere); fitting
    # the audit's models asks for it first
    config = AuditConfig(kinds="lightgbm", n_members=1, lightgbm_dask="local:2")
    monkeypatch.setattr(GlobalMean, "fit", lambda *_, **__: pytest.fail("fitted before the check"))
    with pytest.raises(ImportError, match=r"pip install 'rmdiag\[dask\]'"):
        fit_models(fit, config)
    # in-process training never imports it
    assert LightGBMRewardModel(**SMALL).fit(fit, tune).fitted_


@pytest.mark.parametrize(
    "scheduler", ["local:0", "local:", "local:two", "local", "8786", "scheduler", "tcp:/host:1"]
)
def test_a_malformed_scheduler_is_refused_before_any_work(scheduler: str) -> None:
    with pytest.raises(ValueError, match="lightgbm_dask: a Dask scheduler is 'local:N'"):
        AuditConfig(lightgbm_dask=scheduler)


def test_scheduler_strings_parse() -> None:
    assert dask_local_workers("local:2") == 2
    assert dask_local_workers("tcp://10.0.0.7:8786") is None
    assert dask_local_workers("tls://[::1]:8786") is None
    assert dask_local_workers("localhost:8786") is None  # a host named local..., not local:N
    with pytest.raises(ValueError):
        dask_local_workers("")


def test_flags_of_audit_and_run_and_the_resume_fingerprint() -> None:
    parser = build_parser()
    audit_args = parser.parse_args(
        ["audit", "--data", "log.parquet", "--out", "out", "--lightgbm-dask", "local:2"]
    )
    assert dataclass_from_args(AuditConfig, audit_args).lightgbm_dask == "local:2"
    run_args = parser.parse_args(["run", "--audit-lightgbm-dask", "tcp://10.0.0.7:8786"])
    config = dataclass_from_args(AuditConfig, run_args, prefix="audit_")
    assert config.lightgbm_dask == "tcp://10.0.0.7:8786"
    bad = parser.parse_args(["run", "--audit-lightgbm-dask", "local:0"])
    with pytest.raises(UsageError, match="lightgbm_dask"):
        dataclass_from_args(AuditConfig, bad, prefix="audit_")

    # the trees differ with where they train, so a resumed run does not reuse the other's audit
    def audit_fingerprint(audit_config: AuditConfig) -> str | None:
        return StageKeys(
            None, None, None, RunConfig(), audit_config, PolicyConfig(), None
        ).audit

    assert audit_fingerprint(AuditConfig()) != audit_fingerprint(config)
