"""`dcr produce random-spectrum`: attention entropy of trained vs re-initialised key projections.

Cells (``prereg.measurements.expected_cells(plan, "random_spectrum")``): ``{variant, seed, N}``.
Per cell, one batched forward of the first ``prompts`` windows (their first N tokens) records, for
every registered (layer, head) and prompt, the entropy (nats) of the last query row (position N − 1,
N visible keys) from fp32 logits q·k·scaling on post-RoPE q, k, captured by the
``AttentionInterface`` function of :mod:`producers.entropy` (the rest of the forward is SDPA).

Variants of every layer's ``k_proj`` (everything else keeps the loaded weights):

* ``trained`` — the loaded weights (the row does not depend on a seed: one cell per N, seed null;
  the other variants are crossed with every registered seed);
* ``default_init`` — ``nn.Linear``'s default init: kaiming-uniform, a = √5, i.e.
  U(−1/√fan_in, 1/√fan_in), drawn layer by layer (layer 0 first) from one CPU
  ``torch.Generator`` seeded with the registered seed (the seed's script drew from the global
  generator of its GPU, which cannot be replayed);
* ``scale_matched`` — each layer's trained singular values σ in a random orthogonal basis:
  W' = U' diag(σ) V'ᵀ with U', V' Haar-distributed (QR of Gaussians with the sign fix), the
  Gaussians drawn from a CPU generator seeded with the seed; W' keeps W's spectral and Frobenius
  norms.

Between variants/seeds the trained ``k_proj`` weights are restored from a copy and a SHA-256 of
all ``k_proj`` weights is compared with the trained one (RuntimeError if it differs); at the end
the whole model's weight checksum is compared with the one taken at load time.

Rows (``prereg.measurements.RANDOM_SPECTRUM``): variant, seed, layer, head, prompt, N, entropy,
logit_scale (standard deviation of the row's logits, fp32, a scale check).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from dcr.prereg.measurements import RANDOM_SPECTRUM, expected_cells

PRODUCER = RANDOM_SPECTRUM.name
PRODUCER_VERSION = "1"


# ---------------------------------------------------------------------------- k_proj variants


def k_projs(model) -> list[torch.nn.Linear]:
    """Every decoder layer's ``self_attn.k_proj``, layer 0 first."""
    layers = model.base_model.layers
    return [layer.self_attn.k_proj for layer in layers]


def k_proj_checksum(model) -> str:
    """SHA-256 over all k_proj weights (layer order; dtype, shape and raw bytes of each)."""
    h = hashlib.sha256()
    for i, lin in enumerate(k_projs(model)):
        w = lin.weight.detach().contiguous()
        h.update(f"{i}|{w.dtype}|{tuple(w.shape)}|".encode())
        h.update(w.reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
        if lin.bias is not None:
            h.update(lin.bias.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def default_init_weights(shapes: list[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    """nn.Linear's default weights (kaiming_uniform_, a=√5) for each [out, in] shape, fp32 CPU,
    drawn in order from one ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        w = torch.empty(shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
        out.append(w)
    return out


def _haar(n: int, r: int, g: torch.Generator, device) -> torch.Tensor:
    """n x r matrix with orthonormal columns, Haar-distributed (QR of a Gaussian, signs fixed)."""
    z = torch.randn(n, r, dtype=torch.float64, generator=g).to(device)
    q, rr = torch.linalg.qr(z)
    return q * torch.sign(torch.diagonal(rr)).unsqueeze(0)


def scale_matched_weights(trained: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """W' = U' diag(σ(W)) V'ᵀ per layer (float64, on W's device): W's singular values in a random
    orthogonal basis. Gaussians from one CPU ``torch.Generator().manual_seed(seed)``, layer order."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for w in trained:
        w64 = w.detach().double()
        s = torch.linalg.svdvals(w64)  # [r], r = min(out, in)
        m, n = w64.shape
        r = s.numel()
        u, v = _haar(m, r, g, w64.device), _haar(n, r, g, w64.device)
        out.append((u * s.unsqueeze(0)) @ v.T)
    return out


class KProjVariants:
    """Installs a k_proj variant into a model and restores the trained weights, checked by checksum."""

    def __init__(self, model):
        self.model = model
        self.trained = [lin.weight.detach().clone() for lin in k_projs(model)]
        self.trained_sha256 = k_proj_checksum(model)
        self.installed: tuple[str, int | None] = ("trained", None)

    def restore(self) -> None:
        """Copy the trained weights back and prove it: RuntimeError if the checksum differs."""
        with torch.no_grad():
            for lin, w in zip(k_projs(self.model), self.trained):
                lin.weight.copy_(w)
        got = k_proj_checksum(self.model)
        if got != self.trained_sha256:
            raise RuntimeError(f"k_proj weights after restoration have sha256 {got}, not the trained "
                               f"{self.trained_sha256}: the trained model was not restored")
        self.installed = ("trained", None)

    def install(self, variant: str, seed: int | None) -> None:
        """Make the model's k_proj weights those of (variant, seed); the trained ones are restored
        (and checked) first, so no variant ever starts from another variant's weights."""
        key = ("trained", None) if variant == "trained" else (variant, seed)
        if key == self.installed:
            return
        self.restore()
        if variant == "trained":
            return
        if variant == "default_init":
            new = default_init_weights([tuple(w.shape) for w in self.trained], seed)
        elif variant == "scale_matched":
            new = scale_matched_weights(self.trained, seed)
        else:
            raise ValueError(f"unknown variant {variant!r}")
        with torch.no_grad():
            for lin, w in zip(k_projs(self.model), new):
                lin.weight.copy_(w.to(device=lin.weight.device, dtype=lin.weight.dtype))
        self.installed = key


# ---------------------------------------------------------------------------- measurement


def head_list(heads: Any, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """The registered (layer, head) pairs: "all" or a list of [layer, head] (checked in range)."""
    if heads == "all":
        return [(l, h) for l in range(n_layers) for h in range(n_heads)]
    out = [(int(l), int(h)) for l, h in heads]
    bad = [p for p in out if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise ValueError(f"heads {bad} outside {n_layers} layers x {n_heads} heads")
    return out


def last_row_entropies(model, input_ids: torch.Tensor, layers: set[int]) -> tuple[dict, dict]:
    """One forward of input_ids [B, N]; per layer in ``layers``: (entropy float64 [B, Hq] of the
    last query row from fp32 logits, std of those logits [B, Hq])."""
    from dcr.producers.entropy import PROBE_KWARG, ProbeContext

    ctx = ProbeContext(mode="entropy", layers=frozenset(layers))
    with torch.inference_mode():
        model.base_model(input_ids=input_ids, use_cache=False, **{PROBE_KWARG: ctx})
    missing = sorted(set(layers) - set(ctx.entropy))
    if missing:
        raise RuntimeError(f"the probe attention did not run at layers {missing} (attention "
                           f"implementation {getattr(model.config, '_attn_implementation', None)!r})")
    return ctx.entropy, ctx.logit_std


def compute_cell(model, variants: KProjVariants, windows, cell: dict, *, prompts: int,
                 heads: list[tuple[int, int]]) -> pa.Table:
    """Rows of one cell {variant, seed, N}: one per (registered head, prompt)."""
    variant, seed, n = cell["variant"], cell["seed"], int(cell["N"])
    variants.install(variant, seed)
    ids = torch.stack([torch.from_numpy(windows.prompt(i, n)[:n]) for i in range(prompts)])
    ids = ids.to(model.device)
    ent, std = last_row_entropies(model, ids, {l for l, _ in heads})
    ent = {l: t.double().cpu() for l, t in ent.items()}
    std = {l: t.double().cpu() for l, t in std.items()}
    return RANDOM_SPECTRUM.table([
        {"variant": variant, "seed": seed, "layer": l, "head": h, "prompt": p, "N": n,
         "entropy": float(ent[l][p, h]), "logit_scale": float(std[l][p, h])}
        for l, h in heads for p in range(prompts)])


def produce_random_spectrum(lock_path, out_dir, *, device: str, progress: bool = True,
                            rank: int | None = None, world_size: int | None = None, where: dict[str, list[str]] | None = None):
    """Run the locked plan's random-spectrum cells into ``out_dir/random_spectrum/``.

    lock_path: the plan's ``.lock.yaml`` (verified; a plain or altered plan is refused).
    device: "cpu", "cuda", "cuda:1", ... rank/world_size: shard (default: torchrun's environment).
    Returns the runner's ``RunSummary``. Raises RuntimeError if the trained weights are not
    restored exactly (k_proj checksum after every restoration, whole-model checksum at the end).
    """
    from dcr.producers.entropy import PROBE_ATTN_NAME, register_probe
    from dcr.producers.models import weights_sha256
    from dcr.producers.plan_inputs import model_info as model_meta
    from dcr.producers.plan_inputs import open_plan
    from dcr.producers.runner import run_cells

    register_probe()
    run = open_plan(lock_path, PRODUCER, device=device, attn_implementation=PROBE_ATTN_NAME)
    locked, plan, cells_spec, loaded, windows = run.locked, run.plan, run.cells, run.loaded, run.windows
    model = loaded.model
    cfg = model.config
    heads = head_list(cells_spec.heads, cfg.num_hidden_layers, cfg.num_attention_heads)
    variants = KProjVariants(model)
    model_info = {**model_meta(loaded), "k_proj_sha256_trained": variants.trained_sha256,
                  "plan_model": plan.model.model_dump(mode="json")}
    cells = expected_cells(plan, PRODUCER)

    def compute(cell: dict) -> pa.Table:
        return compute_cell(model, variants, windows, cell, prompts=cells_spec.prompts, heads=heads)

    try:
        summary = run_cells(producer=PRODUCER, producer_version=PRODUCER_VERSION,
                            locked=locked, cells=cells, out_dir=Path(out_dir),
                            compute=compute, model_info=model_info, corpus_info=windows.info,
                            rank=rank, world_size=world_size, progress=progress, where=where)
    finally:
        variants.restore()
    if loaded.info.weights_sha256 != "not-computed" and weights_sha256(model) != loaded.info.weights_sha256:
        raise RuntimeError("the model's weights differ from the loaded ones after the run")
    return summary
