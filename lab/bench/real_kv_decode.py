"""The Top-K decode op (producers/kernels/decode.py) on REAL KV caches of SmolLM2-135M, against random ones.

So far the decode op was timed on random Gaussian caches only. Real attention scores are heavy-tailed
and the heads of a group agree more, which may change how often the band of the strided sample holds
the k_eff-th largest score (``DecodeWorkspace.path``), the counting-search passes, the band's candidate
counts and (``query_head``) the union of the group's sets. Four subcommands, run from the repo root:

``capture`` (CPU, a few minutes)
    Loads the packaged model ``smollm2-135m`` with the repo's loader (``producers.models.load_model``:
    float32 weights de-quantised from the GGUF Q4_1 file, float32 forward on the CPU, as the smollm2
    study ran it), takes W windows of the packaged held-out Shakespeare (``load_text`` /
    ``tokenize_cached`` / ``make_windows``: window i = the first N tokens of the study's disjoint
    window i of N + 1 tokens), runs all N tokens as one prefill (keeping the last token's logits),
    drops the last token from the cache and runs token N-1 again as one decode step against the cache
    of tokens 0..N-2. For each chosen layer it keeps what that layer's attention function saw at the
    decode step: the post-RoPE K and V caches [W, Hkv, N, D] (the N-1 prefilled keys plus the decode
    token's own, exactly what a decode op reads) and the decode token's post-RoPE, pre-scale query
    [W, Hq, D], and the layer's softmax scale. Saved in bf16 (plus the fp32 query) to one ``.pt`` with
    metadata; its sha256 is printed. Verification (always): dense fp64 softmax(q K^T scale) V from the
    capture must equal the model's own attention output of the decode token (the input of o_proj,
    hooked) -- from the fp32 values (~1e-6) and from the saved bf16 values (bf16 rounding, < 1e-2);
    and the decode step's logits must equal the prefill-of-N logits of the last token.

``check`` (CPU, Triton interpreter; ~1.5 min per (layer, c) at W = 2, N = 8192 on 2 cores)
    Runs ``topk_decode(..., return_indices=True)`` on the captured caches (bf16) with the op's default
    workspace settings (sample 1,024, capacity 4,096: the GPU's), both rules and c in {0.05, 0.15, 0.30}
    (k_min 64, dispatch threshold 64: the registered plans' values), and compares the sets with
    ``decode_reference`` exactly (entries that differ: must be 0; also against the stable top-k of the
    op's own fp32 ranking scores, which separates a select error from a last-bit score difference),
    the output with the fp64 reference. Prints per (layer, rule, c): ranking-row paths (band / miss /
    overflow / dense), passes mean / max, band candidates mean / max vs capacity, and for query_head
    the fraction |union of the group's sets| / N vs the per-head k_eff / N. The same on random Gaussian
    caches of the same shape (q, K, V ~ N(0, 1), bf16). ``--n`` cuts the caches to their first n keys
    (the same query; lengths = n); ``--ws sample=64 capacity=256`` narrows the band so that real rows
    reach the fallbacks (whole-row search after a miss or an overflow), whose sets are then checked too.
    Each case also re-derives the rows' paths with :func:`band_emulate` (the band logic in torch) from the
    op's own scores: the paths must agree (a check of the emulation ``band`` relies on).

``band`` (CPU, ~2 min per window)
    The band's hit / miss / overflow over EVERY layer and many decode positions, by emulation
    (:func:`band_emulate`, no kernel): the model's prefill of a window gives the query of every token t
    against keys 0..t (what a decode step at t sees); ``--positions`` values of t spread over the lengths
    where the band is used (L > capacity). Also z, where the true k_eff-th largest score fell in the
    sorted sample, in binomial sd from the sample's estimate (the band is +-4 sd + 3 ranks): how close
    real rows come to a miss. Real vs random rows of the same shapes.

``tf-passes`` (CPU)
    The teacher-forced counting kernel's passes on real attention rows: the model's prefill gives
    every row's post-RoPE query and keys; ``lab/kernels/simulate_tf_passes.py``'s replay of the
    kernel's search (bit-exact against the interpreter) runs on row blocks of 64 spread over the
    window, every ranking head of ``--layers``, for the kernel and the search before it; random
    q, K of the same shape as the contrast.

``time`` (GPU; run by lab/gpu/real_kv.sh)
    For each captured layer, batch = the W windows (``--repeat R`` tiles them to B = R*W), both rules,
    c = 0.15 (``--c``): checks the op's sets against ``decode_reference`` (exactly; plus the output),
    then times ``topk_decode`` against torch SDPA (cuDNN, flash, efficient; the best one is the
    baseline) in CUDA graphs, replays interleaved, median over ``--rounds`` rounds, one warm-up replay
    excluded -- producers/bench_decode.py's graph_of / time_graphs.
    The same shapes on random caches in the same run. Prints a table and the paths / passes / band
    statistics as ``check`` does; writes all figures to ``--json``. ``--dry-run`` checks the sets on
    whatever device is there (the interpreter on the CPU, at a cut ``--n``) and skips the timing.

Examples::

    python lab/bench/real_kv_decode.py capture                       # -> .carry/real_kv/smollm2-135m-realkv.pt
    python lab/bench/real_kv_decode.py check --json /tmp/check.json  # CPU, interpreter
    python lab/bench/real_kv_decode.py check --n 2048 --ws sample=64 capacity=256   # the fallbacks on real rows
    python lab/bench/real_kv_decode.py band --json /tmp/band.json    # all 30 layers, emulated
    python lab/bench/real_kv_decode.py time --dry-run --n 1024 --layers 29
    bash lab/gpu/real_kv.sh                                          # on the GPU machine (time)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from dcr.prereg.provenance import sha256_file

DEFAULT_FILE = Path(".carry/real_kv/smollm2-135m-realkv.pt")
MODEL = "smollm2-135m"
COVERAGES = ("0.05", "0.15", "0.30")
K_MIN, DISPATCH = 64, 64  # the registered plans' attention block (prereg/registrations/*.yaml, smollm2 study)
SELECTIONS = ("query_head", "kv_group")


def _op():
    """The decode op's module, and the sha256 of its source (results name the version that ran)."""
    from dcr.producers.kernels import decode

    return decode, sha256_file(decode.__file__)


# ============================================================================ capture
CAPTURE_ATTN = "dcr_lab_realkv_capture"


def _register_capture(store: dict) -> None:
    """An attention function that records what the chosen layers' attention sees at a decode step
    (query length 1) and then runs transformers' own SDPA attention (the model's dense path)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def capture_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                     **kwargs)
        layer = getattr(module, "layer_idx", None)
        if store.get("on_prefill") is not None and query.shape[2] == key.shape[2] > 1:
            store["on_prefill"](layer, query.detach(), key.detach())
        if store.get("active") and query.shape[2] == 1 and layer in store["layers"]:
            store["seen"][layer] = dict(q=query[:, :, 0].detach().clone(), k=key.detach().clone(),
                                        v=value.detach().clone(), scale=float(scaling), out=out[0].detach().clone())
        return out

    AttentionInterface.register(CAPTURE_ATTN, capture_forward)


def _dense_f64(q, k, v, scale):
    """Dense softmax(q K^T scale) V in float64 over full caches: decode_reference with c = 1 (every key
    selected). q [B, Hq, D]; k, v [B, Hkv, T, D] -> [B, Hq, D]."""
    import torch

    from dcr.prereg.rule import TopKRule
    from dcr.producers.kernels.reference import decode_reference

    lengths = torch.full((q.shape[0],), k.shape[2], device=q.device)
    return decode_reference(q.double(), k.double(), v.double(), lengths, TopKRule("1", 1, 0), scale=scale,
                            compute_dtype=torch.float64)


def _drop_last(cache, n: int) -> None:
    """Drop the last token of a transformers cache of n tokens (crop's argument changed meaning across
    versions: a negative count to remove in 5.x, the length to keep before)."""
    try:
        cache.crop(-1)
    except ValueError:
        cache.crop(n - 1)
    if cache.get_seq_length() != n - 1:
        raise RuntimeError(f"cache holds {cache.get_seq_length()} tokens after the crop, expected {n - 1}")


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def cmd_capture(a) -> None:
    import torch

    from dcr.producers.corpus import load_text, make_windows, tokenize_cached, window_tokens
    from dcr.producers.models import load_model
    from dcr.producers.reference_model import heldout_text_path

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    layers = sorted(set(a.layers))
    N, W = a.n, a.windows
    store = {"active": False, "layers": set(layers), "seen": {}}
    _register_capture(store)
    t0 = time.time()
    lm = load_model(MODEL, dtype=a.dtype, device="cpu", attn_implementation=CAPTURE_ATTN)
    model, cfg = lm.model, lm.model.config
    npos = cfg.max_position_embeddings
    if N > npos:
        raise SystemExit(f"--n {N}: the decode token sits at position N-1, which must be < {npos} positions")
    if any(not 0 <= li < cfg.num_hidden_layers for li in layers):
        raise SystemExit(f"--layers must lie in 0..{cfg.num_hidden_layers - 1}")
    Hq, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    est = len(layers) * 2 * W * Hkv * N * D * 2 / 2**20
    print(f"model {lm.info.model} ({lm.info.dtype}, weights sha256 {lm.info.weights_sha256[:16]}…), "
          f"{cfg.num_hidden_layers} layers, Hq {Hq}, Hkv {Hkv}, D {D}; loaded in {time.time() - t0:.1f} s; "
          f"capture of {len(layers)} layers ~{est:.1f} MiB", flush=True)
    if est > a.max_mib:
        raise SystemExit(f"the capture would be ~{est:.0f} MiB > --max-mib {a.max_mib}: fewer layers, windows or n")

    src = str(heldout_text_path())
    text, tinfo = load_text(src)
    cache = Path(os.environ.get("DCR_CACHE_DIR", Path.home() / ".cache" / "dcr-prereg")) / "tokens"
    tokens, kinfo = tokenize_cached(text, lm.tokenizer, cache)
    # the smollm2 study's placement: disjoint windows of N + 1 tokens from a.start; we take the first N of each
    wins = make_windows(tokens.size, N, placement="disjoint", count=W, offset=a.start)

    o_in = {}  # the model's own attention output of the decode token: the input of o_proj
    hooks = [model.model.layers[li].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, args, li=li: o_in.__setitem__(li, args[0].detach().clone()) if store["active"] else None)
        for li in layers]
    import inspect

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    K = {li: [] for li in layers}
    V = {li: [] for li in layers}
    Q = {li: [] for li in layers}
    scale = {}
    verify = {li: {} for li in layers}
    logit_err = []
    with torch.inference_mode():
        for w in wins:
            ids = torch.from_numpy(window_tokens(tokens, w)[:N]).view(1, N)
            t1 = time.time()
            # prefill of all N tokens: the last token's logits (teacher-forced) for the decode check
            full = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache_kv = full.cache if getattr(full, "cache", None) is not None else full.past_key_values
            _drop_last(cache_kv, N)  # the cache of tokens 0..N-2
            store["active"], store["seen"] = True, {}
            o_in.clear()
            step = model(input_ids=ids[:, N - 1:], **{cache_kw: cache_kv}, use_cache=True,
                         position_ids=torch.tensor([[N - 1]]), logits_to_keep=1)
            store["active"] = False
            le = (step.logits[0, -1].double() - full.logits[0, -1].double()).abs().max().item()
            logit_err.append(le)
            for li in layers:
                s = store["seen"][li]
                q, k, v = s["q"][0], s["k"][0], s["v"][0]  # [Hq, D], [Hkv, N, D]
                if k.shape[1] != N:
                    raise RuntimeError(f"layer {li}: the decode step saw {k.shape[1]} keys, expected {N}")
                own = o_in[li].view(Hq, D)  # [1, 1, Hq*D] -> [Hq, D]
                d32 = _dense_f64(q[None], k[None], v[None], s["scale"])[0]
                d16 = _dense_f64(q[None].bfloat16(), k[None].bfloat16(), v[None].bfloat16(), s["scale"])[0]
                verify[li].setdefault("fp32_rel", []).append(_rel(d32, own))
                verify[li].setdefault("fp32_maxabs", []).append((d32 - own.double()).abs().max().item())
                verify[li].setdefault("bf16_rel", []).append(_rel(d16, own))
                verify[li].setdefault("bf16_maxabs", []).append((d16 - own.double()).abs().max().item())
                verify[li].setdefault("sdpa_fn_vs_o_proj_input_maxabs", []).append(
                    (s["out"][0, 0].double() - own.double()).abs().max().item())
                K[li].append(k.to(torch.bfloat16))
                V[li].append(v.to(torch.bfloat16))
                Q[li].append(q)
                scale[li] = s["scale"]
            del full, step, cache_kv
            print(f"window {w.index} (tokens {w.start}..{w.start + N - 1}): prefill + decode {time.time() - t1:.1f} s; "
                  f"decode-vs-prefill logits max |diff| {le:.2e}", flush=True)
    for h in hooks:
        h.remove()

    print("verification: dense fp64 softmax(q K^T scale) V of the capture vs the model's attention output "
          "(o_proj input) of the decode token")
    worst = {"fp32_rel": 0.0, "bf16_rel": 0.0}
    for li in layers:
        r = {k2: max(v2) for k2, v2 in verify[li].items()}
        verify[li] = r
        worst = {k2: max(worst[k2], r[k2]) for k2 in worst}
        print(f"  layer {li:2d}: fp32 capture rel {r['fp32_rel']:.2e} (max|d| {r['fp32_maxabs']:.2e}); "
              f"bf16 capture rel {r['bf16_rel']:.2e} (max|d| {r['bf16_maxabs']:.2e}); "
              f"scale {scale[li]:.6f}")
    ok = worst["fp32_rel"] < 1e-5 and worst["bf16_rel"] < 1e-2 and max(logit_err) < 1e-2
    print(f"  worst: fp32 {worst['fp32_rel']:.2e} (tol 1e-5), bf16 {worst['bf16_rel']:.2e} (tol 1e-2); "
          f"decode-vs-prefill logits max |diff| {max(logit_err):.2e} (tol 1e-2) -> {'OK' if ok else 'FAILED'}")

    meta = {
        "model": lm.info.as_dict(), "model_id": lm.info.model, "weights_sha256": lm.info.weights_sha256,
        "gguf_sha256": lm.info.revision, "model_dtype": lm.info.dtype, "forward": f"torch {torch.__version__} CPU, "
        f"{lm.info.dtype} weights and activations, transformers SDPA attention",
        "corpus": {"source": "shipped held-out Shakespeare (producers/reference_model.heldout_text_path)",
                   "text_sha256": tinfo["text_sha256"], "tokens_sha256": kinfo["tokens_sha256"],
                   "tokenizer": kinfo["tokenizer"], "n_tokens": kinfo["n_tokens"]},
        "windows": [{"index": w.index, "start": w.start, "tokens": [w.start, w.start + N]} for w in wins],
        "placement": f"make_windows(n={N}, disjoint, count={W}, offset={a.start}); the first N tokens of each",
        "N": N, "decode_position": N - 1, "layers": layers, "Hq": Hq, "Hkv": Hkv, "D": D,
        "scale": {str(li): scale[li] for li in layers},
        "cache_dtype": "bfloat16 (q also float32 as q_fp32)",
        "layout": "k, v [W, Hkv, N, D]: post-RoPE keys / values of tokens 0..N-1 (N-1 prefilled + the decode "
                  "token's own); q [W, Hq, D]: the decode token's post-RoPE query, before the scale",
        "verification": {"ok": ok, "per_layer": {str(li): verify[li] for li in layers}, "worst": worst,
                         "decode_vs_prefill_logits_maxabs": max(logit_err)},
        "created_unix": time.time(),
    }
    data = {"meta": meta,
            "layers": {li: {"k": torch.stack(K[li]).contiguous(), "v": torch.stack(V[li]).contiguous(),
                            "q": torch.stack(Q[li]).to(torch.bfloat16).contiguous(),
                            "q_fp32": torch.stack(Q[li]).float().contiguous(), "scale": scale[li]} for li in layers}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) sha256 {sha256_file(out)}  [{time.time() - t0:.0f} s]")
    if not ok:
        raise SystemExit("capture verification FAILED (the file records it: meta['verification']['ok'] = False)")


# ============================================================================ shared: load, run, stats
def _load(path: Path, layers, windows=None):
    import torch

    if not Path(path).is_file():
        raise SystemExit(f"{path}: no capture file (run `capture` first, or carry it to this machine)")
    data = torch.load(path, map_location="cpu", weights_only=False)
    have = sorted(data["layers"])
    use = have if not layers else [li for li in layers if li in data["layers"]]
    missing = [li for li in (layers or []) if li not in data["layers"]]
    if missing:
        raise SystemExit(f"layers {missing} are not in {path} (it has {have})")
    if windows:
        for li in use:
            for key in ("k", "v", "q", "q_fp32"):
                data["layers"][li][key] = data["layers"][li][key][list(windows)]
    return data, use


def _random_like(q, k, seed: int):
    """q, K, V ~ N(0, 1) in bf16 of the shapes of (q, k), drawn on the CPU (device-independent values)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    B, Hq, D = q.shape
    _, Hkv, T, _ = k.shape
    rq = torch.randn(B, Hq, D, generator=gen).to(torch.bfloat16)
    rk = torch.randn(B, Hkv, T, D, generator=gen).to(torch.bfloat16)
    rv = torch.randn(B, Hkv, T, D, generator=gen).to(torch.bfloat16)
    return rq, rk, rv


def ranking_rows(q, k, selection: str):
    """fp32 ranking scores [B * rows, T] as the op ranks them: q . k per query head (query_head) or the
    group's mean (kv_group), from the bf16 values, -0.0 -> +0.0 (summation order aside: torch, not the kernel)."""
    import torch

    B, Hq, D = q.shape
    _, Hkv, T, _ = k.shape
    G = Hq // Hkv
    s = q.float().view(B, Hkv, G, 1, D) @ k.float().unsqueeze(2).transpose(-1, -2)  # [B, Hkv, G, 1, T]
    s = s.view(B, Hkv, G, T)
    s = s.sum(2) / G if selection == "kv_group" else s.reshape(B, Hq, T)
    return torch.where(s == 0, torch.zeros_like(s), s).reshape(-1, T)


def band_emulate(R, L: int, k: int, M: int = 1024, cap: int = 4096, sd: float = 4.0, margin: int = 2) -> dict:
    """The sample and resolve kernels' band logic in torch, for ranking rows R [rows, >= L] (fp32) of length L
    and k_eff = k: the strided sample of M keys (positions j L // M), its sorted scores ys, the k-th
    largest's sample rank r, the half-width w (+-sd binomial sd + 1 + margin, capped at an expected 3/4 cap),
    the band [ys[r - w], next float above ys[r + w]); keys above it and in it; path BAND if 1 <= need <= n_band
    <= cap, else OVERFLOW (n_band > cap) or MISS. Also z: where the true k-th largest fell in the sample,
    in binomial sd from r (|z| near sd + (1 + margin) / sd_ranks means near a miss)."""
    import torch

    R = R[:, :L].float()
    rows = R.shape[0]
    if k >= L:
        return {"path": torch.full((rows,), 3), "n_band": torch.zeros(rows), "n_above": torch.zeros(rows),
                "z": torch.zeros(rows)}
    if L <= cap:
        return {"path": torch.zeros(rows, dtype=torch.long), "n_band": torch.full((rows,), float(L)),
                "n_above": torch.zeros(rows), "z": torch.zeros(rows)}
    pos = (torch.arange(M, dtype=torch.int64) * L) // M
    ys = torch.sort(R[:, pos], dim=-1).values
    p = torch.tensor(k, dtype=torch.float32) / torch.tensor(L, dtype=torch.float32)
    sdr = torch.sqrt(M * p * (1.0 - p))
    w = int(sdr * sd) + 1 + margin
    w = min(w, (3 * cap * M) // (8 * L))
    r = M - 1 - (k * M) // L
    ilo, ihi = r - w, r + w
    inf = torch.tensor(float("inf"))
    flo = ys[:, ilo] if ilo >= 0 else torch.full((rows,), -inf)
    fhi = torch.nextafter(ys[:, ihi], inf) if ihi <= M - 1 else torch.full((rows,), inf)
    n_above = (R >= fhi[:, None]).sum(-1)
    n_band = ((R >= flo[:, None]) & (R < fhi[:, None])).sum(-1)
    need = k - n_above
    path = torch.where((need >= 1) & (need <= n_band) & (n_band <= cap), 0, torch.where(n_band > cap, 2, 1))
    kth = torch.sort(R, dim=-1, descending=True).values[:, k - 1]  # the k-th largest score
    srank = (ys <= kth[:, None]).sum(-1) - 1  # its place among the sorted sample
    z = (srank - r).float() / float(sdr)
    return {"path": path, "n_band": n_band.float(), "n_above": n_above.float(), "z": z}


def check_case(q, k, v, lengths, rule, scale, ws, *, self_check=True) -> dict:
    """One topk_decode call with return_indices; its sets against decode_reference (exact) and the op's
    own ranking rows; its output against the fp64 reference; the workspace's path / passes / band figures."""
    import torch

    from dcr.producers.kernels.reference import _select_mask, decode_reference, decode_set_differences

    op, _ = _op()
    PATH_BAND, PATH_MISS, PATH_OVERFLOW, PATH_DENSE = op.PATH_BAND, op.PATH_MISS, op.PATH_OVERFLOW, op.PATH_DENSE
    topk_decode = op.topk_decode

    B, Hq, D = q.shape
    _, Hkv, T, _ = k.shape
    G = Hq // Hkv
    t0 = time.time()
    out, mask = topk_decode(q, k, v, lengths, rule, scale=scale, return_indices=True, workspace=ws)
    if q.device.type == "cuda":
        torch.cuda.synchronize()
    op_s = time.time() - t0
    _, rmask = decode_reference(q, k, v, lengths, rule, scale=scale, return_indices=True)
    ref = decode_reference(q.double(), k.double(), v.double(), lengths, rule, scale=scale, compute_dtype=torch.float64)
    mask, rmask = mask.cpu(), rmask.cpu()
    diff = mask != rmask
    n_diff = int(diff.sum())
    res = {"set_diff_entries": n_diff, "set_entries": int(rmask.sum()),
           "rel_err_vs_fp64": _rel(out.float(), ref), "op_seconds": op_s}
    if n_diff:  # how far from the reference's boundary are the differing keys (last-bit rounding or a real miss)?
        res["set_diff_max_gap_rel"] = decode_set_differences(mask, rmask, q, k, rule.selection)[1]
        res["set_diff_first"] = diff.nonzero()[:5].tolist()
    lengths_c = lengths.cpu()
    rows_per_b = Hq if rule.selection == "query_head" else Hkv
    if self_check:  # the set against the stable top-k of the op's own fp32 ranking rows (no rounding question)
        R = ws.R.cpu().reshape(B * rows_per_b, T)
        Lr = lengths_c.repeat_interleave(rows_per_b)
        own = _select_mask(R, torch.arange(T) < Lr[:, None], rule.k_eff(Lr))  # the rule's one definition
        got = mask.view(B, Hkv, G, T)[:, :, 0].reshape(B * Hkv, T) if rule.selection == "kv_group" else mask.view(B * Hq, T)
        res["set_diff_vs_own_scores"] = int((own != got).sum())
    path = ws.path.cpu().long()
    if self_check and int(lengths_c.min()) == int(lengths_c.max()):  # the band emulation on the op's own scores
        L0 = int(lengths_c[0])
        em = band_emulate(ws.R.cpu().reshape(B * rows_per_b, T), L0, rule.k_eff(L0), ws.sample, ws.capacity)
        # the paths must agree; the band counts within a key or two: the band's edges are sampled keys' scores,
        # which the sample kernel computes in other tiles than the score kernel (a last-bit difference can put the
        # edge key itself on the other side)
        res["emulated_band_matches_op"] = bool(torch.equal(em["path"].long(), path))
        res["emulated_band_count_maxdiff"] = int((em["n_band"].long() - ws.ncand.cpu().long()).abs().max())
        res["band_z_maxabs"] = em["z"].abs().max().item()
    pc = torch.bincount(path, minlength=4).tolist()
    res["paths"] = {"band": pc[PATH_BAND], "miss": pc[PATH_MISS], "overflow": pc[PATH_OVERFLOW], "dense": pc[PATH_DENSE]}
    passes = ws.passes.cpu().float()
    res["passes_mean"], res["passes_max"] = passes.mean().item(), int(passes.max())
    nc = ws.ncand.cpu().float()
    res["band_mean"], res["band_max"], res["capacity"], res["sample"] = nc.mean().item(), int(nc.max()), ws.capacity, ws.sample
    res["rows"] = int(path.numel())
    keff = [rule.k_eff(int(L)) for L in lengths_c]
    res["k_eff"] = keff
    res["head_fraction"] = sum(keff) / float(lengths_c.sum())
    if rule.selection == "query_head":  # |union of the group's G sets| / N, averaged over (b, KV head)
        u = mask.view(B, Hkv, G, T).any(2).sum(-1).double() / lengths_c.double()[:, None]
        res["union_fraction_mean"], res["union_fraction_max"] = u.mean().item(), u.max().item()
        res["union_fraction_min"] = u.min().item()
    return res


def _fmt(tag, layer, sel, c, r) -> str:
    p = r["paths"]
    un = (f"union {r['union_fraction_mean']:.3f} ({r['union_fraction_min']:.3f}..{r['union_fraction_max']:.3f})"
          if "union_fraction_mean" in r else "union    -              ")
    own = r.get("set_diff_vs_own_scores", "-")
    return (f"{tag:6s} L{layer:<3} {sel:10s} c={c:4s} rows {r['rows']:3d} | band {p['band']:3d} miss {p['miss']:3d} "
            f"ovf {p['overflow']:3d} dense {p['dense']:3d} | passes {r['passes_mean']:.2f}/{r['passes_max']} | "
            f"cand {r['band_mean']:6.0f}/{r['band_max']:6d} of {r['capacity']} | head {r['head_fraction']:.3f} {un} | "
            f"setdiff {r['set_diff_entries']} (own {own}) | err {r['rel_err_vs_fp64']:.1e}"
            + (f" | emulated paths {'=' if r['emulated_band_matches_op'] else 'DIFFER'} (band +-"
               f"{r['emulated_band_count_maxdiff']}), |z| max {r['band_z_maxabs']:.2f}"
               if "emulated_band_matches_op" in r else ""))


HEADER = ("data   layer rule       c      rows | paths: band / miss / overflow / dense | passes mean/max | "
          "band candidates mean/max of capacity | k_eff/N, query_head union/N mean (min..max) | "
          "set entries != decode_reference (!= stable top-k of the op's own scores) | out rel err vs fp64")


def _ensure_interpreter() -> None:
    """TRITON_INTERPRET=1 without a CUDA GPU, before triton is imported (as tests/conftest.py does)."""
    if "triton" in sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def cmd_check(a) -> None:
    _ensure_interpreter()
    import torch

    from dcr.prereg.rule import TopKRule

    op, op_sha = _op()
    DecodeWorkspace = op.DecodeWorkspace
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    data, layers = _load(a.file, a.layers, a.windows)
    meta = data["meta"]
    print(f"capture {a.file} (sha256 {sha256_file(a.file)[:16]}…): {meta['model_id']}, N {meta['N']}, "
          f"layers {meta['layers']}; device {dev}{' (Triton interpreter)' if os.environ.get('TRITON_INTERPRET') == '1' else ''}; "
          f"decode.py sha256 {op_sha[:16]}…", flush=True)
    rows = []
    cases = [("real", li) for li in layers] + ([("random", layers[0])] if a.random else [])
    print(HEADER)
    for tag, li in cases:
        d = data["layers"][li]
        q, k, v = d["q"], d["k"], d["v"]
        if a.n:
            k, v = k[:, :, :a.n].contiguous(), v[:, :, :a.n].contiguous()
        scale = d["scale"]
        if tag == "random":
            q, k, v = _random_like(q, k, a.seed)
            scale = 1.0 / math.sqrt(q.shape[-1])
        q, k, v = q.to(dev), k.to(dev), v.to(dev)
        B, Hq, D = q.shape
        _, Hkv, T, _ = k.shape
        lengths = torch.full((B,), T, device=dev, dtype=torch.int32)
        for sel in a.selection:
            ws = DecodeWorkspace(B, Hq, Hkv, T, D, sel, dev, **_ws_kw(a.ws))  # the op's defaults unless --ws
            for c in a.c:
                rule = TopKRule(c, k_min=a.k_min, dispatch_threshold=a.dispatch, selection=sel)
                r = check_case(q, k, v, lengths, rule, scale, ws)
                r.update(data=tag, layer=li if tag == "real" else None, selection=sel, c=c, N=T, B=B)
                rows.append(r)
                print(_fmt(tag, li if tag == "real" else "-", sel, c, r) + f" | {r['op_seconds']:.0f} s", flush=True)
                if a.json:
                    _write_json(a.json, {"meta": meta, "decode_py_sha256": op_sha, "rows": rows})
    bad = [r for r in rows if r["set_diff_entries"] or r.get("set_diff_vs_own_scores")]
    fb = sum(r["paths"]["miss"] + r["paths"]["overflow"] for r in rows)
    print(f"\n{len(rows)} cases; set differences in {len(bad)}; band misses + overflows in all: {fb} of "
          f"{sum(r['rows'] for r in rows)} ranking rows")
    if bad:
        raise SystemExit("SET MISMATCH: " + "; ".join(f"{r['data']} L{r['layer']} {r['selection']} c={r['c']}: "
                                                       f"{r['set_diff_entries']} entries" for r in bad))


def _ws_kw(items) -> dict:
    out = {}
    for kv in items:
        key, sep, val = kv.partition("=")
        if not sep or not val.isdigit():
            raise SystemExit(f"--ws wants KEY=INT (DecodeWorkspace keyword arguments), got {kv!r}")
        out[key] = int(val)
    return out


def _write_json(path, obj) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1))


# ============================================================================ band (CPU, all layers)
def _prefill_windows(a, on_prefill):
    """SmolLM2-135M (dtype a.dtype, CPU) over a.windows disjoint windows of a.n tokens of the shipped
    held-out text from token a.start; on_prefill(layer, query [1, Hq, n, D], key [1, Hkv, n, D]) sees
    every layer's post-RoPE queries and keys. Returns (model, text info, token info, windows)."""
    import torch

    from dcr.producers.corpus import load_text, make_windows, tokenize_cached, window_tokens
    from dcr.producers.models import load_model
    from dcr.producers.reference_model import heldout_text_path

    _register_capture({"active": False, "layers": set(), "seen": {}, "on_prefill": on_prefill})
    lm = load_model(MODEL, dtype=a.dtype, device="cpu", attn_implementation=CAPTURE_ATTN)
    text, tinfo = load_text(str(heldout_text_path()))
    cache = Path(os.environ.get("DCR_CACHE_DIR", Path.home() / ".cache" / "dcr-prereg")) / "tokens"
    tokens, kinfo = tokenize_cached(text, lm.tokenizer, cache)
    wins = make_windows(tokens.size, a.n, placement="disjoint", count=a.windows, offset=a.start)
    with torch.inference_mode():
        for w in wins:
            t1 = time.time()
            ids = torch.from_numpy(window_tokens(tokens, w)[:a.n]).view(1, a.n)
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            print(f"window {w.index}: {time.time() - t1:.0f} s", flush=True)
    return lm, tinfo, kinfo, wins


def cmd_band(a) -> None:
    """The band's hit / miss / overflow over every layer and many decode positions, by emulation."""
    import numpy as np
    import torch

    from dcr.prereg.rule import TopKRule

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    N, W, M, CAP = a.n, a.windows, a.sample, a.capacity
    # decode positions t (the query of token t sees keys 0..t, L = t + 1): spread over the lengths that use the
    # sample (L > CAP; at L <= CAP every key is a candidate and the band cannot miss)
    ts = sorted(set(np.linspace(CAP, N - 1, a.positions).round().astype(int).tolist()))
    stats = {}  # (data, layer, rule, c) -> lists

    def add(tag, layer, sel, c, em):
        d = stats.setdefault((tag, layer, sel, c), {"path": [], "n_band": [], "z": []})
        d["path"].append(em["path"].long())
        d["n_band"].append(em["n_band"])
        d["z"].append(em["z"])

    rules = {(sel, c): TopKRule(c, k_min=a.k_min, dispatch_threshold=a.dispatch, selection=sel)
             for sel in a.selection for c in a.c}
    gen = torch.Generator().manual_seed(a.seed)

    def emulate(tag, layer, q, k):
        """q [Hq, N, D], k [Hkv, N, D] (bf16 values): the rows of every position t in ts."""
        for t in ts:
            L = t + 1
            qt, kt = q[:, t][None], k[:, :L][None]  # [1, Hq, D], [1, Hkv, L, D]
            for sel in a.selection:
                R = ranking_rows(qt, kt, sel)
                for c in a.c:
                    rule = rules[(sel, c)]
                    add(tag, layer, sel, c, band_emulate(R, L, rule.k_eff(L), M, CAP))

    def on_prefill(layer, query, key):
        q = query[0].to(torch.bfloat16)
        k = key[0].to(torch.bfloat16)
        emulate("real", layer, q, k)
        if layer == 0 and a.random:  # random N(0, 1) q, K of the same shape, once per window
            rq = torch.randn(q.shape, generator=gen).to(torch.bfloat16)
            rk = torch.randn(k.shape, generator=gen).to(torch.bfloat16)
            emulate("random", None, rq, rk)

    t0 = time.time()
    print(f"{MODEL}: {W} windows x {len(ts)} decode positions t in [{ts[0]}, {ts[-1]}] of every layer (the "
          f"prefill's queries: row t sees keys 0..t); sample {M}, capacity {CAP}; rules {a.selection}, c {a.c}, "
          f"k_min {a.k_min}", flush=True)
    lm, tinfo, kinfo, wins = _prefill_windows(a, on_prefill)
    print(f"\n{'data':>6} {'layer':>5} {'rule':>10} {'c':>5} {'rows':>6} {'band':>6} {'miss':>5} {'ovf':>5} "
          f"{'cand mean':>9} {'cand max':>8} {'|z| max':>7} {'|z|>3':>6}   (z: the true k-th largest's place in the "
          f"sample, in binomial sd from the estimate; the band is +-{a.sd:g} sd + 3 ranks)")
    out = []
    for (tag, layer, sel, c), d in sorted(stats.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1],
                                                                          kv[0][2], kv[0][3])):
        path = torch.cat(d["path"])
        nb = torch.cat(d["n_band"])
        z = torch.cat(d["z"]).abs()
        pc = torch.bincount(path, minlength=4).tolist()
        row = dict(data=tag, layer=layer, selection=sel, c=c, rows=int(path.numel()), band=pc[0], miss=pc[1],
                   overflow=pc[2], dense=pc[3], cand_mean=nb.mean().item(), cand_max=int(nb.max()),
                   z_maxabs=z.max().item(), z_over3=int((z > 3).sum()))
        out.append(row)
        print(f"{tag:>6} {str(layer):>5} {sel:>10} {c:>5} {row['rows']:6d} {row['band']:6d} {row['miss']:5d} "
              f"{row['overflow']:5d} {row['cand_mean']:9.0f} {row['cand_max']:8d} {row['z_maxabs']:7.2f} {row['z_over3']:6d}")
    tot = {}
    for r in out:
        t = tot.setdefault(r["data"], [0, 0, 0])
        t[0] += r["rows"]
        t[1] += r["miss"]
        t[2] += r["overflow"]
    print("\ntotals: " + "; ".join(f"{k}: {v[0]} ranking rows, {v[1]} misses, {v[2]} overflows" for k, v in tot.items())
          + f"  [{time.time() - t0:.0f} s]")
    if a.json:
        _write_json(a.json, {"model": lm.info.as_dict(), "corpus": {"text_sha256": tinfo["text_sha256"],
                             "tokens_sha256": kinfo["tokens_sha256"]},
                             "windows": [w.as_dict() for w in wins], "positions": ts, "sample": M, "capacity": CAP,
                             "rows": out})


# ============================================================================ tf-passes
def cmd_tf_passes(a) -> None:
    """The teacher-forced counting kernel's passes on real attention rows (its CPU replay)."""
    import numpy as np
    import torch

    from dcr.prereg.rule import TopKRule
    from dcr.producers.kernels.teacher_forced import _gauss_quantiles

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
    import simulate_tf_passes as sim

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    N = a.n
    rule = TopKRule(a.c, k_min=a.k_min, dispatch_threshold=0)  # every row sparse, as `dcr bench quality` times it
    zq = _gauss_quantiles(N, rule, "cpu").numpy()
    n_prog = -(-N // 64)
    pids = sorted({int(x) for x in np.linspace(0, n_prog - 1, a.blocks).round()})
    gen = torch.Generator().manual_seed(a.seed)
    stats = {}  # (data, layer, rule, variant) -> [(passes, keys read)]

    def programs(q, k, sel):
        """The kernel's programs (64 rows x one ranking head) of pids: q [Hq, N, D], k [Hkv, N, D] fp32."""
        G = q.shape[0] // k.shape[0]
        heads = range(q.shape[0]) if sel == "query_head" else range(k.shape[0])
        for h in heads:
            qs = [q[h]] if sel == "query_head" else [q[h * G + g] for g in range(G)]
            kh = k[h // G] if sel == "query_head" else k[h]
            for pid in pids:
                rows = np.arange(pid * 64, min(pid * 64 + 64, N))
                end_n = min(pid * 64 + 64, N)
                sr = (sum(qq[rows] @ kh[:end_n].T for qq in qs) / len(qs)).numpy().astype(np.float32)
                vis = np.arange(end_n)[None, :] <= rows[:, None]
                t = rows + 1
                yield sr, vis, t, rule.k_eff(t), zq[rows], end_n

    def replay(tag, layer, q, k):
        for sel in a.selection:
            progs = list(programs(q, k, sel))
            for var in a.variants:
                d = stats.setdefault((tag, layer, sel, var), [])
                d += [(sim.search(sr, vis, t, kk, z, end_n=e, **sim.VARIANTS[var]), e) for sr, vis, t, kk, z, e in progs]

    def on_prefill(layer, query, key):
        if layer not in a.layers:
            return
        t1 = time.time()
        q = query[0].to(torch.bfloat16).float()  # the kernel's operands: bf16, products summed in fp32
        k = key[0].to(torch.bfloat16).float()
        replay("real", layer, q, k)
        if a.random and layer == a.layers[0]:
            replay("random", None, torch.randn(q.shape, generator=gen).bfloat16().float(),
                   torch.randn(k.shape, generator=gen).bfloat16().float())
        print(f"  layer {layer}: {time.time() - t1:.0f} s", flush=True)

    t0 = time.time()
    print(f"{MODEL}: the teacher-forced counting search replayed (lab/kernels/simulate_tf_passes.py) on {len(pids)} "
          f"row blocks of 64 x every ranking head of layers {a.layers}, N {N}, c {a.c}, k_min {a.k_min}, every row "
          f"sparse; variants {a.variants}", flush=True)
    _prefill_windows(a, on_prefill)
    print(f"\n{'data':>6} {'layer':>5} {'rule':>10} {'variant':>16} {'programs':>8} {'mean':>5} {'key-wt':>6} {'max':>4}")
    out = []
    for (tag, layer, sel, var), d in stats.items():
        p = np.array([x[0] for x in d], dtype=np.float64)
        w = np.array([x[1] for x in d], dtype=np.float64)
        row = dict(data=tag, layer=layer, selection=sel, variant=var, programs=len(d), passes_mean=p.mean(),
                   passes_key_weighted=float(np.average(p, weights=w)), passes_max=int(p.max()))
        out.append(row)
        print(f"{tag:>6} {str(layer):>5} {sel:>10} {var:>16} {len(d):8d} {p.mean():5.2f} "
              f"{row['passes_key_weighted']:6.2f} {row['passes_max']:4d}")
    print(f"[{time.time() - t0:.0f} s]")
    if a.json:
        _write_json(a.json, {"N": N, "c": a.c, "layers": a.layers, "blocks": pids, "rows": out})


# ============================================================================ time (GPU)
def cmd_time(a) -> None:
    _ensure_interpreter()
    import torch

    from dcr.prereg.rule import TopKRule

    from dcr.producers.bench_decode import L2_BYTES, graph_of, sdpa_baselines, time_graphs

    op, op_sha = _op()
    DecodeWorkspace, topk_decode = op.DecodeWorkspace, op.topk_decode
    cuda = torch.cuda.is_available()
    if not cuda and not a.dry_run:
        raise SystemExit("`time` needs a CUDA GPU (run lab/gpu/real_kv.sh on the GPU machine); "
                         "--dry-run checks the sets here without timing")
    dev = torch.device("cuda" if cuda else "cpu")
    data, layers = _load(a.file, a.layers, a.windows)
    meta = data["meta"]
    card = torch.cuda.get_device_name() if cuda else "cpu (dry run, Triton interpreter)"
    import triton

    print(f"{card}; torch {torch.__version__} triton {triton.__version__}; capture {a.file} "
          f"(sha256 {sha256_file(a.file)[:16]}…), N {meta['N']}, layers {layers}; decode.py sha256 "
          f"{op_sha[:16]}…; rules {a.selection}, c {a.c}, k_min {a.k_min}, dispatch {a.dispatch}", flush=True)
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # SDPA explains every backend it skips
    rows = []
    todo = []
    for li in layers:
        for rep in a.repeat:
            todo.append(("real", li, rep))
    if a.random:
        for rep in a.repeat:
            todo.append(("random", layers[0], rep))
    for tag, li, rep in todo:
        d = data["layers"][li]
        q, k, v = d["q"], d["k"], d["v"]
        if a.n:
            k, v = k[:, :, :a.n], v[:, :, :a.n]
        scale = d["scale"]
        if tag == "random":
            q, k, v = _random_like(q, k, a.seed)
            scale = 1.0 / math.sqrt(q.shape[-1])
        q = q.repeat(rep, 1, 1).to(dev).contiguous()
        k = k.repeat(rep, 1, 1, 1).to(dev).contiguous()
        v = v.repeat(rep, 1, 1, 1).to(dev).contiguous()
        B, Hq, D = q.shape
        _, Hkv, T, _ = k.shape
        lengths = torch.full((B,), T, device=dev, dtype=torch.int32)
        out = torch.empty_like(q)
        # input sets rotated by the graphs while they fit in 3x the L2 (as producers/bench_decode.py): copies of
        # the same caches at other addresses, so that a replay does not find the previous one's K / V in the L2
        nsets = max(1, min(6, math.ceil(3 * L2_BYTES / (2 * k.numel() * k.element_size())))) if cuda else 1
        sets = [(q, k, v, out)] + [(q.clone(), k.clone(), v.clone(), torch.empty_like(q)) for _ in range(nsets - 1)]
        base, base_err = {}, {}
        if cuda:  # dense baselines (not the math backend: it expands the cache), checked against fp64 first
            dense = _dense_f64(q, k, v, scale)
            base, base_err = sdpa_baselines(lambda i: sets[i][:3], dense, scale, ("cudnn", "flash", "efficient"))
            del dense
        for sel in a.selection:
            ws = DecodeWorkspace(B, Hq, Hkv, T, D, sel, dev, **_ws_kw(a.ws))
            for c in a.c:
                rule = TopKRule(c, k_min=a.k_min, dispatch_threshold=a.dispatch, selection=sel)
                r = check_case(q, k, v, lengths, rule, scale, ws)
                r.update(data=tag, layer=li if tag == "real" else None, selection=sel, c=c, N=T, B=B, repeat=rep,
                         card=card, not_run=dict(base_err))
                # exact: the set is the stable top-k of the op's own fp32 ranking scores; against decode_reference's
                # fp32 scores (another summation order: on the GPU the op's bf16 tensor-core products) a set may
                # differ only at a last-bit near-tie of the boundary (|gap| <= 1e-5 of the row's largest |score|)
                ok = (r.get("set_diff_vs_own_scores", 0) == 0 and r["rel_err_vs_fp64"] < 1e-2
                      and (r["set_diff_entries"] == 0 or r.get("set_diff_max_gap_rel", 1.0) <= 1e-5))
                r["ok"] = ok
                if cuda and not a.dry_run:
                    def ours(i, rule=rule, ws=ws):
                        qi, ki, vi, oi = sets[i]
                        topk_decode(qi, ki, vi, lengths, rule, scale=scale, out=oi, check_lengths=False, workspace=ws)

                    methods = {"ours": ours, **{f"sdpa_{n}": fn for n, fn in base.items()}}
                    graphs, reps = {}, {}
                    for name, fn in methods.items():
                        reps[name] = a.reps
                        g, why = graph_of(fn, nsets, reps[name])
                        if g is None:
                            r["not_run"][name] = why
                        else:
                            graphs[name] = g
                    t = time_graphs(graphs, reps, a.rounds)
                    del graphs
                    sd = {n: x for n, x in t.items() if n.startswith("sdpa_")}
                    best = min(sd, key=sd.get) if sd else None
                    r.update(times_ms=t, best_sdpa=best, nsets=nsets, reps=a.reps, rounds=a.rounds,
                             speedup_vs_best_sdpa=(t[best] / t["ours"]) if best and "ours" in t else None)
                rows.append(r)
                tm = r.get("times_ms", {})
                tstr = (f" | ours {1e3 * tm.get('ours', float('nan')):7.1f} us, "
                        + ", ".join(f"{n[5:]} {1e3 * x:.1f}" for n, x in tm.items() if n.startswith("sdpa_"))
                        + f" -> x{r['speedup_vs_best_sdpa'] or float('nan'):.2f} vs {r['best_sdpa']}") if tm else ""
                print(_fmt(tag, li if tag == "real" else "-", sel, c, r) + f" | B {B} ok={ok}" + tstr, flush=True)
                if r["not_run"]:
                    print(f"    not run: {r['not_run']}")
                if a.json:
                    _write_json(a.json, {"meta": meta, "card": card, "decode_py_sha256": op_sha,
                                         "dry_run": bool(a.dry_run), "rows": rows})
            del ws
        del q, k, v, out, sets
        if cuda:
            torch.cuda.empty_cache()
    print(f"\nsummary ({card}; real = SmolLM2-135M layers, random = N(0, 1) caches of the same shape)")
    print(f"{'data':>6} {'layer':>5} {'B':>3} {'N':>6} {'rule':>10} {'c':>5} {'ok':>5} {'ours us':>8} {'best SDPA':>10} "
          f"{'us':>7} {'ratio':>6} {'miss+ovf':>8} {'passes':>6} {'union':>6}")
    for r in rows:
        t = r.get("times_ms", {})
        b = r.get("best_sdpa")
        print(f"{r['data']:>6} {str(r['layer']):>5} {r['B']:3d} {r['N']:6d} {r['selection']:>10} {r['c']:>5} "
              f"{str(r['ok']):>5} {1e3 * t.get('ours', float('nan')):8.1f} {str(b):>10} "
              f"{1e3 * t.get(b, float('nan')) if b else float('nan'):7.1f} {r.get('speedup_vs_best_sdpa') or float('nan'):6.2f} "
              f"{r['paths']['miss'] + r['paths']['overflow']:8d} {r['passes_mean']:6.2f} "
              f"{r.get('union_fraction_mean', float('nan')):6.3f}")
    if not all(r["ok"] for r in rows):
        raise SystemExit("some checks FAILED (see ok=False rows): their timings are not figures of the rule")


# ============================================================================ cli
def prefill_args(sp, windows: int) -> None:
    """The options of the subcommands that run the model's prefill (_prefill_windows)."""
    sp.add_argument("--windows", type=int, default=windows, help=f"windows (default {windows})")
    sp.add_argument("--n", type=int, default=8192, help="tokens per window (default 8192)")
    sp.add_argument("--start", type=int, default=0, help="token offset of the first window (default 0)")
    sp.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="model dtype (default fp32)")
    sp.add_argument("--no-random", dest="random", action="store_false", help="skip the random contrast")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random contrast (default 0)")
    sp.add_argument("--json", type=Path, default=None, help="write the table here")
    sp.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("capture", help="run SmolLM2-135M on the CPU and save real post-RoPE K/V caches and the "
                                       "next token's query of chosen layers (verified against the model)")
    c.add_argument("--windows", type=int, default=2, help="W windows of the packaged corpus (default 2)")
    c.add_argument("--n", type=int, default=8192, help="N tokens per window = keys in the cache; the decode token "
                                                       "is token N-1 at position N-1 (<= 8,192; default 8192)")
    c.add_argument("--layers", type=int, nargs="+", default=[0, 15, 29],
                   help="layers to keep (default 0 15 29: 3 x 12.6 MB at W = 2, N = 8192; 4 layers pass 40 MB)")
    c.add_argument("--start", type=int, default=0, help="token offset of the first window (default 0)")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="model weights / forward dtype (default fp32, as the smollm2 study; caches are saved in bf16)")
    c.add_argument("--out", type=Path, default=DEFAULT_FILE, help=f"output .pt (default {DEFAULT_FILE})")
    c.add_argument("--max-mib", type=float, default=40.0, help="refuse a capture larger than this (default 40)")
    c.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    c.set_defaults(fn=cmd_capture)

    def common(s, c_default):
        s.add_argument("--file", type=Path, default=DEFAULT_FILE, help=f"capture file (default {DEFAULT_FILE})")
        s.add_argument("--layers", type=int, nargs="+", default=None, help="captured layers to use (default: all)")
        s.add_argument("--windows", type=int, nargs="+", default=None, help="captured windows to use (default: all)")
        s.add_argument("--n", type=int, default=0, help="cut the caches to their first n keys (default: all N)")
        s.add_argument("--c", nargs="+", default=list(c_default), help=f"coverages (default {' '.join(c_default)})")
        s.add_argument("--selection", nargs="+", default=list(SELECTIONS), choices=SELECTIONS, help="rules (default both)")
        s.add_argument("--k-min", type=int, default=K_MIN, help=f"k_min (default {K_MIN}, the registered plans')")
        s.add_argument("--dispatch", type=int, default=DISPATCH,
                       help=f"dispatch threshold (default {DISPATCH}, the registered plans')")
        s.add_argument("--no-random", dest="random", action="store_false",
                       help="skip the random Gaussian caches of the same shape")
        s.add_argument("--seed", type=int, default=0, help="seed of the random caches (default 0)")
        s.add_argument("--json", type=Path, default=None, help="write every figure here (after each case)")
        s.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
        s.add_argument("--ws", nargs="+", default=[], metavar="KEY=INT",
                       help="DecodeWorkspace settings instead of the op's defaults, e.g. sample=64 capacity=256 (a "
                            "narrow band: real rows then reach the fallbacks)")

    k = sub.add_parser("check", help="CPU (Triton interpreter): sets vs decode_reference, band paths, passes, "
                                     "band sizes, union fractions on the capture and on random caches")
    common(k, COVERAGES)
    k.set_defaults(fn=cmd_check)

    b = sub.add_parser("band", help="CPU: the band's hit / miss / overflow by emulation (torch, no kernel) over every "
                                    "layer and many decode positions of the model's prefill, real vs random")
    prefill_args(b, windows=2)
    b.add_argument("--positions", type=int, default=32,
                   help="decode positions per window, spread over [capacity, n-1] (default 32)")
    b.add_argument("--c", nargs="+", default=list(COVERAGES), help=f"coverages (default {' '.join(COVERAGES)})")
    b.add_argument("--selection", nargs="+", default=list(SELECTIONS), choices=SELECTIONS, help="rules (default both)")
    b.add_argument("--k-min", type=int, default=K_MIN, help=f"k_min (default {K_MIN})")
    b.add_argument("--dispatch", type=int, default=DISPATCH, help=f"dispatch threshold (default {DISPATCH})")
    b.add_argument("--sample", type=int, default=1024, help="the op's sample M (default 1024, its default)")
    b.add_argument("--capacity", type=int, default=4096, help="the op's candidate capacity (default 4096, its default "
                                                              "up to 64K keys)")
    b.add_argument("--sd", type=float, default=4.0, help=argparse.SUPPRESS)
    b.set_defaults(fn=cmd_band)

    f = sub.add_parser("tf-passes", help="CPU: the teacher-forced counting kernel's passes (its numpy replay, "
                                         "lab/kernels/simulate_tf_passes.py) on real attention rows vs random")
    prefill_args(f, windows=1)
    f.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 29], help="layers (default 0 10 20 29)")
    f.add_argument("--blocks", type=int, default=24, help="row blocks of 64 per head, spread over the window")
    f.add_argument("--c", default="0.15", help="coverage (default 0.15)")
    f.add_argument("--selection", nargs="+", default=list(SELECTIONS), choices=SELECTIONS, help="rules (default both)")
    f.add_argument("--k-min", type=int, default=K_MIN, help=f"k_min (default {K_MIN})")
    f.add_argument("--variants", nargs="+", default=["kernel", "previous kernel"],
                   help="simulate_tf_passes.VARIANTS to replay (default: the kernel and the one before it)")
    f.set_defaults(fn=cmd_tf_passes)

    t = sub.add_parser("time", help="GPU: check, then time topk_decode vs the best SDPA backend in CUDA graphs on "
                                    "the capture and on random caches (lab/gpu/real_kv.sh)")
    common(t, ("0.15",))
    t.add_argument("--repeat", type=int, nargs="+", default=[1, 2, 4],
                   help="batch = R x W (the windows tiled R times; default 1 2 4 -> B = 2, 4, 8 at W = 2)")
    t.add_argument("--rounds", type=int, default=50, help="interleaved timing rounds, median (default 50)")
    t.add_argument("--reps", type=int, default=20, help="calls per CUDA graph (default 20)")
    t.add_argument("--dry-run", action="store_true", help="check only, no timing (works on the CPU, interpreter)")
    t.set_defaults(fn=cmd_time)
    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
