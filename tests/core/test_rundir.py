"""RunDir (run.yaml with its kind, old run dirs recognised), the atomic writes and packaged configs."""
import os

import pytest
import yaml

from tfmsr.core.config import PACKAGED, resolve_path
from tfmsr.core.io import atomic_dir, write_json, write_yaml
from tfmsr.core.rundir import RunDir, read_stats


def test_run_yaml_records_the_kind_and_old_runs_are_recognised(tmp_path):
    run = RunDir(str(tmp_path / "r"))
    assert run.kind is None and not run.exists
    run.write_run("retrieval", {"model": {"name": "sass"}}, str(tmp_path / "data"))
    got = run.read()
    assert got["kind"] == "retrieval" and got["data"] == str(tmp_path / "data")
    with pytest.raises(ValueError, match="run kind 'other'"):
        run.write_run("other", {}, "d")
    for cfg, kind in (({"model": {}, "pretrain": {"enabled": False}}, "retrieval"), ({"model": {}}, "ranking")):
        write_yaml(run.file("run.yaml"), {"config": cfg, "data": "d"})  # written before run.yaml had a kind
        assert run.kind == kind
    with pytest.raises(FileNotFoundError, match="no run.yaml"):
        RunDir(str(tmp_path / "nope")).read()


def test_stats_are_copied_into_the_run(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.stats() == {}
    run.write_stats({"splits": {"train": {"rows": 3}}})
    assert read_stats(str(tmp_path)) == {"splits": {"train": {"rows": 3}}}


def test_atomic_writes_leave_no_temp_and_no_half_dir(tmp_path):
    write_json(str(tmp_path / "a.json"), {"x": 1})
    assert sorted(os.listdir(tmp_path)) == ["a.json"]
    with pytest.raises(RuntimeError):
        with atomic_dir(str(tmp_path / "d")) as tmp:
            open(os.path.join(tmp, "f"), "w").close()
            raise RuntimeError("killed half-way")
    assert sorted(os.listdir(tmp_path)) == ["a.json"]
    with atomic_dir(str(tmp_path / "d")) as tmp:
        open(os.path.join(tmp, "f"), "w").close()
    assert os.listdir(tmp_path / "d") == ["f"]


def test_a_bare_config_name_resolves_to_the_packaged_config(tmp_path):
    assert resolve_path("saml") == os.path.join(PACKAGED, "saml.yaml")
    assert resolve_path("saml.yaml") == os.path.join(PACKAGED, "saml.yaml")
    assert yaml.safe_load(open(resolve_path("saml")))["model"]["name"] == "saml"
    local = tmp_path / "saml.yaml"
    local.write_text("model: {name: dnn}\n")
    assert resolve_path(str(local)) == str(local)          # an existing path wins
    assert resolve_path("no_such_config") == "no_such_config"  # reading it names the missing file
