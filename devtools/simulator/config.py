"""Every knob of the WaveSpeed simulator, with defaults, from env (``SIM_*``) or CLI flags.

The config is a frozen dataclass: a live change (``POST /_sim/config``) replaces the
whole object, so a request or background task that read it once sees one consistent set
of knobs rather than a mix of old and new values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "SIM_"
DEFAULT_PORT = 8090
DOWNLOAD_FAIL_MODES = ("random", "status", "cut")

_HELP: dict[str, str] = {
    "api_key": "Bearer token every /api/v3 call must carry",
    "webhook_secret": "whsec_ secret that signs webhooks (served at /api/v3/webhook/secret)",
    "public_url": "base URL put in output/result/upload URLs (default: the request's own)",
    "seed": "seed of the fault dice and of random task seeds (default: unpredictable)",
    "processing_delay": "seconds after submit before a task turns 'processing'",
    "completion_delay": "seconds after submit before a task ends",
    "completion_jitter": "up to this many extra random seconds before a task ends",
    "failure_rate": "probability (0..1) that a task ends 'failed'",
    "submit_429_rate": "probability that a submit answers 429 (no task created)",
    "retry_after_seconds": "Retry-After value of a 429 answer",
    "submit_500_rate": "probability that a submit answers 500 (no task created)",
    "submit_hang_rate": "probability that a submit creates its task but its answer is lost",
    "submit_hang_seconds": "how long a lost submit answer hangs before the connection is cut",
    "sync_timeout": "longest wait of an enable_sync_mode submit before it answers 'processing'",
    "webhook_drop_rate": "probability that a task's webhook is never sent",
    "webhook_duplicate_count": "send each webhook this many extra times with the same webhook-id",
    "webhook_delay": "extra seconds before a webhook is sent",
    "webhook_out_of_order": "after the final webhook, also send a stale 'processing' one",
    "webhook_bad_signature_rate": "probability that a webhook is signed with a wrong key",
    "webhook_timeout": "seconds before a webhook POST gives up",
    "webhook_retries": "retries of a webhook POST on connection errors and 5xx",
    "webhook_retry_delay": "seconds between webhook retries (times the attempt number)",
    "download_delay": "seconds before an output download starts",
    "download_bytes_per_second": "throttle output downloads to this rate (0 = unthrottled)",
    "download_fail_rate": "probability that an output download fails",
    "download_fail_mode": "how a failing download fails: status (500), cut (mid-body) or random",
    "image_cache_size": "rendered output images kept in memory",
    "max_tasks": "tasks kept in memory; the oldest are forgotten past this",
    "upload_max_bytes": "largest media upload accepted (413 above)",
    "max_uploads": "uploads kept in memory; the oldest are forgotten past this",
}


@dataclass(frozen=True)
class SimulatorConfig:
    """The simulator's knobs. Rates are probabilities in 0..1; durations are seconds."""

    api_key: str = "sim-key"
    webhook_secret: str = "whsec_simulator_0123456789abcdef"
    public_url: str | None = None
    seed: int | None = None

    processing_delay: float = 0.1
    completion_delay: float = 1.0
    completion_jitter: float = 0.0
    failure_rate: float = 0.0

    submit_429_rate: float = 0.0
    retry_after_seconds: int = 1
    submit_500_rate: float = 0.0
    submit_hang_rate: float = 0.0
    submit_hang_seconds: float = 60.0
    sync_timeout: float = 120.0

    webhook_drop_rate: float = 0.0
    webhook_duplicate_count: int = 0
    webhook_delay: float = 0.0
    webhook_out_of_order: bool = False
    webhook_bad_signature_rate: float = 0.0
    webhook_timeout: float = 10.0
    webhook_retries: int = 2
    webhook_retry_delay: float = 0.5

    download_delay: float = 0.0
    download_bytes_per_second: int = 0
    download_fail_rate: float = 0.0
    download_fail_mode: str = "random"

    # 0: none. Otherwise the history list answers at most this many items per page,
    # still echoing the page_size asked for (a provider whose "up to 100" is lower).
    list_page_cap: int = 0
    # A busy account: before answering each history list request, this many tasks of
    # someone else arrive (same model as the filter), so the list grows while it is read.
    list_arrivals: int = 0

    image_cache_size: int = 64
    max_tasks: int = 10_000
    upload_max_bytes: int = 200 * 1024 * 1024
    max_uploads: int = 100

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be between 0 and 1, got {value}")
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and value < 0 and f.name != "seed":
                raise ValueError(f"{f.name} must not be negative, got {value}")
        if self.download_fail_mode not in DOWNLOAD_FAIL_MODES:
            raise ValueError(f"download_fail_mode must be one of {', '.join(DOWNLOAD_FAIL_MODES)}")
        if not self.webhook_secret.startswith("whsec_"):
            raise ValueError("webhook_secret must start with 'whsec_'")
        if not self.api_key:
            raise ValueError("api_key must not be empty")

    # -- building ----------------------------------------------------------------------

    @classmethod
    def knob_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_env(cls, environ: Mapping[str, str], base: SimulatorConfig | None = None) -> SimulatorConfig:
        """Knobs from ``SIM_<NAME>`` variables (``SIM_COMPLETION_DELAY=0.5``) over ``base``."""
        changes: dict[str, Any] = {}
        for name in cls.knob_names():
            env_name = ENV_PREFIX + name.upper()
            if env_name in environ:
                try:
                    changes[name] = _parser(name)(environ[env_name])
                except ValueError as exc:
                    raise ValueError(f"{env_name}: {exc}") from None
        return dataclasses.replace(base or cls(), **changes)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, listen: bool = False) -> None:
        """Add one ``--kebab-case`` flag per knob; ``listen`` also adds --host and --port.

        Every flag defaults to None so ``from_args`` can tell "not given" from a value and
        let the environment (or the defaults) stand for the rest.
        """
        group = parser.add_argument_group("simulator knobs (also SIM_<NAME> env variables)")
        if listen:
            group.add_argument("--host", default="127.0.0.1", help="interface to listen on")
            group.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
        for name in cls.knob_names():
            flag = "--" + name.replace("_", "-")
            default = getattr(cls(), name)
            help_text = f"{_HELP.get(name, name)} (default: {default})"
            if _base_type(name) is bool:
                group.add_argument(
                    flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
                )
            else:
                group.add_argument(flag, dest=name, type=_parser(name), default=None, help=help_text)

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: SimulatorConfig | None = None) -> SimulatorConfig:
        """The flags given on the command line over ``base``.

        Pass ``base=SimulatorConfig.from_env(os.environ)`` so flags override the
        environment, which overrides the defaults.
        """
        changes = {
            name: getattr(args, name) for name in cls.knob_names() if getattr(args, name, None) is not None
        }
        return dataclasses.replace(base or cls(), **changes)

    def updated(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """A copy with ``changes`` (JSON values or strings) applied; ValueError on a bad one."""
        known = set(self.knob_names())
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        return dataclasses.replace(self, **coerced)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- type handling -----------------------------------------------------------------------


def _field_type(name: str) -> tuple[type, bool]:
    """(base type, optional) of a knob, read from the dataclass annotations."""
    hint = typing.get_type_hints(SimulatorConfig)[name]
    if isinstance(hint, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _base_type(name: str) -> type:
    return _field_type(name)[0]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _parser(name: str) -> Callable[[str], Any]:
    """A str -> value parser for a knob; "" means None for optional knobs."""
    base, optional = _field_type(name)

    def parse(text: str) -> Any:
        if optional and text.strip() in ("", "none", "null"):
            return None
        if base is bool:
            return _parse_bool(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return text

    # argparse names the type in its error message.
    parse.__name__ = base.__name__
    return parse


def _coerce(name: str, value: Any) -> Any:
    """A JSON value for a knob, checked against its type; strings are parsed like env."""
    base, optional = _field_type(name)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must not be null")
    if isinstance(value, str) and base is not str:
        return _parser(name)(value)
    if base is bool and isinstance(value, bool):
        return value
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is str and isinstance(value, str):
        return value
    raise ValueError(f"{name} must be {base.__name__}, got {type(value).__name__}")
