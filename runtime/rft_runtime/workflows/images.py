"""Images in chat messages, as a Tinker sampler of a vision-language model takes them: image chunks.

A message's content may be a list of parts: {"type": "text", "text": ...} and {"type": "image", "image": X}
or OpenAI's {"type": "image_url", "image_url": {"url": X}}, X a file path, an http(s) or `data:` URL,
bytes or a PIL image. The chat template renders each image as its placeholder (Qwen-VL:
`<|vision_start|><|image_pad|><|vision_end|>`); the prompt becomes text chunks with an ImageChunk (PNG or
JPEG bytes) where the template's image token stands. Its token count comes from the model's processor
(transformers) when it can be loaded: training needs it, to line the loss up with the prompt.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Any

from rft_runtime.workflows.base import WorkflowError

_IMAGE_TYPES = ("image", "image_url")


def has_images(messages: list[dict]) -> bool:
    """Whether any message's content holds an image part."""
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") in _IMAGE_TYPES
                                                          for p in m["content"]) for m in messages)


def image_of(part: dict) -> Any:
    """The image reference of an image part (either form)."""
    if part.get("type") == "image_url":
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    return part.get("image", part.get("url", part.get("path")))


def image_bytes(ref: Any) -> tuple[bytes, str]:
    """(data, "png" | "jpeg") of an image reference; other formats are converted to PNG."""
    data: bytes
    if hasattr(ref, "save"):  # a PIL image
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return buf.getvalue(), "png"
    if isinstance(ref, (bytes, bytearray)):
        data = bytes(ref)
    elif isinstance(ref, str) and ref.startswith("data:"):
        data = base64.b64decode(ref.split(",", 1)[1])
    elif isinstance(ref, str) and ref.startswith(("http://", "https://")):
        # ~30 ms (http, email, ssl): only an image given by URL needs it, and the model wrapper imports this module
        import urllib.request

        with urllib.request.urlopen(ref, timeout=60) as response:  # noqa: S310 - the row names the image
            data = response.read()
    elif isinstance(ref, (str, Path)):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise WorkflowError(f"image {str(ref)[:200]!r} is neither a file, a URL nor a data: URL")
        data = path.read_bytes()
    else:
        raise WorkflowError(f"an image part holds a {type(ref).__name__}; give a path, URL, bytes or PIL image")
    if data.startswith(b"\x89PNG"):
        return data, "png"
    if data.startswith(b"\xff\xd8"):
        return data, "jpeg"
    from PIL import Image  # Pillow (optional, ~50 ms): only an image that is not PNG or JPEG bytes already

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, format="PNG")
    return buf.getvalue(), "png"


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as a vision-language chat template takes them: image parts as {"type": "image"}."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if isinstance(p, dict) and p.get("type") in _IMAGE_TYPES else
                       {"type": "text", "text": str(p.get("text", ""))} if isinstance(p, dict) else
                       {"type": "text", "text": str(p)} for p in content]
        out.append({**m, "content": content if content is not None else ""})
    return out


def placeholder(render: Any, tokenizer: Any) -> str:
    """What the chat template writes for one image, found by rendering a message with and without one; it
    must hold a special token of the tokenizer (a text model's template writes the part's text, or nothing)."""
    with_image = render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "@"}]}])
    without = render([{"role": "user", "content": [{"type": "text", "text": "@"}]}])
    start = next((i for i, (a, b) in enumerate(zip(with_image, without, strict=False)) if a != b), len(without))
    extra = len(with_image) - len(without)
    marker = with_image[start:start + extra] if extra > 0 else ""
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    if not marker or not special & set(tokenizer.encode(marker, add_special_tokens=False)):
        raise WorkflowError("the chat template writes no image token for an image part: this is not a "
                            "vision-language model's template (images need a vision-language base model)")
    return marker


@functools.cache
def _processor(model: str) -> Any:
    from transformers import AutoProcessor  # ~1 s to import: only a prompt with images needs it

    # a local folder or the Hugging Face cache first; the Hub only for a name that can be one ("org/model")
    for offline in (True, False):
        if not offline and (Path(model).expanduser().exists() or "/" not in model):
            break
        try:
            return AutoProcessor.from_pretrained(model, local_files_only=offline)
        except Exception:  # no processor for this model here: the count stays unknown
            continue
    return None


def image_token_count(model: str, data: bytes) -> int | None:
    """How many tokens the model's processor gives this image, or None when it cannot say."""
    processor = _processor(model)
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is None:
        return None
    from PIL import Image  # see image_bytes

    width, height = Image.open(io.BytesIO(data)).size
    try:
        counts = counter(image_sizes=[(height, width)])
        value = counts.get("num_image_tokens") if isinstance(counts, dict) else getattr(counts, "num_image_tokens", None)
        return int(value[0]) if value else None
    except Exception:
        return None


def image_prompt(tokenizer: Any, text: str, marker: str, images: list[Any], model: str) -> tuple[list[Any], list[int]]:
    """(tinker chunks, token ids) of a rendered prompt whose `marker` occurrences are the images in order.

    The image's own token (the placeholder's special token that is not a start/end marker, e.g.
    <|image_pad|>) becomes the ImageChunk; the start / end markers stay text. The ids stand the image token
    once per image token the processor counts (once when it cannot count), so they line up with the chunks.
    """
    import tinker  # the SDK imports torch (~2 s): the validator reads this module (through the model wrapper)

    pieces = text.split(marker)
    if len(pieces) - 1 != len(images):
        raise WorkflowError(f"the prompt renders {len(pieces) - 1} image placeholders for {len(images)} images")
    marker_ids = list(tokenizer.encode(marker, add_special_tokens=False))
    names = [str(tokenizer.convert_ids_to_tokens(i)) for i in marker_ids]
    pad_at = next((k for k, n in enumerate(names) if "pad" in n or n.strip("<|>") == "image"), len(names) // 2)
    before, pad_id, after = marker_ids[:pad_at], marker_ids[pad_at], marker_ids[pad_at + 1:]
    chunks: list[Any] = []
    ids: list[int] = []

    def text_chunk(tokens: list[int]) -> None:
        if tokens:
            chunks.append(tinker.types.EncodedTextChunk(tokens=tokens))
            ids.extend(tokens)

    for i, piece in enumerate(pieces):
        text_chunk(list(tokenizer.encode(piece, add_special_tokens=False)))
        if i == len(images):
            break
        data, fmt = image_bytes(images[i])
        count = image_token_count(model, data)
        text_chunk(before)
        chunks.append(tinker.types.ImageChunk(data=data, format=fmt, expected_tokens=count))
        ids.extend([pad_id] * (count or 1))
        text_chunk(after)
    # adjacent text chunks are one chunk to the server: merge them
    merged: list[Any] = []
    for chunk in chunks:
        if merged and chunk.type == "encoded_text" and merged[-1].type == "encoded_text":
            merged[-1] = tinker.types.EncodedTextChunk(tokens=[*merged[-1].tokens, *chunk.tokens])
        else:
            merged.append(chunk)
    return merged, ids
