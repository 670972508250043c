"""Reading and writing hash lists in the formats hash-sharing programmes use."""

import pytest

from hashes.hashlists import FORMATS, Entry, Problem, detect_format, read, write

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
MD5 = "0cc175b9c0f1b6a831c399e269772661"

SAMPLES = {
    "hma": [f"pdq {PDQ}", f"md5 {MD5}"],
    "te-csv": [
        "signal_type,signal_str,collab,category,tags",
        f"pdq,{PDQ},partner-a,nudity,adult explicit",
        f"md5,{MD5},partner-a,scam,",
    ],
    "csv": [
        "id,algorithm,hash,category,reason,deleted",
        f"17,pdq,{PDQ},violence,shared by a partner,",
        f"18,md5,{MD5},,,yes",
    ],
    "pdq-hasher": [f"{PDQ},100,a.jpg", f"{PDQ.replace('f', 'e')},35,b.jpg"],
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_told_by_its_content(fmt: str) -> None:
    assert detect_format(SAMPLES[fmt]) == fmt


def test_a_list_without_a_header_is_told_too() -> None:
    assert detect_format([f"pdq,{PDQ},partner,nudity,tag"]) == "te-csv"
    with pytest.raises(ValueError, match="Cannot tell"):
        detect_format(["just some words here"])
    with pytest.raises(ValueError, match="empty"):
        detect_format(["", "# a comment"])


def test_each_format_reads_its_fields() -> None:
    [pdq, md5] = read(SAMPLES["hma"], "hma")
    assert (pdq.kind, pdq.value, md5.kind, md5.value) == ("pdq", PDQ, "md5", MD5)

    [first, second] = read(SAMPLES["te-csv"], "te-csv")
    assert (first.category, first.tags, first.external_id) == (
        "nudity",
        ("adult", "explicit"),
        "partner-a",
    )
    assert (second.kind, second.category) == ("md5", "scam")

    [kept, withdrawn] = read(SAMPLES["csv"], "csv")
    assert (kept.external_id, kept.reason, kept.deleted) == ("17", "shared by a partner", False)
    assert withdrawn.deleted

    [good, poor] = read(SAMPLES["pdq-hasher"], "pdq-hasher")
    assert (good.quality, good.external_id, poor.quality) == (100, "a.jpg", 35)


def test_bad_lines_are_reported_with_their_numbers() -> None:
    lines = [
        f"pdq {PDQ}",
        "pdq 1234",
        "pdq " + "z" * 64,
        "video_md5 " + MD5,
        "md5 " + MD5[:-1],
        "one two three",
        "",
        "# a comment",
        f"PDQ {PDQ.upper()}",
    ]
    items = list(read(lines, "hma"))
    problems = [item for item in items if isinstance(item, Problem)]
    entries = [item for item in items if isinstance(item, Entry)]
    assert [p.line for p in problems] == [2, 3, 4, 5, 6]
    assert "64" in problems[0].message and "hex" in problems[1].message
    assert problems[2].unknown_kind == "video_md5"
    assert [e.value for e in entries] == [PDQ, PDQ]  # case does not matter


def test_a_csv_header_must_name_its_hash_and_algorithm_columns() -> None:
    [problem] = read(["name,value", f"x,{PDQ}"], "csv")
    assert isinstance(problem, Problem) and "algorithm column" in problem.message
    items = list(read(["type,hash,colour", f"pdq,{PDQ},red"], "csv"))
    assert isinstance(items[0], Problem) and "colour" in items[0].message
    assert isinstance(items[1], Entry)


@pytest.mark.parametrize("fmt", FORMATS)
def test_what_is_written_reads_back_the_same(fmt: str) -> None:
    entries = [
        Entry("pdq", PDQ, quality=90, category="nudity", tags=("a", "b"), external_id="1"),
        Entry("md5", MD5, category="scam", external_id="2"),
        Entry("phash", "8f373714acfcf4d0", category="other"),
    ]
    carried = {
        "hma": {"pdq", "md5"},
        "te-csv": {"pdq", "md5", "phash"},
        "csv": {"pdq", "md5", "phash"},
        "pdq-hasher": {"pdq"},
    }[fmt]
    lines = list(write(entries, fmt))
    assert detect_format(lines) == fmt
    back = [item for item in read(lines, fmt) if isinstance(item, Entry)]
    assert {e.key for e in back} == {e.key for e in entries if e.kind in carried}
    if fmt in ("te-csv", "csv"):
        assert {e.key: e.category for e in back} == {e.key: e.category for e in entries}
