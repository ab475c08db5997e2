"""The `rmdiag` command line. Exit codes are an API: 0 success, 2 bad input or usage, 1 failure.

Under ``torchrun --nproc-per-node N -m rmdiag COMMAND ...`` (WORLD_SIZE > 1) every rank runs
the command on one process group (`rmdiag.distributed`): the training commands (`run`,
`audit`, `train`) train data-parallel and write from rank 0; `simulate`, `select` and
`evaluate` train nothing and run on rank 0 alone. Rank 0 prints; the other ranks print only
their own internal failures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rmdiag.data import DataError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(ValueError):
    """Options that parse but make no sense together (exit 2, like argparse's own errors)."""


def column_mapping(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        canonical, sep, name = pair.partition("=")
        if not sep or not canonical or not name:
            raise DataError(f"--column expects CANONICAL=NAME, got {pair!r}")
        mapping[canonical] = name
    return mapping


def add_dataclass_flags(
    parser: argparse.ArgumentParser, config_cls: type, prefix: str = ""
) -> None:
    """One flag per field of a config dataclass, help from the field's metadata.

    `n_users` becomes `--users` (a count reads better without its `n_`); `prefix` namespaces the
    flags of a nested config (`sim_` -> `--sim-users`)."""
    for field in dataclasses.fields(config_cls):
        if not field.init:
            continue
        flag = "--" + (prefix + field.name.removeprefix("n_")).replace("_", "-")
        default = field.default
        kind = field.type if isinstance(field.type, type) else type(default)
        help_text = field.metadata.get("help", "")
        # SUPPRESS: only the flags given reach the config, so they can override a preset
        if kind is bool:
            parser.add_argument(
                flag,
                dest=prefix + field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {default})",
            )
        elif kind in (int, float, str):
            parser.add_argument(
                flag,
                dest=prefix + field.name,
                type=kind,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {default})",
            )


def dataclass_from_args(
    config_cls: type, args: argparse.Namespace, prefix: str = "", base: Any | None = None
) -> Any:
    """The config with the flags given on the command line over `base` (default: the defaults)."""
    values = {
        f.name: getattr(args, prefix + f.name)
        for f in dataclasses.fields(config_cls)
        if f.init and hasattr(args, prefix + f.name)
    }
    try:
        if base is not None:
            return dataclasses.replace(base, **values)
        return config_cls(**values)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{config_cls.__name__}: {error}") from error


def _add_data_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--data",
        required=required,
        help="interaction log: Parquet, CSV/TSV, "
        "MovieLens ratings.dat/u.data/ratings.csv or RecBole .inter"
        + ("" if required else " (default: the built-in simulated world)"),
    )
    parser.add_argument(
        "--column",
        action="append",
        metavar="CANONICAL=NAME",
        help="map a canonical column (user_id, item_id, timestamp, reward) to the "
        "file's name for it; repeatable",
    )


def _simulation_config(args: argparse.Namespace, prefix: str) -> Any:
    from rmdiag.simulate import SimulationConfig

    preset = getattr(args, prefix + "preset", None)
    try:
        base = SimulationConfig.preset(preset) if preset else None
    except ValueError as error:
        raise UsageError(str(error)) from error
    return dataclass_from_args(SimulationConfig, args, prefix=prefix, base=base)


def _add_simulation_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    from rmdiag.simulate import PRESETS, SimulationConfig

    parser.add_argument(
        "--" + (prefix + "preset").replace("_", "-"),
        dest=prefix + "preset",
        choices=sorted(PRESETS),
        help="start from a named world (rmdiag.simulate.PRESETS); other flags override it",
    )
    add_dataclass_flags(parser, SimulationConfig, prefix=prefix)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rmdiag.data import write_parquet
    from rmdiag.simulate import World

    world = World(_simulation_config(args, prefix=""))
    write_parquet(world.generate(), args.out)
    print(f"wrote {args.out}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from rmdiag.audit import AuditConfig
    from rmdiag.outputs import to_json
    from rmdiag.pipeline import RunConfig, run
    from rmdiag.policies import PolicyConfig
    from rmdiag.select import SelectConfig

    config = dataclass_from_args(RunConfig, args)
    simulation = None if args.data else _simulation_config(args, prefix="sim_")
    audit_config = dataclass_from_args(AuditConfig, args, prefix="audit_")
    select_config = dataclass_from_args(SelectConfig, args, prefix="select_")
    policy_config = dataclass_from_args(PolicyConfig, args, prefix="policy_")
    _require_devices(("--policy-device", policy_config.device),
                     ("--audit-sequence-device", audit_config.sequence_device))
    summary = run(
        config,
        data=args.data,
        columns=column_mapping(args.column),
        out=args.out,
        simulation=simulation,
        audit_config=audit_config,
        select_config=select_config,
        policy_config=policy_config,
    )
    if os.environ.get("RANK", "0") != "0":
        return EXIT_OK  # under torchrun rank 0 scored the policies and prints them
    if args.json:
        print(to_json(summary.to_json()), end="")
    else:
        print(summary.render())
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    from rmdiag.audit import AuditConfig
    from rmdiag.pipeline import audit_files
    from rmdiag.select import SelectConfig

    config = dataclass_from_args(AuditConfig, args)
    _require_devices(("--sequence-device", config.sequence_device))
    _, judgement = audit_files(
        args.data,
        args.out,
        holdout=args.holdout,
        columns=column_mapping(args.column),
        config=config,
        select_config=dataclass_from_args(SelectConfig, args),
        predictions=args.predictions,
        predictions_name=args.predictions_name,
        holdout_kind=args.holdout_kind,
        heldout_per_user=_heldout_per_user(args),
        overoptimization_curve=args.overoptimization,
    )
    print(f"verdict: {judgement.verdict}")
    for reason in judgement.reasons:
        print(f"  - {reason}")
    return EXIT_OK


def _require_devices(*flags: tuple[str, str]) -> None:
    """Refuse (exit 2) a device this machine lacks before anything is loaded or trained."""
    from trainers.loop import device_problem

    for flag, device in flags:
        problem = device_problem(device)
        if problem:
            raise UsageError(f"{flag}: {problem}")


def _heldout_per_user(args: argparse.Namespace) -> int:
    if args.heldout_per_user is None:
        return 2
    if args.holdout:
        raise UsageError("--heldout-per-user applies without --holdout (leave-last-k-out)")
    if args.heldout_per_user < 1:
        raise UsageError(f"--heldout-per-user must be >= 1, got {args.heldout_per_user}")
    return int(args.heldout_per_user)


def _cmd_select(args: argparse.Namespace) -> int:
    from rmdiag.select import SelectConfig
    from rmdiag.stages.decision import select_files

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SelectConfig)
                 if hasattr(args, f.name)}
    decision = select_files(args.audit, args.out, overrides)
    temperature = ", ".join(f"{k} = {v:.3g}" for k, v in decision.temperature.items())
    print(f"verdict: {decision.verdict} -> {decision.algorithm}"
          + (f" ({temperature})" if temperature else ""))
    for reason in decision.reasons:
        print(f"  - {reason}")
    print(f"wrote {args.out}/decision.json")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    import trainers
    from rmdiag.policies import PolicyConfig
    from rmdiag.stages.training import train_files

    config_class = trainers.ALGORITHMS[args.algorithm][0]
    dataclass_from_args(config_class, args)  # the flags given must make a valid Config
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
                 if f.init and hasattr(args, f.name)}
    trained = train_files(
        args.algorithm,
        args.data,
        args.out,
        columns=column_mapping(args.column),
        reward_model=args.reward_model,
        reference=args.reference,
        decision=args.decision,
        policy_config=dataclass_from_args(PolicyConfig, args, prefix="policy_"),
        overrides=overrides,
        max_len=args.max_len,
    )
    temperature = ", ".join(f"{k} = {v:.3g}" for k, v in trained.temperature.items())
    print(f"{args.algorithm}: {trained.steps} steps in {trained.train_seconds:.1f} s"
          + (f" ({temperature})" if temperature else "") + f"; wrote {args.out}")
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rmdiag.policies import PolicyConfig

    config = dataclass_from_args(PolicyConfig, args)
    if args.recommendations is not None:
        from rmdiag.stages.recommendations import evaluate_recommendations_files

        if args.reward_model is not None:
            raise UsageError("--reward-model judges a --policy; a list of recommendations is "
                             "scored by the ranking metrics only")
        payload = evaluate_recommendations_files(
            args.recommendations, args.data, args.out, columns=column_mapping(args.column),
            config=config)
    else:
        from rmdiag.stages.evaluation import evaluate_policy_files

        payload = evaluate_policy_files(
            args.policy, args.data, args.out, columns=column_mapping(args.column),
            reward_model=args.reward_model, config=config)
    for metric, figure in payload["metrics"].items():
        if isinstance(figure, dict) and "value" in figure and figure["value"] is not None:
            print(f"{metric:8s} {figure['value']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}]")
    print(f"wrote {args.out}/evaluation.json and per_user.parquet")
    return EXIT_OK


def _add_stage_commands(commands: Any) -> None:
    """`rmdiag select`, `rmdiag train ALGORITHM` and `rmdiag evaluate` (rmdiag.stages)."""
    import trainers
    from rmdiag.select import SelectConfig
    from rmdiag.stages.evaluation import EvaluationFlags
    from rmdiag.stages.training import PostTrainingFlags, SFTFlags, optional_fields

    select = commands.add_parser(
        "select", help="decision.json from an audit.json (the documented default temperature)")
    select.add_argument("--audit", required=True, help="audit.json as `rmdiag audit` writes it")
    select.add_argument("--out", required=True, help="directory for decision.json")
    add_dataclass_flags(select, SelectConfig)
    select.set_defaults(handler=_cmd_select)

    train = commands.add_parser(
        "train",
        help="train one policy: `rmdiag train ALGORITHM --data FILE --out DIR ...`",
        description="Train one policy as `rmdiag run` does and save it to --out (model.json, "
        "weights.pt, ids.json, training.json). `sft` trains from scratch on the log's "
        "leave-last-out split; every other algorithm post-trains a copy of --reference (a "
        "saved SFT policy) with --reward-model (a saved ensemble, e.g. `rmdiag audit`'s "
        "OUT/reward_model) when its Config uses one. `rmdiag train ALGORITHM --help` lists "
        "that algorithm's Config flags.",
    )
    algorithms = train.add_subparsers(dest="algorithm", required=True, metavar="ALGORITHM",
                                      help=", ".join(trainers.ALGORITHMS))
    for name, (config_class, _) in trainers.ALGORITHMS.items():
        uses = config_class.reward_model
        parser = algorithms.add_parser(
            name,
            help=f"{name} (reward model: {uses})",
            description=f"Train {name} (reward model: {uses}). The trainer's Config is built as "
            "`rmdiag run` builds it from the --policy-* flags (lr, batch size, epochs or post-"
            "training steps, seed); a Config flag given here replaces that field (its "
            "'default' below is the Config's own, used only for fields rmdiag run does not "
            "set). The temperature comes from --decision when given, else from its flag.",
        )
        _add_data_flags(parser, required=True)
        parser.add_argument("--out", required=True, help="directory of the saved policy")
        if name != "sft":
            parser.add_argument("--reference", required=True,
                                help="saved SFT policy directory (`rmdiag train sft --out`)")
        else:
            parser.set_defaults(reference=None)
        if uses != "none":
            parser.add_argument(
                "--reward-model", required=uses == "required",
                help="saved reward ensemble directory (`rmdiag audit` writes OUT/reward_model)"
                + ("" if uses == "required" else "; without it A-SFT's baseline is the user's "
                   "mean reward"))
        else:
            parser.set_defaults(reward_model=None)
        parser.add_argument("--decision", help="decision.json: its temperature (it must have "
                            "chosen this algorithm)")
        parser.add_argument("--max-len", type=int, default=None,
                            help="history length L (sft; default 50 as rmdiag run; other "
                            "algorithms take the reference's)")
        add_dataclass_flags(parser, config_class)
        for field_name, kind, help_text in optional_fields(config_class):
            parser.add_argument("--" + field_name.replace("_", "-"), dest=field_name, type=kind,
                                default=argparse.SUPPRESS, help=f"{help_text} (default: None)")
        add_dataclass_flags(parser, SFTFlags if name == "sft" else PostTrainingFlags,
                            prefix="policy_")
        parser.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a saved policy, or any model's ranked lists, on the held-out test events",
        description="NDCG@k, HR@k and MRR of each user's held-out last event (leave-last-out, "
        "history excluded, ties in expectation), with intervals over users, on all and on "
        "high-reward targets; writes evaluation.json and per_user.parquet.",
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="saved policy directory (`rmdiag train --out`)")
    source.add_argument(
        "--recommendations",
        help="ranked lists (Parquet or CSV): user_id, item_id and rank (1 = first) or score "
        "(higher first); metrics are truncated at each list's length")
    _add_data_flags(evaluate, required=True)
    evaluate.add_argument("--out", required=True,
                          help="directory for evaluation.json and per_user.parquet")
    evaluate.add_argument("--reward-model",
                          help="saved reward ensemble: the judge's slate value (--policy only)")
    add_dataclass_flags(evaluate, EvaluationFlags)
    evaluate.set_defaults(handler=_cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    from rmdiag import __version__
    from rmdiag.audit import AuditConfig
    from rmdiag.pipeline import RunConfig
    from rmdiag.policies import PolicyConfig
    from rmdiag.select import SelectConfig

    parser = argparse.ArgumentParser(
        prog="rmdiag",
        description="Audit a recommender's reward model, choose the post-training algorithm that "
        "follows, train it and score it, every figure with a confidence interval.",
    )
    parser.add_argument("--version", action="version", version=f"rmdiag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="the whole job on a log (default: a simulated world)")
    _add_data_flags(run, required=False)
    run.add_argument(
        "--out",
        default="runs/default",
        help="directory for summary.json, decision.json, audit.json, audit.html, report.html "
        "and per_user.parquet, and the hidden .work/ that --resume continues from (default: "
        "runs/default)",
    )
    run.add_argument(
        "--json", action="store_true", help="print summary.json on stdout instead of the text"
    )
    add_dataclass_flags(run, RunConfig)
    add_dataclass_flags(run, AuditConfig, prefix="audit_")
    add_dataclass_flags(run, SelectConfig, prefix="select_")
    add_dataclass_flags(run, PolicyConfig, prefix="policy_")
    _add_simulation_flags(run, prefix="sim_")
    run.set_defaults(handler=_cmd_run)

    audit = commands.add_parser(
        "audit", help="audit reward models against global/user/item-mean and bias baselines"
    )
    _add_data_flags(audit, required=True)
    audit.add_argument(
        "--holdout",
        help="held-out events from another file, e.g. ratings under randomized exposure "
        "(default: each user's last two events)",
    )
    audit.add_argument(
        "--holdout-kind",
        choices=("log", "random"),
        default="log",
        help="what --holdout holds: 'log' (events of the same logging policy) or 'random' "
        "(ratings under randomized exposure: all of it is then the unexplored slice)",
    )
    audit.add_argument(
        "--heldout-per-user",
        type=int,
        metavar="K",
        help="without --holdout: hold out each user's last K events (default 2); more give "
        "more within-user pairs, so power to see ordering gains",
    )
    audit.add_argument(
        "--predictions",
        help="your own reward model's predictions of the held-out events (Parquet or CSV: "
        "user_id, item_id, timestamp, prediction, optional member), audited beside the "
        "built-in models; the verdict is then on it",
    )
    audit.add_argument(
        "--predictions-name",
        default="external",
        help="the name of the --predictions model in audit.json (default: external)",
    )
    audit.add_argument("--out", required=True, help="directory for audit.json and audit.html")
    audit.add_argument(
        "--overoptimization",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train an SFT policy (rmdiag.policies.PolicyConfig defaults) and compute its "
        "best-of-n over-optimization curve against a proxy and a judge ensemble, each fitted on "
        "half of the users (audit.json's `overoptimization`; the verdict reads it). "
        "--no-overoptimization skips it (default: on)",
    )
    add_dataclass_flags(audit, AuditConfig)
    add_dataclass_flags(audit, SelectConfig)
    audit.set_defaults(handler=_cmd_audit)

    simulate = commands.add_parser("simulate", help="write a simulated interaction log")
    simulate.add_argument("--out", required=True, help="Parquet file to write")
    _add_simulation_flags(simulate, prefix="")
    simulate.set_defaults(handler=_cmd_simulate)
    _add_stage_commands(commands)
    return parser


def _refused_resume(error: Exception) -> bool:
    """A resume under settings other than its checkpoint's (bad input: exit 2)."""
    # Looked up, not imported: only a command that imported trainers can have raised it, and
    # importing it here would load torch for every command.
    loop = sys.modules.get("trainers.loop")
    return loop is not None and isinstance(error, loop.CheckpointMismatch)


def _rank_zero_failed(error: Exception) -> bool:
    """A step rank 0 ran for every rank failed there (it reports it); looked up as above."""
    module = sys.modules.get("rmdiag.distributed")
    return module is not None and isinstance(error, module.RankZeroFailed)


# Commands that train nothing: under torchrun rank 0 runs them and the other ranks exit at once.
_RANK_ZERO_COMMANDS = frozenset({"simulate", "select", "evaluate"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors are 2, --help/--version are 0
        return int(exit_.code or 0)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _dispatch(args, rank=0)
    # Launched by torchrun: one process group for the whole command (imported only now: torch).
    from rmdiag import distributed

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0 and args.command in _RANK_ZERO_COMMANDS:
        return EXIT_OK
    with distributed.process_group():
        if rank == 0:
            return _dispatch(args, rank)
        with contextlib.redirect_stdout(io.StringIO()):  # rank 0 prints the results
            return _dispatch(args, rank)


def _dispatch(args: argparse.Namespace, rank: int) -> int:
    """Run the command's handler; its exit code (module docstring). On a rank other than 0
    only the rank's own internal failure is printed: rank 0 reports bad input, which every
    rank meets alike, and the failures of what it ran for all (`RankZeroFailed`)."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    started = time.perf_counter()
    try:
        code = handler(args)
    except (DataError, UsageError) as error:
        if rank == 0:
            print(f"rmdiag {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"rmdiag {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except MemoryError as error:  # a failure of the machine, not of the input or of our code
        print(f"rmdiag {args.command}: out of memory: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - the exit code is the contract
        if _rank_zero_failed(error):
            return EXIT_BAD_INPUT if error.bad_input else EXIT_FAILURE  # type: ignore[attr-defined]
        if _refused_resume(error):
            if rank == 0:
                print(f"rmdiag {args.command}: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()  # the traceback is for us
        where = f" (rank {rank})" if rank else ""
        print(f"rmdiag {args.command}: internal failure{where}", file=sys.stderr)
        return EXIT_FAILURE
    if rank == 0:
        print(f"rmdiag {args.command}: done in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
