"""The speed-up plots of docs/performance.md, drawn from the JSON run logs in lab/runs/.

    python lab/plots/performance_plots.py            # writes docs/performance-*.png
    python lab/plots/performance_plots.py --tables   # also prints the page's tables (Markdown)

* ``docs/performance-decode.png``: the decode op's speed-up over the best SDPA backend
  (best SDPA time / our time; above 1 = faster) against the context N, one line per batch B, at
  c = 0.15, from one ``dcr bench decode`` grid (``DECODE_RUN``).
* ``docs/performance-teacher-forced.png``: the teacher-forced Top-K forward's time relative to
  the dense forward (and one attention call's relative to SDPA) against N, both rules, from the
  ``dcr bench quality`` runs in ``QUALITY_RUNS``.

Each figure names its card, software and command (read from the logs).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "lab" / "runs" / "gpu_runs"
# The most recent c = 0.15 grid of the current decode op, both rules.
DECODE_RUN = RUNS / "2026-12-06-s15-h100" / "call5" / "bench_decode"
DECODE_COMMAND = "python3 -m dcr.producers.bench_decode --n 32768 --n 131072 --b 1 --b 4 --b 8 --c 0.15 --rounds 10 --no-sweep"
# The current teacher-forced kernel at 8K, 32K and 128K, per rule (one run each).
QUALITY_RUNS = {
    "query_head": RUNS / "2026-12-06-s18" / "call2" / "bq_query_head",
    "kv_group": RUNS / "2026-12-06-s18" / "call2" / "bq_kv_group",
}
QUALITY_COMMAND = ("python3 -m dcr.producers.bench_quality --n 8192 --n 32768 --n 131072 --repeats 2 --no-sweep "
                   "[--selection kv_group]")


def environment(log: Path) -> str:
    """'NVIDIA H200, torch …, triton …' from the first line of a benchmark log ('GPU: … torch … triton …')."""
    first = log.read_text().splitlines()[0]
    m = re.match(r"GPU: (?P<gpu>.+?)\s+torch (?P<torch>\S+)\s+triton (?P<triton>\S+)", first)
    if m is None:
        raise ValueError(f"{log}: first line {first!r} does not name the GPU, torch and triton")
    return f"{m['gpu']}, torch {m['torch']}, triton {m['triton']}"


def _kilo(n: int) -> str:
    return f"{n // 1024}K"


def decode_rows() -> list[dict]:
    """The c = 0.15 rows of the decode grid; a shape timed twice in the run keeps its first row."""
    first: dict[tuple, dict] = {}
    for r in json.loads(DECODE_RUN.with_suffix(".json").read_text())["rows"]:
        if float(r["c"]) == 0.15:
            first.setdefault((r["selection"], r["N"], r["B"]), r)
    return list(first.values())


def decode_plot(out: Path) -> None:
    rows = decode_rows()
    if not rows:
        raise ValueError(f"{DECODE_RUN}.json: no row at c = 0.15")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    batches = sorted({r["B"] for r in rows})
    colors = dict(zip(batches, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
    for sel, style in (("kv_group", "o-"), ("query_head", "s--")):
        for b in batches:
            pts = sorted((r["N"], r["speedup_vs_best_sdpa"]) for r in rows if r["B"] == b and r["selection"] == sel)
            ax.plot([n for n, _ in pts], [s for _, s in pts], style, color=colors[b], label=f"{sel}, B = {b}")
            for n, s in pts:
                ax.annotate(f"{s:.2f}", (n, s), textcoords="offset points", xytext=(6, 3 if sel == "kv_group" else -9),
                            fontsize=7)
    ax.axhline(1.3, color="tab:red", ls="--", lw=1, label="kv_group goal at N ≥ 32K, B ≥ 4: 1.3×")
    ax.axhline(0.9, color="tab:red", ls=":", lw=1, label="query_head goal at 32K, B ≥ 4: 0.9×")
    ns = sorted({r["N"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [_kilo(n) for n in ns])
    ax.set_ylim(0, 1.6)
    ax.set_xlabel("context N (keys in the cache)")
    ax.set_ylabel("speed-up: best SDPA time / Top-K time")
    ax.set_title("Decode op, Llama-3.2-1B shapes, c = 0.15 (best SDPA = cuDNN)", fontsize=10)
    fig.text(0.01, 0.01, f"{environment(DECODE_RUN.with_suffix('.log'))}; {DECODE_RUN.parent.name}\n{DECODE_COMMAND}",
             fontsize=6, color="dimgrey")
    ax.legend(fontsize=6, loc="upper center", ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def quality_results(selection: str) -> list[dict]:
    """The rule's ``dcr bench quality`` results, one per N, ascending."""
    return sorted(json.loads(QUALITY_RUNS[selection].with_suffix(".json").read_text())["results"], key=lambda r: r["n"])


def teacher_forced_plot(out: Path) -> None:
    envs = {environment(run.with_suffix(".log")) for run in QUALITY_RUNS.values()}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    top = 0.0
    for selection, color in (("query_head", "tab:blue"), ("kv_group", "tab:orange")):
        res = quality_results(selection)
        ns = [r["n"] for r in res]
        fwd = [r["ratio"] for r in res]
        call = [r["attn_call_topk_ms"] / r["attn_call_sdpa_ms"] for r in res]
        top = max(top, *call)
        ax.plot(ns, fwd, "o-", color=color, label=f"{selection}: whole forward, sparse / dense (SDPA)")
        ax.plot(ns, call, "s--", color=color, alpha=0.6, label=f"{selection}: one attention call, Top-K / SDPA")
        for n, f in zip(ns, fwd):
            ax.annotate(f"{f:.2f}×", (n, f), textcoords="offset points", xytext=(6, -10), fontsize=7, color=color)
    ax.axhline(3.0, color="tab:red", ls="--", lw=1, label="goal for the forward at 32K: ≤ 3× (issue 21)")
    ax.axhline(1.0, color="grey", ls=":", lw=1, label="parity")
    ax.set_xscale("log", base=2)
    ns = [r["n"] for r in quality_results("query_head")]
    ax.set_xticks(ns, [_kilo(n) for n in ns])
    ax.set_ylim(0, top * 1.45)
    ax.set_xlabel("window length N (tokens)")
    ax.set_ylabel("time relative to dense (lower is better)")
    ax.set_title("Teacher-forced forward, Llama-3.2-1B architecture (random weights), c = 0.15", fontsize=10)
    fig.text(0.01, 0.01, f"{'; '.join(sorted(envs))}\n{QUALITY_COMMAND}", fontsize=6, color="dimgrey")
    ax.legend(fontsize=6.5, loc="upper center", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def decode_table() -> list[str]:
    """Markdown rows of the decode grid: µs, stages from prefixes of the op's launches (they sum to the op)."""
    rows = decode_rows()
    out = ["| rule | N | B | ours µs | sample | score | resolve | attend | combine | best SDPA µs | speed-up "
           "| byte floor µs (share) | select share | setting |", "| --- " * 14 + "|"]
    for r in sorted(rows, key=lambda r: (r["selection"], r["N"], r["B"])):
        s = {k: v * 1000 for k, v in r["stage_ms"].items()}
        best = r["times_ms"][r["best_sdpa"]] * 1000
        out.append(f"| {r['selection']} | {_kilo(r['N'])} | {r['B']} | {r['times_ms']['ours'] * 1000:.1f} "
                   + " ".join(f"| {s[k]:.1f}" for k in ("sample", "score", "resolve", "attend", "combine"))
                   + f" | {best:.1f} | {r['speedup_vs_best_sdpa']:.2f}× "
                   f"| {r['floor_ms'] * 1000:.1f} ({r['floor_fraction']:.0%}) | {r['select_share']:.0%} | {r['config']} |")
    return out


def teacher_forced_table() -> list[str]:
    """Markdown rows of the teacher-forced runs: one attention call (its two kernels) and the whole forward."""
    out = ["| rule | N | one call: Top-K / SDPA ms | counting kernel ms | attention kernel ms | full passes mean / max "
           "| forward dense / sparse s | sparse / dense | both arms s | peak memory sparse / dense |",
           "| --- " * 10 + "|"]
    for selection in QUALITY_RUNS:
        for r in quality_results(selection):
            k = r["attn_call_kernel_ms"]
            out.append(f"| `{selection}` | {_kilo(r['n'])} | {r['attn_call_topk_ms']:,.2f} / {r['attn_call_sdpa_ms']:,.2f} "
                       f"| {k['_tf_count_kernel']:,.2f} | {k['_tf_attend_kernel']:,.2f} "
                       f"| {r['passes_mean']:.2f} / {r['passes_max']} "
                       f"| {r['dense_s']:.3f} / {r['sparse_s']:.3f} | **{r['ratio']:.2f}×** | {r['total_s']:.3f} "
                       f"| {r['peak_sparse_gib'] / r['peak_dense_gib']:.2f}× ({r['peak_dense_gib']:.2f} GiB) |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default: docs/)")
    ap.add_argument("--tables", action="store_true", help="print the page's tables as Markdown")
    args = ap.parse_args()
    decode_plot(args.out / "performance-decode.png")
    teacher_forced_plot(args.out / "performance-teacher-forced.png")
    print(f"wrote {args.out / 'performance-decode.png'} and {args.out / 'performance-teacher-forced.png'}")
    if args.tables:
        print("\n".join(["", f"decode ({DECODE_RUN.name}):"] + decode_table()
                        + ["", "teacher-forced:"] + teacher_forced_table()))


if __name__ == "__main__":
    main()
