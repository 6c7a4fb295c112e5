#!/usr/bin/env python3
"""The seed's switch demo the seed's way, in PyTorch: the baseline `baton bench switch` is
measured against.

- in-process: allocate a "mock LLM" (random float32 on the GPU), `del` it, `gc.collect()`,
  `torch.cuda.empty_cache()`, then allocate a "mock image model";
- processes: each mock in its own `python3` subprocess; this parent never imports torch and
  reads the GPU through NVML (libnvidia-ml via ctypes), as baton's parent does.

It prints the same table as `baton bench switch`, and with --json FILE writes the same JSON shape.

    python3 bench/pytorch_switch.py --repeat 5 --size-gib 4 [--json FILE]
"""
import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time

GIB = 2**30


class Nvml:
    """Device memory through NVML, without torch or a CUDA context."""

    class Memory(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint), ("total", ctypes.c_ulonglong), ("reserved", ctypes.c_ulonglong),
                    ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self, index=0):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        assert self.lib.nvmlInit_v2() == 0, "nvmlInit failed"
        self.handle = ctypes.c_void_p()
        assert self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)) == 0

    def used(self):
        m = self.Memory()
        m.version = ctypes.sizeof(self.Memory) | (2 << 24)
        assert self.lib.nvmlDeviceGetMemoryInfo_v2(self.handle, ctypes.byref(m)) == 0
        return m.used


def settle(nvml, target, timeout=5.0):
    """Polls until used memory is at most `target`; returns (used, seconds)."""
    start = time.perf_counter()
    while True:
        used = nvml.used()
        if used <= target or time.perf_counter() - start > timeout:
            return used, time.perf_counter() - start
        time.sleep(0.001)


def child(size):
    import torch

    x = torch.rand(size // 4, dtype=torch.float32, device="cuda")
    torch.cuda.synchronize()
    print("resident", flush=True)
    sys.stdin.readline()
    del x


def processes(nvml, size, tolerance):
    baseline = nvml.used()
    peak, released, switch = baseline, None, 0.0
    for _ in ("mock LLM", "mock image model"):
        p = subprocess.Popen([sys.executable, __file__, "--child", str(size)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "resident"
        if released is not None:
            switch = time.perf_counter() - released
        peak = max(peak, nvml.used())
        released = time.perf_counter()
        p.stdin.close()
        p.wait()
        used, _ = settle(nvml, baseline + tolerance)
    return {"switch_seconds": switch, "left_after_release": max(used - baseline, 0), "peak": peak, "baseline": baseline}


def in_process(nvml, size, tolerance, before_torch):
    """`before_torch`: the device's use before this interpreter touched CUDA, so what is left
    counts PyTorch's context and caches, as nvidia-smi would show them."""
    import torch

    torch.cuda.init()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    context = nvml.used()
    peak, released, switch = context, None, 0.0
    for _ in ("mock LLM", "mock image model"):
        x = torch.rand(size // 4, dtype=torch.float32, device="cuda")
        torch.cuda.synchronize()
        if released is not None:
            switch = time.perf_counter() - released
        peak = max(peak, nvml.used())
        released = time.perf_counter()
        del x
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        used, _ = settle(nvml, context + tolerance, timeout=0.5)
    return {"switch_seconds": switch, "left_after_release": max(used - before_torch, 0),
            "left_beyond_context": max(used - context, 0), "peak": peak, "baseline": before_torch}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--json", metavar="FILE", help="also write every run's numbers to FILE")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child)
    size, tolerance, nvml = int(a.size_gib * GIB), 64 * 2**20, Nvml()
    runs = {"processes": [processes(nvml, size, tolerance) for _ in range(a.repeat)]}
    # In-process last and in one interpreter, as the seed's Approach A would run it.
    before_torch = nvml.used()
    runs["in-process"] = [in_process(nvml, size, tolerance, before_torch) for _ in range(a.repeat)]
    modes = {m: {k: sorted(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tool": "pytorch", "size": size, "repeat": a.repeat, "modes": modes}, f, indent=2)
    print(f"pytorch switch: two mock models of {a.size_gib:.1f} GiB, {a.repeat} run(s) per mode")
    print(f"{'MODE':<11} {'SWITCH ms median (range)':>24} {'LEFT AFTER RELEASE median':>30} {'PEAK median':>22}")
    for m, v in modes.items():
        s = [x * 1000 for x in v["switch_seconds"]]
        print(f"{m:<11} {f'{statistics.median(s):.1f} ({s[0]:.1f}–{s[-1]:.1f})':>24} "
              f"{statistics.median(v['left_after_release']) / GIB:>26.2f} GiB {statistics.median(v['peak']) / GIB:>18.2f} GiB")


if __name__ == "__main__":
    main()
