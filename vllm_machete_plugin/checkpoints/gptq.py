"""GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum), quant_method "gptq", 4-bit.

On disk, per linear layer (K = in_features, N = out_features, G = K / group_size):
  qweight int32 [K/8, N]  8 codes per word along K, row 8r+j in bits [4j, 4j+4)
  qzeros  int32 [G, N/8]  zero points packed along N the same way; checkpoint_format
                          "gptq" (v1, the default) stores z - 1 (mod 16), "gptq_v2" stores z
  scales  fp16  [G, N]
  g_idx   int32 [K]       group of every input row (k // group_size unless desc_act)
sym=true checkpoints still carry qzeros (all 8 after the v1 correction); we check and drop them.
A v1 checkpoint labelled gptq_v2 stores 7 where it means 8, so every weight would be one zero
step off: stored zero points that are all 7 under gptq_v2 get a warning naming the fix.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Optional

import torch

from ..canonical import SYMMETRIC_ZERO, CanonicalW4, pack_int4, unpack_int4
from . import params as P
from .base import CheckpointError, CheckpointFormat, LayerScheme, Partition
from .naming import CheckpointModules, is_lm_head

logger = logging.getLogger(f"vllm.{__name__}")  # under "vllm" so vLLM's log handler shows it
_CHECKPOINT_FORMATS = {"gptq": 1, "gptq_v2": 2}
_OVERRIDABLE = ("bits", "group_size", "sym", "desc_act")

QWEIGHT = "qweight int32 [K/8, N], packed along K"
QZEROS = "qzeros int32 [G, N/8], packed along N"
SCALES = "scales float16/bfloat16 [G, N]"
G_IDX = "g_idx int32 [K]"


class GPTQFormat(CheckpointFormat):
    name = "gptq"

    def __init__(self, raw: dict):
        where = "GPTQ quantization_config"
        missing = [key for key in ("bits", "group_size") if key not in raw]
        if missing:
            raise CheckpointError(f"{where}: required keys {missing} are missing.")
        self.bits = int(raw["bits"])
        self.group_size = int(raw["group_size"])
        self.desc_act = bool(raw.get("desc_act", False))
        self.sym = bool(raw.get("sym", True))
        P.check_bits(self.bits, where)
        P.check_group_size(self.group_size, where)
        if raw.get("lm_head", False):
            raise CheckpointError(
                f"{where}: lm_head=true (a quantized lm_head) is not supported; we serve the "
                f"lm_head unquantized. Fix: use a checkpoint quantized with lm_head=false.")
        fmt = raw.get("checkpoint_format", raw.get("format", "gptq"))
        if raw.get("is_marlin_format", False):  # AutoGPTQ's older spelling of checkpoint_format "marlin"
            fmt = "marlin"
        if fmt not in _CHECKPOINT_FORMATS:
            hint = (" Marlin-format checkpoints (AutoGPTQ's marlin export, is_marlin_format=true) hold "
                    "Marlin's own tiles; serve the GPTQ checkpoint they were converted from."
                    if fmt == "marlin" else "")
            raise CheckpointError(
                f"{where}: checkpoint_format={fmt!r} is not supported; supported: "
                f"{sorted(_CHECKPOINT_FORMATS)} (gptq = v1 zero points stored as z-1, gptq_v2 = z).{hint}")
        self.version = _CHECKPOINT_FORMATS[fmt]
        self._warned_v1_under_v2 = False
        pack_dtype = raw.get("pack_dtype", "int32")
        if pack_dtype != "int32":
            raise CheckpointError(f"{where}: pack_dtype={pack_dtype!r} is not supported; only int32 packing.")
        blocks = raw.get("modules_in_block_to_quantize") or []
        self.modules_in_block = [m for b in blocks for m in ([b] if isinstance(b, str) else b)]
        self.dynamic = dict(raw.get("dynamic") or {})
        for pattern, overrides in self.dynamic.items():
            try:
                re.compile(pattern.removeprefix("-:").removeprefix("+:"))
            except re.error as e:
                raise CheckpointError(f"{where}: dynamic rule {pattern!r} is not a valid regex: {e}") from e
            if not pattern.startswith("-:") and set(overrides or {}) - set(_OVERRIDABLE):
                raise CheckpointError(
                    f"{where}: dynamic rule {pattern!r} overrides {sorted(set(overrides) - set(_OVERRIDABLE))}; "
                    f"only {list(_OVERRIDABLE)} can be overridden per module.")
        self.base = self._scheme(self.bits, self.group_size, self.sym, self.desc_act)

    def needs_checkpoint_scan(self) -> bool:
        # Without modules_in_block_to_quantize, GPTQ writers may leave some linears in
        # fp16 with nothing in the config saying so.
        return not self.modules_in_block

    def observe_checkpoint(self, modules: CheckpointModules) -> None:
        # Quantize exactly the modules with integer tensors; a module with neither those nor
        # a .weight is then missing, not unquantized (scheme_for refuses it).
        if not self.modules_in_block and modules.quantized:
            self.modules_in_block = sorted(modules.quantized)
            self.scanned = modules

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        super().apply_vllm_mapper(hf_to_vllm_mapper)
        self.modules_in_block = hf_to_vllm_mapper.apply_list(self.modules_in_block)

    @staticmethod
    def _scheme(bits: int, group_size: int, sym: bool, desc_act: bool) -> LayerScheme:
        # desc_act with a single group (-1) orders nothing: normalise to no act-order.
        return LayerScheme(bits=bits, group_size=group_size, sym=sym,
                           act_order=desc_act and group_size != -1)

    def _scheme_of_module(self, name: str) -> Optional[LayerScheme]:
        if is_lm_head(name):
            return None
        if self.modules_in_block and not any(m in name for m in self.modules_in_block):
            return None
        for pattern, overrides in self.dynamic.items():  # first matching rule wins (GPTQModel)
            if pattern.startswith("-:"):
                if re.match(pattern[2:], name):
                    return None
            elif re.match(pattern.removeprefix("+:"), name):
                o = overrides or {}
                scheme = self._scheme(int(o.get("bits", self.bits)), int(o.get("group_size", self.group_size)),
                                      bool(o.get("sym", self.sym)), bool(o.get("desc_act", self.desc_act)))
                where = f"{name} (GPTQ dynamic rule {pattern!r})"
                P.check_bits(scheme.bits, where)
                P.check_group_size(scheme.group_size, where)
                return scheme
        return self.base

    def create_weights(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                       params_dtype: torch.dtype, weight_loader: Callable) -> None:
        where = P.layer_name(layer)
        P.check_act_dtype(params_dtype, where)
        P.check_partition(scheme, part, where, packed_k=True, packed_n=True)
        n = part.n
        P.add_param(layer, "qweight", "PackedvLLMParameter",
                    torch.empty(part.k // 8, n, dtype=torch.int32), weight_loader,
                    dtypes=P.INT32, layout=QWEIGHT, input_dim=0, output_dim=1, packed_dim=0, packed_factor=8)
        P.add_param(layer, "g_idx", "RowvLLMParameter", torch.empty(part.k, dtype=torch.int32), weight_loader,
                    dtypes=P.INDEX_DTYPES, layout=G_IDX, same_across_shards=True, input_dim=0)
        P.add_group_params(layer, scheme, part, params_dtype, weight_loader, SCALES, QZEROS)

    def to_canonical(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                     where: str) -> CanonicalW4:
        P.check_partition(scheme, part, where, packed_k=True, packed_n=True)
        g, k, n = P.num_groups(scheme, part), part.k, part.n
        checks = P.Checks()
        codes = unpack_int4(P.read(layer, "qweight", part, (k // 8, n), P.INT32, where, QWEIGHT), dim=0)
        scales = P.read(layer, "scales", part, (g, n), P.FLOAT_DTYPES, where, SCALES)
        P.check_finite(checks, scales, "scales", part, where, SCALES, n_dim=1)
        qzeros = (P.read(layer, "qzeros", part, (g, n // 8), P.INT32, where, QZEROS) if not scheme.sym
                  else P.read_optional(layer, "qzeros", part, (g, n // 8), P.INT32, where, QZEROS))
        zeros = None if qzeros is None else self._zero_points(checks, unpack_int4(qzeros, dim=1), scheme, where)
        group_size = part.group_size(scheme)
        g_idx = None
        if scheme.act_order:
            fix = "Fix: the checkpoint needs g_idx when desc_act=true; re-export it or set desc_act=false."
            g_idx = P.read(layer, "g_idx", part, (k,), P.INDEX_DTYPES, where, G_IDX, fix).to(torch.int32)
            P.check_group_ids(checks, g_idx, g, where, "g_idx")
        else:
            stored = P.read_optional(layer, "g_idx", part, (k,), P.INDEX_DTYPES, where, G_IDX)
            if stored is not None:
                P.check_trivial_g_idx(checks, stored, group_size, where, "g_idx")
        checks.run()
        return CanonicalW4(codes=codes, scales=scales, zeros=zeros, group_size=group_size,
                           g_idx=g_idx).validate(where)

    def _zero_points(self, checks: P.Checks, stored: torch.Tensor, scheme: LayerScheme,
                     where: str) -> Optional[torch.Tensor]:
        """The true zero points from the stored ones (uint8 [G, N]), or None for sym=true,
        whose stored zero points must all encode 8 (queued on `checks`). Under gptq_v2, stored
        zero points that are all 7, the v1 encoding of 8, get a warning (_warn_v1_under_v2)."""
        zeros = (stored + 1) & 0xF if self.version == 1 else stored
        v1_encoded = None
        if self.version == 2:
            v1_encoded = (stored == SYMMETRIC_ZERO - 1).all()
            checks.add(~v1_encoded, lambda: self._warn_v1_under_v2(where, scheme.sym))
        if not scheme.sym:
            return zeros

        def fail() -> None:
            found = sorted(torch.unique(zeros).tolist())
            raise CheckpointError(
                f"{where}: quantization_config says sym=true, but 'qzeros' hold zero points "
                f"{found} (expected all {SYMMETRIC_ZERO}). The checkpoint is asymmetric, or its "
                f"checkpoint_format is wrong (gptq/v1 stores z-1, gptq_v2 stores z).")
        symmetric = (zeros == SYMMETRIC_ZERO).all()
        checks.add(symmetric if v1_encoded is None else symmetric | v1_encoded, fail)
        return None

    def _warn_v1_under_v2(self, where: str, sym: bool) -> None:
        """Once per model and process: the checkpoint looks like v1 under a gptq_v2 label."""
        if self._warned_v1_under_v2:
            return
        self._warned_v1_under_v2 = True
        effect = ("sym=true, so the zero points are not used and this model is served right, but "
                  "other tools will read it one zero step off" if sym else
                  "the zero points are read as 7, as gptq_v2 says; if this is a v1 checkpoint, every "
                  "weight of such a layer is off by one zero step (one scale)")
        logger.warning(
            "vllm-machete-plugin: %s: checkpoint_format is gptq_v2, but every stored zero point in "
            "'qzeros' is %d, the gptq (v1) encoding of the symmetric zero point %d: this looks like a v1 "
            "checkpoint labelled gptq_v2 (first such layer; not repeated). %s. Fix: set checkpoint_format "
            "to \"gptq\" in quantization_config, or remove it.", where, SYMMETRIC_ZERO - 1, SYMMETRIC_ZERO,
            effect)

    @torch.no_grad()
    def fill_dummy(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                   names: tuple[str, ...]) -> None:
        """As the base, plus: symmetric qzeros hold zero point 8 in this checkpoint_format's
        encoding (to_canonical checks that)."""
        super().fill_dummy(layer, scheme, part, names)
        if scheme.sym and "qzeros" in names:
            stored = SYMMETRIC_ZERO - 1 if self.version == 1 else SYMMETRIC_ZERO
            layer.qzeros.data.copy_(pack_int4(torch.full((1, 8), stored, dtype=torch.uint8), dim=1)
                                    .expand_as(layer.qzeros))

    @staticmethod
    def pack(w: CanonicalW4, scheme: LayerScheme, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
        """What AutoGPTQ (checkpoint_format "gptq") or GPTQModel ("gptq_v2") writes."""
        P.check_pack(w, scheme)
        zeros = w.zeros if w.zeros is not None else torch.full_like(w.scales, SYMMETRIC_ZERO, dtype=torch.uint8)
        if _CHECKPOINT_FORMATS[checkpoint_format] == 1:
            zeros = (zeros.to(torch.int16) - 1).remainder(16)
        g_idx = w.g_idx if w.g_idx is not None else torch.arange(w.k, device=w.codes.device) // w.group_size
        return {"qweight": pack_int4(w.codes, dim=0), "qzeros": pack_int4(zeros, dim=1),
                "scales": w.scales.to(torch.float16, copy=True), "g_idx": g_idx.to(torch.int32, copy=True)}

    @staticmethod
    def quantization_config(scheme: LayerScheme, checkpoint_format: str = "gptq", **kw) -> dict:
        """AutoGPTQ / optimum's quantization_config."""
        return {"quant_method": "gptq", "bits": scheme.bits, "group_size": scheme.group_size,
                "desc_act": scheme.act_order, "sym": scheme.sym, "lm_head": False,
                "static_groups": False, "true_sequential": True, "damp_percent": 0.01,
                "checkpoint_format": checkpoint_format, "model_name_or_path": None,
                "model_file_base_name": None}

