"""AWQ checkpoints (AutoAWQ "GEMM" version), quant_method "awq", 4-bit with zero points.

On disk, per linear layer (K = in_features, N = out_features, G = K / group_size):
  qweight int32 [K, N/8]  8 codes per word along N; nibble slot j (bits [4j, 4j+4)) holds
                          column 8c + AWQ_ORDER[j]
  qzeros  int32 [G, N/8]  true zero points (no -1), same packing and order
  scales  fp16  [G, N]
No g_idx / act-order. group_size -1 (one group per output channel) is what AutoAWQ writes
for q_group_size=-1 and is accepted. zero_point=false is refused: AutoAWQ's GEMM packer
always writes zero points, so such a checkpoint has no layout we could verify.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..canonical import SYMMETRIC_ZERO, CanonicalW4, pack_int4, unpack_int4
from . import params as P
from .base import CheckpointError, CheckpointFormat, LayerScheme, Partition
from .naming import is_lm_head

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]

QWEIGHT = "qweight int32 [K, N/8], packed along N in AWQ order"
QZEROS = "qzeros int32 [G, N/8], packed along N in AWQ order"
SCALES = "scales float16/bfloat16 [G, N]"


class AWQFormat(CheckpointFormat):
    name = "awq"

    def __init__(self, raw: dict):
        where = "AWQ quantization_config"
        bits = raw.get("bits", raw.get("w_bit"))
        group_size = raw.get("group_size", raw.get("q_group_size"))
        if bits is None or group_size is None:
            raise CheckpointError(f"{where}: needs 'bits' (or 'w_bit') and 'group_size' (or 'q_group_size').")
        P.check_bits(int(bits), where)
        P.check_group_size(int(group_size), where)
        version = str(raw.get("version", "gemm")).lower()
        if version != "gemm":
            raise CheckpointError(
                f"{where}: version={raw.get('version')!r} is not supported. Only AutoAWQ's 'gemm' "
                f"layout is; 'gemv', 'gemv_fast', 'marlin', 'exllama' and 'ipex' pack weights "
                f"differently. Fix: re-export the model with version='gemm'.")
        if not raw.get("zero_point", True):
            raise CheckpointError(
                f"{where}: zero_point=false is not supported: AutoAWQ's GEMM packer always writes "
                f"zero points, so this checkpoint's layout is unknown. Fix: quantize with "
                f"zero_point=true, or use a symmetric GPTQ / compressed-tensors checkpoint.")
        self.modules_to_not_convert = list(raw.get("modules_to_not_convert") or [])
        self.base = LayerScheme(bits=int(bits), group_size=int(group_size), sym=False, act_order=False)

    def _scheme_of_module(self, name: str):
        # AutoAWQ skips a module when any entry is a substring of its name.
        if is_lm_head(name) or any(m in name for m in self.modules_to_not_convert):
            return None
        return self.base

    def create_weights(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                       params_dtype: torch.dtype, weight_loader: Callable) -> None:
        where = P.layer_name(layer)
        P.check_act_dtype(params_dtype, where)
        P.check_partition(scheme, part, where, packed_k=False, packed_n=True)
        n = part.n
        P.add_param(layer, "qweight", "PackedvLLMParameter",
                    torch.empty(part.k, n // 8, dtype=torch.int32), weight_loader,
                    dtypes=P.INT32, layout=QWEIGHT, input_dim=0, output_dim=1, packed_dim=1, packed_factor=8)
        P.add_group_params(layer, scheme, part, params_dtype, weight_loader, SCALES, QZEROS)

    def to_canonical(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                     where: str) -> CanonicalW4:
        P.check_partition(scheme, part, where, packed_k=False, packed_n=True)
        g, k, n = P.num_groups(scheme, part), part.k, part.n
        qweight = P.read(layer, "qweight", part, (k, n // 8), P.INT32, where, QWEIGHT)
        qzeros = P.read(layer, "qzeros", part, (g, n // 8), P.INT32, where, QZEROS)
        scales = P.read(layer, "scales", part, (g, n), P.FLOAT_DTYPES, where, SCALES)
        checks = P.Checks()
        P.check_finite(checks, scales, "scales", part, where, SCALES, n_dim=1)
        checks.run()
        return CanonicalW4(codes=unpack_int4(qweight, dim=1, order=AWQ_ORDER), scales=scales,
                           zeros=unpack_int4(qzeros, dim=1, order=AWQ_ORDER),
                           group_size=part.group_size(scheme)).validate(where)

    @staticmethod
    def pack(w: CanonicalW4, scheme: LayerScheme) -> dict[str, torch.Tensor]:
        """What AutoAWQ's WQLinear_GEMM writes. A symmetric weight gets zero points 8."""
        P.check_pack(w, scheme)
        zeros = w.zeros if w.zeros is not None else torch.full_like(w.scales, SYMMETRIC_ZERO, dtype=torch.uint8)
        return {"qweight": pack_int4(w.codes, dim=1, order=AWQ_ORDER),
                "qzeros": pack_int4(zeros, dim=1, order=AWQ_ORDER),
                "scales": w.scales.to(torch.float16, copy=True)}

    @staticmethod
    def quantization_config(scheme: LayerScheme, **kw) -> dict:
        """AutoAWQ's quantization_config (as transformers' AwqConfig serialises it)."""
        return {"quant_method": "awq", "bits": scheme.bits, "group_size": scheme.group_size,
                "zero_point": True, "version": "gemm", "modules_to_not_convert": None}
