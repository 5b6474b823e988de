"""Real data of other shapes than MovieLens: whitespace-delimited files with or without a
header, RecBole atomic files, a music log with play counts and an item file holding only
names, repeated (user, item) rows under each `duplicates` policy, and a seeded random
split for data without timestamps. Every fixture is generated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import parse_run_config
from fedrec.data import DataSpec, Interactions, SplitMode, leave_one_out, load_csv
from fedrec.data.reader import read_fast
from fedrec.data.sources import load_dataset, prepare
from fedrec.data.spec import resolve_layout
from fedrec.errors import DataError

runner = CliRunner()
# (user, item, rating, timestamp)
ROWS = [(1, 10, 4.0, 100), (1, 11, 3.0, 101), (1, 12, 5.0, 102), (2, 10, 2.0, 90), (2, 13, 5.0, 95), (3, 11, 1.0, 50)]


def own(data: Interactions) -> list[tuple[object, object, float, int]]:
    return sorted(zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(), data.ratings.tolist(),
                      data.timestamps.tolist()))


def both(path: Path, spec: DataSpec | None = None) -> Interactions:
    """Load with the fast reader and the reference; they must agree, and the fast reader must take the file."""
    spec = spec or DataSpec()
    assert read_fast(resolve_layout(path, spec), spec, name="x") is not None
    fast, slow = load_csv(path, spec), load_csv(path, spec, fast=False)
    for name in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.timed == slow.timed and fast.extra.get("duplicates") == slow.extra.get("duplicates")
    return fast


def check(*args: str) -> str:
    result = runner.invoke(app, ["data", "check", *args], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


# ---- whitespace-delimited ------------------------------------------------------------------

def test_whitespace_without_a_header_loads_with_no_flags(tmp_path: Path) -> None:
    path = tmp_path / "ratings.txt"  # LibRec style, with runs of spaces and tabs, blank and CRLF lines
    lines = [f"{u} {i}\t {r:g}  {t}" for u, i, r, t in ROWS]
    path.write_bytes(("  " + "\r\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + " \t").encode())
    data = both(path)
    assert own(data) == sorted(ROWS)
    assert "no header" in data.extra["note"] and "split on spaces and tabs" in data.extra["note"]
    assert "6 interactions, 3 users, 4 items" in check(str(path))


def test_whitespace_with_a_header_and_single_spaces(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("user item rating time\n" + "".join(f"{u} {i} {r:g} {t}\n" for u, i, r, t in ROWS))
    data = both(path)
    assert own(data) == sorted(ROWS) and data.timed
    assert data.extra["note"].startswith("ratings.dat: took user->user, item->item, rating->rating, time->timestamp")


def test_space_delimiter_flag_means_runs_of_spaces(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("1  1   2\n1 2 4\n")
    assert both(path, DataSpec(delimiter="space")).ratings.tolist() == [2.0, 4.0]
    assert "2 interactions" in check(str(path), "--delimiter", " ")


def test_headerless_text_ids_load_with_the_flag_the_error_names(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("alice book-1 5\nalice book-2 3\nbob book-1 4\n")
    with pytest.raises(DataError, match="add header=no") as err:
        load_csv(path)
    assert "position from 1" in str(err.value)
    data = both(path, DataSpec(header="no"))
    assert own(data) == [("alice", "book-1", 5.0, 0), ("alice", "book-2", 3.0, 1), ("bob", "book-1", 4.0, 2)]
    assert "3 interactions" in check(str(path), "--header", "no")


def test_columns_by_position_count_from_one(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("when,who,what\n5,a,x\n6,b,y\n")
    data = both(path, DataSpec(user_col="2", item_col="3", time_col="1"))
    assert own(data) == [("a", "x", 1.0, 5), ("b", "y", 1.0, 6)]
    assert "who->user, what->item, when->timestamp" in data.extra["note"]
    with pytest.raises(DataError, match=r"no column '4' \(user-col\); the columns are when, who, what \(or give a "
                                        r"position, 1 to 3\)"):
        load_csv(path, DataSpec(user_col="4", item_col="3"))
    assert "2 interactions" in check(str(path), "--user-col", "2", "--item-col=3")
    headerless = tmp_path / "y.txt"
    headerless.write_text("7 a x\n8 b y\n")
    assert own(both(headerless, DataSpec(user_col="2", item_col="3", rating_col="none", header="no"))) == [
        ("a", "x", 1.0, 0), ("b", "y", 1.0, 1)]


# ---- RecBole atomic files ------------------------------------------------------------------

def write_recbole(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = folder / "shop.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{r:g}\t{t}.0\n" for u, i, r, t in ROWS))
    (folder / "shop.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tThe Ten\t1995\tAction Comedy\n11\tEleven\t2001\tDrama\n12\tTwelve\t\t\n13\tThirteen\t1980\tAction\n"
    )
    return inter


def test_recbole_inter_with_its_item_file_beside_it(tmp_path: Path) -> None:
    inter = write_recbole(tmp_path)
    data = both(inter)
    assert own(data) == sorted(ROWS)
    assert "user_id:token->user, item_id:token->item, rating:float->rating, timestamp:float->timestamp" in data.extra["note"]
    meta = data.item_meta
    assert meta is not None and meta.titles == ("The Ten", "Eleven", "Twelve", "Thirteen")
    assert meta.genre_names == ("Action", "Comedy", "Drama") and meta.year[1] == 2001 and np.isnan(meta.year[2])
    out = check(str(inter))
    assert "shop.item: took item_id:token->id" in out and "4 titles, 3 genres" in out
    # a column named without its type, or by position
    assert own(both(inter, DataSpec(user_col="user_id", item_col="2", item_file="none"))) == sorted(ROWS)


# ---- a music log: play counts, no timestamps, an item file of names only ------------------

def write_music_log(folder: Path, *, users: int = 30, rng: np.random.Generator) -> Path:
    """Last.fm hetrec's shape: userID artistID weight (tab, CRLF), each user's rows sorted by artist id."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userID\tartistID\tweight"]
    for u in range(2, 2 + users):
        for a in np.sort(rng.choice(np.arange(1, 200), size=int(rng.integers(5, 15)), replace=False)):
            lines.append(f"{u}\t{a}\t{int(rng.integers(1, 5000))}")
    (folder / "user_artists.dat").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    names = ["id\tname\turl\tpictureURL"] + [f"{a}\tBand {a} & \"The\" Others\thttp://x/{a}\thttp://y/{a}.jpg"
                                              for a in range(1, 200)]
    (folder / "artists.dat").write_text("\n".join(names) + "\n")
    return folder / "user_artists.dat"


def test_music_log_loads_with_one_flag_and_an_item_file_of_names(tmp_path: Path) -> None:
    path = write_music_log(tmp_path, rng=np.random.default_rng(0))
    for flags in ([], ["--item-col", "artistID"]):
        out = check(str(path), *flags)
        assert "took userID->user, artistID->item, weight->rating" in out
        assert "positives: every row" in out and "counts or weights" in out
        assert "split: random leave-one-out" in out
    data = both(path, DataSpec(item_col="artistID", item_file=str(tmp_path / "artists.dat")))
    assert data.item_meta is not None and all(t.startswith("Band ") for t in data.item_meta.titles)
    assert "artists.dat: took id->id, name->title" in data.extra["note"]


def test_counts_as_ratings_positives_by_threshold(tmp_path: Path) -> None:
    path = write_music_log(tmp_path, rng=np.random.default_rng(1))
    data = load_csv(path)
    out = check(str(path), "--rating-threshold", "100")
    kept = int(np.count_nonzero(data.ratings >= 100))
    assert 0 < kept < len(data)
    assert f"positives: {kept} of {len(data)} rows with rating >= 100" in out


# ---- duplicates ----------------------------------------------------------------------------

DUPLICATED = "user,item,rating,timestamp\n1,10,2,50\n1,11,4,10\n2,10,5,1\n1,10,1,50\n1,10,3,20\n"


@pytest.mark.parametrize(
    ("policy", "pair"),
    [("last", (1.0, 50)), ("first", (3.0, 20)), ("sum", (6.0, 50)), ("max", (3.0, 50))],
)
def test_each_duplicates_policy(tmp_path: Path, policy: str, pair: tuple[float, int]) -> None:
    path = tmp_path / "x.csv"
    path.write_text(DUPLICATED)
    data = both(path, DataSpec(duplicates=policy))
    assert own(data) == sorted([(1, 10, *pair), (1, 11, 4.0, 10), (2, 10, 5.0, 1)])
    assert data.extra["duplicates"].startswith(f"duplicates: 3 rows repeat a (user, item) pair, merged into 1 "
                                               f"(duplicates={policy}")
    assert "merged into 1" in check(str(path), "--duplicates", policy)


def test_duplicates_without_time_follow_row_order(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text("user\titem\tplays\n1\t10\t2\n1\t11\t4\n1\t10\t7\n")
    assert own(both(path)) == [(1, 10, 7.0, 2), (1, 11, 4.0, 1)]  # the last row wins, in its place
    assert own(both(path, DataSpec(duplicates="first"))) == [(1, 10, 2.0, 0), (1, 11, 4.0, 1)]
    assert own(both(path, DataSpec(duplicates="sum"))) == [(1, 10, 9.0, 2), (1, 11, 4.0, 1)]


def test_duplicates_error_names_both_lines_and_its_suggestion_loads(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(DUPLICATED)
    with pytest.raises(DataError, match=r"x.csv:5: duplicate interaction \(user 1, item 10\) also on line 2; "
                                        r"set duplicates=last \(or first, sum, max\)"):
        load_csv(path, DataSpec(duplicates="error"))
    assert len(load_csv(path, DataSpec(duplicates="last"))) == 3


def test_duplicates_is_a_config_key_with_last_as_default() -> None:
    assert parse_run_config({}).data.duplicates == "last"
    assert parse_run_config({"duplicates": "sum"}).data.spec().duplicates == "sum"
    with pytest.raises(Exception, match="duplicates"):
        parse_run_config({"duplicates": "mean"})


# ---- the split without timestamps ----------------------------------------------------------

def sorted_by_item(tmp_path: Path, *, users: int = 200, items: int = 300) -> Path:
    """No timestamps, each user's rows sorted by item id (as Last.fm's user_artists.dat)."""
    rng = np.random.default_rng(7)
    lines = ["user,item"]
    for u in range(users):
        lines += [f"{u},{i}" for i in np.sort(rng.choice(items, size=int(rng.integers(4, 20)), replace=False))]
    path = tmp_path / "sorted.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_random_split_is_seeded_stable_and_not_decided_by_row_order(tmp_path: Path) -> None:
    path = sorted_by_item(tmp_path)
    settings = parse_run_config({"dataset": str(path)}).data
    first = prepare(settings, seed=3)
    prepare.cache_clear()
    again = prepare(settings, seed=3)
    assert first.split_mode is SplitMode.RANDOM
    assert np.array_equal(first.split.test_item, again.split.test_item)  # stable across runs
    assert np.array_equal(first.split.train_items, again.split.train_items)
    other = prepare(settings, seed=4)
    assert not np.array_equal(first.split.test_item, other.split.test_item)
    data, split = first.interactions, first.split
    last = np.array([data.items[data.users == u].max() for u in split.users])
    assert np.mean(split.test_item == last) < 0.3  # the highest item id would be the test item of every user
    ordered = leave_one_out(data, rng=np.random.default_rng(0), mode="order")
    assert np.array_equal(ordered.test_item, last)  # split=order: only when asked


def test_random_split_is_leak_free(tmp_path: Path) -> None:
    data = load_csv(sorted_by_item(tmp_path))
    split = leave_one_out(data, rng=np.random.default_rng(0))
    for k, u in enumerate(split.users):
        mine = set(data.items[data.users == u].tolist())
        train = split.train_of(k).tolist()
        held = {int(split.val_item[k]), int(split.test_item[k])}
        assert len(held) == 2 and held <= mine and set(train) == mine - held and len(train) == len(mine) - 2
        c = split.client(k)
        forbidden = set(c.training_exclusions().tolist())
        assert held <= forbidden and set(c.val_negatives.tolist()).isdisjoint(mine)
        assert set(c.test_negatives.tolist()).isdisjoint(mine)


def test_random_split_on_timed_data_keeps_training_items_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user,item,timestamp\n" + "".join(f"0,{i},{100 - i}\n" for i in range(20)))
    split = leave_one_out(load_csv(path), rng=np.random.default_rng(0), mode="random", num_eval_negatives=0)
    stamps = {i: 100 - i for i in range(20)}
    assert [stamps[i] for i in split.train_of(0).tolist()] == sorted(stamps[i] for i in split.train_of(0).tolist())


def test_split_time_without_a_time_column_names_options_that_work(tmp_path: Path) -> None:
    path = sorted_by_item(tmp_path, users=20)
    settings = parse_run_config({"dataset": str(path), "split": "time"}).data
    with pytest.raises(DataError, match="split=time needs a time column .* split=random .* split=order"):
        prepare(settings, seed=0)
    for mode in ("random", "order"):
        assert prepare(parse_run_config({"dataset": str(path), "split": mode}).data, seed=0).split_mode == mode


def test_time_split_of_timed_data_is_unchanged(ml100k, ml100k_split) -> None:
    """split = auto on data with a time column holds out the latest two items, ties broken by
    the generator's first draws, exactly as before the split setting existed."""
    tie_break = np.random.default_rng(0).random(len(ml100k))
    order = np.lexsort((tie_break, ml100k.timestamps, ml100k.users))
    users, items = ml100k.users[order], ml100k.items[order]
    ends = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    assert np.array_equal(items[ends][ml100k_split.users], ml100k_split.test_item)
    assert np.array_equal(items[ends - 1][ml100k_split.users], ml100k_split.val_item)


def test_data_check_reports_merges_and_the_split(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(DUPLICATED)
    out = check(str(path))
    assert "duplicates: 3 rows repeat a (user, item) pair, merged into 1 (duplicates=last" in out
    assert "split: leave-one-out by time" in out
    data = load_dataset(parse_run_config({"dataset": str(path)}).data)
    assert len(data) == 3


def test_device_files_of_untimed_data_have_no_time_and_split_at_random(tmp_path: Path) -> None:
    """`fedrec deploy split` of data without timestamps writes device files without a time
    column, and each device draws its held-out items at random (its row order is no time)."""
    from fedrec.deploy.catalog import load_catalog
    from fedrec.deploy.device import DeviceFiles, load_user_interactions, local_client_data
    from fedrec.deploy.fleet import split_fleet

    data = load_csv(sorted_by_item(tmp_path, users=40, items=300))
    fleet = split_fleet(data, tmp_path / "devices", devices=3, rating_threshold=0.0, rng=np.random.default_rng(0))
    assert fleet[0].data_path.read_text().splitlines()[0] == "user,item,rating"
    files = DeviceFiles.beside(fleet[0].data_path)
    catalog = load_catalog(files.catalog)
    assert not load_user_interactions(files, catalog).timed
    config = parse_run_config({})
    tests = {local_client_data(files, catalog, config=config, device_seed=s).test_item for s in range(12)}
    assert len(tests) > 1  # drawn at random per seed, not always the file's last row
