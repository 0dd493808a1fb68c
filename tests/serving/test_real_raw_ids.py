"""Issue 27 item 3 end to end on the real files, with no dataset-specific code: each shipped spec ingests
its raw log, a seed model trains on it, the export is called in a python that never imports tfmsr with raw
ids taken from the ingested records (the raw files' own values), and its probabilities equal ``tfmsr score``
for those rows; on Douban a retrieval model's ``topk_<scenario>`` returns raw item ids of the raw files."""
import os

import pandas as pd
import pytest
from conftest import datasets_dir
from raw_serving import check_raw_parity, check_raw_topk

from tfmsr.data.ingest import ingest

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tfmsr", "configs", "data")


def ingested(spec, folder, tmp_path):
    out = str(tmp_path / spec)
    ingest(os.path.join(SPECS, f"{spec}.yaml"), out, root=datasets_dir(folder), log=None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("spec, folder, model", [
    ("douban", "douban-book-music", "sainet"),
    ("ml_latest_small", "ml-latest-small", "fimn"),
    ("amazon_musical_instruments", "amazon-5core-musical-instruments", "saml"),
])
def test_seed_model_served_with_raw_ids_equals_tfmsr_score(spec, folder, model, tmp_path):
    data = ingested(spec, folder, tmp_path)
    res = check_raw_parity(data, str(tmp_path / "work"), model=model, n=100, steps_per_epoch=20)
    assert res["rows_compared"] == 100 and res["max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_douban_topk_returns_raw_item_ids_of_the_files(tmp_path):
    src = datasets_dir("douban-book-music")
    data = ingested("douban", "douban-book-music", tmp_path)
    res = check_raw_topk(data, str(tmp_path / "work"), model="dssm", n=20, k=5)
    assert sorted(res["scenarios"]) == ["book", "music"]
    raw = set()
    for domain in ("book", "music"):  # the spec's item key is "<domain>:<item id in that file>"
        items = pd.read_csv(os.path.join(src, f"{domain}_ratings.dat"), sep="\t", header=None)[1]
        raw |= {f"{domain}:{i}" for i in items}
    assert set(res["returned_item_ids"]) <= raw and len(res["returned_item_ids"]) > 0
