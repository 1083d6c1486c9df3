#!/usr/bin/env python3
"""Trains specd's demo model pair: a small Qwen3.5 target and a smaller draft that write Python.

Usage:
  python3 tools/train_demo.py OUTDIR [--minutes M] [--seed S] [--tiny] [--target-steps N --draft-steps N]

Runs in one go on a GPU machine (H100/H200; python3 with torch, transformers >= 5.17, tokenizers,
safetensors; no network): about 6 minutes on an H200. --tiny is a CPU smoke test (< 1 minute).

  corpus     every *.py of this Python's standard library (sysconfig stdlib path), sorted; no
             tests, site-packages, encodings tables or pydoc_data; 2 % of the files (by a hash of
             the path) are held out for evaluation. PSF-licensed (see OUTDIR/README.md).
  tokenizer  byte-level BPE (HF tokenizers): the Qwen2/3 Split regex + ByteLevel, no normalizer,
             <|endoftext|> <|im_start|> <|im_end|> at ids 0 1 2 (pad / bos / eos), vocab 4096;
             decode(encode(x)) == x is checked on every file.
  models     Qwen3_5ForCausalLM, 3:1 Gated DeltaNet : gated attention, tied embeddings; target
             ~4.3 M parameters with a Qwen3.5 MTP head (mtp.*, ~0.6 M: one gated-attention layer
             that predicts token t+2 from the target's final-normed hidden state at t and the
             embedding of token t+1; docs/mtp.md), draft 0.95 M (bf16: < 12 MB together with the
             tokenizers). --no-mtp trains the target alone.
  MTP        trained with the target (the public MTP objective): loss = CE(next token) +
             --mtp-weight x CE(token t+2 from the head); the head's forward is tools/mtp_reference.py's
             (transformers' decoder layer), its tensors saved as mtp.* into target/model.safetensors
             with mtp_num_hidden_layers = 1 in config.json.
  training   AdamW (wd 0.5), warmup + cosine, fixed seeds and data order, fp32 (TF32 matmuls; the
             models are launch-bound, bf16 autocast was slower). Steps = min(wall-clock budget
             after a short calibration, --max-epochs-*): the corpus is only ~2 M tokens, and more
             epochs only memorise it. The step counts are printed; --target-steps / --draft-steps
             reproduce a run (bit-exact on CPU; on GPU some kernels are not deterministic).

Writes:
  OUTDIR/target, OUTDIR/draft   HF checkpoints (bf16 model.safetensors, config.json,
                                generation_config.json, tokenizer.json, tokenizer_config.json)
  OUTDIR/target/refs.safetensors, refs.json
                                prompt_ids, prompt_logits (fp32 forward of the saved bf16 weights
                                on CPU, no cache), greedy_ids (32 greedy tokens, cached, CPU fp32)
  OUTDIR/samples.txt            greedy and temperature-0.7 samples of the target
  OUTDIR/metrics.json           everything measured; OUTDIR/README.md the summary, data license
  OUTDIR/LICENSE-python.txt     the stdlib's license file, when present
Log goes to stdout only: `python3 tools/train_demo.py OUT 2>&1 | tee train_demo.log`.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import pathlib
import platform
import shutil
import sys
import sysconfig
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
try:
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
except AttributeError:
    pass

import torch
import torch.nn.functional as F
import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
import safetensors
from safetensors.torch import save_file
import transformers
from transformers import DynamicCache, Qwen3_5ForCausalLM, Qwen3_5TextConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository

T0 = time.time()
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings",
             "pydoc_data"}
TEST_DIRS = {"test", "tests", "idle_test"}
SAMPLE_PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\ndef main(argv):\n",
    'class Stack:\n    """A simple last-in, first-out stack."""\n\n    def __init__(self):\n',
]


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def fmt_params(n):
    return f"{n / 1e6:.3f}M"


# ----------------------------------------------------------------------------------------- corpus

def heldout(rel):
    """Fixed ~2 % of the files, by a hash of the path relative to the stdlib folder."""
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:8], 16) % 50 == 0


def load_corpus(include_tests, max_files):
    lib = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    skip = SKIP_DIRS - (TEST_DIRS if include_tests else set())
    files, skipped = [], 0
    for p in sorted(lib.rglob("*.py"), key=lambda q: q.relative_to(lib).as_posix()):
        rel = p.relative_to(lib).as_posix()
        parts = rel.split("/")
        if any(d in skip or d.startswith("config-") for d in parts[:-1]) or parts[-1].startswith("_sysconfigdata"):
            continue
        if not p.is_file():
            continue
        try:
            text = p.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            skipped += 1
            continue
        if text.strip():
            files.append((rel, text))
    if max_files:
        files = files[:max_files]
    train = [(r, t) for r, t in files if not heldout(r)]
    held = [(r, t) for r, t in files if heldout(r)]
    if not held:  # tiny runs: make sure something is held out
        held, train = train[-1:], train[:-1]
    return lib, train, held, skipped


# -------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts, vocab_size, max_bytes):
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    sub, n = [], 0
    for t in texts:  # a deterministic prefix of the (sorted) training files
        if n >= max_bytes:
            break
        sub.append(t)
        n += len(t.encode("utf-8"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sub, trainer, length=len(sub))
    # Qwen3's tokenizer.json layout exactly (the decoder's flags and the BPE affixes as Qwen writes them).
    d = json.loads(tok.to_str())
    d["normalizer"] = None
    d["decoder"] = dict(BYTE_LEVEL)
    d["post_processor"] = dict(BYTE_LEVEL)
    d["model"]["continuing_subword_prefix"] = ""
    d["model"]["end_of_word_suffix"] = ""
    d["model"]["ignore_merges"] = False
    return d, n


def tokenizer_config(max_len):
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, c in enumerate(SPECIALS)},
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": max_len,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
        # Qwen3.5's own chat template (the demo is a Qwen3.5-architecture model), as shipped.
        "chat_template": (ROOT / "tests/tokenizer/data/qwen35_chat_template.jinja").read_text("utf-8"),
    }


def write_tokenizer(d, folder, max_len):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n",
                                           "utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(max_len), indent=2) + "\n",
                                                  "utf-8")


# ----------------------------------------------------------------------------------------- models

def make_config(kind, vocab, tiny, seq_len):
    rope = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
            "mrope_section": [3, 3, 2], "mrope_interleaved": True}  # rotary_dim = 64*0.25 = 16 -> 8 pairs
    common = dict(vocab_size=vocab, head_dim=64, linear_conv_kernel_dim=4, linear_key_head_dim=32,
                  linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                  rope_parameters=rope, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                  max_position_embeddings=4096, initializer_range=0.02, attention_dropout=0.0,
                  bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    if kind == "target":
        if tiny:
            c = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                     num_key_value_heads=1)
        else:  # ~4.3 M parameters (1.05 M of them the tied embedding); MLP 288 wide so that the
            # MTP head (~0.6 M) fits the 12 MB of target/ + draft/
            c = dict(hidden_size=256, intermediate_size=288, num_hidden_layers=8, num_attention_heads=4,
                     num_key_value_heads=2)
        c["layer_types"] = (["linear_attention"] * 3 + ["full_attention"]) * (c["num_hidden_layers"] // 4)
    else:
        if tiny:
            c = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
                     num_key_value_heads=1)
        else:  # ~0.95 M parameters
            c = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1)
        c["layer_types"] = ["linear_attention", "full_attention"]
    common.update(c)
    cfg = Qwen3_5TextConfig(**common)
    cfg._attn_implementation = "sdpa"
    return cfg


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # tied embedding counted once


# ----------------------------------------------------------------------------------------- MTP head

def make_mtp_head(cfg, seed, device):
    """The Qwen3.5 MTP head (tools/mtp_reference.py: transformers' decoder layer, norms, fc)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import mtp_reference
    head = mtp_reference.make_head(cfg, seed).to(device)
    head.train()
    return head


class FullAttnInputs:
    """Captures what a full-attention layer of the target receives (rotary cos/sin, mask), so the
    head's layer runs with exactly the target's positions and causal masking."""

    def __init__(self, model):
        full = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"][0]
        self.got = {}
        self.h = model.model.layers[full].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _mod, args, kwargs):
        self.got = {k: kwargs.get(k) for k in ("position_embeddings", "attention_mask", "position_ids")}

    def remove(self):
        self.h.remove()


def mtp_logits(model, head, hidden, next_ids, inputs):
    """Head row t: hidden h_t (final-normed, [B, T', H]) with token x_{t+1} -> logits of x_{t+2}.
    `inputs`: FullAttnInputs.got of a target forward at least T' long."""
    T = hidden.shape[1]
    emb = model.get_input_embeddings()(next_ids)
    z = head.fc(torch.cat([head.pre_fc_norm_embedding(emb), head.pre_fc_norm_hidden(hidden)], dim=-1))
    cos, sin = inputs["position_embeddings"]
    mask = inputs["attention_mask"]
    if torch.is_tensor(mask):
        mask = mask[..., :T, :T]
    pos = inputs["position_ids"]
    if torch.is_tensor(pos):
        pos = pos[..., :T]
    out = head.layer(z, position_embeddings=(cos[..., :T, :], sin[..., :T, :]), attention_mask=mask,
                     position_ids=pos, use_cache=False)
    z = out[0] if isinstance(out, tuple) else out
    return model.lm_head(head.norm(z))


def target_and_mtp_loss(model, head, x, y, mtp_weight):
    """CE of the next token, plus mtp_weight x CE of the head's token t+2 (both means over rows)."""
    cap = FullAttnInputs(model)
    try:
        h = model.model(input_ids=x, use_cache=False).last_hidden_state  # final-normed
    finally:
        cap.remove()
    logits = model.lm_head(h)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    ml = mtp_logits(model, head, h[:, :-1], x[:, 1:], cap.got)
    lm = F.cross_entropy(ml.float().reshape(-1, ml.shape[-1]), y[:, 1:].reshape(-1))
    return loss + mtp_weight * lm, loss, lm


@torch.no_grad()
def eval_mtp(model, head, stream, seq_len, device, batch=64):
    """Held-out CE of the head (token t+2) and its top-1 accuracy, over the eval windows."""
    model.eval()
    head.eval()
    n = (stream.numel() - 1) // seq_len
    tot, cnt, hit = 0.0, 0, 0
    for i in range(0, n, batch):
        idx = torch.arange(i, min(n, i + batch))
        w = torch.stack([stream[j * seq_len:(j + 1) * seq_len + 1] for j in idx.tolist()]).to(device)
        x, y = w[:, :-1], w[:, 1:]
        _, _, lm = target_and_mtp_loss(model, head, x, y, 1.0)
        rows = x.shape[0] * (x.shape[1] - 1)
        tot += float(lm) * rows
        cnt += rows
        cap = FullAttnInputs(model)
        try:
            h = model.model(input_ids=x, use_cache=False).last_hidden_state
        finally:
            cap.remove()
        hit += int((mtp_logits(model, head, h[:, :-1], x[:, 1:], cap.got).argmax(-1) == y[:, 1:]).sum())
    return tot / cnt, hit / cnt


def add_mtp_to_checkpoint(folder, head, cfg):
    """mtp.* (bf16) into the saved model.safetensors, mtp_num_hidden_layers = 1 into config.json."""
    sys.path.insert(0, str(ROOT / "tools"))
    import mtp_reference
    from safetensors.torch import load_file
    f = folder / "model.safetensors"
    t = load_file(str(f))
    for k, v in mtp_reference.head_tensors(head.float().cpu(), cfg).items():
        t[k] = v.detach().to(torch.bfloat16).contiguous()
    save_file(t, str(f), metadata={"format": "pt"})
    c = json.loads((folder / "config.json").read_text("utf-8"))
    c["mtp_num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n", "utf-8")
    f.chmod(0o644)


# --------------------------------------------------------------------------------------- training

class Batches:
    """Deterministic packed batches: per epoch a seeded random phase and a seeded chunk order."""

    def __init__(self, stream, seq_len, batch, seed, device):
        self.s = stream.to(device)
        self.T, self.B, self.seed, self.dev = seq_len, batch, seed, device
        self.epoch, self.order, self.pos = -1, None, 0
        self.ar = torch.arange(seq_len + 1, device=device)

    def _new_epoch(self):
        self.epoch += 1
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        phase = int(torch.randint(0, self.T, (1,), generator=g))
        n = (self.s.numel() - 1 - phase) // self.T
        self.order = (phase + torch.randperm(n, generator=g) * self.T).to(self.dev)
        self.pos = 0

    def next(self):
        if self.order is None or self.pos + self.B > self.order.numel():
            self._new_epoch()
        starts = self.order[self.pos:self.pos + self.B]
        self.pos += self.B
        chunk = self.s[starts[:, None] + self.ar[None, :]]
        return chunk[:, :-1], chunk[:, 1:]


def lr_at(step, total, warmup, peak, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def train_model(name, model, stream, a, budget_s, fixed_steps, peak_lr, max_epochs, seed, device, held=None,
                head=None):
    torch.manual_seed(seed)
    model.train()
    named = list(model.named_parameters()) + ([("mtp." + n, p) for n, p in head.named_parameters()] if head else [])
    decay = [p for n, p in named if p.dim() >= 2 and "embed" not in n and "conv1d" not in n]
    rest = [p for n, p in named if not (p.dim() >= 2 and "embed" not in n and "conv1d" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": rest, "weight_decay": 0.0}],
                            lr=peak_lr, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda")
    data = Batches(stream, a.seq_len, a.batch, seed, device)
    use_amp = device == "cuda" and a.precision == "bf16"
    warmup = a.warmup
    calib = max(5, min(a.calib_steps, warmup))  # calibration steps lie inside the warmup: same for any total
    if warmup < calib:
        sys.exit("--warmup must be >= 5 and >= --calib-steps")
    total = fixed_steps if fixed_steps else None
    tok_per_step = a.batch * a.seq_len
    # The corpus is small (~2 M tokens): more than a few epochs only memorises it, so the step count
    # is the smaller of what the time budget allows and max_epochs passes over the data.
    cap = max(calib + 1, int(max_epochs * stream.numel() / tok_per_step))
    log(f"{name}: training, batch {a.batch} x {a.seq_len} tokens, peak lr {peak_lr}, warmup {warmup}, wd {a.wd}, "
        + (f"{total} steps (fixed)" if total else f"budget {budget_s:.0f} s or {max_epochs} epochs = {cap} steps"))
    curve = []

    def held_eval(step):
        if held is not None and a.eval_every and (step % a.eval_every == 0 or step == total):
            l, _ = eval_loss(model, held, a.seq_len, device)
            model.train()
            curve.append({"step": step, "epoch": round(step * tok_per_step / stream.numel(), 2),
                          "heldout_loss": round(l, 4)})
            log(f"{name}: step {step:6d} held-out loss {l:.4f} (epoch {curve[-1]['epoch']:.2f})")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    t_start = time.time()
    t_calib0 = None
    loss_acc = torch.zeros((), device=device)
    n_acc, t_log, step, history, stopped_early = 0, time.time(), 0, [], False
    while True:
        if total is None and step == calib:
            sync()
            now = time.time()
            per_step = (now - t_calib0) / (calib - 3)
            left = budget_s - (now - t_start)
            by_time = max(calib + 1, calib + int(left / per_step))
            total = min(by_time, cap)
            log(f"{name}: calibrated {per_step * 1000:.1f} ms/step ({tok_per_step / per_step / 1e3:.0f}k tok/s): "
                f"{by_time} steps fit the budget, {cap} make {max_epochs} epochs -> {total} steps in total "
                f"(reproduce with --{name}-steps {total})")
        if total is not None and step >= total:
            break
        if step == 3:
            sync()
            t_calib0 = time.time()
        lr = lr_at(step, total if total else 10 ** 9, warmup, peak_lr)
        for gi in opt.param_groups:
            gi["lr"] = lr
        x, y = data.next()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            if head is None:
                logits = model(input_ids=x, use_cache=False).logits
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            else:
                loss, _, _ = target_and_mtp_loss(model, head, x, y, a.mtp_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        loss_acc += loss.detach()
        n_acc += 1
        step += 1
        if step % a.log_every == 0 or step == total or (a.eval_every and step % a.eval_every == 0):
            sync()
            now = time.time()
            l = float(loss_acc) / n_acc
            tps = n_acc * tok_per_step / (now - t_log)
            history.append({"step": step, "loss": round(l, 4), "lr": lr, "tok_s": round(tps)})
            log(f"{name}: step {step:6d}/{total} loss {l:.4f} lr {lr:.2e} {tps / 1e3:7.0f}k tok/s "
                f"epoch {data.epoch}")
            loss_acc.zero_()
            n_acc, t_log = 0, now
            held_eval(step)
            if now - t_start > 1.25 * budget_s + 20 and not fixed_steps:
                log(f"{name}: WARNING: over budget, stopping at step {step} (not reproducible by step count)")
                stopped_early = True
                break
    sync()
    wall = time.time() - t_start
    if held is not None and a.eval_every and (not curve or curve[-1]["step"] != step):
        l, _ = eval_loss(model, held, a.seq_len, device)
        curve.append({"step": step, "epoch": round(step * tok_per_step / stream.numel(), 2), "heldout_loss": round(l, 4)})
    tokens = step * tok_per_step
    log(f"{name}: {step} steps, {tokens / 1e6:.1f}M tokens ({tokens / stream.numel():.1f} epochs) in {wall:.1f} s "
        f"= {tokens / wall / 1e3:.0f}k tok/s")
    model.eval()
    if head is not None:
        head.eval()
    return {"steps": step, "planned_steps": total, "tokens": tokens, "epochs": tokens / stream.numel(),
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall), "batch": a.batch,
            "seq_len": a.seq_len, "peak_lr": peak_lr, "warmup": warmup, "stopped_early": stopped_early,
            "precision": "bf16 autocast, fp32 master" if use_amp else "fp32 (TF32 matmuls on GPU)",
            "max_epochs": max_epochs, "weight_decay": a.wd, "history": history, "heldout_curve": curve,
            "wall_s_excludes": "held-out evaluations during training"}


@torch.no_grad()
def eval_loss(model, stream, seq_len, device, batch=64):
    """Mean token cross-entropy (nats) over non-overlapping windows of the held-out stream."""
    model.eval()
    n = (stream.numel() - 1) // seq_len
    s = stream.to(device)
    tot, cnt = 0.0, 0
    for i in range(0, n, batch):
        starts = torch.arange(i, min(n, i + batch), device=device) * seq_len
        idx = starts[:, None] + torch.arange(seq_len + 1, device=device)[None, :]
        c = s[idx]
        logits = model(input_ids=c[:, :-1], use_cache=False).logits.float()
        tot += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), c[:, 1:].reshape(-1), reduction="sum"))
        cnt += c[:, 1:].numel()
    return tot / max(1, cnt), cnt


# -------------------------------------------------------------------------------- save and reload

def save_checkpoint(model, folder, tok_json, max_len):
    m16 = copy.deepcopy(model).cpu().to(torch.bfloat16)
    m16.save_pretrained(str(folder), safe_serialization=True)
    write_tokenizer(tok_json, folder, max_len)
    for f in folder.iterdir():
        f.chmod(0o644)


def folder_bytes(folder, exclude=("refs.safetensors", "refs.json")):
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name not in exclude}


@torch.no_grad()
def reload_and_check(folder, model, sample_ids):
    """Loads the checkpoint back with transformers; its fp32 logits must equal those of the trained
    model with its parameters rounded to bf16 (buffers such as RoPE's inv_freq stay fp32)."""
    r, info = Qwen3_5ForCausalLM.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
    r.eval()
    ref = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    a = r(input_ids=sample_ids, use_cache=False).logits
    b = ref(input_ids=sample_ids, use_cache=False).logits
    diff = float((a - b).abs().max())
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    return r, diff, bad


# ------------------------------------------------------------------------------ reference outputs

@torch.no_grad()
def write_refs(model, cfg, prompt_ids, folder, tok, n_greedy=32):
    """CPU fp32 refs from the reloaded bf16 checkpoint (upcast): full forward and cached greedy."""
    model = model.cpu().float().eval()
    prompt = prompt_ids[None].cpu()
    refs = {"prompt_ids": prompt_ids.cpu().to(torch.int64)}
    full = model(input_ids=prompt, use_cache=False).logits[0].float()
    refs["prompt_logits"] = full.contiguous()
    cache = DynamicCache(config=cfg)
    logits = model(input_ids=prompt, past_key_values=cache, use_cache=True).logits[0, -1]
    prefill_diff = float((logits - full[-1]).abs().max())
    toks, margins = [], []
    for _ in range(n_greedy):
        top2 = torch.topk(logits.float(), 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        nxt = int(top2.indices[0])
        toks.append(nxt)
        logits = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True).logits[0, -1]
    refs["greedy_ids"] = torch.tensor(toks, dtype=torch.int64)
    # cross-checks: uncached re-forward greedy and HF generate must give the same tokens
    seq = prompt.clone()
    for _ in range(n_greedy):
        nxt = model(input_ids=seq, use_cache=False).logits[0, -1].argmax()
        seq = torch.cat([seq, nxt.view(1, 1)], 1)
    nocache = seq[0, prompt.shape[1]:].tolist()
    g = model.generate(prompt, max_new_tokens=n_greedy, do_sample=False, pad_token_id=PAD_ID)
    g_new = g[0, prompt.shape[1]:].tolist()  # may stop early at eos
    meta = {"case": "demo_target", "transformers": transformers.__version__, "torch": torch.__version__,
            "model": "target (bf16 safetensors in this folder), upcast to fp32, CPU, attn sdpa",
            "prompt_text": tok.decode(prompt_ids.tolist(), skip_special_tokens=False),
            "greedy_text": tok.decode(toks, skip_special_tokens=False),
            "prompt_logits": "uncached forward over prompt_ids (use_cache=False)",
            "greedy_ids": f"{n_greedy} greedy tokens after the prompt: cached prefill, then one token per step",
            "prefill_last_vs_full_max_abs_diff": prefill_diff,
            "greedy_min_top2_margin": min(margins),
            "greedy_top2_margins": [round(m, 5) for m in margins],
            "nocache_greedy_matches": nocache == toks,
            "generate_matches_loop": g_new == toks[:len(g_new)]}
    save_file({k: v.contiguous() for k, v in refs.items()}, str(folder / "refs.safetensors"))
    (folder / "refs.safetensors").chmod(0o644)
    meta["tensors"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in refs.items()}
    (folder / "refs.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", "utf-8")
    return meta


# --------------------------------------------------------------------------- speculative decoding

class ModelDrafter:
    """Draft model proposals by full re-forwards (right-padded batch; causal, so padding is inert)."""

    def __init__(self, model, device):
        self.m, self.dev = model, device

    @torch.no_grad()
    def propose(self, ctxs, ks, temp, gen):
        rows = [i for i, k in enumerate(ks) if k > 0]
        drafts = [[] for _ in ctxs]
        qs = [[] for _ in ctxs]
        for j in range(max(ks) if ks else 0):
            rows = [i for i in rows if ks[i] > j]
            if not rows:
                break
            seqs = [ctxs[i] + drafts[i] for i in rows]
            x = pad_batch(seqs, self.dev)
            logits = self.m(input_ids=x, use_cache=False).logits
            last = torch.tensor([len(s) - 1 for s in seqs], device=self.dev)
            lg = logits[torch.arange(len(rows), device=self.dev), last].float().cpu()
            if temp == 0:
                nxt = lg.argmax(-1).tolist()
                for i, t in zip(rows, nxt):
                    drafts[i].append(t)
            else:
                q = torch.softmax(lg / temp, -1)
                nxt = torch.multinomial(q, 1, generator=gen)[:, 0].tolist()
                for r, (i, t) in enumerate(zip(rows, nxt)):
                    drafts[i].append(t)
                    qs[i].append(q[r])
        return drafts, qs


class NgramDrafter:
    """Prompt lookup exactly as engine/speculative/ngram_drafter.cpp (max_n 4, min_n 1); one-hot proposals."""

    def __init__(self, max_n=4, min_n=1):
        self.max_n, self.min_n = max_n, min_n

    def propose_one(self, ctx, k):
        n_ctx = len(ctx)
        if k <= 0:
            return []
        for n in range(min(self.max_n, n_ctx - 1), self.min_n - 1, -1):
            suffix = ctx[n_ctx - n:]
            for start in range(n_ctx - n - 1, -1, -1):
                if ctx[start:start + n] == suffix:
                    frm = start + n
                    return ctx[frm:frm + min(k, n_ctx - frm)]
        return []

    def propose(self, ctxs, ks, temp, gen):
        return [self.propose_one(c, k) for c, k in zip(ctxs, ks)], [[] for _ in ctxs]


def pad_batch(seqs, device):
    L = max(len(s) for s in seqs)
    x = torch.full((len(seqs), L), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return x.to(device)


@torch.no_grad()
def spec_decode(target, drafter, prompts, new_tokens, k, temp, seed, device):
    """The standard speculative loop (greedy: accept while the target's argmax agrees; sampling:
    accept with min(1, p/q), resample the residual on rejection, bonus token when all pass), with
    full re-forwards. Per step k_eff = min(k, remaining - 1) as engine/speculative/engine.cpp does."""
    gen = torch.Generator().manual_seed(seed)
    ctxs = [list(p) for p in prompts]
    ends = [len(p) + new_tokens for p in prompts]
    st = new_stats(k)
    while True:
        act = [i for i in range(len(ctxs)) if len(ctxs[i]) < ends[i]]
        if not act:
            break
        ks = [min(k, ends[i] - len(ctxs[i]) - 1) for i in act]
        drafts, qs = drafter.propose([ctxs[i] for i in act], ks, temp, gen)
        seqs = [ctxs[i] + d for i, d in zip(act, drafts)]
        logits = target(input_ids=pad_batch(seqs, device), use_cache=False).logits
        m_max = max(len(d) for d in drafts)
        pos = torch.tensor([[min(len(ctxs[i]) - 1 + j, len(s) - 1) for j in range(m_max + 1)]
                            for i, s in zip(act, seqs)], device=device)
        pl = logits.gather(1, pos[:, :, None].expand(-1, -1, logits.shape[-1])).float().cpu()
        for r, i in enumerate(act):
            d, m = drafts[r], len(drafts[r])
            a = 0
            if temp == 0:
                tg = pl[r, :m + 1].argmax(-1).tolist()
                while a < m and tg[a] == d[a]:
                    a += 1
                nxt = tg[a]
            else:
                p = torch.softmax(pl[r, :m + 1] / temp, -1)
                nxt = None
                for j in range(m):
                    x = d[j]
                    q = qs[r][j] if qs[r] else None
                    qx = float(q[x]) if q is not None else 1.0
                    if float(torch.rand((), generator=gen)) < min(1.0, float(p[j, x]) / qx):
                        a += 1
                        continue
                    if q is None:
                        res = p[j].clone()
                        res[x] = 0
                    else:
                        res = (p[j] - q).clamp_min(0)
                    if float(res.sum()) <= 0:
                        res = p[j]
                    nxt = int(torch.multinomial(res / res.sum(), 1, generator=gen))
                    break
                if nxt is None:
                    nxt = int(torch.multinomial(p[m], 1, generator=gen))
            ctxs[i] = ctxs[i] + d[:a] + [nxt]
            record(st, m, a)
    outs = [c[len(p):e] for c, p, e in zip(ctxs, prompts, ends)]
    return outs, st


@torch.no_grad()
def plain_greedy(target, prompts, new_tokens, device):
    x = pad_batch(prompts, device)  # all prompts have the same length
    for _ in range(new_tokens):
        nxt = target(input_ids=x, use_cache=False).logits[:, -1].argmax(-1)
        x = torch.cat([x, nxt[:, None]], 1)
    return [row[len(p):].tolist() for row, p in zip(x.cpu(), prompts)]


def new_stats(k):
    return {"proposed": 0, "accepted": 0, "steps": 0, "drafted_at": [0] * max(1, k), "accepted_at": [0] * max(1, k)}


def record(st, m, a):
    st["proposed"] += m
    st["accepted"] += a
    st["steps"] += 1
    for j in range(m):
        st["drafted_at"][j] += 1
    for j in range(a):
        st["accepted_at"][j] += 1


@torch.no_grad()
def greedy_replay(draft, prompts, ref, k_values, device):
    """Greedy speculation, exactly and cheaply: the output is the target's greedy sequence G, and while
    the drafts agree with G the drafter sees G's prefix. So a draft model accepts, at each step from
    position p, the run of positions t >= p where its teacher-forced argmax on G equals G[t] (capped at
    k_eff), and the n-gram drafter proposes from G[:p]. One draft forward gives every k."""
    full = [p + r for p, r in zip(prompts, ref)]
    logits = draft(input_ids=pad_batch([f[:-1] for f in full], device), use_cache=False).logits
    dpred = logits.argmax(-1).cpu().tolist()  # dpred[i][t - 1] predicts full[i][t]
    ng = NgramDrafter()
    out = {}
    for dname in ("draft", "ngram"):
        for k in k_values:
            st = new_stats(k)
            for i, (p, f) in enumerate(zip(prompts, full)):
                pos, end = len(p), len(f)
                while pos < end:
                    kr = min(k, end - pos - 1)
                    if dname == "draft":
                        m, a = kr, 0
                        while a < kr and dpred[i][pos + a - 1] == f[pos + a]:
                            a += 1
                    else:
                        d = ng.propose_one(f[:pos], kr)
                        m, a = len(d), 0
                        while a < m and d[a] == f[pos + a]:
                            a += 1
                    record(st, m, a)
                    pos += a + 1
            out[(dname, k)] = st
    return out


def summarize(st):
    rate = st["accepted"] / st["proposed"] if st["proposed"] else 0.0
    mal = (st["accepted"] + st["steps"]) / st["steps"] if st["steps"] else 0.0
    per_pos = [round(a / d, 4) if d else None for a, d in zip(st["accepted_at"], st["drafted_at"])]
    return {"acceptance_rate": round(rate, 4), "mean_acceptance_length": round(mal, 4),
            "proposed": st["proposed"], "accepted": st["accepted"], "verify_steps": st["steps"],
            "per_position_acceptance": per_pos}


def acceptance_prompts(held, tok, n_prompts, prompt_len):
    """Deterministic prompts from the held-out files, each starting at a line start."""
    out, fracs = [], [0.3, 0.6, 0.15, 0.45, 0.75, 0.9]
    for f in fracs:
        for rel, text in held:
            lines = text.splitlines(keepends=True)
            start = int(len(lines) * f)
            while start < len(lines) and not lines[start].strip():
                start += 1
            ids = tok.encode("".join(lines[start:]), add_special_tokens=False).ids
            if len(ids) >= prompt_len:
                out.append((rel, ids[:prompt_len]))
            if len(out) >= n_prompts:
                return out
    return out


def acceptance_tables(target, draft, held, tok, a, device):
    prompts_meta = acceptance_prompts(held, tok, a.accept_prompts, a.accept_prompt_len)
    prompts = [p for _, p in prompts_meta]
    ks = list(range(1, a.max_k + 1))
    log(f"acceptance: {len(prompts)} held-out prompts of {a.accept_prompt_len} tokens, {a.accept_new} new tokens, "
        f"k = 1..{a.max_k}")
    t0 = time.time()
    ref = plain_greedy(target, prompts, a.accept_new, device)
    res = {"prompts": len(prompts), "prompt_len": a.accept_prompt_len, "new_tokens": a.accept_new,
           "prompt_files": sorted({r for r, _ in prompts_meta}), "rows": [],
           "method": {"greedy": "replay of the target's greedy output (exact for greedy; checked against the "
                                "literal loop at k = %d)" % a.check_k,
                      "temperature 0.7": "literal speculative sampling loop (full re-forwards), seed per k"}}
    replay = greedy_replay(draft, prompts, ref, ks, device)
    drafters = {"draft": ModelDrafter(draft, device), "ngram": NgramDrafter()}
    checks = {}
    for dname, drafter in drafters.items():  # the literal greedy loop at one k must agree with the replay
        ts = time.time()
        outs, st = spec_decode(target, drafter, prompts, a.accept_new, a.check_k, 0.0, a.seed, device)
        same = all(st[x] == replay[(dname, a.check_k)][x] for x in ("proposed", "accepted", "steps"))
        eq = sum(o == r for o, r in zip(outs, ref))
        checks[dname] = {"k": a.check_k, "literal": summarize(st), "replay_agrees": same,
                         "equals_plain_greedy": eq, "wall_s": round(time.time() - ts, 2)}
        log(f"  check {dname:5s} greedy k={a.check_k}: literal loop acceptance {summarize(st)['acceptance_rate']:.3f}"
            f", replay agrees: {same}, output == plain greedy {eq}/{len(prompts)} ({time.time() - ts:.1f}s)")
    res["greedy_checks"] = checks
    for dname in drafters:
        for k in ks:
            row = {"drafter": dname, "temperature": 0.0, "k": k, **summarize(replay[(dname, k)])}
            res["rows"].append(row)
            log(f"  {dname:5s} T=0.0 k={k}: acceptance {row['acceptance_rate']:.3f} "
                f"mean length {row['mean_acceptance_length']:.3f}")
    for dname, drafter in drafters.items():
        for k in ks:
            ts = time.time()
            outs, st = spec_decode(target, drafter, prompts, a.accept_new, k, 0.7, a.seed + k, device)
            row = {"drafter": dname, "temperature": 0.7, "k": k, **summarize(st), "wall_s": round(time.time() - ts, 2)}
            res["rows"].append(row)
            log(f"  {dname:5s} T=0.7 k={k}: acceptance {row['acceptance_rate']:.3f} "
                f"mean length {row['mean_acceptance_length']:.3f} ({row['wall_s']:.1f}s)")
    res["wall_s"] = round(time.time() - t0, 1)
    return res


def print_acceptance_table(res):
    lines = []
    for temp in (0.0, 0.7):
        lines.append(f"temperature {temp}: acceptance rate / mean acceptance length (tokens per target step)")
        lines.append("  k  | draft model      | n-gram (n<=4)")
        for k in sorted({r["k"] for r in res["rows"]}):
            cells = []
            for d in ("draft", "ngram"):
                r = next(x for x in res["rows"] if x["drafter"] == d and x["temperature"] == temp and x["k"] == k)
                cells.append(f"{r['acceptance_rate']:.3f} / {r['mean_acceptance_length']:.2f}")
            lines.append(f"  {k:<2d} | {cells[0]:16s} | {cells[1]}")
    return lines


# ----------------------------------------------------------------------------------------- samples

@torch.no_grad()
def write_samples(model, tok, path, n_new, seed, device):
    out = []
    for mode in ("greedy", "temperature 0.7"):
        for i, prompt in enumerate(SAMPLE_PROMPTS):
            ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids], device=device)
            torch.manual_seed(seed + i)
            kw = dict(do_sample=False) if mode == "greedy" else dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0)
            g = model.generate(ids, max_new_tokens=n_new, pad_token_id=PAD_ID, eos_token_id=EOS_ID, **kw)
            text = tok.decode(g[0].tolist(), skip_special_tokens=False)
            out.append(f"===== {mode}, sample {i + 1} ({g.shape[1] - ids.shape[1]} new tokens) =====\n{text}\n")
    path.write_text("\n".join(out), "utf-8")
    path.chmod(0o644)
    return out


# ------------------------------------------------------------------------------------------ bench

def bench(a, device):
    """--bench: ms per training step for both models over batch sizes and precisions (random tokens)."""
    V = a.vocab
    for kind in ("target", "draft"):
        cfg = make_config(kind, V, a.tiny, a.seq_len)
        for prec in ("bf16", "fp32"):
            torch.backends.cuda.matmul.allow_tf32 = prec == "fp32"
            for B in (32, 64, 128, 256):
                torch.manual_seed(0)
                m = Qwen3_5ForCausalLM(cfg).float().to(device).train()
                opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=device == "cuda")
                x = torch.randint(3, V, (B, a.seq_len + 1), device=device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for i in range(13):
                    t = time.time()
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda" and prec == "bf16"):
                        lg = m(input_ids=x[:, :-1], use_cache=False).logits
                    loss = F.cross_entropy(lg.float().reshape(-1, V), x[:, 1:].reshape(-1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                    opt.step()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.time() - t)
                ms = sorted(times[3:])[len(times[3:]) // 2] * 1000
                mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else 0
                log(f"bench {kind} {prec} batch {B:3d} x {a.seq_len}: {ms:7.1f} ms/step "
                    f"{B * a.seq_len / ms:8.1f}k tok/s  peak {mem:.1f} GiB")
        m.eval()
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad():
            x = torch.randint(3, V, (20, 136), device=device)
            for i in range(8):
                if i == 3:
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t = time.time()
                m(input_ids=x, use_cache=False)
            if device == "cuda":
                torch.cuda.synchronize()
            log(f"bench {kind} fp32 forward 20 x 136 (speculation loop): {(time.time() - t) / 5 * 1000:.1f} ms")


# -------------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--minutes", type=float, default=6.0,
                    help="training time cap, 3/4 target and 1/4 draft (the epoch caps usually end it sooner)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tiny", action="store_true", help="tiny models and corpus, for a CPU smoke test")
    ap.add_argument("--target-steps", type=int, default=0, help="fixed step count (reproduces a run)")
    ap.add_argument("--draft-steps", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--wd", type=float, default=0.5, help="AdamW weight decay of the matrices")
    # Held-out loss on an H200 (batch 32, wd 0.5, cosine over the run): the target's is lowest near
    # 5-6 epochs and rises after; the draft's still falls slowly at 12.
    ap.add_argument("--max-epochs-target", type=float, default=5.0)
    ap.add_argument("--max-epochs-draft", type=float, default=12.0)
    ap.add_argument("--eval-every", type=int, default=250, help="held-out loss every N steps (log only)")
    ap.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="CPU threads of torch")
    ap.add_argument("--train-only", action="store_true", help="stop after training and the held-out loss")
    ap.add_argument("--lr-target", type=float, default=2e-3)
    ap.add_argument("--lr-draft", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--calib-steps", type=int, default=25)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="fp32",
                    help="bf16: autocast with fp32 master weights; fp32: fp32 (TF32 matmuls)")
    ap.add_argument("--include-tests", action="store_true", help="also train on the stdlib's test folders")
    ap.add_argument("--max-files", type=int, default=0)
    ap.add_argument("--tok-max-mb", type=float, default=20.0, help="BPE trained on at most this much text")
    ap.add_argument("--max-mb", type=float, default=12.0, help="target/ + draft/ size limit (10^6 bytes)")
    ap.add_argument("--accept-prompts", type=int, default=20)
    ap.add_argument("--accept-prompt-len", type=int, default=64)
    ap.add_argument("--accept-new", type=int, default=64)
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--check-k", type=int, default=4, help="k of the literal greedy loop checked against the replay")
    ap.add_argument("--sample-tokens", type=int, default=200)
    ap.add_argument("--no-mtp", action="store_true", help="train the target without an MTP head")
    ap.add_argument("--mtp-weight", type=float, default=0.3, help="weight of the MTP head's loss")
    ap.add_argument("--ref-prompt-len", type=int, default=48)
    ap.add_argument("--ref-greedy", type=int, default=32)
    ap.add_argument("--bench", action="store_true", help="only time training steps (random data) and exit")
    a = ap.parse_args()
    if a.tiny:
        for k, v in dict(vocab=1024, seq_len=64, batch=8, warmup=10, calib_steps=8, log_every=5, eval_every=20,
                         max_files=a.max_files or 120, accept_prompts=4, accept_prompt_len=32, accept_new=16,
                         max_k=4, check_k=3, sample_tokens=40).items():
            if ap.get_default(k.replace("-", "_")) == getattr(a, k):
                setattr(a, k, v)
    out = pathlib.Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "fp32"
    torch.backends.cudnn.allow_tf32 = a.precision == "fp32"
    torch.set_num_threads(a.threads)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    M = {"args": vars(a), "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                       "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                                       "safetensors": safetensors.__version__},
         "device": device, "gpu": gpu, "cpu_count": os.cpu_count(), "timings_s": {}}
    log(f"train_demo: torch {torch.__version__}, transformers {transformers.__version__}, tokenizers "
        f"{tokenizers.__version__}, device {device} {gpu or ''}, seed {a.seed}")
    if a.bench:
        return bench(a, device)

    # 1. corpus
    t = time.time()
    lib, train, held, skipped = load_corpus(a.include_tests, a.max_files)
    tb = sum(len(x.encode("utf-8")) for _, x in train)
    hb = sum(len(x.encode("utf-8")) for _, x in held)
    log(f"corpus: {lib}: {len(train)} training files ({tb / 1e6:.2f} MB), {len(held)} held-out files "
        f"({hb / 1e6:.2f} MB), {skipped} not UTF-8 skipped")
    M["corpus"] = {"stdlib": str(lib), "python": platform.python_version(), "train_files": len(train),
                   "train_bytes": tb, "heldout_files": len(held), "heldout_bytes": hb,
                   "heldout": [r for r, _ in held], "include_tests": a.include_tests, "skipped_not_utf8": skipped,
                   "license": "Python Software Foundation License (PSF-2.0)"}

    # 2. tokenizer
    tok_json, tok_bytes = train_tokenizer([x for _, x in train], a.vocab, int(a.tok_max_mb * 1e6))
    tok_dir = out / "tokenizer"
    write_tokenizer(tok_json, tok_dir, 4096)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    V = tok.get_vocab_size()
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2], "special tokens must be ids 0, 1, 2"
    enc_train = tok.encode_batch([x for _, x in train], add_special_tokens=False)
    enc_held = tok.encode_batch([x for _, x in held], add_special_tokens=False)
    bad = [r for (r, x), e in zip(held + train, enc_held + enc_train)
           if tok.decode(e.ids, skip_special_tokens=False) != x]
    if bad:
        sys.exit(f"tokenizer round trip FAILED for {len(bad)} files, e.g. {bad[:5]}")
    for s in ["def main():\n    return 0\n", "Hello, wörld! 😀 \u00e9 e\u0301 \r\n\t x", "<|im_start|>user\nhi<|im_end|>"]:
        assert tok.decode(tok.encode(s, add_special_tokens=False).ids, skip_special_tokens=False) == s, s
    train_stream = torch.tensor([t for e in enc_train for t in e.ids + [EOS_ID]], dtype=torch.long)
    held_stream = torch.tensor([t for e in enc_held for t in e.ids + [EOS_ID]], dtype=torch.long)
    M["tokenizer"] = {"vocab_size": V, "trained_on_bytes": tok_bytes, "train_tokens": train_stream.numel(),
                      "heldout_tokens": held_stream.numel(), "bytes_per_token": round(tb / train_stream.numel(), 3),
                      "roundtrip_files_checked": len(train) + len(held), "roundtrip_ok": True,
                      "normalizer": None, "pre_tokenizer": "Split(Qwen2/3 regex) + ByteLevel"}
    M["timings_s"]["corpus_and_tokenizer"] = round(time.time() - t, 1)
    log(f"tokenizer: vocab {V}, trained on {tok_bytes / 1e6:.1f} MB; {train_stream.numel() / 1e6:.2f}M training "
        f"tokens ({tb / train_stream.numel():.2f} bytes/token), {held_stream.numel()} held-out tokens; decode(encode(x)) "
        f"== x for all {len(train) + len(held)} files")

    # 3. models
    tcfg, dcfg = make_config("target", V, a.tiny, a.seq_len), make_config("draft", V, a.tiny, a.seq_len)
    torch.manual_seed(a.seed)
    target = Qwen3_5ForCausalLM(tcfg).float().to(device)
    torch.manual_seed(a.seed + 1)
    draft = Qwen3_5ForCausalLM(dcfg).float().to(device)
    head = None if a.no_mtp else make_mtp_head(tcfg, a.seed + 2, device)
    pt, pd = n_params(target), n_params(draft)
    ph = n_params(head) if head is not None else 0
    tokj = sum((tok_dir / f).stat().st_size for f in ("tokenizer.json", "tokenizer_config.json"))
    est = 2 * (pt + pd + ph) + 2 * tokj + 20_000
    log(f"target: {fmt_params(pt)} parameters, {tcfg.num_hidden_layers} layers {tcfg.layer_types}, hidden "
        f"{tcfg.hidden_size}, mlp {tcfg.intermediate_size}, attn {tcfg._attn_implementation}")
    log(f"draft:  {fmt_params(pd)} parameters, {dcfg.num_hidden_layers} layers {dcfg.layer_types}, hidden "
        f"{dcfg.hidden_size}, mlp {dcfg.intermediate_size}")
    if head is not None:
        log(f"MTP head: {fmt_params(ph)} parameters (one gated-attention layer; the target's embedding and lm_head), "
            f"loss weight {a.mtp_weight}")
    log(f"estimated size of target/ + draft/: {est / 1e6:.2f} MB (limit {a.max_mb} MB)")
    if est > a.max_mb * 1e6:
        sys.exit("models too large for the size limit: shrink them or raise --max-mb")
    M["params"] = {"target": pt, "draft": pd, "mtp": ph}
    M["config"] = {"target": {k: v for k, v in tcfg.to_dict().items() if k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "layer_types", "num_attention_heads",
        "num_key_value_heads", "head_dim", "linear_key_head_dim", "linear_value_head_dim",
        "linear_num_key_heads", "linear_num_value_heads", "vocab_size")},
        "draft": {k: v for k, v in dcfg.to_dict().items() if k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "layer_types", "num_attention_heads",
            "num_key_value_heads", "vocab_size")}}

    # 4. training
    budget = a.minutes * 60
    M["train"] = {}
    M["train"]["target"] = train_model("target", target, train_stream, a, 0.75 * budget, a.target_steps,
                                       a.lr_target, a.max_epochs_target, a.seed, device, held_stream, head=head)
    M["train"]["draft"] = train_model("draft", draft, train_stream, a, 0.25 * budget, a.draft_steps,
                                      a.lr_draft, a.max_epochs_draft, a.seed + 1, device, held_stream)
    M["timings_s"]["train_target"] = M["train"]["target"]["wall_s"]
    M["timings_s"]["train_draft"] = M["train"]["draft"]["wall_s"]
    if a.train_only:
        for n in ("target", "draft"):
            c = M["train"][n]["heldout_curve"]
            log(f"{n}: held-out curve " + " ".join(f"{x['epoch']}:{x['heldout_loss']}" for x in c))
        (out / "metrics.json").write_text(json.dumps(M, indent=1) + "\n", "utf-8")
        return

    # 5. held-out loss (fp32 master weights), save bf16, reload, held-out loss of the saved weights
    t = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    M["heldout"] = {"tokens": held_stream.numel(), "bytes": hb}
    sample = held_stream[:min(96, held_stream.numel())][None]
    models_out = {}
    for name, model in (("target", target), ("draft", draft)):
        l32, cnt = eval_loss(model, held_stream, a.seq_len, device)
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        save_checkpoint(model, folder, tok_json, 4096)
        if name == "target" and head is not None:
            ml, acc = eval_mtp(model, head, held_stream, a.seq_len, device)
            add_mtp_to_checkpoint(folder, head, model.config)
            M["heldout"]["mtp"] = {"loss_token_t_plus_2": round(ml, 4), "top1_accuracy": round(acc, 4)}
            log(f"MTP head: held-out loss {ml:.4f} nats (token t+2), top-1 accuracy {acc:.3f}; mtp.* saved")
        r, diff, bad = reload_and_check(folder, model, sample)
        bad.pop("unexpected_keys", None) if all(k.startswith("mtp.") for k in bad.get("unexpected_keys", [])) else None
        if diff != 0.0 or bad:
            log(f"WARNING: {name}: reloaded checkpoint differs: max |logit diff| {diff}, {bad}")
        r = r.to(device)
        l16, _ = eval_loss(r, held_stream, a.seq_len, device)
        bpb = l16 * cnt / math.log(2) / (hb * cnt / held_stream.numel())
        models_out[name] = r
        M["heldout"][name] = {"loss_fp32_master": round(l32, 4), "loss_saved_bf16": round(l16, 4),
                              "perplexity": round(math.exp(l16), 3), "bits_per_byte": round(bpb, 4),
                              "reload_max_abs_logit_diff": diff, "reload_key_problems": bad}
        log(f"{name}: held-out loss {l16:.4f} nats/token (saved bf16 weights; fp32 master {l32:.4f}), "
            f"ppl {math.exp(l16):.2f}, {bpb:.3f} bits/byte; reload check max|diff| {diff}")
    try:  # transformers' own tokenizer loader must read the folder the same way
        at = transformers.AutoTokenizer.from_pretrained(str(out / "target"))
        x = held[0][1]
        ok = at.decode(at(x, add_special_tokens=False)["input_ids"], skip_special_tokens=False,
                       clean_up_tokenization_spaces=False) == x
        ok = ok and at(x, add_special_tokens=False)["input_ids"] == enc_held[0].ids
        ok = ok and at.eos_token_id == EOS_ID and at.pad_token_id == PAD_ID
        M["tokenizer"]["autotokenizer_ok"] = ok
        log(f"AutoTokenizer ({type(at).__name__}): same ids and round trip on {held[0][0]}, eos/pad ids: {ok}")
    except Exception as e:  # informative only
        M["tokenizer"]["autotokenizer_ok"] = f"error: {e!r}"
        log(f"WARNING: AutoTokenizer check failed: {e!r}")
    sizes = {n: folder_bytes(out / n) for n in ("target", "draft")}
    total = sum(sum(v.values()) for v in sizes.values())
    M["sizes_bytes"] = {**sizes, "total": total, "limit": int(a.max_mb * 1e6)}
    log(f"sizes: target/ {sum(sizes['target'].values()) / 1e6:.3f} MB, draft/ {sum(sizes['draft'].values()) / 1e6:.3f}"
        f" MB, together {total / 1e6:.3f} MB (limit {a.max_mb} MB){'' if total <= a.max_mb * 1e6 else '  OVER LIMIT'}")
    for n in sizes:
        log(f"  {n}/: " + ", ".join(f"{k} {v}" for k, v in sizes[n].items()))
    M["timings_s"]["eval_save_reload"] = round(time.time() - t, 1)

    # 6. reference data for the C++ tests (CPU fp32 from the reloaded bf16 weights)
    t = time.time()
    ref_prompt = None
    for rel, text in held:
        i = text.find("\ndef ")
        if i >= 0:
            ids = tok.encode(text[i + 1:], add_special_tokens=False).ids
            if len(ids) >= a.ref_prompt_len:
                ref_prompt = (rel, ids[:a.ref_prompt_len])
                break
    if ref_prompt is None:
        ref_prompt = (held[0][0], held_stream[:a.ref_prompt_len].tolist())
    cpu_target = Qwen3_5ForCausalLM.from_pretrained(str(out / "target"), dtype=torch.float32).eval()
    meta = write_refs(cpu_target, cpu_target.config, torch.tensor(ref_prompt[1]), out / "target", tok, a.ref_greedy)
    del cpu_target
    M["refs"] = {k: meta[k] for k in ("prefill_last_vs_full_max_abs_diff", "greedy_min_top2_margin",
                                      "nocache_greedy_matches", "generate_matches_loop")}
    M["refs"]["prompt_file"] = ref_prompt[0]
    M["timings_s"]["refs"] = round(time.time() - t, 1)
    log(f"refs: prompt from {ref_prompt[0]} ({len(ref_prompt[1])} tokens), greedy {a.ref_greedy} tokens, "
        + ", ".join(f"{k} {v}" for k, v in M["refs"].items() if k != "prompt_file"))

    # 7. samples and acceptance tables (fp32 on the device, saved weights)
    t = time.time()
    write_samples(models_out["target"], tok, out / "samples.txt", a.sample_tokens, a.seed, device)
    M["timings_s"]["samples"] = round(time.time() - t, 1)
    log(f"samples: wrote {out / 'samples.txt'}")
    t = time.time()
    M["acceptance"] = acceptance_tables(models_out["target"], models_out["draft"], held, tok, a, device)
    M["timings_s"]["acceptance"] = round(time.time() - t, 1)
    table = print_acceptance_table(M["acceptance"])

    # 8. license, README, metrics, summary
    lic = lib / "LICENSE.txt"
    if lic.is_file():
        shutil.copyfile(lic.resolve(), out / "LICENSE-python.txt")
    M["timings_s"]["total"] = round(time.time() - T0, 1)
    (out / "metrics.json").write_text(json.dumps(M, indent=1) + "\n", "utf-8")
    summary = summary_lines(M, table)
    write_readme(out, M, summary, lic.is_file())
    shutil.rmtree(tok_dir, ignore_errors=True)
    print("\n".join(["", "=" * 78] + summary + ["=" * 78]), flush=True)


def summary_lines(M, table):
    tr, ho = M["train"], M["heldout"]
    L = [f"specd demo pair   torch {M['versions']['torch']}  transformers {M['versions']['transformers']}  "
         f"device {M['gpu'] or M['device']}",
         f"corpus: Python {M['corpus']['python']} stdlib, {M['corpus']['train_files']} files "
         f"({M['corpus']['train_bytes'] / 1e6:.1f} MB) train, {M['corpus']['heldout_files']} held out; "
         f"vocab {M['tokenizer']['vocab_size']}, {M['tokenizer']['bytes_per_token']} bytes/token",
         "",
         "model   params    steps   tokens   epochs  train tok/s  wall s  held-out loss  ppl     bits/byte",
         ]
    for n in ("target", "draft"):
        L.append(f"{n:7s} {M['params'][n] / 1e6:6.3f}M  {tr[n]['steps']:6d}  {tr[n]['tokens'] / 1e6:6.1f}M  "
                 f"{tr[n]['epochs']:6.2f}  {tr[n]['tokens_per_s'] / 1e3:9.0f}k  {tr[n]['wall_s']:6.1f}  "
                 f"{ho[n]['loss_saved_bf16']:13.4f}  {ho[n]['perplexity']:6.2f}  {ho[n]['bits_per_byte']:8.3f}")
    s = M["sizes_bytes"]
    if M["params"].get("mtp"):
        mt = M["heldout"].get("mtp", {})
        L.append(f"mtp     {M['params']['mtp'] / 1e6:6.3f}M  trained with the target (weight {M['args']['mtp_weight']}); "
                 f"held-out loss (token t+2) {mt.get('loss_token_t_plus_2')}, top-1 {mt.get('top1_accuracy')}")
    L.append(f"sizes: target/ {sum(s['target'].values()) / 1e6:.2f} MB + draft/ {sum(s['draft'].values()) / 1e6:.2f} MB"
             f" = {s['total'] / 1e6:.2f} MB (limit {s['limit'] / 1e6:.0f} MB)")
    r = M["refs"]
    L.append(f"refs: greedy min top-2 margin {r['greedy_min_top2_margin']:.4f}, cached == uncached greedy "
             f"{r['nocache_greedy_matches']}, generate == loop {r['generate_matches_loop']}")
    acc = M["acceptance"]
    L.append("")
    L.append(f"speculative acceptance, {acc['prompts']} held-out prompts x {acc['new_tokens']} new tokens:")
    L += table
    for d, c in acc["greedy_checks"].items():
        L.append(f"greedy check, {d} k={c['k']}: literal loop output == plain greedy {c['equals_plain_greedy']}/"
                 f"{acc['prompts']}, literal stats == replay stats: {c['replay_agrees']}")
    L.append("timings (s): " + ", ".join(f"{k} {v}" for k, v in M["timings_s"].items()))
    return L


def write_readme(out, M, summary, has_license):
    txt = f"""# specd demo model pair

Trained by `tools/train_demo.py` (seed {M['args']['seed']}) in one run on {M['gpu'] or M['device']}.
`target/` and `draft/` are Hugging Face checkpoints of `Qwen3_5ForCausalLM` (bf16 safetensors,
config.json, tokenizer.json); `transformers` loads them with `from_pretrained`.

- target: {M['params']['target'] / 1e6:.2f} M parameters, layers {M['config']['target']['layer_types']}
- draft: {M['params']['draft'] / 1e6:.2f} M parameters, layers {M['config']['draft']['layer_types']}
- tokenizer: byte-level BPE, vocab {M['tokenizer']['vocab_size']}; ids 0/1/2 = `<|endoftext|>` (pad),
  `<|im_start|>` (bos), `<|im_end|>` (eos, ends every training file); no chat template.
- `target/refs.safetensors` (+ `refs.json`): reference logits and greedy tokens for the C++ engine's tests.
- `samples.txt`: what the target writes; `metrics.json`: every figure below and more.

## Training data and license

The training and evaluation text is the Python {M['corpus']['python']} standard library source
(`*.py` under `{M['corpus']['stdlib']}`, without its test suites, codec tables and pydoc data):
Copyright (c) 2001 Python Software Foundation; All Rights Reserved, distributed under the
Python Software Foundation License Version 2 (PSF-2.0){' (copied here as LICENSE-python.txt)' if has_license else ''}.
The models are trained on it and can reproduce fragments of it. Held out for evaluation
({M['corpus']['heldout_files']} files, chosen by a hash of the path): {', '.join(M['corpus']['heldout'])}.

## Figures

```
""" + "\n".join(summary) + "\n```\n"
    (out / "README.md").write_text(txt, "utf-8")


if __name__ == "__main__":
    main()
