#!/usr/bin/env python3
"""A mock model for baton pipelines on a real NVIDIA GPU (the seed's "mock LLM" and "mock image
model"): it holds GiB of device memory filled with random data while it "works", prints
`baton:progress` lines, and writes its output file.

    python3 mock_model.py --gib 4 --seconds 2 --steps 4 --write 1_scripts/scenes.json
    python3 mock_model.py --gib 1 --orphan-gib 2   # also leave a detached process holding 2 GiB
"""
import argparse
import json
import os
import subprocess
import sys
import time


def hold(gib):
    import torch

    x = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    x.random_(0, 256)
    torch.cuda.synchronize()
    return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, required=True)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--write", action="append", default=[])
    p.add_argument("--orphan-gib", type=float, default=0.0)
    p.add_argument("--orphan-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.orphan_child:
        x = hold(a.gib)
        print("ready", flush=True)
        while True:
            time.sleep(60)

    x = hold(a.gib)
    device = os.environ.get("BATON_DEVICE", "?")
    print(f"holding {a.gib} GiB on {device} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})", flush=True)
    for step in range(1, a.steps + 1):
        time.sleep(a.seconds / max(a.steps, 1))
        print(f"baton:progress {step}/{a.steps} step {step}", flush=True)
    for path in a.write:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"stage": os.environ.get("BATON_STAGE"), "topic": os.environ.get("BATON_TOPIC"), "gib": a.gib}, f)
        os.replace(tmp, path)
    if a.orphan_gib > 0:
        # A detached grandchild in a new session: it leaves baton's process group, but keeps
        # the environment (BATON_STAGE_TOKEN), which is how baton finds and names it.
        child = subprocess.Popen(
            [sys.executable, __file__, "--gib", str(a.orphan_gib), "--orphan-child"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child.stdout.readline()
        print(f"left orphan pid {child.pid} holding {a.orphan_gib} GiB", flush=True)
    del x


if __name__ == "__main__":
    main()
