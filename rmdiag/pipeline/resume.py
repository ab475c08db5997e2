"""What `rmdiag run` keeps in `out/.work` for `--resume`: each stage's input fingerprints
(`StageKeys`) and the training that goes through the work directory (`CachedTrainer`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from rmdiag import policies
from rmdiag.audit import AuditConfig
from rmdiag.pipeline.clock import StageClock
from rmdiag.pipeline.config import RunConfig
from rmdiag.workdir import WorkDir, file_identity, fingerprint

# PolicyConfig fields that do not change how a policy trains (only how it is scored or shown),
# and those that change only post-training: left out of the fingerprints they do not affect.
_SCORING_ONLY = ("high_reward", "confidence", "n_resamples", "progress")
_POST_ONLY = ("post_steps", "post_lr")

def simulation_record(simulation: Any) -> dict[str, Any]:
    """A simulation's settings as recorded and fingerprinted: a `SimulationConfig` as it is; a
    `World` (e.g. one fitted to a real log, `world_from_interactions`) as its config and a
    digest of its parameter arrays, which the config alone does not determine."""
    if not hasattr(simulation, "parameters"):
        return asdict(simulation)
    digest = hashlib.sha256()
    for field in fields(simulation.parameters):
        value = getattr(simulation.parameters, field.name)
        digest.update(field.name.encode())
        digest.update(np.ascontiguousarray(value).tobytes() if isinstance(value, np.ndarray)
                      else repr(value).encode())
    return asdict(simulation.config) | {"parameters_sha256": digest.hexdigest()}

class StageKeys:
    """The inputs (and so the fingerprints) of the stages `rmdiag run` keeps in `.work`."""

    def __init__(self, data: str | os.PathLike[str] | None, columns: Mapping[str, str] | None,
                 simulation: Any | None, config: RunConfig, audit_config: AuditConfig,
                 policy_config: policies.PolicyConfig, work: WorkDir | None) -> None:
        source: dict[str, Any] = {}
        if work is not None:  # hashing the file is only worth it when a resume may read it
            source = ({"file": file_identity(data), "columns": dict(columns or {})}
                      if data is not None else {"simulation": simulation_record(simulation)})
        split = {"split": config.split} | (
            {"test_quantile": config.test_quantile, "valid_quantile": config.valid_quantile}
            if config.split == "temporal" else {})
        self.data = source  # in the record as it is: the file's path, size, mtime and sha256
        predictions = ({"file": file_identity(config.predictions),
                        "name": config.predictions_name}
                       if config.predictions and work is not None else None)
        self.audit_inputs = {"data": self.data, "split": split,
                             "audit_config": asdict(audit_config), "predictions": predictions}
        self.audit = fingerprint(self.audit_inputs) if config.audit else None
        training = {k: v for k, v in asdict(policy_config).items() if k not in _SCORING_ONLY}
        self.sft_inputs = {"data": self.data, "split": split, "max_len": config.max_len,
                           "policy_config": {k: v for k, v in training.items()
                                             if k not in _POST_ONLY}}
        self.sft = fingerprint(self.sft_inputs)
        self.post_training = training

    def post_inputs(self, algorithm: str, temperature: Mapping[str, float],
                    uses_reward_model: bool) -> dict[str, Any]:
        return {"sft": self.sft, "algorithm": algorithm, "temperature": dict(temperature),
                "policy_config": self.post_training,
                "reward_model": self.audit if uses_reward_model else None}

class CachedTrainer:
    """Trains policies through the work directory: each one saved once trained and reused on
    `--resume` when its inputs are unchanged, its training checkpointed so an interrupted one
    resumes. Without a work directory (no `out`), plain `rmdiag.policies` training."""

    def __init__(self, work: WorkDir | None, keys: StageKeys, stage: StageClock) -> None:
        self.work, self.keys, self.stage = work, keys, stage

    def sft(self, data: policies.PolicyData, max_len: int,
            config: policies.PolicyConfig) -> policies.TrainedPolicy:
        if self.work is None:
            return policies.train_sft(data, max_len, config)
        policy, reused = self.work.policy(
            "sft", self.keys.sft_inputs,
            lambda checkpoint: policies.train_sft(data, max_len, config, checkpoint))
        if reused:
            self.stage.note(": reused from .work (inputs unchanged)")
        return policy

    def post(self, algorithm: str, data: policies.PolicyData, sft: policies.TrainedPolicy,
             config: policies.PolicyConfig, temperature: Mapping[str, float] | None = None,
             reward_fn: Any | None = None, train_data: Any | None = None,
             name: str | None = None, *, swept: str | None = None) -> policies.TrainedPolicy:
        """`policies.train_policy`'s arguments; `swept` names the temperature a sweep varies
        (its point is kept as `<algorithm>.<parameter>-<value>`)."""
        temperature = dict(temperature or {})
        if self.work is None:
            return policies.train_policy(algorithm, data, sft, config, temperature, reward_fn,
                                         train_data, name)
        key = algorithm + (f".{swept}-{temperature[swept]:g}" if swept else "")
        uses = (policies.reward_model_use(algorithm) != "none" and reward_fn is not None
                or train_data is not None)  # train_data: A-SFT's advantages from the ensemble
        inputs = self.keys.post_inputs(algorithm, temperature, uses)
        policy, reused = self.work.policy(
            key, inputs,
            lambda checkpoint: policies.train_policy(algorithm, data, sft, config, temperature,
                                                     reward_fn, train_data, name, checkpoint))
        if reused:
            self.stage.note(f": {key} reused from .work (inputs unchanged)")
        return policy

    def sweep_point(self, parameter: str) -> Any:
        def train(*args: Any, **kwargs: Any) -> policies.TrainedPolicy:
            return self.post(*args, **kwargs, swept=parameter)
        return train
