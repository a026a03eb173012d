#!/usr/bin/env python3
"""torch.mm at the shapes of benches/gemm.rs (same labels, same thread count), median of repeats.

    python3 scripts/bench_gemm_torch.py --threads 2
prints one `bench_gemm ... kernel=torch` line per shape, to set beside `cargo bench --bench gemm`.
"""
import argparse
import re
import statistics
import time
from pathlib import Path

import torch


def shapes():
    text = (Path(__file__).resolve().parent.parent / "benches" / "gemm.rs").read_text()
    pattern = r'\("(\w+)", (\d+), (\d+), (\d+), (true|false), (true|false)\)'
    for label, m, n, k, ta, tb in re.findall(pattern, text):
        yield label, int(m), int(n), int(k), ta == "true", tb == "true"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"bench_gemm threads={args.threads} kernel=torch version={torch.__version__}")
    for label, m, n, k, ta, tb in shapes():
        a = torch.randn(k, m).t() if ta else torch.randn(m, k)
        b = torch.randn(n, k).t() if tb else torch.randn(k, n)
        out = torch.empty(m, n)
        flops = 2.0 * m * n * k
        torch.mm(a, b, out=out)
        repeats = max(5, min(200, int(2e9 / flops)))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - start)
        s = statistics.median(times)
        print(
            f"bench_gemm shape={label} m={m} n={n} k={k} ta={int(ta)} tb={int(tb)} kernel=torch "
            f"ms={s * 1e3:.4f} gflops={flops / s / 1e9:.1f}"
        )


if __name__ == "__main__":
    main()
