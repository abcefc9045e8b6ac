"""The real node: keyspace and table, insert, select, paginate, drop."""

from __future__ import annotations

from cassandra.query import SimpleStatement


def test_keyspace_table_insert_select_paginate_drop(cassandra_session, keyspace) -> None:  # type: ignore[no-untyped-def]
    s = cassandra_session
    s.execute(f"CREATE TABLE {keyspace}.songs (album int, track int, title text, PRIMARY KEY (album, track))")
    insert = s.prepare(f"INSERT INTO {keyspace}.songs (album, track, title) VALUES (?, ?, ?)")
    for track in range(250):
        s.execute(insert, (1, track, f"song {track}"))
    row = s.execute(f"SELECT title FROM {keyspace}.songs WHERE album = %s AND track = %s", (1, 42)).one()
    assert row.title == "song 42"

    result = s.execute(SimpleStatement(f"SELECT track FROM {keyspace}.songs WHERE album = 1", fetch_size=100))
    first_page = list(result.current_rows)
    assert len(first_page) == 100 and result.has_more_pages
    tracks = [r.track for r in result]  # iteration fetches the remaining pages
    assert tracks == list(range(250))
    # resume from a saved paging state, as a stateless web request would
    page1 = s.execute(SimpleStatement(f"SELECT track FROM {keyspace}.songs WHERE album = 1", fetch_size=100))
    page2 = s.execute(SimpleStatement(f"SELECT track FROM {keyspace}.songs WHERE album = 1", fetch_size=100),
                      paging_state=page1.paging_state)
    assert [r.track for r in page2.current_rows] == list(range(100, 200))

    s.execute(f"DROP TABLE {keyspace}.songs")
    tables = s.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))
    assert list(tables) == []
