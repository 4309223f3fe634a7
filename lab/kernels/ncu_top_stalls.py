"""The SASS instructions of one kernel with the most warp-stall samples, from Nsight Compute's source page:

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass --kernel-name regex:_resolve > resolve.csv
    python3 lab/kernels/ncu_top_stalls.py resolve.csv [--top 25]

Prints the column names it found, then the top instructions (address, sampled stalls, share of all
samples, the instruction) and the stall columns of each that hold samples.
"""
import argparse
import csv
import io

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("csv", help="ncu --page source --csv output")
ap.add_argument("--top", type=int, default=25, help="instructions to show")
args = ap.parse_args()
text = open(args.csv, errors="replace").read()
start = text.find('"Address"')  # ncu prints a kernel banner before the table
rows = list(csv.DictReader(io.StringIO(text[start if start >= 0 else 0:])))
if not rows:
    raise SystemExit(f"no table in {args.csv}:\n{text[:2000]}")
cols = list(rows[0])
print("columns:", cols)
total_col = next((c for c in cols if "Sampling" in c and "All" in c), None) or next(c for c in cols if "Sampling" in c)
stall_cols = [c for c in cols if c.startswith("stall_") or "Stall" in c and c != total_col]


def num(x: str) -> float:
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


total = sum(num(r[total_col]) for r in rows) or 1.0
print(f"{total_col}: {total:.0f} samples over {len(rows)} instructions")
for r in sorted(rows, key=lambda r: -num(r[total_col]))[:args.top]:
    reasons = ", ".join(f"{c}={num(r[c]):.0f}" for c in stall_cols if num(r[c]) > 0)
    print(f"{r.get('Address', '?'):>8} {num(r[total_col]):7.0f} {100 * num(r[total_col]) / total:5.1f}%  "
          f"{r.get('Source', '')[:60]:60s} {reasons[:200]}")
