"""A PostgreSQL database in the SQL_ASCII encoding (initdb's default under LC_ALL=C): `pacsguard
init` and every store command ended in "internal error" (exit 70; psycopg handed SQLAlchemy
bytes). It is now refused by name (a re-probe, round 5)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from pacsguard.store import EventStore
from pacsguard.store.errors import StoreError
from pacsguard.store.keys import generate_key
from peers.postgres import APP_ROLE, PostgresServer


def test_a_sql_ascii_database_is_refused_by_name(postgres_server: PostgresServer, tmp_path: Path) -> None:
    import psycopg

    sql = psycopg.sql
    name = f"t_{secrets.token_hex(8)}"
    with postgres_server.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                             "TEMPLATE template0").format(sql.Identifier(name), sql.Identifier(APP_ROLE)))
    try:
        generate_key(tmp_path / "k.key")
        with pytest.raises(StoreError, match="encoding is SQL_ASCII; pacsguard stores UTF-8 text"):
            EventStore.open(postgres_server.url(name), key_path=tmp_path / "k.key", create=True)
    finally:
        with postgres_server.admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
