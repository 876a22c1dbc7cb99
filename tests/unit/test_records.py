"""Names, references and records: clear refusals, exact round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncengine.repo.records import (
    ArtifactHead,
    InvalidName,
    VersionRecord,
    check_alias,
    check_name,
    check_tag,
    decode_head,
    decode_version,
    encode_record,
    parse_ref,
)


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("vision/mnist", ("vision", "mnist", None, None)),
        ("vision/mnist:v0", ("vision", "mnist", 0, None)),
        ("vision/mnist:v12", ("vision", "mnist", 12, None)),
        ("vision/mnist:latest", ("vision", "mnist", None, "latest")),
        ("vision/mnist:best-2024.1", ("vision", "mnist", None, "best-2024.1")),
    ],
)
def test_parse_ref(ref: str, expected: tuple[object, ...]) -> None:
    r = parse_ref(ref)
    assert (r.project, r.name, r.version, r.alias) == expected
    assert str(r) == ref


@pytest.mark.parametrize(
    "ref, message",
    [
        ("mnist", "expected PROJECT/NAME"),
        ("a/b/c", "expected PROJECT/NAME"),
        ("vision/mnist:", "nothing after ':'"),
        ("vision/mn ist", "invalid artifact name"),
        ("../x", "invalid project"),
        ("vision/mnist:a/b", "invalid alias"),
        ("vision/mnist:v01", "invalid alias"),
    ],
)
def test_bad_refs_say_what_is_wrong(ref: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        parse_ref(ref)


def test_default_project() -> None:
    assert parse_ref("mnist:v1", default_project="vision").full_name == "vision/mnist"


def test_alias_rules() -> None:
    assert check_alias("prod") == "prod"
    for bad in ("a:b", "a/b", "", "-x", "v3"):
        with pytest.raises(InvalidName):
            check_alias(bad)
    assert check_alias("latest") == "latest"  # an alias like any other (as in W&B)


@given(st.text(max_size=20))
def test_names_never_contain_path_separators(text: str) -> None:
    try:
        check_name("project", text)
    except InvalidName:
        return
    assert "/" not in text and ":" not in text and text not in {".", ".."} and not text.startswith(".")


def test_tags() -> None:
    assert check_tag("train") == "train"
    with pytest.raises(InvalidName):
        check_tag("x" * 65)


def test_records_round_trip() -> None:
    v = VersionRecord(
        1,
        "p",
        "n",
        3,
        "dataset",
        "manifests/ab/ab" + "cd" * 31,
        "ff" * 32,
        10,
        1000,
        "2026-11-23T00:00:00Z",
        metadata={"rows": 7, "split": "train"},
        tags=("a",),
    )
    assert decode_version(encode_record(v)) == v
    h = ArtifactHead(
        1, "p", "n", "dataset", 3, {"best": 2, "latest": 3}, {"ff" * 32: 3}, latest_in_aliases=True
    )
    assert decode_head(encode_record(h)) == h
    assert encode_record(h) == encode_record(decode_head(encode_record(h)))  # canonical
