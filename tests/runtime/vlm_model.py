"""A tiny vision-language model made locally with transformers (no downloads), and a scorer that runs it.

LLaVA-NeXT, because its processor needs no torchvision (Qwen2-VL's does) and still sizes each image by its
size (anyres tiles): a random 2-layer CLIP vision tower and a random 1-layer Qwen2 language model over the
byte-level tiny tokenizer with `<image>` added, a chat template that writes `<image>` for an image part,
and the processor saved beside them, so AutoProcessor / AutoTokenizer load the folder offline.
"""

from __future__ import annotations

import io
from concurrent.futures import Future
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image>"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<image>\n{% else %}{{ p.text }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# tiles of 28x28 pixels, 2x2 patches of 14 each: a handful of image tokens per tile
PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def make_vlm(out: Path, seed: int = 0) -> Path:
    """Write the tiny LLaVA-NeXT folder (config, random weights, tokenizer, processor); returns its path."""
    import torch
    import transformers as T

    from rft_runtime.engine.model_factory import build_tokenizer

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = TEMPLATE
    images = T.LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                       image_grid_pinpoints=PINPOINTS)
    # one CLS token that the "default" feature strategy drops: the processor counts the same features
    processor = T.LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=14, image_token=IMAGE_TOKEN,
                                     vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                     chat_template=TEMPLATE)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14)
    config = T.LlavaNextConfig(text_config=text, vision_config=vision, image_grid_pinpoints=PINPOINTS,
                               image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
                               vision_feature_select_strategy="default")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T.LlavaNextForConditionalGeneration(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


class VLMScorer:
    """compute_logprobs of a tinker ModelInput by the tiny VLM itself, as a Tinker server of it would: each
    ImageChunk's picture through the processor's image half, its expected_tokens image tokens in the ids.
    The model refuses a chunk whose count is not the number of features the picture gives."""

    def __init__(self, folder: Path):
        import transformers as T

        self.processor = T.AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        self.model = T.LlavaNextForConditionalGeneration.from_pretrained(str(folder)).eval()
        self.image_id = self.processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.inputs: list[Any] = []

    def ids_and_pictures(self, model_input: Any) -> tuple[list[int], list[Any]]:
        """The token ids (image tokens expanded) and the pictures of a ModelInput."""
        from PIL import Image

        ids: list[int] = []
        pictures = []
        for chunk in model_input.chunks:
            if chunk.type == "encoded_text":
                ids.extend(chunk.tokens)
            else:
                ids.extend([self.image_id] * chunk.expected_tokens)
                pictures.append(Image.open(io.BytesIO(chunk.data)).convert("RGB"))
        return ids, pictures

    def logprobs(self, model_input: Any) -> list[float | None]:
        """Logprob of every position's token given those before it (None for the first), as Tinker's."""
        import torch

        ids, pictures = self.ids_and_pictures(model_input)
        inputs: dict[str, Any] = {"input_ids": torch.tensor([ids])}
        if pictures:
            pixels = self.processor.image_processor(pictures, return_tensors="pt")
            inputs.update(pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"])
        with torch.no_grad():
            logits = self.model(**inputs).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        return [None] + [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]

    def compute_logprobs(self, model_input: Any) -> Future:
        """SamplingClient.compute_logprobs' shape: a future of the logprobs."""
        self.inputs.append(model_input)
        fut: Future = Future()
        try:
            fut.set_result(self.logprobs(model_input))
        except Exception as exc:  # the model's own refusal, surfaced through the future as the SDK does
            fut.set_exception(exc)
        return fut
