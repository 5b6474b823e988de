"""Bring your own data: presets round-trip, headers are recognised, own ids map and unmap,
ratings on any scale turn into exactly the expected positives."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import parse_run_config
from fedrec.data import DataSpec, Interactions, load_csv
from fedrec.data.ids import ITEM_IDS, USER_IDS, lookup, read_id_map, write_id_maps
from fedrec.data.sources import load_dataset, load_interactions
from fedrec.errors import ConfigError, DataError

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
# (user, item, rating, timestamp): sparse ids, half stars
ROWS = [(7, 31, 4.5, 100), (7, 1029, 3.0, 101), (7, 2, 0.5, 102), (12, 31, 5.0, 90), (12, 99, 3.5, 95),
        (400, 2, 2.5, 50), (400, 1029, 4.0, 51), (400, 99, 1.0, 52)]
TITLES = {2: "Jumanji (1995)", 31: "Dangerous Minds (1995)", 99: "Heidi Fleiss: Hollywood Madam (1995)",
          1029: "Dumbo, The Flying Elephant (1941)"}


def own_rows(data: Interactions) -> list[tuple[object, object, float, int]]:
    return sorted(zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(),
                      data.ratings.tolist(), data.timestamps.tolist()))


def titles_by_id(data: Interactions) -> dict[object, str]:
    assert data.item_meta is not None
    return dict(zip(data.item_ids.tolist(), data.item_meta.titles))


def write_movielens_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "ratings.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        writer.writerows((u, i, f"{r:g}" if r % 1 else f"{r:.1f}", t) for u, i, r, t in ROWS)
    with (folder / "movies.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["movieId", "title", "genres"])
        for item, title in sorted(TITLES.items()):
            writer.writerow([item, title, "Adventure|Children" if item == 2 else "(no genres listed)"])
        writer.writerow([5000, "Nobody Rated Me (2020)", "Drama"])
    return folder / "ratings.csv"


def test_movielens_csv_preset_round_trips_with_no_flags(tmp_path: Path) -> None:
    path = write_movielens_csv(tmp_path / "ml-latest-small")
    for preset in ("auto", "movielens-csv"):
        data = load_csv(path, DataSpec(preset=preset))
        assert own_rows(data) == sorted(ROWS)
        assert titles_by_id(data) == TITLES  # movies.csv beside ratings.csv, unrated items skipped
        assert data.item_meta is not None and data.item_meta.year.tolist() == [1995, 1995, 1995, 1941]
        assert data.item_meta.genre_names == ("Adventure", "Children")
        assert "userId->user, movieId->item, rating->rating, timestamp->timestamp" in data.extra["note"]


def test_ml100k_preset_round_trips(tmp_path: Path) -> None:
    root = tmp_path / "ml-100k"
    root.mkdir()
    (root / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)) + "\n")
    (root / "u.item").write_text("".join(
        f"{i}|{t}|01-Jan-1995||http://x|" + "|".join("1" if g == 1 else "0" for g in range(19)) + "\n"
        for i, t in sorted(TITLES.items())
    ))
    (root / "u.user").write_text("".join(f"{u}|30|F|writer|0000\n" for u in (7, 12, 400)))
    whole_stars = [(u, i, float(max(1, int(r + 0.5))), t) for u, i, r, t in ROWS]  # u.data has 1..5 stars
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in whole_stars))
    for dataset, data_dir in (("ml-100k", str(tmp_path)), (str(root / "u.data"), ""), ("ml-100k/u.data", str(tmp_path))):
        data = load_interactions(dataset, data_dir)
        assert own_rows(data) == sorted(whole_stars)
        assert titles_by_id(data) == TITLES


def test_generic_preset_round_trips_through_a_headerless_tsv(tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    path.write_text("".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in ROWS))
    data = load_csv(path, DataSpec(preset="generic"))
    assert own_rows(data) == sorted(ROWS)
    assert "no header" in data.extra["note"]


def test_parquet_round_trips(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({
        "user_id": [f"u{u}" for u, *_ in ROWS], "item_id": [i for _, i, *_ in ROWS],
        "rating": [r for *_, r, _ in ROWS], "ts": [t for *_, t in ROWS],
    }), path)
    data = load_csv(path)
    assert own_rows(data) == sorted((f"u{u}", i, r, t) for u, i, r, t in ROWS)


@pytest.mark.parametrize(
    ("header", "taken"),
    [
        ("userId,movieId,rating,timestamp", "userId->user, movieId->item, rating->rating, timestamp->timestamp"),
        ("user_id,item_id", "user_id->user, item_id->item"),
        ("user,item", "user->user, item->item"),
        ("Customer ID;Product ID;Score;Time", "Customer ID->user, Product ID->item, Score->rating, Time->timestamp"),
        ("visitorid|itemid|event_value", "visitorid->user, itemid->item"),
        ("reviewerID,asin,overall,unixReviewTime", "reviewerID->user, asin->item, unixReviewTime->timestamp"),
    ],
)
def test_common_headers_are_recognised_with_a_note(tmp_path: Path, header: str, taken: str) -> None:
    sep = next((d for d in ";|" if d in header), ",")
    width = header.count(sep) + 1
    body = "".join(sep.join([f"u{k % 3}", f"i{k}", "4", str(1000 + k)][:width]) + "\n" for k in range(6))
    path = tmp_path / "x.csv"
    path.write_text(header + "\n" + body)
    data = load_csv(path)
    assert (data.n_users, data.n_items, len(data)) == (3, 6, 6)
    assert data.extra["note"].startswith(f"x.csv: took {taken}")


def test_string_ids_map_to_dense_indices_and_back(tmp_path: Path) -> None:
    users = ["3f2b-aa", "00a1-zz", "3f2b-aa", "Ωmega user", "00a1-zz"]
    items = ["SKU-9", "SKU-10", "SKU-10", "SKU-9", "007"]
    path = tmp_path / "x.tsv"
    path.write_text("user\titem\n" + "".join(f"{u}\t{i}\n" for u, i in zip(users, items)))
    for spec in (DataSpec(), DataSpec(id_type="string")):
        data = load_csv(path, spec)
        assert data.user_ids.tolist() == ["00a1-zz", "3f2b-aa", "Ωmega user"]  # sorted, dense
        assert data.user_ids[data.users].tolist() == users and data.item_ids[data.items].tolist() == items
        write_id_maps(tmp_path, user_ids=data.user_ids, item_ids=data.item_ids, titles=None)
        assert read_id_map(tmp_path / USER_IDS).tolist() == data.user_ids.tolist()
        index, found = lookup(data.item_ids, np.asarray(["SKU-10", "nope"]))
        assert found.tolist() == [True, False] and data.item_ids[index[0]] == "SKU-10"
    assert (tmp_path / ITEM_IDS).is_file()


def test_integer_ids_keep_integer_order_and_match_text_queries(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user,item\n10,200\n9,3\n10,3\n")
    data = load_csv(path)
    assert data.user_ids.tolist() == [9, 10] and data.item_ids.tolist() == [3, 200]
    index, found = lookup(data.item_ids, np.asarray(["200", "x", "03"]))
    assert found.tolist() == [True, False, True] and index[0] == 1


def test_half_star_threshold_keeps_exactly_the_expected_positives(tmp_path: Path) -> None:
    path = write_movielens_csv(tmp_path)
    config = parse_run_config({"dataset": str(path), "rating-threshold": 3.5, "rating-scale": "0.5..5"})
    positives = load_dataset(config.data).positives(config.data.rating_threshold)
    kept = {(u, i) for u, i, *_ in own_rows(positives)}
    assert kept == {(7, 31), (12, 31), (12, 99), (400, 1029)}  # 4.5, 5.0, 3.5, 4.0; not 3.0, 2.5, 1.0, 0.5


def test_rating_scale_and_threshold_are_checked_together() -> None:
    with pytest.raises(ConfigError) as err:
        parse_run_config({"rating-scale": "1..5", "rating-threshold": 5.5, "delimiter": "::", "data-preset": "x"})
    text = str(err.value)
    assert all(k in text for k in ("rating-threshold", "delimiter", "data-preset"))


def test_ratings_outside_the_scale_name_the_line(tmp_path: Path) -> None:
    path = write_movielens_csv(tmp_path)
    with pytest.raises(DataError, match=r"ratings.csv:4: rating 0.5 outside 1..5 \(rating-scale\)"):
        load_csv(path, DataSpec(rating_scale="1..5"))


def test_explicit_columns_and_item_file_columns(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("who,what,when,stars\na,x,1,5\nb,y,2,4\na,y,3,1\n")
    items = tmp_path / "catalogue.csv"
    items.write_text("code,label,kind,about,released\nx,Ex,Tool;Toy,a red toy,2001\ny,Why,Toy,,\n")
    spec = DataSpec(user_col="who", item_col="what", time_col="when", rating_col="stars", item_file=str(items),
                    item_id_col="code", title_col="label", genres_col="kind", text_col="about", year_col="released",
                    genre_sep=";")
    data = load_csv(path, spec)
    meta = data.item_meta
    assert meta is not None and meta.titles == ("Ex", "Why") and meta.genre_names == ("Tool", "Toy")
    assert meta.texts == ("a red toy", "") and meta.year[0] == 2001 and np.isnan(meta.year[1])
    assert data.timestamps.tolist() == [1, 2, 3]


def test_iso_8601_timestamps_read_as_seconds_by_both_readers(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "Customer ID,Product ID,Score,Created At\n"
        "C-1,SKU-9,5,2024-01-26T21:01:15Z\n"
        "C-1,SKU-3,4,2024-01-26T23:01:16+02:00\n"  # 21:01:16 UTC: one second after the first
        "C-2,SKU-9,3,2024-01-27\n"  # a date: midnight UTC
        "C-2,SKU-4,5,2024-01-27 08:30:00.75\n"  # no zone: UTC; the fraction is dropped
    )
    expected = [("C-1", "SKU-3", 4.0, 1706302876), ("C-1", "SKU-9", 5.0, 1706302875),
                ("C-2", "SKU-4", 5.0, 1706344200), ("C-2", "SKU-9", 3.0, 1706313600)]
    for fast in (True, False):
        assert own_rows(load_csv(path, DataSpec(), fast=fast)) == expected
    # anything else names the line, as an integer that is not one does
    path.write_text("user,item,rating,timestamp\n1,2,4,2024-01-26\n1,3,4,26/01/2024\n")
    with pytest.raises(DataError, match=r"orders.csv:3: timestamp '26/01/2024' is not an integer .* nor an ISO-8601 date"):
        load_csv(path, DataSpec())
    path.write_text("user,item,rating,timestamp\n1,2,4,1969-12-31\n")
    with pytest.raises(DataError, match="orders.csv:2: timestamp '1969-12-31' is out of range"):
        load_csv(path, DataSpec())
