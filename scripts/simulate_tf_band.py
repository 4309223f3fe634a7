"""Simulate, on the CPU, a teacher-forced selection that needs ONE counting pass (a design for issue 6).

The scheme, per query row t with k = k_eff(t) keys to select among its t visible keys:
1. scores of a strided sample of m visible keys, sorted -> P probe values spread evenly in sample
   rank over the k-th largest's sample rank +- (z binomial sd + 2);
2. one exact counting pass (every visible key against the P probes) -> the "sub-band" between the
   two adjacent probes that bracket the k-th largest score (a miss when the threshold lies
   outside the outermost probes);
3. the attention pass would then take every key above the sub-band, collect the sub-band's keys
   (their count is what a per-row list must hold), and finish the selection on those lists.

Printed per setting: how many keys the sub-band holds (mean, 99th percentile, max) and how often
the band missed; that is what decides the list size and the fallback rate of such a kernel. Scores
come from randn q, k (near-Gaussian, like the random-weight preset) at long N, and from the shipped
trained reference model (post-RoPE q, k of every layer and head on held-out text).

    python scripts/simulate_tf_band.py                 # both sources, default grid of (m, z)
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch


def sub_band_sizes(scores: np.ndarray, k: int, m: int, z: float, probes: int) -> tuple[int, bool]:
    """(keys in the sub-band holding the k-th largest score, missed?) for one row of scores."""
    t = scores.size
    m = min(m, t)
    ys = np.sort(scores[(np.arange(m) * t) // m])
    r = m - 1 - (k * m) // t
    p = k / t
    w = int(z * math.sqrt(m * p * (1 - p))) + 2
    ranks = np.clip(np.round(np.linspace(r - w, r + w, probes)).astype(int), 0, m - 1)
    pv = np.unique(ys[ranks])  # ascending probe values
    cnt = np.array([(scores >= v).sum() for v in pv])  # descending counts
    if cnt[0] < k or cnt[-1] >= k:  # the threshold lies outside the probes: a miss
        return t, True
    j = np.nonzero(cnt >= k)[0].max()  # cnt[j] >= k > cnt[j + 1]
    return int(cnt[j] - cnt[j + 1]), False


def rows_randn(n: int, rows: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, d, generator=g)
    for i in range(rows):
        t = int(n * (i + 1) / rows)  # rows spread over the window
        q = torch.randn(d, generator=g)
        yield t, (k[:t] @ q).numpy()


def rows_trained(max_tokens: int, every: int):
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from dcr.producers.reference_model import heldout_text_path, reference_model_dir

    captured = []

    def capture(module, query, key, value, attention_mask, **kw):
        captured.append((query[0].float(), key[0].float()))  # [Hq, N, D], [Hkv, N, D] (post-RoPE)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("capture_qk", capture)
    d = reference_model_dir()
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="capture_qk")
    tok = AutoTokenizer.from_pretrained(d)
    ids = tok(heldout_text_path().read_text(), return_tensors="pt").input_ids[:, :max_tokens]
    with torch.no_grad():
        model(ids)
    for q, k in captured:  # every layer
        g = q.shape[0] // k.shape[0]
        for h in range(q.shape[0]):
            s = q[h] @ k[h // g].T  # [N, N]
            for t in range(every, s.shape[0] + 1, every):
                yield t, s[t - 1, :t].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coverage", type=float, default=0.15)
    ap.add_argument("--k-min", type=int, default=64)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--n", type=int, default=32768, help="window of the randn rows")
    ap.add_argument("--rows", type=int, default=96, help="randn rows, spread over the window")
    args = ap.parse_args()
    sources = {
        f"randn, N={args.n}": list(rows_randn(args.n, args.rows, 64, 0)),
        "trained reference model, N<=2048 (6 layers x 8 heads, every 128th row)": list(rows_trained(2048, 128)),
    }
    print(f"c={args.coverage} k_min={args.k_min} probes={args.probes}; sub-band = keys a list must hold")
    print("| scores | sample m | band z | rows | sub-band keys mean | p99 | max | share of t, mean | misses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in sources.items():
        for m in (1024, 4096):
            for z in (2.0, 3.0, 4.0):
                sizes, shares, miss = [], [], 0
                for t, s in rows:
                    k = min(t, max(args.k_min, int(args.coverage * t)))
                    if k >= t:
                        continue
                    size, missed = sub_band_sizes(s, k, m, z, args.probes)
                    miss += missed
                    if not missed:
                        sizes.append(size)
                        shares.append(size / t)
                a = np.array(sizes)
                print(f"| {name} | {m} | {z} | {len(sizes) + miss} | {a.mean():.0f} | {np.percentile(a, 99):.0f} | "
                      f"{a.max()} | {100 * np.mean(shares):.2f} % | {miss} |", flush=True)


if __name__ == "__main__":
    main()
