"""pipelines/bench_ingest.py: one measured ingestion of its generated string-id log, in the layout asked for."""
import yaml

from pipelines.bench_ingest import main


def test_packed_layout_measured_and_written(tmp_path):
    out = main(["--rows", "2000", "--users", "100", "--items", "300", "--dir", str(tmp_path), "--layout", "packed"])
    assert out["layout"] == "packed" and out["rows"] == 2000 and sum(out["splits"].values()) == 2000
    assert out["ingest_cpu_seconds"] > 0 and out["rows_per_cpu_second"] > 0 and out["output_mb"] > 0
    schema = yaml.safe_load(open(tmp_path / "out" / "schema.yaml"))
    assert schema["layout"] == "packed"
