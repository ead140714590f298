"""Benchmark: seed 001's 5-seed table end to end, `relulab run seed001` (20 deep MLPs x 10 epochs, the store and the
report included), against the Keras peer's process, in the same call (issue 25: 60x the peer end to end).

The peer (`peers/keras_seed001.py`) trains one seed's four models one after another; the table's five seeds are
five such processes, so its side is 5 x one process's wall time (a model's time does not depend on its seed). Each
relulab case is a fresh process and a fresh store, with relulab's data cache ($RELULAB_CACHE), Triton's cache
($TRITON_CACHE_DIR) and torch.compile's ($TORCHINDUCTOR_CACHE_DIR) in a folder of this benchmark's own:

- cold: those caches empty, as on a fresh machine;
- warm: the same command again, on the caches the cold run filled (twice, for the spread).

    python benchmarks/seed001_end_to_end.py --fashion DATA/fashion-mnist --peers DATA/peers --out OUT

The peer needs its wheels installed first (peers/README.md: `pip install --no-index --no-deps --target /tmp/site
peers/wheels/*.whl`; --peer-site). JSON lines go to OUT/seed001_end_to_end.jsonl, a table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_SEEDS = 5  # the table's seeds; the peer's process trains one seed's four models


def timed(command: list[str], env: dict, cwd: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    return {"wall_s": round(time.perf_counter() - started, 2), "returncode": done.returncode,
            "stdout_tail": done.stdout[-1500:], "stderr_tail": done.stderr[-1500:]}


def relulab_case(name: str, fashion: str, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RELULAB_CACHE": str(root / "relulab-cache"), "TRITON_CACHE_DIR": str(root / "triton-cache"),
           "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor-cache")}
    store = root / f"{name}.sqlite"
    command = [sys.executable, "-m", "relulab", "run", "seed001", "--data-path", fashion, "--store", str(store),
               "--out", str(root / f"{name}-report")]
    return {"part": "relulab", "case": name, **timed(command, env, ROOT)}


def peer_case(fashion: str, peers: Path, site: str, root: Path) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": site}
    command = [sys.executable, str(peers / "keras_seed001.py"), fashion, "10", "0"]
    return {"part": "peer", "case": "one seed, 4 models", **timed(command, env, root)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion", required=True, help="folder of Fashion-MNIST's IDX files")
    parser.add_argument("--peers", required=True, help="the peers folder (../shared/peers)")
    parser.add_argument("--peer-site", default="/tmp/site")
    parser.add_argument("--out", default=".")
    parser.add_argument("--warm-runs", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="relulab's cases only (no ratio)")
    parser.add_argument("--root", help="folder for the caches and stores (default: a new temporary folder); "
                        "the caches stay filled for a later command, e.g. benchmarks/profile_command.py")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fashion = str(Path(args.fashion).resolve())
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="relulab-seed001-"))
    root.mkdir(parents=True, exist_ok=True)
    records = []
    with (out / "seed001_end_to_end.jsonl").open("w") as log:
        cases = [lambda: relulab_case("cold", fashion, root)]
        cases += [lambda i=i: relulab_case(f"warm{i}", fashion, root) for i in range(1, args.warm_runs + 1)]
        if not args.no_peer:
            cases += [lambda: peer_case(fashion, Path(args.peers).resolve(), args.peer_site, root)]
        for case in cases:
            record = case()
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"{record['part']} {record['case']}: {record['wall_s']} s (exit {record['returncode']})",
                  file=sys.stderr)
    if args.no_peer:
        return
    peer = next(r for r in records if r["part"] == "peer")
    peer_table_s = PEER_SEEDS * peer["wall_s"]
    print(f"peer: {peer['wall_s']} s for one seed's 4 models, so {peer_table_s:.0f} s for the 5-seed table")
    print("| relulab case | wall (s) | the peer's 5 seeds / relulab |")
    print("|---|---|---|")
    for record in records:
        if record["part"] == "relulab":
            ratio = peer_table_s / record["wall_s"] if record["returncode"] == 0 and peer["returncode"] == 0 else None
            print(f"| {record['case']} | {record['wall_s']} | {f'{ratio:.1f}x' if ratio else 'failed'} |")


if __name__ == "__main__":
    main()
