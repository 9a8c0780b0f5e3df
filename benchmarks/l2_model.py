"""An LRU model of the H200's L2 (50 MB) under the order in which a GEMM's blocks walk their
tiles: how many bytes come from DRAM. A model, not a measurement; its one check so far is
Nsight Compute's dram__bytes_read on an H200 (2026-12-04), Marlin down at 128 tokens:
ours 140.8 MB against vLLM's 257.3 MB measured, 125 against 231 modelled.

  python benchmarks/l2_model.py marlin 128,256,1024    # our n-major / chunk-major stripes, vLLM's order
  python benchmarks/l2_model.py cutlass 4096,16384     # CUTLASS's persistent raster orders, tile 128x256

All blocks advance in lockstep, one k-step of every block at a time; every k-step of a block
touches its weight chunk and its activation chunk; the L2 is one fully associative LRU.
Marlin: block tile 128 k x 256 n, 64-row M chunks, 132 blocks (marlin_stripes.h; vLLM's
marlin_gemm numbers its slices chunk-slowest and splits them evenly over the blocks).
CUTLASS: tile 128 features x 256 tokens, 2x1 clusters along the features, 132 CTAs, raster
order and swizzle as CUTLASS 4.2's sm90 tile scheduler maps CTA ids to tiles.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

L2_BYTES, SMS = 50 * 2**20, 132
LAYERS = {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)}


class Lru:
    def __init__(self, cap: int = L2_BYTES):
        self.cap, self.used, self.missed, self.lines = cap, 0, 0, OrderedDict()

    def touch(self, key, size: int) -> None:
        if key in self.lines:
            self.lines.move_to_end(key)
            return
        self.missed += size
        self.lines[key] = size
        self.used += size
        while self.used > self.cap:
            self.used -= self.lines.popitem(last=False)[1]


def marlin_dram(n: int, k: int, m: int, order: str, tile_k: int = 128, tile_n: int = 256, rows: int = 64) -> float:
    """MB read from DRAM by a Marlin GEMM whose units run in `order`: "n-major" (ours by default),
    "chunk-major" (ours with VMP_MARLIN_PLAN=order=1) or "vllm"."""
    n_tiles, k_tiles, chunks = n // tile_n, k // tile_k, max(1, m // rows)
    space = n_tiles * k_tiles
    if order == "chunk-major":
        groups = SMS // chunks
        per = -(-space // groups)
        stripes = [(c * space + g * per, c * space + min((g + 1) * per, space)) for c in range(chunks)
                   for g in range(groups)]
    else:
        per = -(-chunks * space // SMS)
        stripes = [(b * per, min((b + 1) * per, chunks * space)) for b in range(SMS)]

    def position(u: int) -> tuple[int, int, int]:  # (n-tile, chunk, k-tile)
        s, kt = divmod(u, k_tiles)
        return (s // chunks, s % chunks, kt) if order == "n-major" else (s % n_tiles, s // n_tiles, kt)
    lru = Lru()
    for step in range(per):
        for begin, end in stripes:
            if begin + step < end:
                nt, c, kt = position(begin + step)
                lru.touch(("w", nt, kt), tile_k * tile_n // 2)
                lru.touch(("x", c, kt), rows * tile_k * 2)
    return lru.missed / 2**20


def cutlass_tiles(tiles_m: int, tiles_n: int, raster: str, log_swizzle: int, cluster_m: int = 2):
    """(m, n) tiles in CTA order: CUTLASS's get_work_idx_m_and_n for a (cluster_m, 1) cluster.
    raster "M": consecutive CTAs along M (our features), "N": along N (our tokens)."""
    blk_major = tiles_n if raster == "N" else tiles_m // cluster_m
    for cid in range(tiles_m // cluster_m * tiles_n):
        offset, extra = cid & ((1 << log_swizzle) - 1), cid >> log_swizzle
        minor_div, major = divmod(extra, blk_major)
        minor = minor_div * (1 << log_swizzle) + offset
        for cta in range(cluster_m):
            m, n = (minor * cluster_m + cta, major) if raster == "N" else (major * cluster_m + cta, minor)
            if m < tiles_m and n < tiles_n:
                yield m, n


def cutlass_dram(n: int, k: int, m: int, raster: str, log_swizzle: int, tile_n: int = 128, tile_t: int = 256,
                 k_step: int = 64) -> float:
    """GB read from DRAM by a persistent CUTLASS GEMM of our transposed problem (features x tokens)."""
    tiles = list(cutlass_tiles(n // tile_n, m // tile_t, raster, log_swizzle))
    lru = Lru()
    for w0 in range(0, len(tiles), SMS):
        wave = tiles[w0:w0 + SMS]
        feats, toks = sorted({a for a, _ in wave}), sorted({b for _, b in wave})
        for kk in range(k // k_step):
            for a in feats:
                lru.touch(("w", a, kk), tile_n * k_step // 2)
            for b in toks:
                lru.touch(("x", b, kk), tile_t * k_step * 2)
    return lru.missed / 2**30


def main(argv: list[str]) -> None:
    kind, ms = argv[0], [int(v) for v in argv[1].split(",")]
    for layer, (n, k) in LAYERS.items():
        for m in ms:
            if kind == "marlin":
                cells = [f"{o} {marlin_dram(n, k, m, o):7.0f} MB" for o in ("n-major", "chunk-major", "vllm")
                         if o != "chunk-major" or m // 64 <= SMS]
            else:
                heuristic = "M" if m // 256 > n // 128 else "N"  # CUTLASS's RasterOrderOptions::Heuristic
                cells = [f"{r}{1 << s}{'*' if (r, s) == (heuristic, 0) else ''} {cutlass_dram(n, k, m, r, s):6.2f} GB"
                         for r, s in (("N", 0), ("M", 0), ("M", 1), ("M", 2), ("M", 3))]
            print(f"{layer:8s} M={m:6d}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
