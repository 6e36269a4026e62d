"""Images in chat messages, as the Tinker service takes them for a vision-language model: image chunks.

A message's content may be a list of parts: {"type": "text", "text": ...} and {"type": "image", "image": X}
(or "url" / "path" in place of "image", as transformers' templates take them) or OpenAI's
{"type": "image_url", "image_url": {"url": X}}, X a file path, an http(s) or `data:` URL, bytes or a PIL
image. The chat template renders each image as its placeholder (Qwen-VL:
`<|vision_start|><|image_pad|><|vision_end|>`, LLaVA: `<image>`); the prompt becomes text chunks with an
ImageChunk (PNG or JPEG bytes) where the template's image token stands. Its token count comes from the
model's processor (transformers) when it can be loaded: training needs it, to line the loss up with the
prompt. One path for both sides: a rollout's prompt (the model wrapper's chat) and a training row's (SFT,
DPO and expert data, rft_runtime.loop.prompts) are built by `chat_prompt` here.
"""

from __future__ import annotations

import base64
import functools
import io
import re
from pathlib import Path
from typing import Any

from rft_runtime.workflows.base import WorkflowError

_IMAGE_TYPES = ("image", "image_url")


def has_images(messages: list[dict]) -> bool:
    """Whether any message's content holds an image part."""
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") in _IMAGE_TYPES
                                                          for p in m["content"]) for m in messages)


def image_refs(messages: list[dict]) -> list[Any]:
    """The image references of every image part, in the order the chat template renders them."""
    return [image_of(p) for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") in _IMAGE_TYPES]


def mm_message(prompt: str, images: list[Any], videos: list[Any] | None = None) -> dict[str, Any]:
    """A user message whose content puts each image / video at its `<image>` / `<video>` tag (those beyond
    the tags first), as Trinity builds a row's message from format.image_key; plain text without media."""
    parts: list[dict[str, Any]] = []
    used = {"image": 0, "video": 0}
    media = {"image": list(images or []), "video": list(videos or [])}
    for piece in re.split(r"(<image>|<video>)", prompt):
        kind = piece[1:-1] if piece in ("<image>", "<video>") else None
        if kind is not None:
            if used[kind] >= len(media[kind]):
                raise WorkflowError(f"the prompt has more <{kind}> tags than the row has {kind}s")
            parts.append({"type": kind, kind: media[kind][used[kind]]})
            used[kind] += 1
        elif piece:
            parts.append({"type": "text", "text": piece})
    extra = [{"type": k, k: m} for k in ("image", "video") for m in media[k][used[k]:]]
    parts = extra + parts
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": "user", "content": parts[0]["text"]}
    return {"role": "user", "content": parts}


def text_of(content: Any) -> str:
    """A message content's text: a string as it is, a list of parts as its text parts joined."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
                       if not isinstance(p, dict) or p.get("type", "text") == "text")
    return "" if content is None else str(content)


def message_content(content: Any) -> Any:
    """A message's content as a chat template takes it: its list of parts where it holds an image, else its
    text."""
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in _IMAGE_TYPES for p in content):
        return content
    return text_of(content)


def as_list(value: Any) -> list[Any]:
    """A row's image column as a list: None is none, one reference is one."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


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
def _processor(model: str) -> tuple[Any, str | None]:
    """(the model's processor or None, why it could not be loaded)."""
    from transformers import AutoProcessor  # ~1 s to import: only a prompt with images needs it

    why = f"no processor for {model!r} could be loaded with transformers"
    # a local folder or the Hugging Face cache first; the Hub only for a name that can be one ("org/model")
    for offline in (True, False):
        if not offline and (Path(model).expanduser().exists() or "/" not in model or "://" in model):
            break
        try:
            return AutoProcessor.from_pretrained(model, local_files_only=offline), None
        except Exception as exc:  # no processor for this model here: the count stays unknown
            why = f"the processor of {model!r} could not be loaded with transformers: {type(exc).__name__}: " \
                  f"{str(exc).strip()[:300]}"
    return None, why


def processor_problem(model: str) -> str | None:
    """Why image token counts cannot be had for `model` here (None when its processor counts them)."""
    processor, why = _processor(model)
    if processor is None:
        return why
    if getattr(processor, "_get_num_multimodal_tokens", None) is None:
        return f"the processor of {model!r} ({type(processor).__name__}) does not count image tokens"
    return None


def image_token_count(model: str, data: bytes) -> int | None:
    """How many tokens the model's processor gives this image, or None when it cannot say."""
    processor, _ = _processor(model)
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


def chat_prompt(tokenizer: Any, messages: list[dict], template_kwargs: dict[str, Any],
                model: str) -> tuple[list[int], list[Any]]:
    """(token ids, tinker chunks) of a conversation whose messages hold image parts, as a prompt: a final
    assistant message is continued, otherwise the assistant's turn starts. `template_kwargs` go to
    apply_chat_template (chat_template, tools, enable_thinking, ...); `model` names the processor that
    sizes each image (the base model: a local directory or a Hub name)."""
    kwargs = {**template_kwargs, "tokenize": False}

    def render(msgs: list[dict], **more: Any) -> str:
        try:
            return tokenizer.apply_chat_template(template_messages(msgs), **kwargs, **more)
        except Exception as exc:  # jinja raises many types
            raise WorkflowError(f"the chat template could not render a message with an image: "
                                f"{type(exc).__name__}: {exc}") from exc

    marker = placeholder(lambda msgs: render(msgs, add_generation_prompt=True), tokenizer)
    final = bool(messages) and messages[-1].get("role") == "assistant"
    text = render(messages, continue_final_message=True) if final else render(messages, add_generation_prompt=True)
    chunks, ids = image_prompt(tokenizer, text, marker, image_refs(messages), model)
    return ids, chunks


def unsized(chunks: list[Any] | None) -> int:
    """How many image chunks have no token count (a datum cannot line its loss up with them)."""
    return sum(1 for c in chunks or [] if getattr(c, "type", "") == "image" and getattr(c, "expected_tokens", None) is None)


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
