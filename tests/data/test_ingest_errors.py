"""Bad input to ``tfmsr data ingest``: one clear error naming the file, the line or row, the column and what
was expected, and nothing left behind (no output folder, no temp folder). Inputs are real rows of
../shared/datasets with one defect each."""
import glob
import os

import pandas as pd
import pytest
import yaml
from conftest import datasets_dir

from tfmsr.data.ingest import SpecError, ingest
from tfmsr.data.pipeline import DataError

COLUMNS = {"userId": "int64", "movieId": "int64", "rating": "float64", "timestamp": "int64"}


@pytest.fixture
def ratings_csv(tmp_path):
    """The first 300 lines of ml-latest-small/ratings.csv (header + 299 rows) as text."""
    src = os.path.join(datasets_dir("ml-latest-small"), "ratings.csv")
    with open(src) as fh:
        return [next(fh) for _ in range(300)]


def spec_for(path, **over):
    spec = {"inputs": [{"path": path, "columns": dict(COLUMNS)}], "label": {"rule": "rating >= 4"},
            "user": "user_id", "time": "timestamp",
            "features": {"user_id": {"from": "userId", "group": "user"},
                         "item_id": {"from": "movieId", "group": "item"}}}
    spec.update(over)
    return spec


def fails(tmp_path, spec, *fragments, error=DataError, **kw):
    """Ingest ``spec`` into tmp/out; assert one error holding every fragment and no output left behind."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = str(tmp_path / "out")
    with pytest.raises(error) as e:
        ingest(str(path), out, root=str(tmp_path), log=None, **kw)
    msg = str(e.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert not os.path.exists(out) and glob.glob(out + ".tmp-*") == []
    return msg


def write(tmp_path, name, lines):
    (tmp_path / name).write_text("".join(lines))
    return name


def test_missing_column(tmp_path, ratings_csv):
    spec = spec_for(write(tmp_path, "r.csv", ratings_csv))
    spec["inputs"][0]["columns"]["movieID"] = "int64"
    fails(tmp_path, spec, "r.csv line 1 (header)", "no column 'movieID'", "movieID: int64",
          "userId, movieId, rating, timestamp")


def test_value_not_parsing_as_its_type(tmp_path, ratings_csv):
    lines = list(ratings_csv)
    lines[56] = lines[56].replace(",4.0,", ",four,").replace(",5.0,", ",four,").replace(",3.0,", ",four,")
    assert "four" in lines[56]
    fails(tmp_path, spec_for(write(tmp_path, "r.csv", lines)), "r.csv line 57", "column 'rating'",
          "value 'four' is not a number", "rating: float64")


def test_empty_input(tmp_path, ratings_csv):
    write(tmp_path, "empty.csv", [])
    fails(tmp_path, spec_for("empty.csv"), "empty.csv line 1", "empty input",
          "a header and rows with columns userId, movieId, rating, timestamp")
    write(tmp_path, "header.csv", ratings_csv[:1])
    fails(tmp_path, spec_for("header.csv"), "header.csv line 2", "no data rows", "columns userId, movieId")


def test_wrong_separator(tmp_path):
    src = os.path.join(datasets_dir("douban-book-music"), "book_ratings.dat")
    with open(src) as fh:
        write(tmp_path, "book.dat", [next(fh) for _ in range(200)])
    spec = spec_for("book.dat", features={"user_id": {"from": "user", "group": "user"},
                                          "item_id": {"from": "item", "group": "item"}}, time=None)
    spec["inputs"][0].update(format="csv", header=False, names=["user", "item", "rating"],
                             columns={"user": "int64", "item": "int64", "rating": "int64"})
    fails(tmp_path, spec, "book.dat line 1", "1 field(s) where 3 are declared (user, item, rating)",
          "sep ','", "wrong separator")


def test_label_rule_matching_no_row(tmp_path, ratings_csv):
    spec = spec_for(write(tmp_path, "r.csv", ratings_csv), label={"rule": "rating > 5"})
    fails(tmp_path, spec, "r.csv lines 2-300", "label rule 'rating > 5' matches no row", "rating ranges",
          "expected at least one positive row")


def test_scenario_column_with_too_many_values(tmp_path, ratings_csv):
    src = os.path.join(datasets_dir("ml-latest-small"), "movies.csv")
    spec = spec_for(write(tmp_path, "r.csv", ratings_csv),
                    tables={"movies": {"path": src, "key": "movieId", "columns": {"movieId": "int64",
                                                                                   "genres": "string"}}},
                    derive={"genre": {"first_token": "genres", "sep": "|"}},
                    scenario={"from": "genre", "max_scenarios": 3})
    rows = pd.read_csv(os.path.join(str(tmp_path), "r.csv"))
    movies = pd.read_csv(src)
    genre = rows.movieId.map(dict(zip(movies.movieId, movies.genres.str.split("|").str[0])))
    fourth = genre.drop_duplicates().iloc[3]
    line = int(genre.drop_duplicates().index[3]) + 2
    fails(tmp_path, spec, f"r.csv line {line}", "column 'genre'", f"value {fourth!r}",
          "more than max_scenarios 3", "scenario.other")


def test_unknown_spec_key(tmp_path, ratings_csv):
    spec = spec_for(write(tmp_path, "r.csv", ratings_csv))
    spec["features"]["item_id"]["min_cont"] = 2
    fails(tmp_path, spec, "spec.yaml", "features.item_id", "unknown key 'min_cont'", "min_count", error=SpecError)
    spec = spec_for("r.csv", labels={"rule": "rating >= 4"})
    fails(tmp_path, spec, "spec.yaml: top level: unknown key 'labels'", "label", error=SpecError)


def test_vocab_from_exceeding_max_size_names_the_table(tmp_path, ratings_csv):
    write(tmp_path, "day1.csv", ratings_csv[:150])
    write(tmp_path, "day2.csv", ratings_csv[:1] + ratings_csv[150:])
    spec = spec_for("day1.csv")
    spec["features"]["item_id"]["max_size"] = 160
    (tmp_path / "d1.yaml").write_text(yaml.safe_dump(spec))
    day1 = str(tmp_path / "day1")
    ingest(str(tmp_path / "d1.yaml"), day1, root=str(tmp_path), log=None)
    spec["inputs"][0]["path"] = "day2.csv"
    fails(tmp_path, spec, "vocabulary 'item_id'", "exceed max_size 160", "append-only", vocab_from=day1)
