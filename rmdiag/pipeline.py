"""`rmdiag run`: the whole job on one log, stage by stage (DESIGN.md, Layout).

1. load (or simulate) the log; 2. split it (leave-last-out or temporal) and build sequences;
3. audit: fit the baselines and the reward-model ensemble, measure them on held-out events;
4. select: the verdict and the algorithm it calls for (`rmdiag.select`); 5. policies: train
SFT, sweep the chosen algorithm's temperature on the validation events (or take its default),
train whatever `--compare` adds, score every policy on the test events (`rmdiag.policies`);
6. report: summary.json, decision.json, audit.json, audit.html, report.html and
per_user.parquet, published together at the end, each file atomically -- a failure or an
interrupt leaves no file half-written and, before the last stage, none at all.

With `out`, each finished stage also keeps its outputs in the hidden work directory
`out/.work/` (`rmdiag.workdir`: the audit, every trained policy, the checkpoint of the one in
training, and `stages.json`, the record of each stage's input fingerprint). `--resume` reuses
every stage whose inputs are unchanged and recomputes the rest: a changed input changes the
fingerprint of its stage and of every stage after it. Load, split, the selection, A-SFT's
advantages and the scoring are recomputed each time (deterministic). Without `--resume` a run
starts a fresh `.work`; it stays after a successful run, so a later `--resume` with changed
policy settings reuses the audit.

`audit_files` is `rmdiag audit`: read, audit, judge, write.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

import trainers
from rmdiag import policies
from rmdiag.audit import AuditConfig, AuditResult, audit, audit_inputs
from rmdiag.data import DataError, Interactions, encode, load, validate
from rmdiag.outputs import publish, to_json
from rmdiag.report import audit_files_content, audit_json, render_run_report
from rmdiag.select import (
    Decision,
    Judgement,
    SelectConfig,
    choose_temperature,
    decide,
    default_temperature,
    judge,
)
from rmdiag.sequences import event_sequences, user_sequences
from rmdiag.split import Split, leave_last_out, temporal_split, time_quantile, unexplored_mask
from rmdiag.workdir import WorkDir, file_identity, fingerprint


@dataclass(frozen=True)
class RunConfig:
    """Settings of `rmdiag run` (each becomes a CLI flag)."""

    max_len: int = field(
        default=50,
        metadata={
            "help": "history length L; 50 is SASRec's setting for sparse logs (Kang & McAuley 2018)"
        },
    )
    split: str = field(
        default="leave-last-out",
        metadata={
            "help": "held-out events: 'leave-last-out' (per user) or 'temporal' (global cut)"
        },
    )
    test_quantile: float = field(
        default=0.9,
        metadata={"help": "temporal split: share of events (by time) before the test period"},
    )
    valid_quantile: float = field(
        default=0.8,
        metadata={"help": "temporal split: share of events (by time) before the validation period"},
    )
    audit: bool = field(
        default=True,
        metadata={"help": "audit the reward-model ensemble (settings: the --audit-* flags)"},
    )
    sweep: bool = field(
        default=True,
        metadata={
            "help": "choose the temperature (λ, β or κ) by a validation sweep; --no-sweep takes "
            "the documented default (rmdiag.policies.TEMPERATURES)"
        },
    )
    compare: str = field(
        default="",
        metadata={
            "help": "policies to train beside SFT and the chosen one: 'all' (every algorithm in "
            "trainers.ALGORITHMS) or a comma-separated list of names"
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue the run in --out after its last finished stage: reuse each stage "
            "kept in OUT/.work whose inputs (settings, data file, earlier stages) are unchanged, "
            "resume an interrupted training from its checkpoint, recompute the rest; without "
            "it a run starts a fresh OUT/.work (exact with the same --policy-threads)"
        },
    )

    def __post_init__(self) -> None:
        if self.split not in ("leave-last-out", "temporal"):
            raise ValueError(f"split must be 'leave-last-out' or 'temporal', got {self.split!r}")
        if not 0 < self.valid_quantile < self.test_quantile < 1:
            raise ValueError("need 0 < valid_quantile < test_quantile < 1")
        if self.max_len < 1:
            raise ValueError("max_len must be positive")
        unknown = [n for n in self.compare_list if n not in trainers.ALGORITHMS]
        if self.compare.strip() != "all" and unknown:
            raise ValueError(
                f"compare must be 'all' or names from {sorted(trainers.ALGORITHMS)}, got "
                f"{', '.join(unknown)}"
            )

    @property
    def compare_list(self) -> list[str]:
        if self.compare.strip() == "all":
            return list(trainers.ALGORITHMS)
        return [n.strip() for n in self.compare.split(",") if n.strip()]


@dataclass
class RunSummary:
    """What `rmdiag run` found; `to_json()` is summary.json."""

    data: dict[str, Any]
    split: dict[str, Any]
    sequences: dict[str, Any]
    audit: AuditResult | None = None
    judgement: Judgement | None = None  # the selection's verdict on `audit`
    decision: Decision | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    conclusion: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the configs used, as JSON
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    per_user: pa.Table | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"data": self.data, "split": self.split,
                                   "sequences": self.sequences}
        if self.audit is not None and self.judgement is not None:
            payload["audit"] = audit_json(self.audit, self.judgement)
        if self.decision is not None:
            payload["decision"] = self.decision.to_json()
        if self.sweep:
            payload["sweep"] = self.sweep
        if self.policies:
            payload |= {"policies": self.policies, "evaluation": self.evaluation,
                        "conclusion": self.conclusion, "examples": self.examples}
        return payload | self.settings | ({"timings": self.timings} if self.timings else {})

    def files(self) -> dict[str, str | bytes]:
        """Every output file, rendered in memory (publish them together)."""
        payload = self.to_json()
        out: dict[str, str | bytes] = {"summary.json": to_json(payload)}
        if self.decision is not None:
            out["decision.json"] = to_json(self.decision.to_json())
        if self.audit is not None and self.judgement is not None:
            out |= audit_files_content(self.audit, self.judgement)
        if self.per_user is not None:
            buffer = io.BytesIO()
            pq.write_table(self.per_user, buffer)
            out["per_user.parquet"] = buffer.getvalue()
        out["report.html"] = render_run_report(payload)
        return out

    def render(self) -> str:
        d, s, q = self.data, self.split, self.sequences
        lines = [
            f"data      {d['source']}: {d['events']} events, {d['users']} users, "
            f"{d['items']} items, {d['duplicate_rows']} exact duplicate rows",
            f"rewards   mean {d['reward']['mean']:.3f}, std {d['reward']['std']:.3f}, "
            f"range [{d['reward']['min']:g}, {d['reward']['max']:g}]",
            f"split     {s['method']}: train {s['train']}, valid {s['valid']}, "
            f"test {s['test']} ({s['test_unexplored_share']:.1%} of test events "
            f"unexplored, m={s['min_count']})",
            f"sequences train {q['train_shape']}, test histories {q['test_history_shape']}, "
            f"mean history length {q['mean_test_history']:.1f}",
        ]
        if self.decision is not None:
            temperature = ", ".join(f"{k} = {v:.3g}" for k, v in self.decision.temperature.items())
            lines.append(f"verdict   {self.decision.verdict} -> {self.decision.algorithm}"
                         + (f" ({temperature})" if temperature else ""))
            lines += [f"          - {reason}" for reason in self.decision.reasons]
        if self.policies:
            k = self.evaluation["k"]
            lines.append(f"policies  test users {self.evaluation['users']}; value [interval]")
            for name, entry in self.policies.items():
                cells = [f"{metric} {_text(entry[metric])}"
                         for metric in (f"ndcg@{k}", "judge", "true_reward") if metric in entry]
                lines.append(f"  {name:10s} " + "; ".join(cells))
            lines += [f"result    {sentence}" for sentence in self.conclusion]
        return "\n".join(lines)


def _text(figure: Mapping[str, Any]) -> str:
    if figure.get("value") is None:
        return "n/a"
    return f"{figure['value']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}]"


def load_or_simulate(
    data: str | os.PathLike[str] | None,
    columns: Mapping[str, str] | None,
    simulation: Any | None,
) -> tuple[Interactions, Any | None]:
    """The user's log, or (no path given) the built-in simulated world's log and the world."""
    if data is not None:
        return load(data, columns), None
    from rmdiag.simulate import SimulationConfig, World

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


class _Stages:
    """Names each stage on stderr as it starts and keeps the seconds each took."""

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.current: str | None = None
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str | None, detail: str = "") -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0)
                                               + now - self.mark, 3)
        self.current, self.mark = name, now
        if name is not None:
            print(f"rmdiag run [{now - self.started:6.1f} s] {name}{detail}", file=sys.stderr,
                  flush=True)

    def note(self, text: str) -> None:
        """A line about the current stage, without starting another."""
        print(f"rmdiag run [{time.perf_counter() - self.started:6.1f} s] {self.current}{text}",
              file=sys.stderr, flush=True)


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
    input raises `rmdiag.data.DataError` before any work."""
    if config.resume and out is None:
        raise ValueError("resume needs the output directory (out) whose .work it continues")
    if data is None and simulation is None:
        from rmdiag.simulate import SimulationConfig

        simulation = SimulationConfig()
    audit_config = audit_config or AuditConfig()
    select_config = select_config or SelectConfig()
    policy_config = policy_config or policies.PolicyConfig()
    stage = _Stages()
    stage("load")
    log, world = load_or_simulate(data, columns, simulation)
    stage("split")
    split = split_log(log, config)
    _check_runnable(split, log)
    summary = RunSummary(
        data=log.summary(), split=_split_summary(split, config, audit_config),
        sequences=_sequence_summary(split, config),
    )
    # Only now, once the input is known good (and written only once a stage is done, so input
    # the audit refuses leaves nothing behind either).
    work = WorkDir(out, resume=config.resume) if out is not None else None
    keys = _Keys(data, columns, simulation, config, audit_config, policy_config, work)
    if config.audit:
        result = None
        if work is not None and work.has_audit(keys.audit):
            stage("audit", ": reused from .work (inputs unchanged)")
            result = work.load_audit()
            work.record("audit", keys.audit_inputs, done=True, status="reused")
        else:
            stage("audit", ": baselines and the reward-model ensemble")
            # the held-out events are the split's valid and test events, as `rmdiag audit` does
            result = audit(split.train, split.valid.concat(split.test), config=audit_config)
            if work is not None:
                work.save_audit(result, keys.audit)
                work.record("audit", keys.audit_inputs, done=True, status="computed")
        summary.audit, summary.judgement = result, judge(result, select_config)
    stage("select")
    decision = decide(summary.judgement)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(policy_config.threads)
    try:
        _policies_stage(summary, decision, split, world, config, policy_config,
                        select_config.alpha, stage, _Trainer(work, keys, stage))
    finally:
        torch.set_num_threads(previous_threads)
    run_settings = {k: v for k, v in asdict(config).items() if k != "resume"}  # not a result's
    summary.settings = {
        "config": run_settings, "audit_config": asdict(audit_config),
        "select_config": asdict(select_config), "policy_config": asdict(policy_config),
    } | ({"simulation": asdict(simulation)} if world is not None else {})
    stage(None)
    summary.timings = stage.seconds
    if out is not None:
        stage("report", f": writing {out}")
        publish(out, summary.files())
    return summary


# PolicyConfig fields that do not change how a policy trains (only how it is scored or shown),
# and those that change only post-training: left out of the fingerprints they do not affect.
_SCORING_ONLY = ("high_reward", "confidence", "n_resamples", "progress")
_POST_ONLY = ("post_steps", "post_lr")


class _Keys:
    """The inputs (and so the fingerprints) of the stages `rmdiag run` keeps in `.work`."""

    def __init__(self, data: str | os.PathLike[str] | None, columns: Mapping[str, str] | None,
                 simulation: Any | None, config: RunConfig, audit_config: AuditConfig,
                 policy_config: policies.PolicyConfig, work: WorkDir | None) -> None:
        source: dict[str, Any] = {}
        if work is not None:  # hashing the file is only worth it when a resume may read it
            source = ({"file": file_identity(data), "columns": dict(columns or {})}
                      if data is not None else {"simulation": asdict(simulation)})
        split = {"split": config.split} | (
            {"test_quantile": config.test_quantile, "valid_quantile": config.valid_quantile}
            if config.split == "temporal" else {})
        self.data = source  # in the record as it is: the file's path, size, mtime and sha256
        self.audit_inputs = {"data": self.data, "split": split,
                             "audit_config": asdict(audit_config)}
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


class _Trainer:
    """Trains policies through the work directory: each one saved once trained and reused on
    `--resume` when its inputs are unchanged, its training checkpointed so an interrupted one
    resumes. Without a work directory (no `out`), plain `rmdiag.policies` training."""

    def __init__(self, work: WorkDir | None, keys: _Keys, stage: _Stages) -> None:
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


def _policies_stage(
    summary: RunSummary,
    decision: Decision,
    split: Split,
    world: Any | None,
    config: RunConfig,
    policy_config: policies.PolicyConfig,
    alpha: float,
    stage: _Stages,
    trainer: _Trainer,
) -> None:
    """Train SFT and the chosen algorithm (swept or at its default temperature) and whatever
    `--compare` adds; score them all on the test events; fill the summary's policy figures."""
    data = policies.policy_data(split, config.max_len)
    ensemble = summary.audit.ensemble if summary.audit is not None else None
    true_reward = (policies.EncodedReward(world.true_reward, data.log.user_ids,
                                          data.log.item_ids) if world is not None else None)
    stage("policies.sft", ": behaviour cloning, early-stopped on validation NDCG")
    trained = {"sft": trainer.sft(data, config.max_len, policy_config)}
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
            train_data = policies.a_sft_data(data, trained["sft"], ensemble)
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
    }
    summary.conclusion = conclusion(summary.policies, decision, policy_config.k, alpha)
    summary.examples = policies.recommendation_examples(
        data.log, data.test, {name: policy.model for name, policy in trained.items()})
    summary.per_user = policies.per_user_table(data.log, data.test, per_user, high)


def conclusion(
    figures: Mapping[str, Mapping[str, Any]], decision: Decision, k: int, alpha: float
) -> list[str]:
    """The headline sentences: how the chosen policy differs from SFT, paired over users, on
    the true reward (simulated worlds), the judge and NDCG@k; a change counts when its
    Holm-adjusted p is below `alpha`."""
    entry = figures.get(decision.algorithm, {})
    differences = entry.get("vs_sft", {})
    temperature = ", ".join(f"{k_} = {v:.3g}" for k_, v in decision.temperature.items())
    name = decision.algorithm + (f" ({temperature})" if temperature else "")
    sentences = []
    for metric, what in (("true_reward", f"the true reward of its top-{k} slate"),
                         ("judge", f"the ensemble judge's value of its top-{k} slate"),
                         (f"ndcg@{k}", f"NDCG@{k} of the held-out next item")):
        if metric not in differences:
            continue
        d = differences[metric]
        fig = d["difference"]
        if d["p_adjusted"] >= alpha:
            verdict = "does not significantly change"
        else:
            verdict = "raises" if fig["value"] > 0 else "lowers"
        sentences.append(
            f"{name} {verdict} {what} against SFT: {fig['value']:+.4f} "
            f"[{fig['low']:+.4f}, {fig['high']:+.4f}] (paired over users, Holm p "
            f"{_p_text(d['p_adjusted'])})."
        )
    return sentences


def _p_text(p: float) -> str:
    # a paired t-test over thousands of users underflows to 0 for large effects
    return "< 1e-300" if p < 1e-300 else f"= {p:.3g}"


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
) -> tuple[AuditResult, Judgement]:
    """``rmdiag audit --data FILE [--holdout FILE] [--predictions FILE] --out DIR`` as a
    function: read, audit, judge, write audit.json, audit.html and the fitted ensemble in
    ``reward_model/`` (``rmdiag.persist``, with the log's ids, for ``rmdiag train`` and
    ``rmdiag evaluate``).

    With ``predictions`` (a file of your own model's predictions of the held-out events,
    ``rmdiag.audit.external.read_predictions``), that model is audited too, under
    ``predictions_name``, and the verdict is on it; ``data.external_predictions`` counts the
    rows matched and ignored.

    Raises ``rmdiag.data.DataError`` (``InsufficientDataError`` included) before writing
    anything when the input is bad or cannot support an audit.
    """
    from rmdiag.audit.external import check_name, read_predictions
    from rmdiag.persist import save_reward_model

    external = None
    if predictions is not None:
        try:
            check_name(predictions_name)
        except ValueError as error:
            raise DataError(str(error)) from error
    train, heldout = audit_inputs(data, holdout, columns)
    if predictions is not None:
        values, info = read_predictions(predictions, heldout)
        external = {predictions_name: values}
    result = audit(train, heldout, config=config, external_predictions=external)
    if predictions is None:
        judgement = judge(result, select_config)
    else:
        result.data["external_predictions"] = {**info, "name": predictions_name}
        judgement = judge(result, select_config, model=predictions_name)
        judgement = replace(judgement, reasons=(
            f"The verdict is on the external model '{predictions_name}' (predictions from "
            f"{info['source']}), not on rmdiag's own ensemble.", *judgement.reasons))
    files = audit_files_content(result, judgement)  # rendered before anything is written
    if result.ensemble is not None:
        save_reward_model(result.ensemble, os.path.join(out_dir, "reward_model"),
                          ids=(train.user_ids, train.item_ids))
    publish(out_dir, files)
    return result, judgement

