"""`rft engine make-model`: a small random causal LM and a character-level tokenizer, made without downloads.

The tiny preset is a Qwen2-style decoder (q/k/v/o, gate/up/down, untied lm_head) small enough that a
training step takes milliseconds on two CPU cores, with a tokenizer that maps every byte to one token,
so any text round-trips and the quickstart's arithmetic fits in a short sequence.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

# Qwen-style turn markers: single tokens, so the chat template costs few positions.
BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = [BOS, IM_START, IM_END, PAD, UNK]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PRESETS: dict[str, dict[str, Any]] = {
    # about 0.4M parameters: big enough to learn single-digit sums, small enough for millisecond steps
    "tiny": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, max_position_embeddings=2048),
}


class ModelFactoryError(ValueError):
    """A preset or source directory that cannot be turned into a model directory."""


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (ids must not depend on hashing)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def build_tokenizer() -> Any:
    """A byte-level tokenizer with one token per byte (no merges) plus the special tokens.

    Byte-level on purpose: transformers loads a Qwen2-type model's tokenizer as Qwen2Tokenizer, which
    rebuilds the pipeline as byte-level BPE from the saved vocabulary; with the 256 byte symbols as the
    vocabulary both loading paths give the same ids, and any text round-trips.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    for sym in _byte_symbols():
        vocab.setdefault(sym, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False, chat_template=CHAT_TEMPLATE, model_max_length=1024,
    )


def make_model(dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a model directory (config, safetensors weights, tokenizer, chat template); returns its path.

    `preset` is a name from PRESETS (random weights) or an existing local Hugging Face model directory,
    which is copied as it is.
    """
    out = Path(dir).expanduser().resolve()
    source = Path(preset).expanduser()
    if preset not in PRESETS:
        if source.is_dir() and (source / "config.json").exists():
            if source.resolve() != out:
                shutil.copytree(source, out, dirs_exist_ok=True)
            return out
        raise ModelFactoryError(
            f"unknown preset {preset!r}: use one of {sorted(PRESETS)} or a local Hugging Face model directory"
        )
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32", use_cache=True, **PRESETS[preset],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                     pad_token_id=cfg.pad_token_id).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_model_main(args: Any) -> int:
    """`rft engine make-model DIR [--preset tiny] [--seed N]`."""
    try:
        path = make_model(args.dir, preset=args.preset, seed=args.seed)
    except ModelFactoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
