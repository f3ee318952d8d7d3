"""The command line's options, generated from the options dataclasses: one flag per field of
:class:`~probing.study.config.StudyConfig` and :class:`~probing.study.config.SteeringConfig` (its
default, help, choices and check); and the rank and node that launchers (torchrun, accelerate launch,
MPI) put in the environment."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from probing.options import option_default
from probing.study.config import SteeringConfig, StudyConfig

LAUNCHER_VARIABLES = (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                      ("PMI_RANK", "PMI_SIZE"))
"""(rank, world size) variables of torchrun / accelerate launch, Open MPI and other MPI launchers."""


def shard_option(text: str) -> tuple[int, int]:
    try:
        rank, world = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RANK/WORLD such as 0/2, got {text!r}")
    if not 0 <= rank < world:
        raise argparse.ArgumentTypeError(f"rank must be in 0..WORLD-1, got {text!r}")
    return rank, world


def _environment_int(name: str) -> int:
    """A launcher's integer variable, or an error naming it."""
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={text!r} is not an integer. Launchers (torchrun, accelerate "
            f"launch, mpirun) set it to a process number: unset it, or pass --shard RANK/WORLD instead"
        ) from None


def launcher_shard() -> tuple[int, int] | None:
    """(rank, world) set by torchrun / accelerate launch (RANK, WORLD_SIZE) or mpirun, if any."""
    for rank_name, world_name in LAUNCHER_VARIABLES:
        if rank_name in os.environ and world_name in os.environ:
            rank, world = _environment_int(rank_name), _environment_int(world_name)
            if not 0 <= rank < world:
                raise ValueError(f"environment variables {rank_name}={rank} and {world_name}={world}: the rank "
                                 f"must be in 0..{world_name}-1. Fix the launcher command or unset them")
            return (rank, world) if world > 1 else None
    return None


def node_option(text: str) -> int:
    try:
        node = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a node number such as 0 or 1, got {text!r}") from None
    if node < 0:
        raise argparse.ArgumentTypeError(f"the node number must be 0 or more, got {node}")
    return node


def launcher_node() -> int | None:
    """The node rank when torchrun / accelerate launch started processes on several nodes, else None.

    Their agents set GROUP_RANK (the node's rank under the default static rendezvous, i.e.
    ``--node_rank``), LOCAL_WORLD_SIZE (processes on this node) and WORLD_SIZE (in all).
    """
    names = ("GROUP_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")
    if not all(name in os.environ for name in names):
        return None
    node, local_world, world = (_environment_int(name) for name in names)
    return node if world > local_world else None


def local_rank() -> int | None:
    """This process's rank on its node (LOCAL_RANK, set by torchrun / accelerate launch), if set."""
    return _environment_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else None


def program() -> str:
    """How we were started: the ``probing`` console script or ``python -m probing``."""
    return "probing" if Path(sys.argv[0]).name == "probing" else "python -m probing"


def _option_value(spec: Field) -> Callable[[str], Any]:
    """argparse's ``type`` for a StudyConfig field: read the text, then the field's own check."""
    read, check = spec.metadata["read"] or str, spec.metadata["check"]

    def convert(text: str) -> Any:
        try:
            return check(read(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def add_options(parser: argparse.ArgumentParser, options: type, *groups: str) -> None:
    """One flag per field of the options dataclass ``options`` (StudyConfig or SteeringConfig) in ``groups``
    (see ``probing.study.config.OPTION_GROUPS``), with the field's default (its environment variable's value
    where set), help and check: ``--batch-size`` for ``batch_size``; a flag that is on by default is turned off
    with ``--no-<name>``."""
    for spec in fields(options):
        if spec.metadata["group"] not in groups:
            continue
        name, help_text, default = spec.name.replace("_", "-"), spec.metadata["help"], option_default(spec)
        if spec.metadata["variable"]:
            help_text += f"; ${spec.metadata['variable']} sets the default"
        if isinstance(default, bool):
            if default:
                parser.add_argument(f"--no-{name}", dest=spec.name, action="store_false", help=f"skip {help_text}")
            else:
                parser.add_argument(f"--{name}", dest=spec.name, action="store_true", help=help_text)
            continue
        if default is not None:
            shown = ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in default) \
                if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        if spec.metadata["choices"]:
            parser.add_argument(f"--{name}", dest=spec.name, default=default, choices=spec.metadata["choices"],
                                help=help_text)
        else:
            parser.add_argument(f"--{name}", dest=spec.name, default=default, type=_option_value(spec),
                                help=help_text)


def study_config(args: argparse.Namespace) -> StudyConfig:
    """The StudyConfig of the parsed options (fields a command has no option for keep their default)."""
    return StudyConfig(**_given(args, StudyConfig))


def steering_config(args: argparse.Namespace) -> SteeringConfig:
    """The SteeringConfig of ``steer``'s parsed options."""
    return SteeringConfig(**_given(args, SteeringConfig))


def _given(args: argparse.Namespace, options: type) -> dict[str, Any]:
    return {spec.name: getattr(args, spec.name) for spec in fields(options) if hasattr(args, spec.name)}


NEGATIVE_VALUED = ("--layers", "--alphas", "--probe-layer")


def parsed(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse's ``type`` for a reader such as ``read_names``: its ValueError as argparse's error."""
    def convert(text: str) -> Any:
        try:
            return read(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def join_negative_values(argv: list[str]) -> list[str]:
    """Let ``--layers -1,-5`` (and ``--alphas -2,2``, ``--probe-layer -9``) work: argparse would read
    "-1,-5" as an option."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in NEGATIVE_VALUED and token.startswith("-"):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined
