"""The local Tinker-compatible engine: `rft engine serve` answers the tinker SDK's protocol on loopback.

Real PyTorch training of LoRA adapters on a local Hugging Face model directory. server.py and routes.py are
the HTTP side, service.py the queue in front of the model; core.py holds the Engine, which brings together
transformer.py (the model's forward), lora.py, training.py, checkpoints.py, samplers.py and decode.py;
losses.py and sampling.py hold the maths.
"""
