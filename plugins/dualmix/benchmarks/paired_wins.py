"""Paired AA/AF differences vs ER (s.e., win counts) and per-task diagnostics from a finished bench.

Usage: python plugins/dualmix/benchmarks/paired_wins.py bench-out/dualmix-split-digits

Reads only ``OUT/cells/<arm>/seed<k>.json`` (written by ``mixhub bench``); trains nothing.
"""

from __future__ import annotations

import glob
import json
import math
import statistics as st
import sys


def load(out: str) -> tuple[list[str], dict[str, dict[int, dict[str, float]]]]:
    cells: dict[str, dict[int, dict[str, float]]] = {}
    order: list[str] = []
    for c in json.load(open(f"{out}/results.json"))["cells"]:
        if c["arm"] not in order:
            order.append(c["arm"])
    for f in glob.glob(f"{out}/cells/*/seed*.json"):
        c = json.load(open(f))
        cells.setdefault(c["arm"], {})[c["seed"]] = c["metrics"]
    return order, cells


def mean_sd(v: list[float]) -> str:
    return f"{st.mean(v):.1f} ± {st.stdev(v):.1f}" if len(v) > 1 else "n/a"


def paired(m: dict[int, dict[str, float]], base: dict[int, dict[str, float]], key: str, higher: bool) -> str:
    d = [
        (m[s][key] - base[s][key]) * 100 for s in sorted(set(m) & set(base)) if key in m[s] and key in base[s]
    ]
    if len(d) < 2:
        return "—"
    se = st.stdev(d) / math.sqrt(len(d))
    wins = sum(1 for x in d if (x > 0 if higher else x < 0))
    return f"{st.mean(d):+.1f} ({se:.1f}, {wins}/{len(d)})"


def task_avg(m: dict[int, dict[str, float]], key: str, t: int) -> str:
    v = [x[f"tasks.{key}_t{t}"] for x in m.values() if f"tasks.{key}_t{t}" in x]
    return f"{100 * st.mean(v):.0f}" if v else "–"


def main(out: str) -> None:
    order, cells = load(out)
    base = cells["ER"]
    print(
        "| arm | AA (%) | AF (%) | ΔAA vs ER (s.e., wins) | ΔAF vs ER (s.e., wins: lower) | gate open | r pair / group |"
    )
    print("|---|---|---|---|---|---|---|")
    for a in order:
        m = cells[a]
        aa = [x["test.avg_acc"] * 100 for x in m.values()]
        af = [x["test.avg_forgetting"] * 100 for x in m.values() if "test.avg_forgetting" in x]
        g = [x["test.dualmix/gate_open_frac"] for x in m.values() if "test.dualmix/gate_open_frac" in x]
        rp = [
            x["test.dualmix/norm_ratio_pair_mean"]
            for x in m.values()
            if "test.dualmix/norm_ratio_pair_mean" in x
        ]
        rg = [x["test.dualmix/norm_ratio_group"] for x in m.values() if "test.dualmix/norm_ratio_group" in x]
        daa = "—" if a == "ER" else paired(m, base, "test.avg_acc", True)
        daf = "—" if a == "ER" else paired(m, base, "test.avg_forgetting", False)
        gs = f"{100 * st.mean(g):.1f}%" if g else "—"
        rs = (f"{st.mean(rp):.2f}" if rp else "—") + " / " + (f"{st.mean(rg):.2f}" if rg else "—")
        print(f"| {a} | {mean_sd(aa)} | {mean_sd(af) if af else 'n/a'} | {daa} | {daf} | {gs} | {rs} |")
    print()
    print(
        "Per task (mean over seeds; er in %): er(n,o) / er(o,n), and for DualMix arms gate-open % and pair ratio r."
    )
    print()
    tasks = range(2, 6)
    print("| arm | " + " | ".join(f"task {t}" for t in tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for a in order:
        m = cells[a]
        row = []
        for t in tasks:
            cell = f"{task_avg(m, 'er_no', t)} / {task_avg(m, 'er_on', t)}"
            g = [
                x[f"tasks.dualmix/gate_open_frac_t{t}"]
                for x in m.values()
                if f"tasks.dualmix/gate_open_frac_t{t}" in x
            ]
            r = [
                x[f"tasks.dualmix/norm_ratio_pair_mean_t{t}"]
                for x in m.values()
                if f"tasks.dualmix/norm_ratio_pair_mean_t{t}" in x
            ]
            if g:
                cell += f"; gate {100 * st.mean(g):.0f}%, r {st.mean(r):.2f}"
            row.append(cell)
        print(f"| {a} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
