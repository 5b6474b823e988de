"""Property tests of the CSV loader (issue 7, item 4): any bytes give data or a
DataError, never another exception; a valid file round-trips."""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data import DataSpec, load_csv
from fedrec.data.reader import read_fast
from fedrec.data.reference import read_reference
from fedrec.data.spec import resolve_layout
from fedrec.errors import DataError

HEADER = b"user,item,rating,timestamp\n"
# Cells near the grammar: ids, numbers of every kind, quotes, separators, odd unicode.
CELLS = st.one_of(
    st.integers(-5, 2**63).map(lambda v: str(v).encode()),
    st.floats().map(lambda v: repr(v).encode()),
    st.sampled_from([b"", b" ", b'"', b'"1"', b",", b"\t", b"\r", b"\x00", b"\xff\xfe", b"nan", b"inf", b"1e999",
                     b"9" * 5000, b"\xd9\xa1", b"1_0", b" 7 ", b"\xef\xbb\xbf"]),
    st.binary(max_size=6),
)
ROWS = st.lists(st.lists(CELLS, min_size=0, max_size=6).map(lambda cells: b",".join(cells)), max_size=8)


def load_bytes(data: bytes, spec: DataSpec | None = None) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        path.write_bytes(data)
        try:
            return load_csv(path, spec)
        except DataError as err:
            assert str(err) and "\n" not in str(err)  # one line that names the problem
            return err


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in
               ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"))


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_load_or_raise_data_error(data: bytes) -> None:
    load_bytes(data)
    load_bytes(HEADER + data)


@settings(max_examples=150, deadline=None)
@given(rows=ROWS, scale=st.sampled_from(["", "1..5"]), id_type=st.sampled_from(["auto", "string"]))
def test_rows_of_near_valid_cells_load_or_raise_data_error(rows: list[bytes], scale: str, id_type: str) -> None:
    load_bytes(HEADER + b"\n".join(rows) + b"\n", DataSpec(rating_scale=scale, id_type=id_type))


@settings(max_examples=150, deadline=None)
@given(rows=ROWS, id_type=st.sampled_from(["auto", "string"]))
def test_fast_reader_accepts_only_what_the_reference_accepts(rows: list[bytes], id_type: str) -> None:
    """Whatever the fast reader accepts, the line-by-line reference reads to the same arrays."""
    spec = DataSpec(id_type=id_type)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        path.write_bytes(HEADER + b"\n".join(rows) + b"\n")
        try:
            layout = resolve_layout(path, spec)
        except DataError:
            return
        fast = read_fast(layout, spec, name="x")
        if fast is not None:
            assert same(fast, read_reference(layout, spec, name="x"))


INTERACTIONS = st.lists(
    st.tuples(st.integers(0, 2**62 - 1), st.integers(0, 2**62 - 1), st.integers(1, 5), st.integers(0, 2**62 - 1)),
    min_size=1, max_size=30, unique_by=lambda r: (r[0], r[1]),
)


@settings(max_examples=100, deadline=None)
@given(rows=INTERACTIONS, tsv=st.booleans(), with_time=st.booleans())
def test_valid_files_round_trip(rows, tsv: bool, with_time: bool) -> None:
    sep = "\t" if tsv else ","
    header = ["user", "item", "rating"] + (["timestamp"] if with_time else [])
    lines = [sep.join(header)] + [sep.join(str(v) for v in row[: len(header)]) for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.tsv" if tsv else "x.csv")
        path.write_text("\n".join(lines) + "\n")
        data = load_csv(path)
        slow = load_csv(path, fast=False)
    assert same(data, slow)
    assert len(data) == len(rows)
    got = sorted(
        zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(), data.ratings.tolist(),
            data.timestamps.tolist())
    )
    want = sorted((u, i, float(r), t if with_time else k) for k, (u, i, r, t) in enumerate(rows))
    assert got == want
    assert data.n_users == len({r[0] for r in rows}) and data.n_items == len({r[1] for r in rows})
    assert np.all(np.diff(data.user_ids) > 0) and np.all(np.diff(data.item_ids) > 0)  # sorted, contiguous indices


def test_a_quoted_value_spanning_lines_is_judged_by_the_reference(tmp_path: Path) -> None:
    """Found by the property above: pyarrow reads a quoted id across a line break; the
    line-by-line reference (which defines a valid file) refuses it, naming the line."""
    path = tmp_path / "x.csv"
    path.write_bytes(HEADER + b'0,",0\n",0,0\n')
    layout = resolve_layout(path, DataSpec())
    assert read_fast(layout, DataSpec(), name="x") is None


STAMP_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S+02:00")


@settings(max_examples=100, deadline=None)
@given(
    moments=st.lists(st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2200, 1, 1)),
                     min_size=1, max_size=12),
    formats=st.lists(st.sampled_from(STAMP_FORMATS), min_size=12, max_size=12),
)
def test_iso_timestamps_read_the_same_by_both_readers(moments: list[datetime.datetime], formats: list[str]) -> None:
    """ISO-8601 dates and date-times, zoned or not, mixed in one file: the fast reader
    either declines or reads exactly what the line-by-line reference reads."""
    lines = [f"{u},{u},1,{m.strftime(f)}".encode() for u, (m, f) in enumerate(zip(moments, formats))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        path.write_bytes(HEADER + b"\n".join(lines) + b"\n")
        layout = resolve_layout(path, DataSpec())
        reference = read_reference(layout, DataSpec(), name="x")
        fast = read_fast(layout, DataSpec(), name="x")
        if fast is not None:
            assert same(fast, reference)
    naive = [m.replace(tzinfo=datetime.UTC) for m in moments]
    shift = [7200 if f.endswith("+02:00") else 0 for f in formats]
    whole = [int(n.timestamp()) - s if f != "%Y-%m-%d" else int(n.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
             for n, s, f in zip(naive, shift, formats)]
    assert sorted(reference.timestamps.tolist()) == sorted(whole)


# ---- the other shapes: whitespace-delimited files, RecBole headers, duplicates ---------------

SEPARATORS = st.sampled_from([b" ", b"\t", b"  ", b" \t ", b"\t\t"])
EDGES = st.sampled_from([b"", b" ", b"\t", b"  "])


SPACELESS = CELLS.filter(lambda c: not any(ch in c for ch in b" \t\r\n"))
VALID = st.one_of(st.integers(0, 10**6).map(lambda v: str(v).encode()), st.sampled_from([b"1.5", b"3", b"007", b"x1", b"7"]))


@st.composite
def whitespace_rows(draw: st.DrawFn) -> bytes:
    """Lines of valid or near-valid cells separated by runs of spaces and tabs, with stray edges and line ends."""
    lines = []
    width = draw(st.integers(2, 4))
    rows = st.one_of(st.lists(SPACELESS, max_size=5), st.lists(VALID, min_size=width, max_size=width))
    for cells in draw(st.lists(rows, max_size=8)):
        line = b""
        for k, cell in enumerate(cells):
            line += (draw(SEPARATORS) if k else b"") + cell
        lines.append(draw(EDGES) + line + draw(EDGES))
    ends = draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"]), min_size=len(lines), max_size=len(lines)))
    return b"".join(line + end for line, end in zip(lines, ends))


@settings(max_examples=150, deadline=None)
@given(body=whitespace_rows(), header=st.sampled_from([b"", b"user item rating timestamp\n", b"u  i\tr\n"]),
       id_type=st.sampled_from(["auto", "string"]), duplicates=st.sampled_from(["last", "first", "sum", "max", "error"]))
def test_fast_reader_agrees_on_whitespace_files(body: bytes, header: bytes, id_type: str, duplicates: str) -> None:
    """Whitespace-delimited files (runs of spaces and tabs, with or without a header): whatever
    the fast reader accepts, the reference reads to the same arrays."""
    spec = DataSpec(id_type=id_type, delimiter="space", duplicates=duplicates,
                    **({"user_col": "u", "item_col": "i"} if header.startswith(b"u ") else {}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.txt"
        path.write_bytes(header + body)
        try:
            layout = resolve_layout(path, spec)
        except DataError:
            return
        fast = read_fast(layout, spec, name="x")
        try:
            reference = read_reference(layout, spec, name="x")
        except DataError:
            assert fast is None
            return
        if fast is not None:
            assert same(fast, reference)


DUPLICATE_ROWS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.sampled_from([0.5, 1, 2, 3.5, 5, 120]), st.integers(0, 4)),
    min_size=1, max_size=25,
)


def policy_model(rows: list[tuple[int, int, float, int]], policy: str, with_time: bool) -> list[tuple]:
    """The documented rule, written plainly: order a pair's rows by (time, line)."""
    groups: dict[tuple[int, int], list[tuple[int, int, float]]] = {}
    for k, (u, i, r, t) in enumerate(rows):
        groups.setdefault((u, i), []).append((t if with_time else k, k, float(r)))
    out = []
    for (u, i), group in groups.items():
        group.sort()
        if policy == "first":
            out.append((u, i, group[0][2], group[0][0]))
        elif policy == "last":
            out.append((u, i, group[-1][2], group[-1][0]))
        elif policy == "sum":
            out.append((u, i, sum(r for *_, r in group), group[-1][0]))
        else:
            out.append((u, i, max(r for *_, r in group), group[-1][0]))
    return sorted(out)


@settings(max_examples=150, deadline=None)
@given(rows=DUPLICATE_ROWS, policy=st.sampled_from(["last", "first", "sum", "max"]), with_time=st.booleans(),
       form=st.sampled_from(["csv", "whitespace", "recbole"]))
def test_duplicates_merge_the_same_in_both_readers(rows, policy: str, with_time: bool, form: str) -> None:
    """Repeated (user, item) rows under each policy: both readers give the documented result."""
    names = ["user", "item", "rating"] + (["timestamp"] if with_time else [])
    sep = {"csv": ",", "whitespace": "  ", "recbole": "\t"}[form]
    if form == "recbole":
        names = [f"{n}_id:token" if n in ("user", "item") else f"{n}:float" for n in names]
    lines = [sep.join(names)] + [sep.join(str(v) for v in row[: len(names)]) for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / {"csv": "x.csv", "whitespace": "x.txt", "recbole": "x.inter"}[form]
        path.write_text("\n".join(lines) + "\n")
        spec = DataSpec(duplicates=policy)
        fast = load_csv(path, spec)
        slow = load_csv(path, spec, fast=False)
    assert same(fast, slow)
    got = sorted(zip(fast.user_ids[fast.users].tolist(), fast.item_ids[fast.items].tolist(), fast.ratings.tolist(),
                     fast.timestamps.tolist()))
    assert got == policy_model(rows, policy, with_time)
    assert (fast.extra.get("duplicates") is None) == (len(got) == len(rows))
