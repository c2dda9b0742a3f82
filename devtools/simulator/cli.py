"""``python -m devtools.simulator``: the simulator alone, knobs from flags and SIM_* env."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from devtools.simulator.app import run
from devtools.simulator.config import SimulatorConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavespeed-jobs simulator", description="Serve a local simulation of WaveSpeedAI's v3 API."
    )
    SimulatorConfig.add_arguments(parser, listen=True)
    return parser


def parse(argv: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[SimulatorConfig, str, int]:
    """(config, host, port): flags override SIM_* variables, which override defaults."""
    args = build_parser().parse_args(argv)
    config = SimulatorConfig.from_args(args, base=SimulatorConfig.from_env(environ))
    return config, str(args.host), int(args.port)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    config, host, port = parse(argv, os.environ if environ is None else environ)
    run(config, host=host, port=port)
