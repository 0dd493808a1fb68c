"""``tfmsr data subset``: a dataset cut to some scenarios keeps those rows' records byte for byte, the schema,
the vocabularies and the compression; stats are recomputed; bad requests fail before anything is written."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfmsr.data.ingest import ingest
from tfmsr.data.pipeline import DataError, make_dataset, split_files
from tfmsr.data.subset import subset
from tfmsr.features import Schema

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    """A click log with string ids and three pages, ingested with vocabularies, gzip shards; a fourth scenario
    (shop) has no row."""
    d = tmp_path_factory.mktemp("subset")
    rng = np.random.default_rng(0)
    n = 3000
    pages = rng.choice(["home", "search", "cart"], n, p=[0.5, 0.3, 0.2])
    rows = ["user,item,page,click,ts"] + [f"u{rng.integers(60)},i{rng.integers(90)},{p},{rng.integers(2)},{t}"
                                          for t, p in enumerate(pages)]
    (d / "log.csv").write_text("\n".join(rows) + "\n")
    spec = {"inputs": {"path": "log.csv", "columns": {"user": "string", "item": "string", "page": "string",
                                                      "click": "int64", "ts": "int64"}},
            "label": {"name": "label", "from": "click"}, "scenario": {"from": "page", "values": ["home", "search",
                                                                                                  "cart", "shop"]},
            "user": "user_id", "time": "ts",
            "features": {"user_id": {"from": "user", "group": "user"}, "item_id": {"from": "item", "group": "item"}},
            "behaviour": {"length": 5, "features": {"hist_item_id": "item_id"}},
            "output": {"rows_per_shard": 700, "gzip": True}}
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = str(d / "data")
    ingest(str(d / "spec.yaml"), out, root=str(d), log=None)
    return out


def records(data_dir, split):
    files = split_files(data_dir, split)
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def scenarios_of(data_dir, split):
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    ds = make_dataset(split_files(data_dir, split), schema, 1000, training=False)
    return np.concatenate([x["scenario"].numpy() for x, _ in ds])


def test_subset_keeps_the_rows_of_its_scenarios_byte_for_byte(raw_dir, tmp_path):
    out = str(tmp_path / "s")
    stats = subset(raw_dir, out, ["search", "2"])  # a name and an index (cart)
    src_stats = json.load(open(os.path.join(raw_dir, "stats.json")))
    for split in SPLITS:
        keep = np.isin(scenarios_of(raw_dir, split), [1, 2])
        want = [r for r, k in zip(records(raw_dir, split), keep) if k]
        assert records(out, split) == want  # same records, same order
        per = stats["splits"][split]["scenarios"]
        assert (per["home"]["rows"], per["search"]["rows"] + per["cart"]["rows"]) == (0, len(want)) != (0, 0)
        drop_share = lambda d: {k: v for k, v in d.items() if k != "share"}  # noqa: E731  (shares of the subset)
        assert drop_share(per["search"]) == drop_share(src_stats["splits"][split]["scenarios"]["search"])
        assert stats["subset"]["splits"][split] == {"rows_read": len(keep), "rows_kept": len(want)}
    assert stats["subset"]["scenarios"] == ["search", "cart"]
    assert all(f.endswith(".tfrecord.gz") for f in split_files(out, "train"))
    assert Schema.load(os.path.join(out, "schema.yaml")).to_dict() == Schema.load(
        os.path.join(raw_dir, "schema.yaml")).to_dict()
    for table in os.listdir(os.path.join(raw_dir, "vocab")):
        assert open(os.path.join(out, "vocab", table)).read() == open(os.path.join(raw_dir, "vocab", table)).read()
    assert json.load(open(os.path.join(out, "stats.json")))["subset"]["source"] == os.path.abspath(raw_dir)


def test_bad_subsets_fail_and_leave_nothing(raw_dir, tmp_path):
    out = str(tmp_path / "bad")
    with pytest.raises(DataError, match=r"no scenario 'mall' \(scenarios: home, search, cart, shop\)"):
        subset(raw_dir, out, ["mall"])
    with pytest.raises(DataError, match="split.s. test, train, valid hold no row of scenario.s. shop"):
        subset(raw_dir, out, ["shop"])
    with pytest.raises(DataError, match="at least one scenario"):
        subset(raw_dir, out, [])
    assert not os.listdir(tmp_path)
    subset(raw_dir, out, ["home"])
    with pytest.raises(FileExistsError):
        subset(raw_dir, out, ["home"])


def test_subset_cli(raw_dir, tmp_path, capsys):
    from tfmsr.cli import main

    out = str(tmp_path / "cli")
    assert main(["data", "subset", "--src", raw_dir, "--scenarios", "home", "--out", out]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["scenarios"] == ["home"] and line["splits"]["train"]["rows_kept"] > 0
    assert main(["data", "subset", "--src", raw_dir, "--scenarios", "mall", "--out", str(tmp_path / "x")]) != 0
    assert "no scenario 'mall'" in capsys.readouterr().err
