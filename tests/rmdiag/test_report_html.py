"""report.html (rmdiag.report.run_html): the page is parsed back with the stdlib HTML parser and
its tables are checked against the summary they were rendered from, number for number; the
layout is summary first; plots are embedded; user strings are escaped; and missing blocks
(no sweep, no true reward, null figures, no vs_sft, many policies) still render."""

from __future__ import annotations

import base64
import copy
import json
import random
from html.parser import HTMLParser
from typing import Any

import pytest

from rmdiag.report.run_html import render_run_report

EVIL = "\"it's\" <script>alert(1)</script>"
KNOWN = ("ndcg@10", "hr@10", "mrr", "judge", "true_reward")


# ---- a parser that reads the page back ------------------------------------------------------


class Page(HTMLParser):
    """Tables by id (rows of cells with attributes and text), headings in order, images."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.headings: list[tuple[str, str]] = []  # (tag, text), h1-h4 and <summary>
        self.images: list[dict[str, str]] = []
        self.ids: list[str] = []
        self.text: list[str] = []
        self._table: str | None = None
        self._row: dict[str, Any] | None = None
        self._cell: dict[str, Any] | None = None
        self._heading: list[Any] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "details":
            self.ids.append("<details>")  # where the first collapsible section starts
        if tag == "br" and self._cell is not None:
            self._cell["text"] += " "
        if tag == "table":
            assert self._table is None, "nested tables are not expected"
            self._table = a.get("id", f"anonymous-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": a, "cells": []}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "attrs": a, "text": ""}
        elif tag in ("h1", "h2", "h3", "h4", "summary"):
            self._heading = [tag, ""]
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None:
            assert self._table is not None
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None:
            assert self._row is not None
            self._cell["text"] = " ".join(self._cell["text"].split())
            self._row["cells"].append(self._cell)
            self._cell = None
        elif self._heading is not None and tag == self._heading[0]:
            self.headings.append((tag, " ".join(self._heading[1].split())))
            self._heading = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data
        if self._heading is not None:
            self._heading[1] += data

    def data_rows(self, table_id: str) -> list[dict[str, Any]]:
        """The rows of a table that hold <td> cells (not the header or group rows)."""
        return [r for r in self.tables[table_id] if any(c["tag"] == "td" for c in r["cells"])]


def cell(row: dict[str, Any], key: str) -> dict[str, Any]:
    found = [c for c in row["cells"] if c["attrs"].get("data-key") == key]
    assert len(found) == 1, (key, row)
    return found[0]


def numbers(c: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(c["attrs"][f"data-{k}"]) for k in ("value", "low", "high")}


def figure_of(fig: dict[str, Any]) -> dict[str, Any]:
    return {k: fig[k] for k in ("value", "low", "high")}


# ---- a compact summary with the structure of summary.json -----------------------------------


def fig(rng: random.Random, centre: float, width: float = 0.01) -> dict[str, float]:
    """A figure with non-round floats, so that any rounding on the way would show."""
    value = centre + rng.uniform(-width, width) / 3
    return {"value": value, "low": value - rng.uniform(0.2, 1) * width,
            "high": value + rng.uniform(0.2, 1) * width}


def make_summary(names: tuple[str, ...] = ("sft", "exp-sft"), seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    baselines = ("global_mean", "item_mean", "bias")
    rms = ("lightgbm", "ensemble")
    models = {
        m: {s: {"rmse": fig(rng, 1.0), "mae": fig(rng, 0.8), "pairwise_accuracy": fig(rng, 0.7)}
            for s in ("all", "unexplored")}
        for m in baselines + rms
    }
    reason = "0 within-user pairs in the 'unexplored' slice; at least 20 needed"
    for m in models:
        models[m]["unexplored"]["pairwise_accuracy"] = {
            "value": None, "low": None, "high": None, "reason": reason,
        }
    comparisons = []
    for m in rms:
        for b in baselines:
            for s in ("all", "unexplored"):
                for metric in ("rmse", "pairwise_accuracy"):
                    difference = fig(rng, -0.05 if metric == "rmse" else 0.03)
                    p = rng.choice([1e-30, 0.003, 0.2, 0.9])
                    entry = {"model": m, "baseline": b, "slice": s, "metric": metric,
                             "difference": difference, "p_value": p, "p_adjusted": min(1, 6 * p)}
                    if s == "unexplored" and metric == "pairwise_accuracy":
                        entry["difference"] = dict(models[m]["unexplored"]["pairwise_accuracy"])
                        entry["p_value"] = entry["p_adjusted"] = None
                    comparisons.append(entry)
    comparisons[0]["model"] = EVIL  # an external model under a user-given name
    policies: dict[str, Any] = {}
    for i, name in enumerate(names):
        entry: dict[str, Any] = {
            "algorithm": name, "temperature": {} if name == "sft" else {"lam": 0.5 + i},
            "train_seconds": 30.0 + i,
            "ndcg@10": fig(rng, 0.05), "hr@10": fig(rng, 0.1), "mrr": fig(rng, 0.04),
            "judge": fig(rng, 3.6) | {"member_spread": 0.031, "members": [3.6, 3.61, 3.59]},
            "true_reward": fig(rng, 3.5),
            "high_reward": {"users": 900, "ndcg@10": fig(rng, 0.06), "hr@10": fig(rng, 0.12),
                            "mrr": fig(rng, 0.05)},
        }
        if name != "sft":
            entry["vs_sft"] = {
                m: {"difference": fig(rng, 0.01), "p_value": 0.001 * i, "p_adjusted": 0.003 * i}
                for m in KNOWN
            }
        policies[name] = entry
    chosen = names[1] if len(names) > 1 else names[0]
    points = [{"value": v, "ndcg@10": fig(rng, 0.05), "true_reward": fig(rng, 3.5)}
              for v in (0.25, 0.5, 1.0, 2.0)]
    return {
        "data": {"source": EVIL, "events": 90479, "users": 2000, "items": 993},
        "split": {"method": "leave-last-out", "train": 86479, "valid": 2000, "test": 2000},
        "audit": {
            "verdict": "directional", "reasons": [f"reason with {EVIL}"], "confidence": 0.95,
            "models": models, "comparisons": comparisons,
            "spread_error": {"all": fig(rng, 0.02)},
            "slices": {"all": {"events": 4000, "users": 2000}},
            "data": {"source": EVIL}, "config": {"alpha": 0.05, "kinds": EVIL},
        },
        "config": {"max_len": 50, "note": EVIL},
        "decision": {
            "algorithm": chosen, "temperature": {"lam": 0.5}, "verdict": "directional",
            "reasons": ["The ensemble orders a user's items better than item_mean."],
            "evidence": {"pairwise_accuracy ensemble - item_mean (all)":
                         fig(rng, 0.03) | {"p_adjusted": 0.002}},
            "swept": True,
        },
        "sweep": {"exp-sft": {"parameter": "lam", "metric": "ndcg@10", "split": "valid",
                              "best": 0.5, "points": points}},
        "policies": policies,
        "evaluation": {"users": 2000, "k": 10, "confidence": 0.95, "chosen": chosen,
                       "reference": "sft", "high_reward_threshold": 4.0, "simulated": True},
        "conclusion": ["exp-sft raises the true reward over SFT by +0.100 [0.090, 0.110]."],
        "examples": [{"user": EVIL, "history": ["i1", EVIL],
                      "recommendations": {n: [f"i{j}" for j in range(3)] + [EVIL]
                                          for n in names}}],
    }


@pytest.fixture(scope="module")
def summary() -> dict[str, Any]:
    return make_summary()


@pytest.fixture(scope="module")
def page(summary: dict[str, Any]) -> tuple[str, Page]:
    text = render_run_report(copy.deepcopy(summary))
    return text, Page(text)


# ---- the tests ------------------------------------------------------------------------------


def test_policy_table_equals_the_summary(summary: dict[str, Any], page: tuple[str, Page]) -> None:
    _, parsed = page
    rows = parsed.data_rows("policies")
    assert [r["attrs"]["data-policy"] for r in rows] == list(summary["policies"])
    for row in rows:
        entry = summary["policies"][row["attrs"]["data-policy"]]
        for metric in KNOWN:
            assert numbers(cell(row, metric)) == figure_of(entry[metric]), metric
        assert json.loads(cell(row, "judge")["attrs"]["data-member-spread"]) == 0.031
        for metric in ("ndcg@10", "judge", "true_reward"):
            c = cell(row, f"vs_sft.{metric}")
            if "vs_sft" not in entry:
                assert c["attrs"]["data-value"] == "null"
                continue
            expected = entry["vs_sft"][metric]
            assert numbers(c) == figure_of(expected["difference"])
            assert json.loads(c["attrs"]["data-p-adjusted"]) == expected["p_adjusted"]
            assert json.loads(c["attrs"]["data-p-value"]) == expected["p_value"]
    classes = {r["attrs"]["data-policy"]: r["attrs"].get("class", "") for r in rows}
    assert "chosen" in classes["exp-sft"] and "reference" in classes["sft"]
    header = [c["text"] for c in parsed.tables["policies"][0]["cells"]]
    assert header[:6] == ["policy", "NDCG@10", "HR@10", "MRR", "Judge", "True reward"]


def test_cells_show_the_figures_rounded(summary: dict[str, Any], page: tuple[str, Page]) -> None:
    _, parsed = page
    row = parsed.data_rows("policies")[0]
    f = summary["policies"]["sft"]["judge"]
    assert cell(row, "judge")["text"] == f"{f['value']:.3f} [{f['low']:.3f}, {f['high']:.3f}]"
    f = summary["policies"]["sft"]["ndcg@10"]  # below 0.1: three significant digits
    assert cell(row, "ndcg@10")["text"] == f"{f['value']:.4f} [{f['low']:.4f}, {f['high']:.4f}]"


def test_comparisons_table_has_one_row_per_comparison(
    summary: dict[str, Any], page: tuple[str, Page]
) -> None:
    _, parsed = page
    rows = parsed.data_rows("comparisons")
    comparisons = summary["audit"]["comparisons"]
    assert len(rows) == len(comparisons)
    for row, c in zip(rows, comparisons, strict=True):
        for key in ("model", "baseline", "slice", "metric"):
            assert row["attrs"][f"data-{key}"] == c[key]
        assert numbers(cell(row, "difference")) == figure_of(c["difference"])
        assert json.loads(cell(row, "p_value")["attrs"]["data-value"]) == c["p_value"]
        assert json.loads(cell(row, "p_adjusted")["attrs"]["data-value"]) == c["p_adjusted"]
        significant = c["p_adjusted"] is not None and c["p_adjusted"] < 0.05
        assert row["attrs"]["data-significant"] == str(significant).lower()


def test_models_table_and_null_figures(summary: dict[str, Any], page: tuple[str, Page]) -> None:
    _, parsed = page
    rows = parsed.data_rows("models")
    models = summary["audit"]["models"]
    assert len(rows) == sum(len(per) for per in models.values())
    for row in rows:
        by = models[row["attrs"]["data-model"]][row["attrs"]["data-slice"]]
        for metric, f in by.items():
            c = cell(row, metric)
            assert numbers(c) == figure_of(f)
            if f["value"] is None:
                assert c["text"] == "n/a" and c["attrs"]["title"] == f["reason"]


def test_summary_comes_first(page: tuple[str, Page]) -> None:
    _, parsed = page
    titles = [t for _, t in parsed.headings]
    order = [titles.index(t) for t in ("Summary", "Policies", "Plots", "Details")]
    assert order == sorted(order)
    first_details = [i for i, (tag, _) in enumerate(parsed.headings) if tag == "summary"][0]
    assert first_details > titles.index("Details")
    positions = [parsed.ids.index(s)
                 for s in ("verdict", "decision", "conclusion", "policies", "<details>")]
    assert positions == sorted(positions)
    ids = [i for i in parsed.ids if i != "<details>"]
    assert len(ids) == len(set(ids))


def test_plots_are_embedded_pngs(page: tuple[str, Page]) -> None:
    text, parsed = page
    assert len(parsed.images) == 3  # forest, policies, sweep
    for image in parsed.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix):]).startswith(b"\x89PNG")
    assert "http://" not in text and "https://" not in text


def test_user_strings_are_escaped(page: tuple[str, Page]) -> None:
    text, parsed = page
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;it&#x27;s&quot;" in text
    assert EVIL in "".join(parsed.text)  # and reads back as it was written


def test_absent_sweep_true_reward_and_vs_sft() -> None:
    summary = make_summary()
    del summary["sweep"]
    for entry in summary["policies"].values():
        del entry["true_reward"]
        entry.pop("vs_sft", None)
    parsed = Page(render_run_report(summary))
    assert "sweep" not in parsed.tables and "vs-sft" not in parsed.tables
    header = [c["text"] for c in parsed.tables["policies"][0]["cells"]]
    assert "True reward" not in header and not any(h.startswith("Δ") for h in header)
    assert len(parsed.images) == 2


def test_null_figures_and_missing_pieces() -> None:
    summary = make_summary()
    exp = summary["policies"]["exp-sft"]
    exp["mrr"] = {"value": None, "low": None, "high": None, "reason": "no users left"}
    del exp["vs_sft"]["true_reward"]
    exp["vs_sft"]["ndcg@10"]["p_adjusted"] = None
    summary["decision"]["temperature"] = {}
    summary["policies"]["sft"]["true_reward"] = {"value": None, "low": None, "high": None,
                                                 "reason": f"not simulated {EVIL}"}
    text = render_run_report(summary)
    assert "<script" not in text.lower()
    parsed = Page(text)
    row = {r["attrs"]["data-policy"]: r for r in parsed.data_rows("policies")}
    mrr = cell(row["exp-sft"], "mrr")
    assert mrr["text"] == "n/a" and mrr["attrs"]["title"] == "no users left"
    # no policy has a paired true-reward difference any more: the column is left out
    assert not [c for c in row["exp-sft"]["cells"]
                if c["attrs"].get("data-key") == "vs_sft.true_reward"]
    assert cell(row["exp-sft"], "vs_sft.ndcg@10")["attrs"]["data-p-adjusted"] == "null"
    assert cell(row["sft"], "true_reward")["attrs"]["title"] == f"not simulated {EVIL}"


def test_many_policies_and_extra_metrics() -> None:
    names = ("sft", "rw-bc", "exp-sft", "a-sft", "ppo", "dpo", "ipo", "cql", "grpo")
    summary = make_summary(names)
    summary["policies"]["cql"]["ndcg@5"] = fig(random.Random(1), 0.03)
    del summary["policies"]["dpo"]["vs_sft"]  # e.g. a policy whose paired test failed
    # the decision overrides the sweep's best; a second sweep on a linear axis (0 included)
    summary["decision"] |= {"algorithm": "exp-sft", "temperature": {"lam": 2.0}}
    summary["sweep"]["exp-sft"]["points"][1]["ndcg@10"] = {"value": None, "low": None,
                                                           "high": None, "reason": "diverged"}
    summary["sweep"]["ppo"] = {
        "parameter": "kl_coef", "metric": "judge", "split": "valid", "best": 0.05,
        "points": [{"value": v, "judge": fig(random.Random(2), 3.6)} for v in (0.0, 0.05, 0.1)],
    }
    parsed = Page(render_run_report(summary))
    assert len(parsed.images) == 3
    sweep_rows = parsed.data_rows("sweep")
    assert len(sweep_rows) == 4 + 3
    assert [json.loads(r["attrs"]["data-point"]) for r in sweep_rows if
            r["attrs"]["data-best"] == "true"] == [0.5, 0.05]
    rows = parsed.data_rows("policies")
    assert [r["attrs"]["data-policy"] for r in rows] == list(names)
    header = [c["text"] for c in parsed.tables["policies"][0]["cells"]]
    assert header.index("NDCG@5") == 6  # after the known metrics, before the differences
    extra = {r["attrs"]["data-policy"]: cell(r, "ndcg@5") for r in rows}
    assert numbers(extra["cql"]) == figure_of(summary["policies"]["cql"]["ndcg@5"])
    assert extra["sft"]["text"] == "n/a"
    assert len(parsed.data_rows("vs-sft")) == 5 * (len(names) - 2)
    dpo = next(r for r in rows if r["attrs"]["data-policy"] == "dpo")
    assert cell(dpo, "vs_sft.ndcg@10")["attrs"]["data-missing"] == "true"


def test_minimal_summary_renders() -> None:
    """Only an audit: no policies, no decision, no evaluation."""
    summary = make_summary()
    text = render_run_report({"audit": summary["audit"], "data": summary["data"]})
    parsed = Page(text)
    assert "policies" not in parsed.tables and "comparisons" in parsed.tables
    assert "<script" not in text.lower()
    del summary["audit"]  # and a run without an audit
    parsed = Page(render_run_report(summary))
    assert "comparisons" not in parsed.tables and len(parsed.data_rows("policies")) == 2
