"""The ORM's classes over runner/tables.py's tables, for the queries not yet written with Core alone."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from runner import tables
from runner.tables import NAMING_CONVENTION, SQLITE_UTC_FORMAT, UTCDateTime

__all__ = ["NAMING_CONVENTION", "SQLITE_UTC_FORMAT", "UTCDateTime"]


class Base(DeclarativeBase):
    metadata = tables.metadata


class Delivery(Base):
    __table__ = tables.deliveries


class Run(Base):
    __table__ = tables.runs


class StepResult(Base):
    __table__ = tables.steps


class GitHubReport(Base):
    __table__ = tables.github_reports


class Notification(Base):
    __table__ = tables.notifications


class ActionRecord(Base):
    __table__ = tables.actions
