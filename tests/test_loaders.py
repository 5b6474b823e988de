from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.data import DataSpec, load_csv, load_movielens_100k
from fedrec.errors import DataError


def test_movielens_100k_matches_its_readme(ml100k) -> None:
    assert (ml100k.n_users, ml100k.n_items, len(ml100k)) == (943, 1682, 100_000)
    assert np.bincount(ml100k.ratings.astype(int))[1:].tolist() == [6110, 11370, 27145, 34174, 21201]
    assert ml100k.item_meta is not None and ml100k.item_meta.titles[0] == "Toy Story (1995)"
    assert ml100k.item_meta.genres.shape == (1682, 19)
    assert ml100k.user_meta is not None and ml100k.user_meta.gender is not None and ml100k.user_meta.gender[0] == "M"
    assert int(np.bincount(ml100k.users).min()) == 20


def test_missing_movielens_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fedrec data fetch ml-100k"):
        load_movielens_100k(tmp_path)


def write(tmp_path: Path, text: str, name: str = "x.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_custom_columns_and_metadata(tmp_path: Path) -> None:
    path = write(tmp_path, "uid,iid,score,ts\n10,7,4,100\n10,8,5,101\n11,7,3,99\n")
    meta = write(tmp_path, "item,title,genres,year\n7,Seven,Crime|Drama,1995\n8,Eight,,\n", "items.csv")
    spec = DataSpec(user_col="uid", item_col="iid", rating_col="score", time_col="ts", item_file=str(meta))
    data = load_csv(path, spec)
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    assert data.user_ids.tolist() == [10, 11] and data.item_ids.tolist() == [7, 8]
    assert data.item_meta is not None and data.item_meta.genre_names == ("Crime", "Drama")
    assert data.item_meta.titles == ("Seven", "Eight") and np.isnan(data.item_meta.year[1])


def test_tsv_without_ratings_or_time(tmp_path: Path) -> None:
    path = write(tmp_path, "user\titem\n1\t2\n1\t3\n", "x.tsv")
    data = load_csv(path)
    assert data.ratings.tolist() == [1.0, 1.0] and data.timestamps.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user,item,rating,timestamp\n1,2,4,x\n", r"x.csv:2: timestamp 'x' is not an integer"),
        ("user,item,rating,timestamp\n1,2,9,5\n", r"x.csv:2: rating 9 outside 1..5 \(rating-scale\)"),
        ("user,item,rating,timestamp\n1,2,4,5\n1,3,4,5\n1,2,3,6\n", r"x.csv:4: duplicate interaction .* line 2"),
        ("user,item,rating,timestamp\n,2,4,5\n", r"x.csv:2: empty user id"),
        ("user,item,rating,timestamp\n1,2,4\n", r"x.csv:2: expected 4 fields, found 3"),
        ("user,item,rating,timestamp\n1,2,nan,5\n", r"x.csv:2: rating 'nan' is not finite"),
        ("user,item,rating,timestamp\n", r"no interactions found"),
        ("", r"x.csv:1: the first line is empty"),
        ("when,what\n1,2\n", r"x.csv:1: no user or item column recognised .* user-col=COLUMN and item-col=COLUMN"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=message):
        load_csv(path, DataSpec(rating_scale="1..5", duplicates="error"))


def test_wrong_encoding_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"user,item,rating,timestamp\n1,2,4,5\n\xff\xfe,3,4,5\n")
    with pytest.raises(DataError, match="not valid utf-8"):
        load_csv(path)


def test_corrupt_movielens_line(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "ml-100k"
    root.mkdir()
    for name in ("u.item", "u.user", "u.genre"):
        (root / name).write_bytes((data_dir / "ml-100k" / name).read_bytes())
    (root / "u.data").write_text("1\t2\t3\t4\n1\t3\n")
    with pytest.raises(DataError, match=r"u.data:2: expected 4 tab-separated fields, found 2"):
        load_movielens_100k(tmp_path)
