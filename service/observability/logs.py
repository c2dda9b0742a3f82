"""Structured logs: one JSON object per line, or readable lines on a terminal
(LOG_FORMAT; by default ``console`` on a TTY, else ``json``).

* Every line about a job carries ``job_id``, and ``task_id`` once the provider named the
  task: the runner binds the row a duty works on for the whole run (``bind_job``), the
  duties add the task id as soon as they know it, and request handlers name both.
* A line written inside a span (a job's admission, submit, webhook, store, callback
  attempt: service/observability/tracing.py) carries ``trace_id`` and ``span_id`` too, so
  a log line leads to its trace and back.
* Secrets never reach the output. Settings hold them as SecretStr and error bodies carry
  types only; behind that, ``redact`` masks every string of every line, tracebacks
  included: values shaped like a secret (``whsec_…``, ``wsj_…`` API keys, ``Bearer …``,
  passwords in URLs, signatures and tokens in query strings) and the exact values
  handed to ``register_secret`` (the provider key, the webhook and callback secrets).
* Tracebacks are plain text without local variables (a pretty traceback that shows
  locals would print whatever secret a frame held).
* The standard library's loggers (uvicorn, SQLAlchemy, botocore) go through the same
  processors and renderer, so every line of the process has one format.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.types import EventDict, Processor, WrappedLogger

MASK = "***"
# Shorter values are too likely to occur in ordinary text to be masked on sight.
MIN_SECRET_LENGTH = 8
_registered: set[str] = set()

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]+"), "whsec_" + MASK),
    (re.compile(r"\bwsj_[A-Za-z0-9_-]{8,}"), "wsj_" + MASK),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    (re.compile(r"(://[^:/?#@\s]+:)[^@/\s]+@"), r"\1" + MASK + "@"),
]
# Query parameters whose name holds one of these words have their value masked. The
# name is found by a pattern that cannot backtrack (one run of name characters, then
# ``=``) and the words are looked for in Python: one pattern naming the words inside
# the run backtracked quadratically on a value like ``&keykeykey…`` with no ``=`` (a
# 24 KB request path held the event loop ~1.4 s).
_QUERY_NAME = re.compile(r"(?i)[?&]([a-z0-9_-]*)=")
_QUERY_VALUE = re.compile(r"[^&#\s\"']+")
_SECRET_WORDS = ("key", "token", "secret", "signature", "sig", "password", "credential")


def register_secret(*values: str | None) -> None:
    """Mask these exact values wherever they would appear in a log line."""
    for value in values:
        if value and len(value) >= MIN_SECRET_LENGTH:
            _registered.add(value)


def redact_text(text: str) -> str:
    for secret in _registered:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _mask_query_values(text)


def _mask_query_values(text: str) -> str:
    """``?…key…=value`` and ``&…token…=value`` with the value masked, in one pass: a
    name found inside a value already masked is part of that value."""
    if "=" not in text:
        return text
    parts: list[str] = []
    done = 0
    for name in _QUERY_NAME.finditer(text):
        if name.start() < done or not any(word in name.group(1).lower() for word in _SECRET_WORDS):
            continue
        value = _QUERY_VALUE.match(text, name.end())
        if value is None:
            continue
        parts += (text[done : name.end()], MASK)
        done = value.end()
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """The processor: every string value of the line, masked (keys are ours, not data)."""
    return {key: _redact_value(value) for key, value in event_dict.items()}


def bind_job(job_id: str, task_id: str | None = None) -> None:
    """Name the job (and its provider task, if known) on every line logged from here to
    the end of the current task (each duty run and each request is its own task)."""
    if task_id:
        structlog.contextvars.bind_contextvars(job_id=job_id, task_id=task_id)
    else:
        structlog.contextvars.bind_contextvars(job_id=job_id)


def add_trace(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """The processor: the trace and span this line was written in, when it was in one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", f"{context.trace_id:032x}")
        event_dict.setdefault("span_id", f"{context.span_id:016x}")
    return event_dict


def _shared() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        add_trace,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # plain text, no locals, and then redacted
        redact,
    ]


def _renderer(fmt: str) -> Processor:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.processors.JSONRenderer()


def stdlib_handler(renderer: Processor, stream: TextIO) -> logging.Handler:
    """A handler that renders the standard library's records like our own lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    return handler


def configure(level: str = "info", fmt: str = "json", secrets: Iterable[str | None] = ()) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    register_secret(*secrets)
    renderer = _renderer(fmt)
    structlog.configure(
        processors=[*_shared(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [stdlib_handler(renderer, sys.stderr)]
    # Third-party INFO is chatter (moto's embedded S3 logs every request); their
    # warnings and errors are kept.
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
