"""Errors raised by sloburn.

One tree, rooted at :class:`EngineError`::

    EngineError
    +-- ConfigError            a configuration file is invalid (carries every problem found)
    +-- DecodeError            an input record or message cannot be decoded
    +-- CheckpointError        a checkpoint cannot be written, read or trusted
    +-- StateError             the engine was driven against its contract (e.g. time ran backwards)
    +-- DecodeWorkerError      a process decoding messages for the daemon died or cannot start
    +-- DeliveryError          an alert could not be delivered; ``retriable`` says whether to try again
        +-- RetriableDeliveryError    429, 5xx, timeouts, connection errors
        +-- PermanentDeliveryError    400 and other answers that will never succeed

I/O errors carry ``retriable: ClassVar[bool]``; retry logic branches on that attribute, never on the
message text.
"""

from __future__ import annotations

from typing import ClassVar


class EngineError(Exception):
    """Base class of every error sloburn raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(EngineError):
    """A configuration is invalid.

    Parameters
    ----------
    problems
        One line per problem, each ``file: $.path: expected ..., got ...``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DecodeError(EngineError):
    """An input record or message cannot be decoded; ``reason`` is the counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CheckpointError(EngineError):
    """A checkpoint cannot be written, read or trusted."""


class StateError(EngineError):
    """The engine was driven against its contract."""


class DecodeWorkerError(EngineError):
    """A decoding worker process of the daemon died or could not be started."""


class DeliveryError(EngineError):
    """An alert event could not be delivered."""


class RetriableDeliveryError(DeliveryError):
    """A delivery failed in a way that may succeed later (429, 5xx, network)."""

    retriable: ClassVar[bool] = True


class PermanentDeliveryError(DeliveryError):
    """A delivery was refused for good (400): kept as a dead letter, never retried."""

    retriable: ClassVar[bool] = False
