"""The `rmdiag` command line. Exit codes are an API: 0 success, 2 bad input or usage, 1 failure."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rmdiag.data import DataError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(ValueError):
    """Options that parse but make no sense together (exit 2, like argparse's own errors)."""


def _column_mapping(pairs: list[str] | None) -> dict[str, str] | None:
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
    summary = run(
        config,
        data=args.data,
        columns=_column_mapping(args.column),
        out=args.out,
        simulation=simulation,
        audit_config=audit_config,
        select_config=select_config,
        policy_config=policy_config,
    )
    if args.json:
        print(to_json(summary.to_json()), end="")
    else:
        print(summary.render())
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    from rmdiag.audit import AuditConfig
    from rmdiag.pipeline import audit_files
    from rmdiag.select import SelectConfig

    _, judgement = audit_files(
        args.data,
        args.out,
        holdout=args.holdout,
        columns=_column_mapping(args.column),
        config=dataclass_from_args(AuditConfig, args),
        select_config=dataclass_from_args(SelectConfig, args),
    )
    print(f"verdict: {judgement.verdict}")
    for reason in judgement.reasons:
        print(f"  - {reason}")
    return EXIT_OK


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
    audit.add_argument("--out", required=True, help="directory for audit.json and audit.html")
    add_dataclass_flags(audit, AuditConfig)
    add_dataclass_flags(audit, SelectConfig)
    audit.set_defaults(handler=_cmd_audit)

    simulate = commands.add_parser("simulate", help="write a simulated interaction log")
    simulate.add_argument("--out", required=True, help="Parquet file to write")
    _add_simulation_flags(simulate, prefix="")
    simulate.set_defaults(handler=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors are 2, --help/--version are 0
        return int(exit_.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    started = time.perf_counter()
    try:
        code = handler(args)
    except (DataError, UsageError) as error:
        print(f"rmdiag {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"rmdiag {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:  # noqa: BLE001 - the exit code is the contract; the traceback is for us
        traceback.print_exc()
        print(f"rmdiag {args.command}: internal failure", file=sys.stderr)
        return EXIT_FAILURE
    print(f"rmdiag {args.command}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
