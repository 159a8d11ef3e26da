"""Command-line options shared by the commands that build one cached model (``optimize``, ``export``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def policy_options(fn: F) -> F:
    """``--policy``, ``--set KEY=VALUE`` and ``--config``: the policy a command runs, read by ``cli.policy_of``."""
    for option in reversed([
        click.option("--policy", default=None, help="policy name or spec, e.g. 'fora{interval=4}' (default: auto, "
                     "FORA on a stack of blocks, DeepCache on a U-Net)"),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="policy option, repeatable"),
        click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                     help="a tuned config written by `graphcache tune` instead of --policy"),
    ]):
        fn = option(fn)
    return fn
