"""Selection: what the audit's figures say about the reward model (DESIGN.md, Selection).

The audit (``rmdiag.audit``) measures; this module decides. ``judge(result, config)`` reads an
``AuditResult``'s figures and returns a ``Judgement``: the verdict (one of ``VERDICTS``), the
sentences that justify it (citing the figures) and the evidence (those figures, as JSON figures
with their Holm-adjusted p-values). ``verdict_from`` is the rule itself, on the figures alone.

The rule (``verdict_from``; "beats" = significantly better, below):

- ``generalizes``: the model beats every baseline (global_mean, user_mean, item_mean, bias) in
  level (RMSE) *and* in within-user ordering (pairwise accuracy), on all held-out events *and*
  on the unexplored slice. A slice too small to measure is no evidence: then the verdict cannot
  be ``generalizes``.
- ``directional``: not that, but it orders a user's held-out events better than chance and
  better than each of ``directional_baselines`` (default item_mean and bias, the baselines that
  order a user's items at all): its ordering can be followed, its level is not trustworthy.
- ``unreliable``: otherwise.
- The over-optimization guard (``overoptimization_guard``): when the audit's best-of-n curve
  (``AuditResult.overoptimization``, ``rmdiag.overoptimization``) shows over-optimization --
  the gold stops rising significantly before the largest n (``gold_peak_n`` < n_max) while the
  proxy keeps rising past it, i.e. the proxy-gold gap widens significantly after the gold's
  peak (``divergence``, one-sided p < ``alpha``) -- the verdict cannot be ``generalizes``
  (optimizing the model online would not transfer), so it is ``directional``, which
  ``generalizes`` implies. A curve that is unavailable (not computed, or a predictions file
  that cannot score sampled items) is no evidence either way: the guard does not apply.

"Beats" means the same on both slices: the paired difference from the baseline (users
resampled jointly) is on the better side by more than the gain threshold (``min_rmse_gain``,
``min_pairwise_gain``) and its Holm-adjusted p-value is below ``alpha``. On the unexplored
slice, which is small by construction, this is deliberately strict: "no significant loss" is
what any slice too small to tell models apart would show, and the point of the slice is
evidence that the model is right where the log rarely looked -- where a policy optimized against
it will go. With leave-last-out (two held-out events per user) the unexplored slice rarely has
the within-user pairs pairwise accuracy needs; a randomized-exposure holdout (``rmdiag audit
--holdout``) measures it. The per-user constants (global_mean, user_mean) score exactly 0.5 in
ordering, so beating them there is being better than chance.

The verdict is always reported, but since the selection study (issue 12) it does not choose by
default: the verdict's mapping (generalizes -> PPO, directional -> A-SFT, unreliable ->
exp-SFT; ``SelectConfig(rule="verdict")``) had a held-out mean regret of 0.17 of true top-10
reward there, picking exp-SFT where PPO against the trained ensemble was best. ``decide`` runs
``SelectConfig.rule``, by default ``CALIBRATED_RULE``, the decision list the study fitted on its
calibration worlds over figures known before post-training (``rmdiag.selection_features``):
PPO when the ensemble orders a user's held-out items worse than ``bias`` (pairwise-accuracy
gain below -0.002), else A-SFT when the ensemble's own predicted gain of a pessimistic greedy
slate over SFT's is below 0.115 (in the reward's units: the log leaves little to find), else
PPO. Provisional: fitted on the 2026-12-03 records (held out: tied-best in 23 of 24 worlds),
it is tied-best in 42 of 48 worlds of the 2026-12-04 rerun of the current code (mean regret
0.0057 against always-PPO's 0.0080), whose own fitted rule did not carry over to its held-out
half; issue 12 stays open (benchmarks/RESULTS.md, Selection study).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rmdiag.audit import SLICES, AuditResult, Figure
from rmdiag.rewards import BASELINES

VERDICTS: tuple[str, ...] = ("generalizes", "directional", "unreliable")
LEVEL, ORDERING = "rmse", "pairwise_accuracy"
CHANCE = "user_mean"  # a per-user constant: its within-user ordering is chance (0.5)
# `SelectConfig.rule`'s default, as `python -m benchmarks.selection_study` printed it
# (`select_rule`) on the 2026-12-03 records: fitted on 24 calibration worlds, measured on 24
# held-out ones; provisional (see the docstring).
CALIBRATED_RULE = "ppo if pairwise_gain_bias < -0.002; a-sft if greedy_gain < 0.115; otherwise ppo"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SelectConfig:
    """The verdict's thresholds; each field becomes a flag (``rmdiag audit --alpha``,
    ``rmdiag run --select-alpha``). "Significant" means Holm-adjusted p < ``alpha``."""

    alpha: float = field(
        default=0.05, metadata=_help("significance level for Holm-adjusted p-values (verdict)")
    )
    min_rmse_gain: float = field(
        default=0.0,
        metadata=_help("verdict: an RMSE gain over a baseline counts only when larger than this"),
    )
    min_pairwise_gain: float = field(
        default=0.0,
        metadata=_help("verdict: a pairwise-accuracy gain counts only when larger than this"),
    )
    overoptimization_guard: bool = field(
        default=True,
        metadata=_help(
            "verdict: not `generalizes` when the best-of-n curve shows over-optimization (the "
            "gold peaks before the largest n and the proxy-gold gap widens significantly after "
            "the peak); issue 12 calibrates it"
        ),
    )
    directional_baselines: str = field(
        default="item_mean,bias",
        metadata=_help(
            "verdict: `directional` needs a significantly better within-user ordering (pairwise "
            "accuracy) than chance and than each of these baselines"
        ),
    )
    # The default is the decision list the selection study fitted on its calibration worlds
    # (`python -m benchmarks.selection_study`, 48 worlds, seed 0; held-out accuracy 0.958,
    # mean regret 0.0020 against the verdict rule's 0.173; benchmarks/RESULTS.md, Selection).
    rule: str = field(
        default=CALIBRATED_RULE,
        metadata=_help(
            "how the algorithm follows from the evidence: a decision list over "
            "rmdiag.selection_features.FEATURES, 'ALG if FEATURE < T; ...; otherwise ALG' (a "
            "missing figure makes its condition false; the default is the one the selection "
            "study calibrated), or 'verdict' (generalizes -> ppo, directional -> a-sft, "
            "unreliable -> exp-sft)"
        ),
    )

    def __post_init__(self) -> None:
        problems = []
        if not set(self.directional_baseline_list) <= set(BASELINES):
            problems.append(
                f"directional_baselines must name baselines {BASELINES}, "
                f"got {self.directional_baselines!r}"
            )
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_rmse_gain < 0 or self.min_pairwise_gain < 0:
            problems.append("min_rmse_gain and min_pairwise_gain must be >= 0")
        try:
            parse_rule(self.rule)
        except ValueError as error:
            problems.append(str(error))
        if problems:
            raise ValueError("invalid SelectConfig: " + "; ".join(problems))

    @property
    def directional_baseline_list(self) -> list[str]:
        return [b.strip() for b in self.directional_baselines.split(",") if b.strip()]


@dataclass(frozen=True)
class Judgement:
    """What ``judge`` decided: the verdict, its reasons (sentences citing the audit's figures),
    the evidence and the thresholds used.

    ``evidence`` maps a name to a JSON figure ``{"value", "low", "high"}`` (plus ``reason`` when
    unavailable): ``<slice>.<metric>.<model>`` for the model's own RMSE and pairwise accuracy,
    ``<slice>.<metric>.<model>-<baseline>`` for each comparison the rule read (the difference
    model - baseline, with ``p_value`` and Holm's ``p_adjusted``), and, when the audit has a
    best-of-n curve, ``overoptimization.gold_peak_n`` (``{"value": n, "n_max", "alpha"}``),
    ``overoptimization.proxy_gold_gap`` (proxy − gold at n_max) and
    ``overoptimization.divergence`` (the gap's widening after the peak, with its one-sided
    ``p_value``).
    """

    verdict: str
    reasons: tuple[str, ...]
    evidence: dict[str, dict[str, Any]]
    config: SelectConfig

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "evidence": self.evidence}


def judge(
    result: AuditResult, config: SelectConfig | None = None, *, model: str = "ensemble"
) -> Judgement:
    """The verdict on ``model`` (default: the ensemble) from an audit's figures, its
    over-optimization curve included."""
    return verdict_from(
        result.models,
        result.comparisons,
        config,
        model=model,
        confidence=result.config.confidence,
        shift=result.shift.get("heldout_minus_train"),
        overoptimization=result.overoptimization,
    )


def find_comparison(comparisons: Sequence[Mapping[str, Any]], **match: str) -> Mapping[str, Any]:
    """The comparison entry whose keys (model, baseline, slice, metric) match."""
    for entry in comparisons:
        if all(entry[k] == v for k, v in match.items()):
            return entry
    raise KeyError(match)


def beats(entry: Mapping[str, Any], config: SelectConfig) -> bool:
    """Is the model significantly better than the baseline in this comparison? Lower RMSE (or
    MAE) by more than ``min_rmse_gain``, or higher pairwise accuracy by more than
    ``min_pairwise_gain``, with Holm-adjusted p < ``alpha``. An unmeasured comparison never is."""
    difference, p_adjusted = entry["difference"].value, entry["p_adjusted"]
    if difference is None or p_adjusted is None or not p_adjusted < config.alpha:
        return False
    if entry["metric"] == ORDERING:
        return difference > config.min_pairwise_gain
    return difference < -config.min_rmse_gain


def verdict_from(
    models: Mapping[str, Mapping[str, Mapping[str, Figure]]],
    comparisons: Sequence[Mapping[str, Any]],
    config: SelectConfig | None = None,
    *,
    model: str = "ensemble",
    confidence: float = 0.95,
    shift: Figure | None = None,
    overoptimization: Mapping[str, Any] | None = None,
) -> Judgement:
    """The verdict on ``model`` from the audit's figures (``AuditResult.models`` and
    ``.comparisons``, and its best-of-n curve ``overoptimization`` when there is one), with its
    reasons and evidence; the rule is in the module docstring. ``confidence`` is the audit's
    interval level, for the reasons' text. ``shift`` (the audit's held-out minus training mean
    reward) is named in the reasons when its interval excludes 0."""
    config = config or SelectConfig()
    tests = {
        (slice_name, metric): {
            b: find_comparison(
                comparisons, model=model, baseline=b, slice=slice_name, metric=metric
            )
            for b in BASELINES
        }
        for slice_name in SLICES
        for metric in (LEVEL, ORDERING)
    }
    failing = {  # the baselines the model does not beat, per (slice, metric)
        key: [b for b, entry in entries.items() if not beats(entry, config)]
        for key, entries in tests.items()
    }
    unmeasured = [
        entry
        for (slice_name, _), entries in tests.items()
        if slice_name == "unexplored"
        for entry in entries.values()
        if entry["p_adjusted"] is None
    ]
    ordering = tests["all", ORDERING]
    directional_baselines = [CHANCE, *config.directional_baseline_list]
    curve = overoptimization if has_curve(overoptimization) else None
    guarded = curve is not None and config.overoptimization_guard and over_optimized(curve,
                                                                                    config)
    beats_all = not unmeasured and not any(failing.values())
    if beats_all and not guarded:
        verdict = "generalizes"
    elif all(beats(ordering[b], config) for b in directional_baselines):
        verdict = "directional"
    else:
        verdict = "unreliable"

    figures = models[model]["all"]
    reasons = [
        f"{model}: held-out RMSE {figures[LEVEL].text()}, pairwise accuracy "
        f"{figures[ORDERING].text()} (intervals at {confidence:.0%}, users resampled).",
        _level_reason(tests["all", LEVEL], failing["all", LEVEL]),
        _ordering_reason(ordering, failing["all", ORDERING]),
        _unexplored_reason(tests, failing, unmeasured),
    ]
    if curve is not None:
        reasons.append(_overoptimization_reason(curve, guarded, config))
    if verdict == "generalizes":
        reasons.append(
            "It beats every baseline in level and in within-user ordering, on all held-out "
            "events and on the unexplored slice: it generalizes."
        )
    elif verdict == "directional" and beats_all:
        reasons.append(
            "Directional: it beats every baseline in level and in within-user ordering on both "
            "slices, but the best-of-n curve shows that optimizing it overshoots the gold: its "
            "ordering can be followed, it is not trustworthy enough to optimize against online."
        )
    elif verdict == "directional":
        reasons.append(
            "Directional: it orders a user's held-out events significantly better than "
            + ", ".join(["chance", *config.directional_baseline_list])
            + ", but it does not beat every baseline in level and ordering on both slices: "
            "its ordering can be followed, it is not trustworthy enough to optimize against."
        )
    else:
        missing = [b for b in directional_baselines if b in failing["all", ORDERING]]
        reasons.append(
            "Unreliable: directional needs a significantly better within-user ordering than "
            + ", ".join(["chance", *config.directional_baseline_list])
            + ", and it does not order better than "
            + ", ".join("chance" if b == CHANCE else b for b in missing)
            + "."
        )
    consulted = [entry for entries in tests.values() for entry in entries.values()]
    evidence = _evidence(models, consulted, model)
    if shift is not None:
        evidence["shift.heldout_minus_train"] = shift.as_dict()
        if shift.available and (shift.low > 0 or shift.high < 0):  # type: ignore[operator]
            reasons.append(_shift_reason(shift, confidence))
    if curve is not None:
        evidence |= _curve_evidence(curve)
    return Judgement(verdict, tuple(reasons), evidence, config)


def _shift_reason(shift: Figure, confidence: float) -> str:
    direction = "lower" if shift.value < 0 else "higher"  # type: ignore[operator]
    return (
        f"Exposure shift: the held-out events' mean reward is {direction} than the training "
        f"log's, held-out minus training {shift.text()} ({confidence:.0%} interval, users "
        "resampled); errors measured where the log looked may not carry over to where a policy "
        "will go."
    )


def has_curve(curve: Mapping[str, Any] | None) -> bool:
    """Does ``curve`` (audit.json's ``overoptimization``) hold figures, not only a reason?"""
    return isinstance(curve, Mapping) and "gold_peak_n" in curve


def over_optimized(curve: Mapping[str, Any], config: SelectConfig) -> bool:
    """The guard's test: the gold peaks before the largest n and the proxy-gold gap widens
    significantly after the peak (one-sided p < ``alpha``)."""
    p_value = curve["divergence"].get("p_value")
    return (curve["gold_peak_n"] < curve["n"][-1] and p_value is not None
            and p_value < config.alpha)


def _overoptimization_reason(curve: Mapping[str, Any], guarded: bool,
                             config: SelectConfig) -> str:
    n_max, peak = curve["n"][-1], curve["gold_peak_n"]
    ns = list(curve["n"])

    def at(key: str, n: int) -> str:
        return Figure(**curve[key][ns.index(n)]).text()

    def fig(key: str) -> str:
        return Figure(**{k: curve[key][k] for k in ("value", "low", "high")}).text()

    text = (
        f"Best-of-n over the SFT policy's samples (gold: {curve['gold_kind']}): the proxy goes "
        f"from {at('proxy', 1)} at n = 1 to {at('proxy', n_max)} at n = {n_max}, the gold from "
        f"{at('gold', 1)} to {at('gold', n_max)}; "
    )
    if peak == n_max:
        return text + f"the gold rises significantly at every doubling up to n = {n_max}."
    text += (
        f"the gold stops rising significantly at n = {peak} (gold {at('gold', peak)}); after "
        f"it the proxy-gold gap widens by {fig('divergence')} (one-sided p = "
        f"{curve['divergence']['p_value']:.3g}), proxy − gold at n = {n_max} "
        f"{fig('proxy_gold_gap')}"
    )
    if guarded:
        return text + (": optimizing the model overshoots its gold, so the verdict cannot be "
                       "generalizes.")
    if not config.overoptimization_guard:
        return text + " (the over-optimization guard is off)."
    return text + f": not a significant over-optimization at alpha = {config.alpha:g}."


def _curve_evidence(curve: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "overoptimization.gold_peak_n": {"value": curve["gold_peak_n"], "n_max": curve["n"][-1],
                                         "alpha": curve.get("alpha")},
        "overoptimization.proxy_gold_gap": dict(curve["proxy_gold_gap"]),
        "overoptimization.divergence": dict(curve["divergence"]),
    }


def _comparison_text(entry: Mapping[str, Any]) -> str:
    if entry["p_adjusted"] is None:
        return f"{entry['metric']} vs {entry['baseline']}: {entry['difference'].text()}"
    return (
        f"{entry['metric']} difference vs {entry['baseline']} {entry['difference'].text()}, "
        f"Holm-adjusted p = {entry['p_adjusted']:.3g}"
    )


def _texts(entries: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(_comparison_text(e) for e in entries)


def _level_reason(level: Mapping[str, Mapping[str, Any]], failing: list[str]) -> str:
    if not failing:
        return (
            "On all held-out events its RMSE is significantly lower than every baseline's: "
            + _texts(list(level.values()))
            + "."
        )
    return (
        f"On all held-out events its RMSE is not significantly lower than that of "
        f"{', '.join(failing)}: " + _texts([level[b] for b in failing]) + "."
    )


def _ordering_reason(ordering: Mapping[str, Mapping[str, Any]], failing: list[str]) -> str:
    if not failing:
        return (
            "It orders a user's held-out events significantly better than every baseline "
            "(global_mean and user_mean, constant per user, score 0.5: chance): "
            + _texts(list(ordering.values()))
            + "."
        )
    return (
        f"It does not order a user's held-out events significantly better than "
        f"{', '.join(failing)}: " + _texts([ordering[b] for b in failing]) + "."
    )


def _unexplored_reason(
    tests: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]],
    failing: Mapping[tuple[str, str], list[str]],
    unmeasured: list[Mapping[str, Any]],
) -> str:
    if unmeasured:
        return (
            f"The unexplored slice is too small to measure {unmeasured[0]['metric']} "
            f"({unmeasured[0]['difference'].reason}): that is no evidence of generalization, "
            "so the verdict cannot be generalizes (a randomized-exposure holdout measures it)."
        )
    keys = [("unexplored", LEVEL), ("unexplored", ORDERING)]
    if not any(failing[key] for key in keys):
        return (
            "On the unexplored slice it beats every baseline in level and in ordering: "
            + _texts([entry for key in keys for entry in tests[key].values()])
            + "."
        )
    return (
        "On the unexplored slice it does not beat every baseline (it must be significantly "
        "better there, not merely not worse): "
        + _texts([tests[key][b] for key in keys for b in failing[key]])
        + "."
    )


def _evidence(
    models: Mapping[str, Mapping[str, Mapping[str, Figure]]],
    consulted: Sequence[Mapping[str, Any]],
    model: str,
) -> dict[str, dict[str, Any]]:
    """The figures a verdict rests on, JSON-ready (names: see ``Judgement``)."""
    evidence = {
        f"{slice_name}.{metric}.{model}": models[model][slice_name][metric].as_dict()
        for slice_name in SLICES
        for metric in (LEVEL, ORDERING)
    }
    for entry in consulted:
        name = f"{entry['slice']}.{entry['metric']}.{entry['model']}-{entry['baseline']}"
        evidence[name] = entry["difference"].as_dict() | {
            "p_value": entry["p_value"],
            "p_adjusted": entry["p_adjusted"],
        }
    return evidence


# ---------------------------------------------------------------------------------------------
# The decision: which post-training algorithm follows from the verdict, at which temperature

# DESIGN.md, Selection: online RL (PPO, with pessimism) when the reward model generalizes;
# A-SFT when it is noisy but directional; exp-weighted SFT on observed rewards otherwise.
ALGORITHM_FOR_VERDICT: dict[str, str] = {
    "generalizes": "ppo",
    "directional": "a-sft",
    "unreliable": "exp-sft",
}
_WHY = {
    "ppo": "it generalizes, so optimizing it online should transfer: PPO with pessimism "
    "(ensemble mean − κ·spread) and a KL leash to the SFT policy",
    "a-sft": "it orders a user's items but its level is not trustworthy: A-SFT uses only its "
    "directional signal (the advantage r − b(s)) to reweight logged events",
    "exp-sft": "it is not trustworthy: exp-weighted SFT learns from the observed rewards alone "
    "(weights exp(r/λ)), no reward model",
}


@dataclass(frozen=True)
class Decision:
    """``decision.json``: the algorithm, its temperature (config field -> value; λ for exp-SFT,
    β for A-SFT, κ and the KL coefficient for PPO), the verdict, the reasons (sentences citing
    the figures), the evidence (name -> JSON figure) and the rule that chose (`SelectConfig.rule`:
    "verdict" when the verdict's mapping did, else the decision list -- the verdict is then
    reported, not followed)."""

    algorithm: str
    verdict: str
    reasons: tuple[str, ...]
    evidence: dict[str, dict[str, Any]]
    temperature: dict[str, float] = field(default_factory=dict)
    rule: str = "verdict"

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "temperature": dict(self.temperature),
            "verdict": self.verdict,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class RuleBranch:
    """One branch of a decision list: `algorithm` when `feature op threshold` holds."""

    feature: str
    op: str  # "<" or ">="
    threshold: float
    algorithm: str

    def holds(self, features: Mapping[str, float | None]) -> bool | None:
        """Whether it holds; None when the figure is missing (the branch is then skipped)."""
        value = features.get(self.feature)
        if value is None or value != value:
            return None
        return value < self.threshold if self.op == "<" else value >= self.threshold

    def text(self) -> str:
        return f"{self.algorithm} if {self.feature} {self.op} {self.threshold!r}"


RULE_ALGORITHMS = ("exp-sft", "a-sft", "ppo")


def parse_rule(text: str) -> tuple[tuple[RuleBranch, ...], str] | None:
    """``SelectConfig.rule``: None for 'verdict', else (branches, default) of 'ALG if FEATURE
    OP THRESHOLD; ...; otherwise ALG' (OP: < or >=; ALG: exp-sft, a-sft or ppo). Raises
    ValueError naming what is wrong."""
    from rmdiag.selection_features import FEATURES

    if text.strip() == "verdict":
        return None
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts:
        raise ValueError("rule must be 'verdict' or a decision list, got an empty string")
    *conditions, last = parts
    words = last.split()
    if len(words) != 2 or words[0] not in ("otherwise", "else") or words[1] not in RULE_ALGORITHMS:
        raise ValueError(f"rule must end with 'otherwise ALG' (ALG one of {RULE_ALGORITHMS}), "
                         f"got {last!r}")
    branches = []
    for part in conditions:
        words = part.split()
        if (len(words) != 5 or words[1] != "if" or words[0] not in RULE_ALGORITHMS
                or words[3] not in ("<", ">=")):
            raise ValueError(f"rule branch must read 'ALG if FEATURE < T' or 'ALG if FEATURE >= "
                             f"T' (ALG one of {RULE_ALGORITHMS}), got {part!r}")
        if words[2] not in FEATURES:
            raise ValueError(f"rule branch {part!r}: unknown feature {words[2]!r}; known: "
                             f"{', '.join(FEATURES)}")
        try:
            threshold = float(words[4])
        except ValueError:
            raise ValueError(f"rule branch {part!r}: threshold {words[4]!r} is not a number") \
                from None
        branches.append(RuleBranch(words[2], words[3], threshold, words[0]))
    return tuple(branches), last.split()[1]


def rule_features(config: SelectConfig) -> list[str]:
    """The features ``config.rule`` reads (none for 'verdict')."""
    parsed = parse_rule(config.rule)
    return [] if parsed is None else list(dict.fromkeys(b.feature for b in parsed[0]))


def decide(judgement: Judgement | None, config: SelectConfig | None = None,
           features: Mapping[str, float | None] | None = None) -> Decision:
    """The algorithm the evidence calls for: the verdict's (``ALGORITHM_FOR_VERDICT``) or, when
    ``config.rule`` is a decision list, the first branch that holds on ``features``
    (``rmdiag.selection_features``). Without an audit (``None``) no reward model is trusted:
    exp-weighted SFT, verdict ``unreliable``."""
    if judgement is None:
        return Decision(
            "exp-sft", "unreliable",
            ("No reward model was audited (--no-audit), so none is trusted: " + _WHY["exp-sft"]
             + ".",),
            {},
        )
    parsed = parse_rule((config or judgement.config).rule)
    if parsed is None:
        algorithm = ALGORITHM_FOR_VERDICT[judgement.verdict]
        reasons = (*judgement.reasons,
                   f"Verdict {judgement.verdict}: {_WHY[algorithm]}.")
        return Decision(algorithm, judgement.verdict, reasons, dict(judgement.evidence))
    branches, algorithm = parsed
    features = dict(features or {})
    steps = []
    for branch in branches:
        holds = branch.holds(features)
        value = features.get(branch.feature)
        shown = "unavailable" if holds is None else f"{value:.4g}"
        steps.append(f"{branch.feature} = {shown} ({branch.op} {branch.threshold:.4g}: "
                     f"{'yes' if holds else 'no'})")
        if holds:
            algorithm = branch.algorithm
            break
    rule_text = "; ".join(b.text() for b in branches) + f"; otherwise {parsed[1]}"
    # Only the default was fitted by the selection study; a user's own rule is theirs.
    origin = ("the default rule was fitted on simulated worlds where the truly best algorithm is "
              "known, and is provisional (benchmarks/selection_study.py; benchmarks/RESULTS.md, "
              "Selection study)" if parse_rule(CALIBRATED_RULE) == parsed
              else "the rule is the one given (--select-rule), not the calibrated default")
    reasons = (*judgement.reasons,
               f"The selection rule ({rule_text}) reads " + ", ".join(steps)
               + f": {algorithm}. The verdict ({judgement.verdict}) is reported, not followed; "
               + origin + ".")
    evidence = dict(judgement.evidence) | {
        f"selection.{name}": {"value": value} for name, value in features.items()}
    return Decision(algorithm, judgement.verdict, reasons, evidence, rule=rule_text)


def _format(value: float) -> str:
    return f"{value:.3g}"


def choose_temperature(decision: Decision, sweep: Mapping[str, Any],
                       fixed: Mapping[str, float] | None = None) -> Decision:
    """The decision at the sweep's best temperature (the highest validation figure; ties go to
    the larger temperature, the one closer to SFT), with the sentence that justifies it and the
    winner's figure as evidence. ``fixed`` adds settings that were not swept (PPO's KL
    coefficient)."""
    metric, parameter = sweep["metric"], sweep["parameter"]
    points = sweep["points"]
    best = max(range(len(points)), key=lambda i: (points[i][metric]["value"], points[i]["value"]))
    winner = points[best]
    figure = winner[metric]
    grid = ", ".join(_format(p["value"]) for p in points)
    reason = (
        f"{parameter} = {_format(winner['value'])} won the validation sweep over {{{grid}}}: "
        f"{metric.upper()} on the validation targets with {sweep['targets']} is "
        f"{figure['value']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}]."
    )
    return dataclasses.replace(
        decision,
        temperature={parameter: winner["value"], **(fixed or {})},
        reasons=(*decision.reasons, reason),
        evidence={**decision.evidence, f"sweep.{metric}.{parameter}={_format(winner['value'])}":
                  dict(figure)},
    )


def default_temperature(decision: Decision, temperature: Mapping[str, float]) -> Decision:
    """The decision at a documented default temperature (``--no-sweep``)."""
    if not temperature:
        return decision
    settings = ", ".join(f"{k} = {_format(v)}" for k, v in temperature.items())
    return dataclasses.replace(
        decision, temperature=dict(temperature),
        reasons=(*decision.reasons, f"{settings}: the documented default (no validation sweep)."),
    )
