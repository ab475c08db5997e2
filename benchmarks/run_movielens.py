"""`rmdiag run` on MovieLens-100K: the whole job on real data, timed stage by stage.

Fetches ML-100K at run time into benchmarks/.cache (it may not be redistributed), runs the
pipeline with its defaults (as `rmdiag run --data ml-100k.inter --out DIR` does) and prints the
verdict, the decision, each policy's figures with intervals and the seconds per stage. The
target (issue 9): under 15 minutes on 2 cores.

    python -m benchmarks.run_movielens [--out runs/ml-100k] [--compare all]

The last line is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks._movielens import movielens_100k_path
from rmdiag.pipeline import RunConfig, run
from rmdiag.policies import PolicyConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ml-100k")
    parser.add_argument("--compare", default="", help="as rmdiag run --compare")
    args = parser.parse_args(argv)
    path = movielens_100k_path()
    started = time.perf_counter()
    summary = run(RunConfig(compare=args.compare), data=path, out=args.out,
                  policy_config=PolicyConfig(progress=False))
    seconds = time.perf_counter() - started
    print(summary.render())
    print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.timings.items()))
    print(f"total {seconds:.1f} s (target < 900 s); outputs in {args.out}")
    decision = summary.decision
    assert decision is not None
    print(json.dumps({
        "events": summary.data["events"],
        "verdict": decision.verdict,
        "algorithm": decision.algorithm,
        "temperature": decision.temperature,
        "seconds": round(seconds, 1),
        "timings": summary.timings,
        "policies": {name: {metric: entry[metric] for metric in ("ndcg@10", "hr@10", "mrr",
                                                                 "judge") if metric in entry}
                     for name, entry in summary.policies.items()},
        "vs_sft": {name: entry["vs_sft"] for name, entry in summary.policies.items()
                   if "vs_sft" in entry},
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
