"""``rmdiag train ALGORITHM``: one policy, trained as `rmdiag run` trains it, saved to a directory.

``sft`` trains from scratch on the log's leave-last-out split (`rmdiag.policies.train_sft`:
early stopping on validation NDCG@k). Every other algorithm post-trains a copy of a saved SFT
policy (``--reference``) for ``--policy-post-steps`` steps (`rmdiag.policies.train_policy`),
with a saved reward ensemble (``--reward-model``, e.g. ``rmdiag audit``'s ``reward_model/``) as
its reward model when its Config uses one; A-SFT's advantages come from that ensemble and the
reference exactly as in `rmdiag run`.

The trainer's Config is built as `rmdiag run` builds it from the `PolicyConfig` (learning
rate, batch size, epochs or steps, seed); `overrides` (the Config flags given on the command
line) replace any of its fields. The temperature comes from a decision.json when given (it must
name the same algorithm), else from the Config. Saved and loaded models must share the data's id
encoding (`rmdiag.stages.inputs.check_ids`).

Under torchrun (`rmdiag.distributed`) every rank reads the same inputs and trains data-parallel
(the loop's DistributedDataParallel; A-SFT's advantages computed identically on each rank);
rank 0 alone saves the policy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trainers
from rmdiag import distributed, policies
from rmdiag.data import DataError
from rmdiag.outputs import to_json, write_atomic
from rmdiag.persist import load_policy, save_policy
from rmdiag.rewards.base import torch_threads
from rmdiag.stages.inputs import (
    DEFAULT_MAX_LEN,
    check_ids,
    read_json,
    require,
    reward_model_for,
    split_data,
)

# `PolicyConfig` fields `rmdiag train` reads (`--policy-*`): SFT's, and those of post-training
# (which keeps its reference's shape); the scoring ones are `rmdiag evaluate`'s.
SFT_FIELDS = ("architecture", "hidden", "n_blocks", "n_heads", "dropout", "batch_size", "lr",
              "sft_epochs", "k", "threads", "progress", "seed")
POST_FIELDS = ("batch_size", "post_steps", "post_lr", "threads", "progress", "seed")
TRAINING_FILE = "training.json"


def config_subset(cls: type, names: tuple[str, ...], name: str) -> type:
    """A dataclass with only `names` of `cls`'s fields (defaults and help kept), so that
    `rmdiag.cli.add_dataclass_flags` makes flags for those alone."""
    chosen = [f for f in dataclasses.fields(cls) if f.name in names]
    return dataclasses.make_dataclass(name, [
        (f.name, type(f.default), dataclasses.field(default=f.default, metadata=f.metadata))
        for f in chosen
    ])


SFTFlags = config_subset(policies.PolicyConfig, SFT_FIELDS, "SFTFlags")
PostTrainingFlags = config_subset(policies.PolicyConfig, POST_FIELDS, "PostTrainingFlags")


def optional_fields(cls: type) -> list[tuple[str, type, str]]:
    """(name, type, help) of the fields whose default is None (``max_steps: int | None``),
    which `rmdiag.cli.add_dataclass_flags` leaves out; the type is read from the annotation."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.default is not None:
            continue
        annotation = str(f.type)
        kind = next((k for k in (int, float, str) if k.__name__ in annotation.split(" | ")),
                    None)
        if kind is not None:
            out.append((f.name, kind, f.metadata.get("help", "")))
    return out


def read_decision(path: str | os.PathLike[str], algorithm: str) -> dict[str, float]:
    """The temperature of a decision.json, which must have chosen `algorithm`."""
    source = str(path)
    payload = read_json(path)
    chosen = require(payload, "algorithm", str, source)
    if chosen != algorithm:
        raise DataError(f"the decision chose {chosen!r}, not {algorithm!r}: train "
                        f"{chosen} with it, or drop --decision", source=source)
    temperature = require(payload, "temperature", dict, source)
    names = {f.name for f in dataclasses.fields(trainers.ALGORITHMS[algorithm][0])}
    out = {}
    for key in temperature:
        value = require(temperature, key, (int, float), source)
        if key not in names:
            raise DataError(f"key 'temperature.{key}' is no field of {algorithm}'s Config",
                            source=source)
        out[key] = float(value)
    return out


def temperature_value(algorithm: str, temperature: Mapping[str, float],
                      overrides: Mapping[str, Any]) -> float | None:
    """The algorithm's temperature (λ, β or κ) as trained, for the saved policy's metadata."""
    if algorithm not in policies.TEMPERATURES:
        return None
    parameter = policies.TEMPERATURES[algorithm][0]
    if parameter in temperature:
        return float(temperature[parameter])
    if parameter in overrides:
        return float(overrides[parameter])
    config_class = trainers.ALGORITHMS[algorithm][0]
    return float(next(f.default for f in dataclasses.fields(config_class) if f.name == parameter))


def train_files(
    algorithm: str,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    columns: Mapping[str, str] | None = None,
    reward_model: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    decision: str | os.PathLike[str] | None = None,
    policy_config: policies.PolicyConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    max_len: int | None = None,
) -> policies.TrainedPolicy:
    """``rmdiag train`` as a function (module docstring): train, then save the policy into
    `out_dir` (`rmdiag.persist.save_policy`, with the data's ids) and ``training.json`` beside
    it. Bad input raises DataError before any training. Under torchrun every rank trains and
    rank 0 writes (module docstring)."""
    with distributed.process_group():
        return _train_files(algorithm, data, out_dir, columns, reward_model, reference, decision,
                            policy_config, overrides, max_len)


def _train_files(
    algorithm: str,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    columns: Mapping[str, str] | None,
    reward_model: str | os.PathLike[str] | None,
    reference: str | os.PathLike[str] | None,
    decision: str | os.PathLike[str] | None,
    policy_config: policies.PolicyConfig | None,
    overrides: Mapping[str, Any] | None,
    max_len: int | None,
) -> policies.TrainedPolicy:
    if algorithm not in trainers.ALGORITHMS:
        raise DataError(f"unknown algorithm {algorithm!r}; one of {sorted(trainers.ALGORITHMS)}")
    config = policy_config or policies.PolicyConfig()
    overrides = dict(overrides or {})
    temperature = read_decision(decision, algorithm) if decision is not None else {}
    both = sorted(set(temperature) & set(overrides))
    if both:
        raise DataError(f"--{both[0].replace('_', '-')} and --decision both set {both[0]}; "
                        "give one")
    use = policies.reward_model_use(algorithm)
    if algorithm == "sft" and reference is not None:
        raise DataError("sft trains from scratch: drop --reference")
    if algorithm != "sft" and reference is None:
        raise DataError(f"{algorithm} post-trains a saved SFT policy: give --reference DIR "
                        "(rmdiag train sft --out DIR)")
    if use == "none" and reward_model is not None:
        raise DataError(f"{algorithm} uses no reward model: drop --reward-model")
    if use == "required" and reward_model is None:
        raise DataError(f"{algorithm} needs a reward model: give --reward-model DIR "
                        "(rmdiag audit writes OUT/reward_model)")
    log, split = split_data(data, columns)
    sft = None
    if reference is not None:
        model, metadata = load_policy(reference)
        check_ids(reference, log, "reference policy")
        if max_len is not None and max_len != model.config.max_len:
            raise DataError(f"--max-len {max_len} differs from the reference policy's "
                            f"{model.config.max_len}", source=str(reference))
        max_len = model.config.max_len
        sft = policies.TrainedPolicy("sft", metadata["algorithm"], {}, model, 0.0, 0)
    max_len = max_len or DEFAULT_MAX_LEN
    ensemble = reward_model_for(reward_model, log)
    with torch_threads(config.threads):
        architecture = sft.model.config.architecture if sft is not None else config.architecture
        policy_data = policies.policy_data(split, max_len, policies.uses_timestamps(architecture))
        if sft is None:
            trained = policies.train_sft(policy_data, max_len, config, overrides=overrides)
        else:
            train_data = None
            if algorithm == "a-sft" and ensemble is not None:
                train_data = policies.a_sft_data(policy_data, sft, ensemble, config, overrides)
            trained = policies.train_policy(algorithm, policy_data, sft, config, temperature,
                                            ensemble, train_data, overrides=overrides)
    value = temperature_value(algorithm, temperature, overrides)
    if not distributed.is_main():  # the weights are the same on every rank: rank 0 saves them
        return trained
    save_policy(trained.model, out_dir, algorithm=algorithm, temperature=value,
                ids=(log.user_ids, log.item_ids))
    record = {
        "algorithm": algorithm, "temperature": temperature, "temperature_value": value,
        "temperature_source": "decision" if temperature else "config",
        "data": log.source, "split": "leave-last-out", "max_len": max_len,
        "reference": None if reference is None else str(reference),
        "reward_model": None if reward_model is None else str(reward_model),
        "decision": None if decision is None else str(decision),
        "steps": trained.steps, "train_seconds": round(trained.train_seconds, 3),
        "world_size": distributed.world_size(),  # processes that trained it (torchrun)
        "policy_config": dataclasses.asdict(config), "config_overrides": overrides,
    }
    write_atomic(Path(out_dir) / TRAINING_FILE, to_json(record))
    return trained
