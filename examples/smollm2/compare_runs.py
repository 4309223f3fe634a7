"""Two runs of the CPU part (quality at N = 1024), cell by cell: the figures of ``RUN1`` (a quality folder;
its N = 1024 cells) against those of ``RUN2``.

    python examples/smollm2/compare_runs.py data/quality DATA/quality
"""
import sys
import numpy as np
import pandas as pd
import pyarrow.dataset as ds

KEY = ["window_index", "N", "coverage", "arm"]
if len(sys.argv) != 3:
    sys.exit(__doc__)
a = ds.dataset(sys.argv[1]).to_table().to_pandas()
a = a[a.N == 1024]
b = ds.dataset(sys.argv[2]).to_table().to_pandas()
m = a.merge(b, on=KEY, suffixes=("_1", "_2"))
print("cells: run 1", len(a), "run 2", len(b), "matched", len(m))
for col in ("nll_sum_dense", "nll_sum_sparse", "delta_ppl_pct"):
    d = (m[col + "_2"] - m[col + "_1"]).abs()
    print(f"{col}: max |run 2 - run 1| = {d.max():.3g}; identical bits in {int((d == 0).sum())} of {len(m)} cells")
g = m.groupby(["coverage", "arm"]).agg(run1=("delta_ppl_pct_1", "mean"), run2=("delta_ppl_pct_2", "mean"))
g["diff"] = g.run2 - g.run1
print(g.to_string(float_format=lambda x: f"{x:.6f}"))
