"""EventLog.buckets_of: the buckets of a batch's records, as bucket_of finds them one record at a time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rxcqrs.cassandra import EventLog
from rxcqrs.messages import RecordMetadata

#: timestamps around bucket and second boundaries, Kafka's -1 (none) and a few before 1970
times = st.one_of(st.integers(-5_000, 5_000), st.integers(86_400_000 - 3_000, 86_400_000 + 3_000),
                  st.integers(1_764_000_000_000, 1_764_000_000_000 + 200_000), st.just(-1))


@settings(max_examples=300, deadline=None)
@given(st.lists(times, max_size=40), st.sampled_from(["day", "hour", 1, 7]))
def test_the_buckets_of_a_batch_are_those_of_its_records(stamps: list[int], bucket: str | int) -> None:
    log = EventLog("ks", "log", entity="id", entity_type="uuid", payload={"x": "int"}, bucket=bucket)
    metas = [RecordMetadata("t", 0, i, stamp) for i, stamp in enumerate(stamps)]
    found = log.buckets_of(metas)
    assert set(found) == {log.bucket_of(meta.timestamp_utc) for meta in metas}
    assert all(log.bucket_of(when) == bucket_id for bucket_id, when in found.items())
