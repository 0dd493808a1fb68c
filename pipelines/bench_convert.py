"""Memory / throughput benchmark of the streaming Alimama converter (JSON output).

    python -m pipelines.bench_convert --impressions 1000000,5000000 --work /tmp/bench_convert

For each size: writes a generated input in the public Alimama layout (raw_sample.csv, ad_feature.csv,
user_profile.csv, behavior_log.csv; not committed, removed afterwards unless ``--keep``), converts it in a
fresh child process (``tfmsr data convert alimama``-equivalent) and reports that process's peak RSS
(``resource.getrusage``), its RSS after imports (TensorFlow alone is several hundred MB), rows/s and
seconds. A bounded converter shows about the same peak RSS for 1M and 5M impressions.

``write_alimama`` is also used by the tests (small inputs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd

T0 = 1_494_000_000  # 2017-05-06 00:00 in UTC+8, the first day of the public raw_sample
DAY = 86_400
PIDS = np.array(["430548_1007", "430539_1007"])
BTAGS = np.array(["pv", "cart", "fav", "buy"])


def _write_ads(out_dir: str, rng, ads: int, categories: int) -> tuple:
    """ad_feature.csv (a quarter of the brands NULL); returns the raw ad ids and their categories."""
    ad_id = 1 + rng.choice(10 * ads, ads, replace=False)
    ad_cate = 1000 + rng.integers(0, categories, ads)
    ad_brand = np.where(rng.random(ads) < 0.25, -1, 5000 + ad_cate * 7 + rng.integers(0, 7, ads))
    pd.DataFrame({"adgroup_id": ad_id, "cate_id": ad_cate, "campaign_id": 1 + rng.integers(0, max(2, ads // 3), ads),
                  "customer": 1 + rng.integers(0, max(2, ads // 5), ads),
                  "brand": pd.array(np.where(ad_brand < 0, None, ad_brand), dtype="Int64"),
                  "price": np.round(rng.lognormal(4.0, 1.2, ads), 2)}) \
        .to_csv(os.path.join(out_dir, "ad_feature.csv"), index=False, na_rep="NULL")
    return ad_id, ad_cate


def _write_profiles(out_dir: str, rng, uid: np.ndarray, profile_missing: float) -> None:
    """user_profile.csv: some users have none; pvalue_level is often empty, as in the real file (and the
    header's trailing space)."""
    has = rng.random(len(uid)) >= profile_missing
    n = int(has.sum())
    prof = pd.DataFrame({
        "userid": uid[has], "cms_segid": rng.integers(0, 97, n), "cms_group_id": rng.integers(0, 13, n),
        "final_gender_code": rng.integers(1, 3, n), "age_level": rng.integers(0, 7, n),
        "pvalue_level": pd.array(np.where(rng.random(n) < 0.3, None, rng.integers(1, 4, n)), dtype="Int64"),
        "shopping_level": rng.integers(1, 4, n), "occupation": rng.integers(0, 2, n),
        "new_user_class_level ": pd.array(np.where(rng.random(n) < 0.1, None, rng.integers(1, 5, n)), dtype="Int64")})
    prof.to_csv(os.path.join(out_dir, "user_profile.csv"), index=False)


def write_alimama(out_dir: str, impressions: int, users: int = None, ads: int = None, categories: int = 60,
                  behaviours_per_impression: float = 3.0, days: int = 8, history_days: int = 14,
                  profile_missing: float = 0.08, seed: int = 0, chunk: int = 500_000) -> dict:
    """Write a planted input in the Alimama layout: users have favourite categories; behaviours are
    mostly in them; clicks are likelier for ads of a category the user recently browsed. Rows are in
    random time order (as the real files), written chunk by chunk (memory bounded by ``chunk``)."""
    rng = np.random.default_rng(seed)
    users = users or max(200, impressions // 40)
    ads = ads or max(300, impressions // 30)
    os.makedirs(out_dir, exist_ok=True)
    uid = 1 + rng.choice(10 * users, users, replace=False)  # sparse raw ids, as in the real files
    fav = rng.integers(0, categories, (users, 3))
    ad_id, ad_cate = _write_ads(out_dir, rng, ads, categories)
    _write_profiles(out_dir, rng, uid, profile_missing)
    user_p = rng.zipf(1.6, users * 4)
    user_p = np.bincount(np.minimum(user_p, users) - 1, minlength=users) + 1.0
    user_p /= user_p.sum()

    def chunks(total):
        done = 0
        while done < total:
            m = min(chunk, total - done)
            yield m
            done += m

    n_beh = int(impressions * behaviours_per_impression)
    with open(os.path.join(out_dir, "behavior_log.csv"), "w") as fh:
        fh.write("user,time_stamp,btag,cate,brand\n")
        for m in chunks(n_beh):
            u = rng.choice(users, m, p=user_p)
            cat = np.where(rng.random(m) < 0.8, fav[u, rng.integers(0, 3, m)], rng.integers(0, categories, m))
            t = T0 - history_days * DAY + rng.integers(0, (history_days + days) * DAY, m)
            brand = 5000 + cat * 7 + rng.integers(0, 7, m)
            pd.DataFrame({"user": uid[u], "time_stamp": t, "btag": BTAGS[rng.choice(4, m, p=[.9, .04, .03, .03])],
                          "cate": 1000 + cat, "brand": brand}).to_csv(fh, header=False, index=False)
    with open(os.path.join(out_dir, "raw_sample.csv"), "w") as fh:
        fh.write("user,time_stamp,adgroup_id,pid,nonclk,clk\n")
        for m in chunks(impressions):
            u = rng.choice(users, m, p=user_p)
            a = rng.integers(0, ads, m)
            in_fav = (fav[u] == (ad_cate[a] - 1000)[:, None]).any(axis=1)
            clk = (rng.random(m) < np.where(in_fav, 0.12, 0.03)).astype(int)
            pd.DataFrame({"user": uid[u], "time_stamp": T0 + rng.integers(0, days * DAY, m), "adgroup_id": ad_id[a],
                          "pid": PIDS[rng.integers(0, 2, m)], "nonclk": 1 - clk, "clk": clk}) \
                .to_csv(fh, header=False, index=False)
    return {"impressions": impressions, "behaviours": n_beh, "users": users, "ads": ads}


def _convert_child(src: str, out: str, seq_len: int, chunk_rows: int) -> None:
    """Runs in a fresh process: convert and print one JSON line with this process's resource use."""
    import resource

    import tfmsr  # noqa: F401
    from tfmsr.data.convert import alimama

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.time()
    stats = alimama.convert(src, out, seq_len=seq_len, chunk_rows=chunk_rows, overwrite=True, quiet=True)
    sec = time.time() - t
    conv = stats["conversion"]
    print(json.dumps({
        "impressions": conv["counts"]["impressions_read"], "behaviours": conv["counts"]["behaviours_read"],
        "seconds": round(sec, 1), "impressions_per_sec": round(conv["counts"]["impressions_read"] / sec),
        "input_rows_per_sec": round((conv["counts"]["impressions_read"] + conv["counts"]["behaviours_read"]) / sec),
        "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_imports_mb": round(rss0, 1), "history_buffer_mb": conv["history_buffer_mb"],
        "max_bucket_behaviours": conv["counts"]["max_bucket_behaviours"],
        "splits": {k: v["rows"] for k, v in stats["splits"].items()}, "scenarios": stats["scenario_rows"]}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impressions", default="5000000", help="comma-separated sizes, e.g. 1000000,5000000")
    p.add_argument("--behaviours-per-impression", type=float, default=3.0)
    p.add_argument("--seq-len", type=int, default=30)
    p.add_argument("--chunk-rows", type=int, default=200_000)
    p.add_argument("--work", default="/tmp/tfmsr_bench_convert")
    p.add_argument("--keep", action="store_true", help="keep the generated input and output")
    p.add_argument("--child", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _convert_child(args.child[0], args.child[1], args.seq_len, args.chunk_rows)
        return 0
    results = []
    for size in [int(s) for s in args.impressions.split(",")]:
        src, out = os.path.join(args.work, f"src-{size}"), os.path.join(args.work, f"out-{size}")
        t = time.time()
        if not os.path.exists(os.path.join(src, "raw_sample.csv")):
            write_alimama(src, size, behaviours_per_impression=args.behaviours_per_impression)
        gen_sec = time.time() - t
        proc = subprocess.run([sys.executable, "-m", "pipelines.bench_convert", "--child", src, out,
                               "--seq-len", str(args.seq_len), "--chunk-rows", str(args.chunk_rows)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["generate_seconds"] = round(gen_sec, 1)
        res["input_mb"] = round(sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 2 ** 20, 1)
        results.append(res)
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"benchmark": "convert alimama", "seq_len": args.seq_len, "chunk_rows": args.chunk_rows,
                      "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
