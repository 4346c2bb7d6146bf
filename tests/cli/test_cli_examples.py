"""Every example line of every ``--help`` runs as written, from the repository root, and exits 0.

The examples are read from the parser itself, so a new or edited example is tested without
editing this file. They run in-process (``cli.main``) in a scratch folder holding a link to the
repository's ``data/`` (outputs land there, not in the checkout); ``../shared`` paths point at
the real datasets beside the checkout and skip when those are absent. Training examples get
``--preset tiny`` when they name no preset, so they take seconds instead of an hour.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from changedet import cli

#: Subcommands in the order their examples run: ``train`` writes the model file that the
#: ``evaluate`` and ``run`` examples use.
ORDER = ("train", "evaluate", "run", "info", "coregister")


def help_examples() -> dict[str, list[list[str]]]:
    """Subcommand -> its epilog's example command lines, as argument lists after ``changedet``."""
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    examples = {}
    for name, sub in subparsers.choices.items():
        lines, joined = [], ""
        for line in (sub.epilog or "").splitlines():
            joined += line.split("#")[0].strip() + " "
            if joined.rstrip().endswith("\\"):
                joined = joined.rstrip()[:-1]
                continue
            if joined.startswith("python -m changedet "):
                lines.append(shlex.split(joined)[3:])
            joined = ""
        examples[name] = lines
    return examples


def test_every_subcommand_has_examples_and_they_parse():
    examples = help_examples()
    assert set(ORDER) <= set(examples), f"subcommands without examples: {examples}"
    parser = cli.build_parser()
    for name, lines in examples.items():
        assert lines, f"`{name} --help` shows no example"
        for argv in lines:
            assert argv[0] == name, f"`{name} --help` shows an example of {argv[0]}"
            parser.parse_args(argv)  # an unknown flag or bad value exits 2 here


def _localise(argv: list[str], shared: Path) -> list[str]:
    """``../shared/...`` -> the real datasets; training examples get the tiny preset."""
    out = [str(shared / a[len("../shared/"):]) if a.startswith("../shared/") else a
           for a in argv]
    if out[0] == "train" and "--preset" not in out:
        out += ["--preset", "tiny"]
    return out + ["--quiet"]


@pytest.mark.slow
def test_every_help_example_runs_from_the_repository_root(tmp_path, monkeypatch, shared_data,
                                                         sample_data):
    """Slow (about two minutes): the packaged model runs on the sample pair several times."""
    (tmp_path / "data").symlink_to(sample_data)
    monkeypatch.chdir(tmp_path)
    examples = help_examples()
    failed = []
    for name in ORDER:
        for argv in examples[name]:
            status = cli.main(_localise(argv, shared_data.parent))
            if status != 0:
                failed.append(f"{shlex.join(argv)} -> exit {status}")
    assert not failed, "help examples failed:\n" + "\n".join(failed)
    assert (tmp_path / "tiny.msgpack").is_file() and (tmp_path / "change.gpkg").is_file()
