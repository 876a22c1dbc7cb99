"""Run records, edge markers and lineage fields of version records: golden bytes, round trips,
old records still readable, clear refusals of damaged ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncengine.repo.pack import CorruptData
from syncengine.repo.records import decode_version, encode_record
from syncengine.repo.runs import (
    Edge,
    RunRecord,
    decode_edge,
    decode_run,
    encode_edge,
    encode_run,
    new_run_id,
    used_by_key,
    used_key,
)
from syncengine.store.base import validate_key

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "vectors.json").read_text())
LINEAGE = VECTORS["lineage"]


def test_run_records_are_frozen_bytes() -> None:
    run = decode_run(LINEAGE["run"].encode())
    assert (run.state, run.group, run.resumed, run.config["opt"]) == (
        "crashed",
        "sweep-7",
        2,
        {"name": "adam"},
    )
    assert encode_run(run).decode() == LINEAGE["run"]
    minimal = decode_run(LINEAGE["run_minimal"].encode())
    assert (minimal.state, minimal.job_type, minimal.summary) == ("running", "", {})  # defaults omitted
    assert encode_run(minimal).decode() == LINEAGE["run_minimal"]


def test_edges_are_frozen_bytes() -> None:
    for name, via in (("edge", ""), ("edge_via", "reg/models:v4")):
        edge = decode_edge(LINEAGE[name].encode())
        assert edge.via == via and encode_edge(edge).decode() == LINEAGE[name]


def test_version_lineage_fields_and_old_records() -> None:
    logged = decode_version(LINEAGE["version_logged_by"].encode())
    assert (logged.logged_by, logged.linked_from) == ("vision/k3x9q2ab", "")
    link = decode_version(LINEAGE["version_link"].encode())
    assert (link.linked_from, link.deleted) == ("vision/model:v0", True)
    for name in ("version_logged_by", "version_link"):
        assert encode_record(decode_version(LINEAGE[name].encode())).decode() == LINEAGE[name]
    old = decode_version(VECTORS["records"]["version"].encode())  # written before lineage existed
    assert (old.logged_by, old.linked_from) == ("", "")
    assert encode_record(old).decode() == VECTORS["records"]["version"]


def test_damaged_records_are_refused_by_name() -> None:
    with pytest.raises(CorruptData, match="runs/p/r is damaged"):
        decode_run(b'{"format":1}', "runs/p/r")
    with pytest.raises(CorruptData, match="an edge marker is damaged"):
        decode_edge(b"\xff")


def test_run_ids_are_valid_keys() -> None:
    ids = {new_run_id() for _ in range(200)}
    alphabet = set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert len(ids) == 200 and all(len(i) == 8 and set(i) <= alphabet for i in ids)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


@given(
    project=_name,
    run_id=_name,
    state=st.sampled_from(["running", "finished", "crashed"]),
    config=st.dictionaries(st.text(max_size=6), _json, max_size=4),
    summary=st.dictionaries(st.text(max_size=6), _json, max_size=4),
    resumed=st.integers(0, 1000),
)
def test_run_records_round_trip(
    project: str, run_id: str, state: str, config: dict[str, object], summary: dict[str, object], resumed: int
) -> None:
    r = RunRecord(
        1, project, run_id, "2024-01-01T00:00:00Z", state, config=config, summary=summary, resumed=resumed
    )
    assert decode_run(encode_run(r)) == r
    data = encode_run(r)
    assert encode_run(decode_run(data)) == data  # one encoding per record


@given(project=_name, run_id=_name, ap=_name, an=_name, n=st.integers(0, 10**9))
def test_edge_keys_are_valid_object_keys(project: str, run_id: str, ap: str, an: str, n: int) -> None:
    from syncengine.repo.records import VersionRecord

    v = VersionRecord(1, ap, an, n, "t", "m", "d", 0, 0, "c")
    for key in (used_key(project, run_id, v), used_by_key(v, project, run_id)):
        assert validate_key(key) == key
    assert used_key(project, run_id, v).endswith(f"/used/{ap}/{an}/v{n}")
    assert used_by_key(v, project, run_id) == f"lineage/versions/{ap}/{an}/v{n}/used_by/{project}/{run_id}"
    assert Edge(1, "t") == decode_edge(encode_edge(Edge(1, "t")))
