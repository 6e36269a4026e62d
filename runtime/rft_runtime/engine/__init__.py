"""The local Tinker-compatible engine: `rft engine serve` answers the tinker SDK's protocol on loopback.

Real PyTorch training with peft LoRA adapters on a local Hugging Face model directory; see server.py for the
HTTP side, core.py for the model work, losses.py and sampling.py for the maths.
"""
