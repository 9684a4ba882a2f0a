"""Label building and specialist training time on a traced run folder, per backbone.

    $ python bench/specialists.py --run runs/main --backbones minilm,smollm2 --epochs 2
    stage                      seconds   problems   per problem   full GSM8K train (7,473)
    labels build                  39.5       2000        0.0198                    2.5 min
    train minilm (2 epochs)      251.0       1447        ...

Each stage runs the real CLI in its own process on the given run folder (which
needs traces and a signals report). Full-train times are the measured rate
extrapolated linearly. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

GSM8K_TRAIN = 7473


def timed(args: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mycelium.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--backbones", default="minilm")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    run = Path(args.run)
    rows = [("labels build", timed(["labels", "build", "--run", args.run]),
             json.loads((run / "labels" / "manifest.json").read_text())["traced"])]
    for bb in args.backbones.split(","):
        out = run / "models" / bb.replace("/", "_")
        for stale in ("checkpoint.safetensors", "model.safetensors"):
            (out / stale).unlink(missing_ok=True)  # time a fresh run, not a resume
        secs = timed(["train", "--run", args.run, "--backbone", bb, "--epochs", str(args.epochs)])
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append((f"train {bb} ({args.epochs} epochs)", secs, metrics["train_examples"]))
        print(f"{bb}: best dev " + "  ".join(f"{k} {v:.3f}" for k, v in metrics["best"].items() if k.startswith("c")))
    print(f"{'stage':<30}{'seconds':>10}{'problems':>10}{'per problem':>14}{'full GSM8K train':>20}")
    for name, secs, n in rows:
        print(f"{name:<30}{secs:>10.1f}{n:>10}{secs / n:>14.4f}{secs / n * GSM8K_TRAIN / 60:>16.1f} min")


if __name__ == "__main__":
    main()
