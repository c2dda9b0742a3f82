"""SimulatorConfig: defaults, SIM_* environment, CLI flags, live updates."""

from __future__ import annotations

import argparse

import pytest

from devtools.simulator.config import SimulatorConfig


def test_defaults() -> None:
    config = SimulatorConfig()
    assert config.api_key == "sim-key"
    assert config.webhook_secret.startswith("whsec_")
    assert config.completion_delay == 1.0
    assert config.submit_hang_seconds == 60.0
    assert config.public_url is None and config.seed is None
    assert config.webhook_out_of_order is False
    assert config.upload_max_bytes == 200 * 1024 * 1024


def test_from_env_parses_each_type() -> None:
    config = SimulatorConfig.from_env(
        {
            "SIM_COMPLETION_DELAY": "0.5",
            "SIM_WEBHOOK_DUPLICATE_COUNT": "2",
            "SIM_WEBHOOK_OUT_OF_ORDER": "true",
            "SIM_API_KEY": "k",
            "SIM_SEED": "7",
            "SIM_PUBLIC_URL": "",
            "UNRELATED": "x",
        }
    )
    assert config.completion_delay == 0.5
    assert config.webhook_duplicate_count == 2
    assert config.webhook_out_of_order is True
    assert config.api_key == "k"
    assert config.seed == 7
    assert config.public_url is None
    assert SimulatorConfig.from_env({}) == SimulatorConfig()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIM_COMPLETION_DELAY", "soon"),
        ("SIM_WEBHOOK_OUT_OF_ORDER", "maybe"),
        ("SIM_FAILURE_RATE", "1.5"),
        ("SIM_WEBHOOK_SECRET", "no-prefix"),
        ("SIM_DOWNLOAD_FAIL_MODE", "explode"),
    ],
)
def test_from_env_rejects_bad_values(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig.from_env({name: value})


def test_from_env_error_names_the_variable() -> None:
    with pytest.raises(ValueError, match="SIM_COMPLETION_DELAY"):
        SimulatorConfig.from_env({"SIM_COMPLETION_DELAY": "soon"})


def _parser(listen: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    SimulatorConfig.add_arguments(parser, listen=listen)
    return parser


def test_from_args_overrides_only_given_flags() -> None:
    base = SimulatorConfig.from_env({"SIM_FAILURE_RATE": "0.25", "SIM_COMPLETION_DELAY": "3"})
    args = _parser().parse_args(
        ["--completion-delay", "0.5", "--webhook-out-of-order", "--submit-429-rate", "1", "--seed", "3"]
    )
    config = SimulatorConfig.from_args(args, base=base)
    assert config.completion_delay == 0.5
    assert config.webhook_out_of_order is True
    assert config.submit_429_rate == 1.0
    assert config.seed == 3
    assert config.failure_rate == 0.25  # from the environment, no flag given
    assert SimulatorConfig.from_args(_parser().parse_args([])) == SimulatorConfig()


def test_boolean_flag_can_be_turned_off() -> None:
    args = _parser().parse_args(["--no-webhook-out-of-order"])
    base = SimulatorConfig(webhook_out_of_order=True)
    assert SimulatorConfig.from_args(args, base=base).webhook_out_of_order is False


def test_listen_adds_host_and_port() -> None:
    args = _parser(listen=True).parse_args(["--port", "9001"])
    assert (args.host, args.port) == ("127.0.0.1", 9001)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--port", "9001"])


def test_bad_flag_value_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--completion-delay", "soon"])


def test_every_knob_has_a_flag() -> None:
    parser = _parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for name in SimulatorConfig.knob_names():
        assert "--" + name.replace("_", "-") in flags


def test_updated_coerces_json_values() -> None:
    config = SimulatorConfig().updated(
        {"completion_delay": 1, "webhook_out_of_order": "yes", "seed": None, "failure_rate": 0.5}
    )
    assert config.completion_delay == 1.0 and isinstance(config.completion_delay, float)
    assert config.webhook_out_of_order is True
    assert config.failure_rate == 0.5


@pytest.mark.parametrize(
    "changes",
    [
        {"no_such_knob": 1},
        {"failure_rate": 2},
        {"webhook_duplicate_count": 1.5},
        {"webhook_duplicate_count": True},
        {"webhook_out_of_order": 1},
        {"completion_delay": -1},
        {"api_key": None},
    ],
)
def test_updated_rejects_bad_changes(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig().updated(changes)


def test_cli_parse_layers_flags_over_env_over_defaults() -> None:
    from devtools.simulator.cli import parse

    config, host, port = parse(
        ["--port", "9100", "--completion-delay", "0.2"],
        {"SIM_COMPLETION_DELAY": "5", "SIM_FAILURE_RATE": "0.1"},
    )
    assert (host, port) == ("127.0.0.1", 9100)
    assert config.completion_delay == 0.2 and config.failure_rate == 0.1
