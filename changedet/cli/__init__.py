"""The ``python -m changedet`` command line: ``commands`` (the parser, ``run``, ``describe``,
``coregister``; heavy modules imported per command so ``--help`` stays fast) and ``train``
(``train``/``evaluate`` subcommands)."""

from changedet.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
