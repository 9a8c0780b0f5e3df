"""The Machete tile units (kernels/machete/tiles/<act>_<wtype>_<group>.cu) instantiate
every (type configuration x CUTLASS tile of machete.h) exactly once, each in the unit of
its type configuration; machete_dispatch.cpp's table expects all of them. No compiler."""
import collections
import pathlib
import re

KERNELS = pathlib.Path(__file__).parents[1] / "kernels" / "machete"
TYPE_CONFIGS = [(act, w) for act in ("f16", "bf16") for w in ("u4", "u4b8")]  # tile_types in machete_tile.h


def cutlass_tiles() -> list[str]:
    header = (KERNELS / "machete.h").read_text()
    count = int(re.search(r"constexpr int kNumCutlassTiles = (\d+);", header).group(1))
    names = re.search(r"kScheduleNames\[kNumSchedules\] = \{(.*?)\};", header, re.S).group(1)
    return re.findall(r'"([^"]+)"', names)[:count]


def instantiated() -> collections.Counter:
    found = collections.Counter()
    for path in sorted((KERNELS / "tiles").iterdir()):
        act, w, _group = path.stem.split("_")
        assert path.suffix == ".cu" and (act, w) in TYPE_CONFIGS, path.name
        for line in re.findall(r"^VMP_MACHETE_TILE\((.*)\)$", path.read_text(), re.M):
            line_act, line_w, tile = line.split(", ")
            assert (line_act, line_w) == (act, w), f"{path.name}: {line}"
            found[act, w, tile] += 1
    return found


def test_machete_h_parses():
    assert cutlass_tiles()[:2] == ["128x16", "128x32"] and len(cutlass_tiles()) >= 8


def test_every_type_config_and_tile_once():
    expected = {(act, w, tile) for act, w in TYPE_CONFIGS for tile in cutlass_tiles()}
    found = instantiated()
    assert set(found) == expected and set(found.values()) == {1}
