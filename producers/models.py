"""Model loading: a Hugging Face id, a local directory, a packaged model, or a random-weight preset.

Every load returns a :class:`LoadedModel` whose ``info`` records what was loaded (id or path,
revision, dtype, whether the weights are random, the seed, a SHA-256 of the loaded weights) so that
every measurement can carry it. Random-weight presets say so (``weights_random=True``): numbers
from them describe the architecture, not the trained model.

Presets (weights drawn from ``seed`` on ``device``; the same seed gives other weights on another
device type, so ``init_device`` is recorded):

* ``llama-3.2-1b-random`` -- the exact Llama-3.2-1B architecture (16 layers, hidden 2048, 32 query
  heads, 8 KV heads, head_dim 64, MLP 8192, vocab 128256, RoPE theta 500000 with llama3 scaling,
  tied embeddings, 131072 positions);
* ``tiny-llama-random`` -- 2 layers, hidden 64, 4 query heads, 2 KV heads, vocab 512 (tests, CPU demo).

Packaged models (:mod:`producers.packaged_models`, e.g. ``smollm2-135m``) load from the directory
``dcr model fetch`` converted them into; their info names the GGUF file's hash (``revision``) and the
quantisation the weights were de-quantised from, and the weights' hash is checked against the one
recorded at conversion.

Models are loaded with the attention implementation registered by :mod:`producers.attention`
(dense SDPA unless a Top-K context is passed to the forward).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dcr.producers.packaged_models import PACKAGED_MODELS, FetchError, fetched_dir, model_dir, read_manifest

PRESETS = ("llama-3.2-1b-random", "tiny-llama-random")

LLAMA_3_2_1B_CONFIG: dict[str, Any] = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    },
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    initializer_range=0.02,
    bos_token_id=128000,
    eos_token_id=128001,
)

TINY_LLAMA_CONFIG: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    hidden_act="silu",
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=True,
    initializer_range=0.02,
    bos_token_id=0,
    eos_token_id=1,
)


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded. ``model`` is the preset name, the hub id or the resolved local path."""

    model: str
    source: str  # "preset" | "local" | "hub" | "package"
    revision: str | None  # hub commit; for a packaged model the SHA-256 of its GGUF file
    dtype: str
    weights_random: bool
    seed: int | None
    init_device: str | None
    weights_sha256: str
    n_params: int
    attn_implementation: str
    tokenizer: str  # identity string of the tokenizer (see producers.corpus.tokenizer_identity)
    transformers_version: str
    quantisation: str | None = None  # what trained weights were de-quantised from (packaged models)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, eval mode
    tokenizer: Any  # a transformers tokenizer, or producers.corpus.ByteTokenizer for presets
    info: ModelInfo


def _dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)} or a torch.dtype, got {dtype!r}")
    return table[dtype]


def weights_sha256(model) -> str:
    """SHA-256 over the state dict (sorted names; each name, dtype, shape and raw bytes)."""
    import torch

    h = hashlib.sha256()
    sd = model.state_dict()
    for name in sorted(sd):
        t = sd[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.contiguous().reshape(-1)
        step = 1 << 26  # elements per transfer: bounded host memory
        for i in range(0, flat.numel(), step):
            h.update(flat[i:i + step].view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def _checked_sha256(model, spec: str, dtype) -> str:
    """weights_sha256 of ``model``; for a packaged model loaded in float32 it must equal the hash
    recorded when its directory was converted (a changed file on disk is refused)."""
    import torch

    digest = weights_sha256(model)
    if spec in PACKAGED_MODELS and dtype == torch.float32:
        recorded = read_manifest(model_dir(spec))["weights_sha256"]
        if digest != recorded:
            raise FetchError(f"packaged model {spec!r}: weights sha256 {digest} differs from {recorded} "
                             f"recorded at conversion ({model_dir(spec)}): run `dcr model fetch {spec}` again")
    return digest


def preset_config(name: str):
    """The LlamaConfig of a preset."""
    from transformers import LlamaConfig

    if name == "llama-3.2-1b-random":
        return LlamaConfig(**LLAMA_3_2_1B_CONFIG)
    if name == "tiny-llama-random":
        return LlamaConfig(**TINY_LLAMA_CONFIG)
    raise ValueError(f"unknown preset {name!r}; presets: {PRESETS}")


def load_model(
    spec: str,
    *,
    dtype,
    device: str,
    revision: str | None = None,
    seed: int | None = None,
    attn_implementation: str | None = None,
    checksum: bool = True,
) -> LoadedModel:
    """Load a model for teacher-forced measurement.

    spec: a preset name (:data:`PRESETS`), a packaged model name (fetched first, revision = its GGUF
    SHA-256), a local directory (``save_pretrained`` layout) or a hub id
    (from the local cache only; no download is attempted). dtype: "bf16" / "fp16" / "fp32" or a
    torch.dtype. device: "cpu", "cuda", ... revision: required for a hub id (pin it), ignored for a
    preset. seed: required for a preset (the weights are drawn from it), refused otherwise.
    attn_implementation: defaults to :data:`producers.attention.ATTN_NAME` (dense SDPA unless a
    Top-K context is given); pass "sdpa" to get the library's own path. checksum: compute
    ``weights_sha256`` (a few seconds for 1B parameters); when False it is recorded as "not-computed".
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from dcr.producers import attention
    from dcr.producers.corpus import ByteTokenizer, tokenizer_identity

    attention.register()
    attn = attention.ATTN_NAME if attn_implementation is None else attn_implementation
    tdtype = _dtype(dtype)
    quantisation = None
    if spec in PACKAGED_MODELS:
        if seed is not None:
            raise ValueError("seed= is only for random-weight presets")
        directory = fetched_dir(spec, expected_sha256=revision)
        manifest = read_manifest(directory)
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=tdtype, attn_implementation=attn, local_files_only=True).to(device)
        tok = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        source, name, rev, random_w, init_dev = "package", spec, manifest["gguf_sha256"], False, None
        quantisation = f"de-quantised from {manifest['quantisation']} to float32"
    elif spec in PRESETS:
        if seed is None:
            raise ValueError(f"preset {spec!r} draws random weights: give seed=")
        config = preset_config(spec)
        config._attn_implementation = attn  # noqa: SLF001 (set before the model is built)
        torch.manual_seed(seed)
        if torch.device(device).type == "cuda":
            torch.cuda.manual_seed_all(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=tdtype, attn_implementation=attn)
        tok = ByteTokenizer(vocab_size=config.vocab_size)
        source, rev, random_w, init_dev = "preset", None, True, torch.device(device).type
        name = spec
    else:
        if seed is not None:
            raise ValueError("seed= is only for random-weight presets")
        path = Path(spec)
        if path.is_dir():
            source, name, rev = "local", str(path.resolve()), revision
        else:
            if revision is None:
                raise ValueError(f"{spec!r} is not a local directory: a hub id needs revision= (pinned)")
            source, name, rev = "hub", spec, revision
        kw = dict(revision=rev) if source == "hub" else {}
        model = AutoModelForCausalLM.from_pretrained(
            spec, dtype=tdtype, attn_implementation=attn, local_files_only=True, **kw
        ).to(device)
        try:
            tok = transformers.AutoTokenizer.from_pretrained(spec, local_files_only=True, **kw)
        except (OSError, ValueError):
            tok = ByteTokenizer(vocab_size=model.config.vocab_size)
        random_w, init_dev = False, None
    model.eval()
    info = ModelInfo(
        model=name,
        source=source,
        revision=rev,
        dtype=str(tdtype).removeprefix("torch."),
        weights_random=random_w,
        seed=seed,
        init_device=init_dev,
        weights_sha256=_checked_sha256(model, spec, tdtype) if checksum else "not-computed",
        n_params=sum(p.numel() for p in model.parameters()),
        attn_implementation=attn,
        tokenizer=tokenizer_identity(tok),
        transformers_version=transformers.__version__,
        quantisation=quantisation,
    )
    return LoadedModel(model=model, tokenizer=tok, info=info)
