"""Trace throughput of the embedded teacher: problems/s, bytes/problem and peak memory, per dtype.

    $ python bench/trace.py --limit 200 --dtypes float32,bfloat16
    dtype      problems  problems/s  s/problem  MB/problem  peak RSS MB  GSM8K train (7,473) ETA
    float32         200        3.30      0.303        1.93         1190                  37.7 min
    bfloat16        200        0.50      ...

Each dtype runs `mycelium trace` in its own process (so peak RSS is its own)
over the first N GSM8K train problems into a scratch run folder. The full-train
time is the measured rate extrapolated to 7,473 problems; teacher load time is
reported apart. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GSM8K_TRAIN = 7473


def run(dtype: str, limit: int, device: str, teacher: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "mycelium.cli", "trace", "--dataset", "gsm8k", "--split", "train",
                               "--limit", str(limit), "--dtype", dtype, "--device", device, "--teacher", teacher,
                               "--run", tmp], capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode:
            sys.exit(f"{dtype}: trace failed:\n{proc.stderr[-2000:]}")
        manifest = json.loads((Path(tmp) / "traces" / "manifest.json").read_text())
    last = manifest["stats"]["last_run"]
    return {"dtype": dtype, "problems": last["problems"], "rate": last["problems_per_s"],
            "bytes": manifest["stats"]["bytes_per_problem"], "rss": last["peak_rss_mb"],
            "load_s": wall - last["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="GSM8K train problems per dtype")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--teacher", default="smollm2")
    args = ap.parse_args()
    rows = [run(d, args.limit, args.device, args.teacher) for d in args.dtypes.split(",")]
    print(f"{'dtype':<10}{'problems':>9}{'problems/s':>12}{'s/problem':>11}{'MB/problem':>12}{'peak RSS MB':>13}"
          f"{'load s':>8}{'GSM8K train ETA':>17}")
    for r in rows:
        eta = GSM8K_TRAIN / r["rate"] / 60
        print(f"{r['dtype']:<10}{r['problems']:>9}{r['rate']:>12.2f}{1 / r['rate']:>11.3f}{r['bytes'] / 1e6:>12.2f}"
              f"{r['rss']:>13}{r['load_s']:>8.1f}{eta:>13.1f} min")


if __name__ == "__main__":
    main()
