"""OpenMP's wait policy on a shared and an unshared CPU (docs/speed.md, OpenMP waiting): the demo's
Generate (16 cells, the widget's sampling, ``fast``), median of 5 in a fresh process per policy,
on an idle machine and with one other process spinning on a core.

    python -m benchmarks.openmp_wait    # ~2 minutes on 2 cores; prints a Markdown table
"""

from __future__ import annotations

import os
import subprocess
import sys

POLICIES = {"default (spin)": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
            "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"}, "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"}}
CHILD = """
import time
from napari_cellflux import api
from napari_cellflux.data.samples import synthetic_controls
from napari_cellflux.settings import SpeedOptions
model = api.load_model("demo")
x = model.normalization.to_model(synthetic_controls(16))
run = lambda: api.generate(model, x, "colchicine", speed=SpeedOptions(precision="fast"))
run()
times = []
for _ in range(5):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(sorted(times)[2])
"""


def generate_seconds(policy: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**env, **policy}, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> int:
    idle = {name: generate_seconds(policy) for name, policy in POLICIES.items()}
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = {name: generate_seconds(policy) for name, policy in POLICIES.items()}
    finally:
        burner.kill()
    print("| wait policy | idle machine | one core busy |\n|---|---|---|")
    for name in POLICIES:
        print(f"| {name} | {idle[name]:.2f} s | {busy[name]:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
