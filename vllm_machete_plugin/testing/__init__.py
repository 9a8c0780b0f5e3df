"""Test helpers: an RTN quantizer and tiny HF-layout checkpoints in every supported
format. Importable without vLLM (only torch, safetensors and tokenizers)."""
from .quantize import act_order_g_idx, quantize_rtn
from .tiny import build_tiny_checkpoint, build_tiny_lora, read_tiny_linears, tiny_weights

__all__ = ["act_order_g_idx", "quantize_rtn", "build_tiny_checkpoint", "build_tiny_lora", "read_tiny_linears", "tiny_weights"]
