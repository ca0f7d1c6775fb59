"""C-Mixup partner sampling: time and peak memory, ours vs the official approach.

Official approach (``huaxiuyao/C-Mixup`` ``src/algorithm.py``): before training, an N x N
float64 table built with one sklearn ``KernelDensity`` fit per row (``get_mixup_sample_rate``);
each step, one ``np.random.choice(N, p=row)`` per anchor. Ours: no table; per call either the
Gumbel-max brute force over a streamed ``[B, N]`` log-kernel (``method="gumbel"``) or the exact
sorted rejection sampler for 1-D labels (``method="sorted"``, ``SortedLabelBank``).

Each measurement runs in a fresh subprocess; peak memory is the rise of the process's peak
RSS over its RSS just before the measured work. Official table builds that would take too
long (or need more memory than the machine has) are timed on a subset of rows and
extrapolated linearly; those rows say so.

    OMP_NUM_THREADS=1 python benchmarks/cmixup_sampling.py            # N = 1k, 10k, 50k (+ ours to 1M)
    OMP_NUM_THREADS=1 python benchmarks/cmixup_sampling.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

B = 256
SIGMA = 0.05  # labels ~ U[0, 1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, n: int, rows: int, reps: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    bank = torch.rand(n, generator=g)
    query = bank[torch.randint(0, n, (B,), generator=g)]
    out: dict = {"kind": kind, "n": n}
    if kind == "official-table":
        from sklearn.neighbors import KernelDensity

        y = bank.double().numpy()[:, None]
        rows = min(rows, n)
        base = _rss_mb()
        t = time.perf_counter()
        table = np.empty((rows, n))
        for i in range(rows):  # official get_mixup_sample_rate, row by row
            kd = KernelDensity(kernel="gaussian", bandwidth=SIGMA).fit(y[i : i + 1])
            r = np.exp(kd.score_samples(y))
            table[i] = r / r.sum()
        dt = time.perf_counter() - t
        out.update(
            rows=rows,
            time_s=dt * n / rows,
            mem_mb=8 * n * n / 2**20,
            measured_mem_mb=_peak_mb() - base,
            extrapolated=rows < n,
        )
        return out
    if kind == "official-step":
        rng = np.random.default_rng(0)
        p = rng.random(n)
        p /= p.sum()
        t = time.perf_counter()
        for _ in range(reps):
            [rng.choice(np.arange(n), p=p) for _ in range(B)]  # official: one choice per anchor
        out.update(time_s=(time.perf_counter() - t) / reps)
        return out
    from mixhub_cmixup import SortedLabelBank, sample_partners

    sample_partners(query[:4], bank[:64], SIGMA, g)  # warm-up
    base = _rss_mb()
    if kind == "sorted-prebuilt":  # the plugin's case: the bank is sorted once per run
        bank = SortedLabelBank(bank)
    method = "gumbel" if kind == "gumbel" else "sorted"  # sorted-call: a plain call sorts the bank itself
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        sample_partners(query, bank, SIGMA, g, method=method)
    out.update(time_s=(time.perf_counter() - t) / reps, cpu_s=(time.process_time() - c) / reps)
    out["mem_mb"] = max(_peak_mb() - base, 0.0)
    return out


def run(kind: str, n: int, rows: int = 0, reps: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(n), str(rows), str(reps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.1f} MB"


def ms(res: dict) -> str:
    """Wall time (process CPU time) per call, in ms."""
    if res["time_s"] != res["time_s"]:
        return "not run"
    return f"{res['time_s'] * 1e3:.1f} ms ({res['cpu_s'] * 1e3:.1f} ms CPU)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=4, metavar=("KIND", "N", "ROWS", "REPS"))
    ap.add_argument("--sizes", type=int, nargs="*", help="only these bank sizes")
    ap.add_argument("--no-gumbel-above", type=int, default=None, help="skip the brute force above this N")
    args = ap.parse_args()
    if args.worker:
        kind, n, rows, reps = args.worker
        print(json.dumps(worker(kind, int(n), int(rows), int(reps))))
        return
    compare = [1_000, 5_000] if args.quick else [1_000, 10_000, 50_000]
    ours_only = [100_000] if args.quick else [200_000, 1_000_000]
    print(f"# C-Mixup partner sampling, B = {B}, labels ~ U[0, 1], sigma = {SIGMA}, one CPU thread\n")
    print(
        "| N | official table build | official table memory | official step (B choices) | ours gumbel step | ours sorted step (prebuilt bank) | ours sorted call (incl. sort) | peak memory ours (sorted call / gumbel) | build+step ratio official/ours-sorted |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes or compare + ours_only:
        comp = n in compare
        if comp:
            rows = n if n <= 1_000 else 300  # beyond 1k rows: timed on 300 rows, extrapolated
            tab = run("official-table", n, rows=rows)
            step = run("official-step", n, reps=3 if n <= 10_000 else 1)
        skip_gum = args.no_gumbel_above is not None and n > args.no_gumbel_above
        gum = (
            {"time_s": float("nan"), "cpu_s": float("nan"), "mem_mb": float("nan")}
            if skip_gum
            else run("gumbel", n, reps=3 if n <= 50_000 else 1)
        )
        pre = run("sorted-prebuilt", n, reps=5)
        call = run("sorted-call", n, reps=3)
        if comp:
            tab_s = f"{tab['time_s']:.1f} s" + (
                f" (extrapolated from {tab['rows']} rows)" if tab["extrapolated"] else ""
            )
            mem_s = fmt_mb(tab["mem_mb"]) + (
                " (8 N^2 bytes)" if tab["extrapolated"] else f" (measured {fmt_mb(tab['measured_mem_mb'])})"
            )
            step_s = f"{step['time_s'] * 1e3:.1f} ms"
            ratio = f"{(tab['time_s'] + step['time_s']) / call['time_s']:.0f}x"
        else:
            tab_s = mem_s = step_s = ratio = "not run"
        print(
            f"| {n:,} | {tab_s} | {mem_s} | {step_s} | {ms(gum)} | {ms(pre)} | "
            f"{ms(call)} | {fmt_mb(call['mem_mb'])} / {fmt_mb(gum['mem_mb'])} | {ratio} |",
            flush=True,
        )
    print(
        "\nTimes are wall clock per call with the process's CPU time in brackets (the machine is shared; CPU time is "
        "the less contended figure). Official table times are wall clock."
    )
    print(
        "\nRatios: official table build + one official step, over one plain `sample_partners` call of the sorted sampler "
        "(which sorts the bank itself). Per training step the plugin reuses the sorted bank (prebuilt column)."
    )


if __name__ == "__main__":
    main()
