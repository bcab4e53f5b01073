"""One vocabulary on the command line: every command described with an example, every option with
help text and its default, one name for the output folder (the old ones hidden but working)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from distributed_reptile import cli
from distributed_reptile.bench import build_parser as bench_parser
from distributed_reptile.evaluation.cli import build_parser as evaluate_parser
from distributed_reptile.tune import build_parser as tune_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    top = cli.build_parser()
    parsers = {"distributed-reptile": top}
    for name, sub in _subparsers(top).items():
        if name not in cli.DISPATCHED:
            parsers[name] = sub
    parsers["evaluate"] = evaluate_parser()
    parsers["tune"] = tune_parser()
    bench = bench_parser()
    parsers["bench"] = bench
    for name, sub in _subparsers(bench).items():
        parsers[f"bench {name}"] = sub
    return parsers


PARSERS = _all_parsers()


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_command_has_a_description_and_an_example(name: str) -> None:
    parser = PARSERS[name]
    assert parser.description and parser.description.strip(), name
    assert parser.epilog and "example" in parser.epilog, name
    assert "distributed-reptile" in parser.epilog, name


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    parser = PARSERS[name]
    text = parser.format_help()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        default = action.default
        shown = default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in action.help:
            assert f"(default: {default})" in " ".join(text.split()), (
                f"{name}: the default of {action.option_strings} is not shown"
            )


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_one_name_for_the_output_folder(name: str) -> None:
    parser = PARSERS[name]
    visible = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
    assert not visible & {"--out", "--out-dir", "--save-path"}, name
    hidden = {s for a in parser._actions if a.help == argparse.SUPPRESS for s in a.option_strings}
    if hidden & {"--out", "--out-dir", "--save-path"}:
        assert "--output" in visible, name
    text = parser.format_help()
    for old in ("--out ", "--out-dir", "--save-path"):
        assert old not in text, f"{name} lists the old option name {old}"


def test_old_output_names_still_work() -> None:
    assert evaluate_parser().parse_args(["ckpt", "--out", "x"]).output == "x"
    assert tune_parser().parse_args(["c.yaml", "--out-dir", "x"]).output == "x"
    assert bench_parser().parse_args(["overhead", "--out-dir", "x"]).out_dir == "x"
    assert bench_parser().parse_args(["overhead", "--output", "y"]).out_dir == "y"
    assert bench_parser().parse_args(["overhead"]).out_dir == "bench_results"
    train = cli.build_parser().parse_args(["train", "c.yaml", "--save-path", "z"])
    assert train.output == "z"
    demo = cli.build_parser().parse_args(["demo", "--save-path", "w"])
    assert demo.output == "w"
    assert cli.build_parser().parse_args(["demo"]).output is None


def test_help_runs_as_the_user_types_it() -> None:
    for argv in (["--help"], ["demo", "--help"], ["evaluate", "--help"], ["tune", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "distributed_reptile.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "example" in proc.stdout
