"""`run`: the whole job, stage by stage (see the package docstring); `audit_files`: the
`rmdiag audit` command."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from rmdiag import distributed, overoptimization, policies, selection_features
from rmdiag.audit import AuditConfig, AuditResult, audit, audit_inputs
from rmdiag.audit.statistics import coverage_warning
from rmdiag.data import DataError, Interactions, encode, load, validate
from rmdiag.outputs import publish
from rmdiag.pipeline.clock import StageClock
from rmdiag.pipeline.config import RunConfig
from rmdiag.pipeline.resume import CachedTrainer, StageKeys, simulation_record
from rmdiag.pipeline.summary import RunSummary, conclusion
from rmdiag.report import audit_files_content
from rmdiag.rewards.base import torch_threads
from rmdiag.select import (
    Decision,
    Judgement,
    SelectConfig,
    choose_temperature,
    decide,
    default_temperature,
    judge,
    rule_features,
)
from rmdiag.sequences import event_sequences, user_sequences
from rmdiag.split import Split, leave_last_out, temporal_split, time_quantile, unexplored_mask
from rmdiag.workdir import WorkDir


def load_or_simulate(
    data: str | os.PathLike[str] | None,
    columns: Mapping[str, str] | None,
    simulation: Any | None,
) -> tuple[Interactions, Any | None]:
    """The user's log, or (no path given) the built-in simulated world's log and the world."""
    if data is not None:
        return load(data, columns), None
    from rmdiag.simulate import SimulationConfig, World

    if isinstance(simulation, World):  # a world built or fitted by the caller
        world = simulation
    else:
        world = World(simulation if simulation is not None else SimulationConfig())
    source = "<simulated world>"
    return encode(validate(world.generate(), source), source=source), world

def split_log(log: Interactions, config: RunConfig) -> Split:
    if config.split == "temporal":
        return temporal_split(
            log,
            test_start=time_quantile(log, config.test_quantile),
            valid_start=time_quantile(log, config.valid_quantile),
        )
    return leave_last_out(log)

def run(
    config: RunConfig,
    data: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
    out: str | os.PathLike[str] | None = None,
    simulation: Any | None = None,
    audit_config: AuditConfig | None = None,
    select_config: SelectConfig | None = None,
    policy_config: policies.PolicyConfig | None = None,
) -> RunSummary:
    """Run the job (module docstring); with `out`, write every file there, only once everything
    succeeded, and keep each finished stage in `out/.work` (`config.resume` reuses them). Bad
    input raises `rmdiag.data.DataError` before any work. Without `data`, `simulation` is the
    world: a `SimulationConfig` (default: the built-in one) or a `World`, e.g. one fitted to a
    real log (`rmdiag.simulate.world_from_interactions`), whose true reward then scores every
    policy.

    Under torchrun (`rmdiag.distributed`) every rank runs it: each training data-parallel,
    the decision rank 0's, `.work` and the files rank 0's alone; the scoring and the report
    run on rank 0 only, so the other ranks return once the last policy is trained, with the
    summary's `policies` empty."""
    with distributed.process_group():
        return _run(config, data, columns, out, simulation, audit_config, select_config,
                    policy_config)


def _run(
    config: RunConfig,
    data: str | os.PathLike[str] | None,
    columns: Mapping[str, str] | None,
    out: str | os.PathLike[str] | None,
    simulation: Any | None,
    audit_config: AuditConfig | None,
    select_config: SelectConfig | None,
    policy_config: policies.PolicyConfig | None,
) -> RunSummary:
    if config.resume and out is None:
        raise ValueError("resume needs the output directory (out) whose .work it continues")
    if data is None and simulation is None:
        from rmdiag.simulate import SimulationConfig

        simulation = SimulationConfig()
    audit_config = audit_config or AuditConfig()
    select_config = select_config or SelectConfig()
    policy_config = policy_config or policies.PolicyConfig()
    stage = StageClock()
    stage("load")
    log, world = load_or_simulate(data, columns, simulation)
    stage("split")
    split = split_log(log, config)
    _check_runnable(split, log)
    heldout = split.valid.concat(split.test)  # what the audit holds out, as `rmdiag audit` does
    external = _external_predictions(config.predictions or None, config.predictions_name,
                                     heldout)  # refused before any work when bad
    summary = RunSummary(
        data=log.summary(), split=_split_summary(split, config, audit_config),
        sequences=_sequence_summary(split, config),
    )
    # Only now, once the input is known good (and written only once a stage is done, so input
    # the audit refuses leaves nothing behind either).
    work = WorkDir(out, resume=config.resume) if out is not None else None
    keys = StageKeys(data, columns, simulation, config, audit_config, policy_config, work)
    if config.audit:
        result = None
        if work is not None and work.has_audit(keys.audit):
            stage("audit", ": reused from .work (inputs unchanged)")
            result = work.load_audit()
            work.record("audit", keys.audit_inputs, done=True, status="reused")
        else:
            stage("audit", ": baselines and the reward-model ensemble")
            result = audit(split.train, heldout, config=audit_config,
                           external_predictions=external and external[0])
            if external is not None:
                result.data["external_predictions"] = external[1]
            if work is not None:
                work.save_audit(result, keys.audit)
                work.record("audit", keys.audit_inputs, done=True, status="computed")
        summary.audit = result
    data = policies.policy_data(split, config.max_len,
                                policies.uses_timestamps(policy_config.architecture))
    trainer = CachedTrainer(work, keys, stage)
    with torch_threads(policy_config.threads):
        # SFT first: the over-optimization curve samples from it, and the decision reads it
        stage("policies.sft", ": behaviour cloning, early-stopped on validation NDCG")
        sft = trainer.sft(data, config.max_len, policy_config)
        if summary.audit is not None:
            summary.audit.overoptimization = _curve(
                summary.audit, data, sft, world, config, audit_config, select_config, stage)
            summary.judgement = _judge(summary.audit, select_config)
        stage("select")
        # Rank 0's decision on every rank: which policies train next must be the same on all
        # (the audits agree, the LightGBM members being deterministic, but a figure on the
        # threshold must not split the ranks between two algorithms).
        decision = distributed.from_main(decide(summary.judgement, select_config,
                                                _rule_features(summary, split, data, sft,
                                                               select_config, policy_config)))
        _policies_stage(summary, decision, data, sft, world, config, policy_config,
                        select_config.alpha, stage, trainer)
    run_settings = {k: v for k, v in asdict(config).items() if k != "resume"}  # not a result's
    summary.settings = {
        "config": run_settings, "audit_config": asdict(audit_config),
        "select_config": asdict(select_config), "policy_config": asdict(policy_config),
    } | ({"simulation": simulation_record(simulation)} if world is not None else {})
    summary.settings["distributed"] = distributed.describe()  # the processes that trained
    stage(None)
    summary.timings = stage.seconds
    summary.memory = stage.memory
    if out is not None and distributed.is_main():  # the one writer under torchrun
        stage("report", f": writing {out}")
        publish(out, summary.files())
    return summary

def _check_runnable(split: Split, log: Interactions) -> None:
    if len(split.test) < 2 or len(split.valid) < 2:
        raise DataError(
            f"{len(split.valid)} validation and {len(split.test)} test events: policies need "
            "at least 2 of each to be chosen and scored (leave-last-out needs users with at "
            "least 3 events)", source=log.source,
        )

def _split_summary(split: Split, config: RunConfig, audit_config: AuditConfig) -> dict[str, Any]:
    unexplored = unexplored_mask(split.train, split.test, audit_config.min_count)
    return {
        "method": config.split,
        "train": len(split.train),
        "valid": len(split.valid),
        "test": len(split.test),
        "min_count": audit_config.min_count,
        "test_unexplored_share": float(unexplored.mean()) if len(unexplored) else 0.0,
    }

def _sequence_summary(split: Split, config: RunConfig) -> dict[str, Any]:
    train_sequences = user_sequences(split.train, config.max_len)
    test_sequences = event_sequences(split.train.concat(split.valid), split.test, config.max_len)
    return {
        "max_len": config.max_len,
        "train_shape": list(train_sequences.items.shape),
        "test_history_shape": list(test_sequences.history_items.shape),
        "mean_test_history": float((test_sequences.history_items > 0).sum(1).mean())
        if len(test_sequences) else 0.0,
    }

def _rule_features(summary: RunSummary, split: Split, data: policies.PolicyData,
                   sft: policies.TrainedPolicy, select_config: SelectConfig,
                   policy_config: policies.PolicyConfig) -> dict[str, float | None]:
    """The figures `select_config.rule` reads (`rmdiag.selection_features`), none for the
    verdict's rule; the greedy figures cost a judge pass over the test users' contexts and, for
    the logged-reward ones, an ensemble pass over the audit's held-out events."""
    names = rule_features(select_config)
    if not names or summary.audit is None:
        return {}
    ensemble = summary.audit.ensemble
    judge_ = policies.make_judge(ensemble, policy_config)

    def greedy() -> dict[str, float]:
        if judge_ is None:  # an audit without an ensemble that has members
            return dict.fromkeys(selection_features.GREEDY)  # type: ignore[arg-type]
        return selection_features.greedy_features(judge_, ensemble, sft.model,
                                                  data.test.context, (data.valid, data.test),
                                                  data.log.n_items, names=names)

    return selection_features.selection_features(
        names, summary.audit, summary.split["test_unexplored_share"], split.train.items,
        split.train.rewards, split.train.n_items, greedy)

def _curve(result: AuditResult, data: policies.PolicyData, sft: policies.TrainedPolicy,
           world: Any | None, config: RunConfig, audit_config: AuditConfig,
           select_config: SelectConfig, stage: StageClock) -> dict[str, Any]:
    """audit.json's `overoptimization` in `rmdiag run` (`rmdiag.overoptimization.audit_curve`):
    the audited ensemble against the true reward on a simulated world, two half ensembles on
    real data; recomputed on `--resume` (deterministic: the SFT policy and the ensemble are
    reused, the draws seeded)."""
    if not config.overoptimization:
        return overoptimization.unavailable("not computed (--no-overoptimization)")
    external = result.data.get("external_predictions")
    how = (": the audited ensemble against the true reward" if world is not None else
           ": proxy and judge ensembles fitted on two halves of the users")
    stage("overoptimization", f"{how}, best-of-n over the SFT policy's samples")
    true_reward = (policies.EncodedReward(world.true_reward, data.log.user_ids,
                                          data.log.item_ids) if world is not None else None)
    return overoptimization.audit_curve(
        sft.model, data, audit_config, alpha=select_config.alpha, ensemble=result.ensemble,
        true_reward=true_reward, external=external["name"] if external else None)

def _policies_stage(
    summary: RunSummary,
    decision: Decision,
    data: policies.PolicyData,
    sft: policies.TrainedPolicy,
    world: Any | None,
    config: RunConfig,
    policy_config: policies.PolicyConfig,
    alpha: float,
    stage: StageClock,
    trainer: CachedTrainer,
) -> None:
    """Train the chosen algorithm (swept or at its default temperature) and whatever
    `--compare` adds from the trained SFT policy; score them all on the test events; fill the
    summary's policy figures."""
    ensemble = summary.audit.ensemble if summary.audit is not None else None
    true_reward = (policies.EncodedReward(world.true_reward, data.log.user_ids,
                                          data.log.item_ids) if world is not None else None)
    trained = {"sft": sft}
    names = list(dict.fromkeys([decision.algorithm, *config.compare_list]))
    names = [n for n in names if n != "sft"]
    skipped: dict[str, str] = {}
    for algorithm in names:
        if policies.reward_model_use(algorithm) == "required" and ensemble is None:
            if algorithm == decision.algorithm:
                raise DataError(f"{algorithm} needs the audited reward model; drop --no-audit")
            skipped[algorithm] = "needs the audited reward model (--no-audit was given)"
            continue
        train_data = None
        if algorithm == "a-sft" and ensemble is not None:
            stage("policies.a-sft.advantages", ": b(s) from the ensemble and SFT")
            train_data = policies.a_sft_data(data, trained["sft"], ensemble, policy_config)
        swept = config.sweep and algorithm in policies.TEMPERATURES
        if swept:
            parameter, grid = policies.temperature_grid(algorithm, data.reward_std)
            stage(f"policies.{algorithm}", f": sweep of {parameter} over {grid}")
            curve, candidates = policies.sweep_temperature(
                algorithm, data, trained["sft"], policy_config, grid, ensemble, true_reward,
                train_data, policies.fixed_settings(algorithm), trainer.sweep_point(parameter))
            summary.sweep[algorithm] = curve
            chosen = choose_temperature(decision, curve, policies.fixed_settings(algorithm))
            curve["best"] = chosen.temperature[parameter]
            trained[algorithm] = candidates[[p["value"] for p in curve["points"]].index(
                curve["best"])]
            if algorithm == decision.algorithm:
                decision = chosen
        else:
            temperature = policies.default_temperature(algorithm, data.reward_std)
            stage(f"policies.{algorithm}")
            trained[algorithm] = trainer.post(
                algorithm, data, trained["sft"], policy_config, temperature, ensemble,
                train_data)
            if algorithm == decision.algorithm:
                decision = default_temperature(decision, temperature)
    summary.decision = decision
    summary.models = {name: policy.model for name, policy in trained.items()}
    if not distributed.is_main():
        return  # the scoring and the report are rank 0's: it trains nothing more
    stage("policies.scoring", ": every policy on the test events")
    judge_ = policies.make_judge(ensemble, policy_config)
    per_user = {name: policies.score_policy(policy.model, data.test, policy_config.k, judge_,
                                            true_reward)
                for name, policy in trained.items()}
    threshold = policies.high_reward_threshold(data, policy_config)
    high = data.test.target_rewards >= threshold
    summary.policies = policies.summarize_policies(per_user, high, policy_config)
    for name, policy in trained.items():
        summary.policies[name] = {"algorithm": policy.algorithm,
                                  "temperature": policy.temperature,
                                  "train_seconds": round(policy.train_seconds, 3),
                                  "steps": policy.steps} | summary.policies[name]
    summary.evaluation = {
        "users": len(data.test), "k": policy_config.k, "confidence": policy_config.confidence,
        "interval": "bca bootstrap over users", "high_reward_threshold": threshold,
        "high_reward_users": int(high.sum()), "chosen": decision.algorithm, "reference": "sft",
        "judge_members": len(ensemble.member_kinds) if ensemble is not None else 0,
        "simulated": world is not None, "history_excluded": True, "ties": "expected",
        "p_adjustment": "holm over the policies compared with sft, per metric",
        "skipped": skipped,
        "coverage_warnings": [w for w in (
            coverage_warning(len(data.test), "The test set"),
            coverage_warning(int(high.sum()), "The high-reward subset of the test users"),
        ) if w is not None],
    }
    summary.conclusion = conclusion(summary.policies, decision, policy_config.k, alpha)
    summary.examples = policies.recommendation_examples(
        data.log, data.test, {name: policy.model for name, policy in trained.items()})
    summary.per_user = policies.per_user_table(data.log, data.test, per_user, high)

def audit_files(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    holdout: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
    config: AuditConfig | None = None,
    select_config: SelectConfig | None = None,
    predictions: str | os.PathLike[str] | None = None,
    predictions_name: str = "external",
    holdout_kind: str = "log",
    heldout_per_user: int = 2,
    overoptimization_curve: bool = True,
    policy_config: policies.PolicyConfig | None = None,
) -> tuple[AuditResult, Judgement]:
    """``rmdiag audit --data FILE [--holdout FILE] [--predictions FILE] --out DIR`` as a
    function: read, audit, judge, write audit.json, audit.html and the fitted ensemble in
    ``reward_model/`` (``rmdiag.persist``, with the log's ids, for ``rmdiag train`` and
    ``rmdiag evaluate``).

    With ``predictions`` (a file of your own model's predictions of the held-out events,
    ``rmdiag.audit.external.read_predictions``), that model is audited too, under
    ``predictions_name``, and the verdict is on it; ``data.external_predictions`` counts the
    rows matched and ignored.

    ``holdout_kind="random"`` declares the holdout file ratings under randomized exposure (all
    of it is then the unexplored slice); ``heldout_per_user`` is k of leave-last-k-out when
    there is no holdout file.

    With ``overoptimization_curve`` (``rmdiag audit`` without ``--no-overoptimization``) an
    SFT policy (``policy_config``; default ``PolicyConfig`` without progress bars) is trained on
    the training events, early-stopped on the held-out ones, and audit.json's
    ``overoptimization`` is its best-of-n curve against a proxy and a judge ensemble fitted on
    two halves of the users (``rmdiag.overoptimization.audit_curve``); the judgement reads it.

    Raises ``rmdiag.data.DataError`` (``InsufficientDataError`` included) before writing
    anything when the input is bad or cannot support an audit.

    Under torchrun every rank audits (the sequence members and the curve's SFT policy train
    data-parallel) and rank 0 alone writes.
    """
    with distributed.process_group():
        return _audit_files(data, out_dir, holdout, columns, config, select_config, predictions,
                            predictions_name, holdout_kind, heldout_per_user,
                            overoptimization_curve, policy_config)


def _audit_files(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    holdout: str | os.PathLike[str] | None,
    columns: Mapping[str, str] | None,
    config: AuditConfig | None,
    select_config: SelectConfig | None,
    predictions: str | os.PathLike[str] | None,
    predictions_name: str,
    holdout_kind: str,
    heldout_per_user: int,
    overoptimization_curve: bool,
    policy_config: policies.PolicyConfig | None,
) -> tuple[AuditResult, Judgement]:
    from rmdiag.persist import save_reward_model

    if holdout_kind == "random" and holdout is None:
        raise DataError("--holdout-kind random describes a holdout file: give it with --holdout")
    train, heldout = audit_inputs(data, holdout, columns, heldout_per_user=heldout_per_user)
    external = _external_predictions(predictions, predictions_name, heldout)
    result = audit(train, heldout, config=config,
                   external_predictions=external and external[0], heldout_exposure=holdout_kind)
    if external is not None:
        result.data["external_predictions"] = external[1]
    select_config = select_config or SelectConfig()
    if overoptimization_curve:
        started = time.perf_counter()
        result.overoptimization = _audit_curve(train, heldout, result, select_config,
                                               policy_config)
        result.timings["overoptimization"] = time.perf_counter() - started
    else:
        result.overoptimization = overoptimization.unavailable(
            "not computed (--no-overoptimization)")
    judgement = _judge(result, select_config)
    if not distributed.is_main():  # rank 0 renders and writes
        return result, judgement
    files = audit_files_content(result, judgement)  # rendered before anything is written
    if result.ensemble is not None:
        save_reward_model(result.ensemble, os.path.join(out_dir, "reward_model"),
                          ids=(train.user_ids, train.item_ids))
    publish(out_dir, files)
    return result, judgement


def _audit_curve(train: Interactions, heldout: Interactions, result: AuditResult,
                 select_config: SelectConfig,
                 policy_config: policies.PolicyConfig | None) -> dict[str, Any]:
    """`rmdiag audit`'s curve: an SFT policy trained on the audit's training events (validated
    on its held-out ones), its best-of-n samples scored by half ensembles (no true reward)."""
    external = result.data.get("external_predictions")
    if external is not None:  # unavailable: before training anything
        return overoptimization.unavailable(overoptimization.external_reason(external["name"]))
    policy_config = policy_config or policies.PolicyConfig(progress=False)
    max_len = RunConfig().max_len
    data = policies.policy_data(Split(train, heldout, heldout), max_len,
                                policies.uses_timestamps(policy_config.architecture))
    with torch_threads(policy_config.threads):
        sft = policies.train_sft(data, max_len, policy_config)
        return overoptimization.audit_curve(sft.model, data, result.config,
                                            alpha=select_config.alpha)


def _external_predictions(
    predictions: str | os.PathLike[str] | None, name: str, heldout: Interactions
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """({name: member predictions [M, N] of the held-out events}, what was matched) of a
    predictions file, or None without one; bad files raise `DataError` naming the file."""
    if predictions is None:
        return None
    from rmdiag.audit.external import check_name, read_predictions

    try:
        check_name(name)
    except ValueError as error:
        raise DataError(str(error)) from error
    values, info = read_predictions(predictions, heldout)
    return {name: values}, {**info, "name": name}


def _judge(result: AuditResult, select_config: SelectConfig) -> Judgement:
    """The verdict on the external model when the audit has one, else on the ensemble."""
    external = result.data.get("external_predictions")
    if external is None:
        return judge(result, select_config)
    judgement = judge(result, select_config, model=external["name"])
    return replace(judgement, reasons=(
        f"The verdict is on the external model '{external['name']}' (predictions from "
        f"{external['source']}), not on rmdiag's own ensemble.", *judgement.reasons))
