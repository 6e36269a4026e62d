"""Fixtures shared by the runtime's test modules."""

from __future__ import annotations

import pg_server
import pytest


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server for the module that asks for one, started on a free port and stopped by PID."""
    why = pg_server.missing()
    if why:
        pytest.skip(why)
    server = pg_server.PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
