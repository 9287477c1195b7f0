"""Column types and column helpers shared by the tables: the one home of both."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import Column, DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (no tz support) and PostgreSQL alike.

    Naive datetimes are refused: a time without a zone is a bug waiting for a DST change.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: Upkeep stores only time-zone-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


class EnumText(TypeDecorator[E]):
    """A StrEnum stored as its value in a VARCHAR (no database enum type, so adding a member needs no
    migration): a value outside the enum is refused on the way in, and rows come back as members."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: object, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(str(value)).value

    def process_result_value(self, value: Any, dialect: Dialect) -> E | None:
        """A member; a value this version does not know (written by a newer Upkeep sharing the database,
        or by hand in SQL) comes back as the plain string it is - equal to no member, shown as stored -
        so that reading the row (`upkeep runs`, `show`, the dispatcher's queries) does not fail."""
        if value is None:
            return None
        try:
            return self.enum(value)
        except ValueError:
            return cast(E, str(value))


def time_field(*, nullable: bool = True) -> Any:
    """A table's time column: aware UTC datetimes (`UTCDateTime`), None until set."""
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


def created_field() -> Any:
    """A table's NOT NULL time column stamped with the time the row is made."""
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def utcnow() -> datetime:
    return datetime.now(UTC)
