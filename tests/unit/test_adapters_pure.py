"""Input checks of the adapters that need no network: they refuse before anything is sent."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from inventory.types import UTCDateTime
from tasks.fileserver import FileServerError, HttpFileServer, safe_remote_path


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "support/../../etc", "a//b", "a/./b", "a b", "a;b", "a\nb", "a\x00b", ""]
)
def test_remote_paths_must_be_plain_and_relative(path: str):
    with pytest.raises(FileServerError, match="not a plain relative path"):
        safe_remote_path(path)


def test_plain_http_is_refused_unless_allowed(tmp_path: Path):
    with pytest.raises(FileServerError, match="plain http: refused"):
        HttpFileServer(url="http://127.0.0.1:8080", user="u", password="p")
    HttpFileServer(url="http://127.0.0.1:8080", user="u", password="p", allow_http=True)


def test_naive_datetimes_are_refused():
    from sqlalchemy.dialects import sqlite

    with pytest.raises(ValueError, match="naive datetime"):
        UTCDateTime().process_bind_param(datetime(2026, 11, 23, 12, 0), sqlite.dialect())
