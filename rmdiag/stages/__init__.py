"""The stages of `rmdiag run` as stand-alone commands (README, "Stand-alone stages").

- `decision.select_files`: ``rmdiag select --audit audit.json --out DIR`` -- the decision from
  an audit.json alone (``decision.json``), at the documented default temperature.
- `training.train_files`: ``rmdiag train ALGORITHM --data FILE --out DIR`` -- SFT from scratch
  on the log's leave-last-out split, or any other algorithm post-training a saved SFT policy
  (``--reference``) with a saved reward ensemble (``--reward-model``); the policy saved with
  `rmdiag.persist.save_policy`.
- `evaluation.evaluate_policy_files`: ``rmdiag evaluate --policy DIR --data FILE --out DIR`` --
  a saved policy's test-event figures as `rmdiag run` computes them (``evaluation.json``,
  ``per_user.parquet``).
- `recommendations.evaluate_recommendations_files`: ``rmdiag evaluate --recommendations FILE``
  -- any model's ranked lists scored against the same test events with the same metrics.

Each reads what an earlier stage wrote (audit.json, ``reward_model/``, policy directories) and
refuses, with `rmdiag.data.DataError` (exit 2), files that are incomplete or encoded with other
ids than the data's. Nothing here imports `rmdiag.pipeline`, so the pipeline can call it.
"""
