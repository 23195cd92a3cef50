"""`serve --log-format json`: each log record as one JSON object on one line, which journald (and any
collector reading stdout) keeps whole. Times are RFC 3339 in UTC with microseconds."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import orjson


class JsonLineFormatter(logging.Formatter):
    """time, level, logger and message; the traceback as ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line).decode()  # escapes newlines, so a traceback stays on its line
        except TypeError:
            # A lone surrogate (a file name or peer's bytes decoded with surrogateescape), which
            # orjson refuses: logging would drop the record and print its own traceback instead.
            # It is written as its escape's text, as the store keeps such a character.
            return orjson.dumps({key: _utf8(value) for key, value in line.items()}).decode()


def _utf8(text: str) -> str:
    """``text`` with each lone surrogate written as the text of its escape (U+DCFF as "\\udcff")."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


#: The format of a plain-text log line (``--log-format text``).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextLineFormatter(logging.Formatter):
    """TEXT_FORMAT with the message's control characters made visible (`layout.printable`): a log
    message may quote what a peer sent, and one record stays one line on a terminal or in a file
    (a newline in it would forge the next record). A traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        from pacsguard.cli.layout import printable

        record.message = printable(record.message)
        return super().formatMessage(record)


def configure_logging(level: str, log_format: str) -> None:
    """The root logger at ``level``, writing text or JSON lines to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else TextLineFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
