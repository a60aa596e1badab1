"""Typed service errors; each edge renders them in its own standard shape (problem+json, 61968
Reply, FIAP error)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FieldError:
    field: str
    message: str
    line: int | None = None  # for file imports: 1-based line (header is line 1)


@dataclass
class ServiceError(Exception):
    """Base class: ``message`` is for people, ``errors`` points at the inputs that were wrong."""

    message: str
    errors: list[FieldError] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def on(cls, field_name: str, message: str) -> ServiceError:
        return cls(message, [FieldError(field_name, message)])


class NotFound(ServiceError):
    """The thing asked for does not exist."""


class Conflict(ServiceError):
    """The request clashes with what is stored (duplicate key, wrong state for the operation)."""


class InvalidInput(ServiceError):
    """The request is malformed or a value is out of its domain."""
