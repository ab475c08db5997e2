"""`rmdiag run`: the whole job on one log, stage by stage (DESIGN.md, Layout).

1. load (or simulate) the log; 2. split it (leave-last-out or temporal) and build sequences;
3. audit: fit the baselines and the reward-model ensemble, measure them on held-out events;
4. SFT and the over-optimization curve: train the SFT policy, then its best-of-n curve against
the audited reward model (`rmdiag.overoptimization`, into audit.json; `--no-overoptimization`
skips it); 5. select: the verdict, the curve among its evidence, and the algorithm it calls
for (`rmdiag.select`); 6. policies: sweep the chosen algorithm's temperature on the validation
events (or take its default), train whatever `--compare` adds, score every policy on the test
events (`rmdiag.policies`); 7. report: summary.json, decision.json, audit.json, audit.html,
report.html and per_user.parquet, published together at the end, each file atomically -- a
failure or an interrupt leaves no file half-written and, before the last stage, none at all.

With `out`, each finished stage also keeps its outputs in the hidden work directory
`out/.work/` (`rmdiag.workdir`: the audit, every trained policy, the checkpoint of the one in
training, and `stages.json`, the record of each stage's input fingerprint). `--resume` reuses
every stage whose inputs are unchanged and recomputes the rest: a changed input changes the
fingerprint of its stage and of every stage after it. Load, split, the over-optimization curve, the
selection, A-SFT's advantages and the scoring are recomputed each time (deterministic; on real
data the curve refits its two half ensembles). Without `--resume` a run
starts a fresh `.work`; it stays after a successful run, so a later `--resume` with changed
policy settings reuses the audit.

`audit_files` is `rmdiag audit`: read, audit, train SFT for the curve, judge, write.

Modules: ``config`` (RunConfig), ``summary`` (RunSummary, the files and the headline),
``clock`` (stage lines and seconds), ``resume`` (fingerprints and cached training for
``--resume``), ``run`` (``run`` and ``audit_files``).
"""

from rmdiag.pipeline.config import RunConfig
from rmdiag.pipeline.run import audit_files, load_or_simulate, run, split_log
from rmdiag.pipeline.summary import RunSummary, conclusion

__all__ = ["RunConfig", "RunSummary", "audit_files", "conclusion", "load_or_simulate", "run",
           "split_log"]
