import numpy as np
import pytest

from hrv.format.layout import HeadLayout, LayoutError, known_layout, layout_of_unet
from scripts.demo.unets import build_unet


@pytest.mark.parametrize("arch,heads,blocks", [("sd1", 128, 16), ("sdxl", 1300, 70)])
def test_walked_unet_matches_known_layout(arch, heads, blocks):
    walked = layout_of_unet(build_unet(arch, "full", device="meta"))
    assert walked.arch == arch
    assert walked == known_layout(arch)
    assert walked.num_heads == heads and len(walked.blocks) == blocks


@pytest.mark.parametrize("arch,index_file", [("sd1", "head_index_sd_v1_4.npy"), ("sdxl", "head_index_sd_xl_base_1_0.npy")])
def test_reference_order_is_a_bijection(reference_dir, arch, index_file):
    layout = known_layout(arch)
    reference = [str(s) for s in np.load(f"{reference_dir}/{index_file}", allow_pickle=False)]
    perm = layout.permutation_from_reference(reference)
    assert sorted(perm) == list(range(layout.num_heads))            # ours -> reference is onto
    inverse = {r: c for c, r in enumerate(perm)}
    assert sorted(inverse.values()) == list(range(layout.num_heads))  # reference -> ours is onto
    assert [reference[p] for p in perm] == layout.reference_names()
    # Every column names a real ComfyUI attn2 key and head, and no two columns share one.
    cells = {(b.key, h) for b in layout.blocks for h in range(b.num_heads)}
    assert len(cells) == layout.num_heads


def test_sdxl_blocks_in_comfy_terms():
    layout = known_layout("sdxl")
    per_block = {}
    for b in layout.blocks:
        per_block.setdefault((b.block, b.block_id), []).append(b.num_heads)
    assert per_block[("input", 4)] == [10, 10] and per_block[("input", 8)] == [20] * 10
    assert per_block[("middle", 0)] == [20] * 10 and per_block[("output", 5)] == [10, 10]
    assert sorted(per_block) == sorted([("input", i) for i in (4, 5, 7, 8)] + [("middle", 0)]
                                       + [("output", i) for i in range(6)])


def test_reference_order_mismatch_is_reported():
    layout = known_layout("sd1")
    names = layout.reference_names()
    with pytest.raises(LayoutError, match="128 heads"):
        layout.permutation_from_reference(names[:-1])
    with pytest.raises(LayoutError, match="lacks head"):
        layout.permutation_from_reference(names[:-1] + ["up, layer: 99, head: 0"])


def test_compact_round_trip_and_errors():
    layout = known_layout("sdxl")
    assert HeadLayout.from_compact("sdxl", layout.compact()) == layout
    with pytest.raises(LayoutError):
        HeadLayout.from_compact("x", [["sideways", 0, 0, 8]])
    with pytest.raises(LayoutError, match="unknown architecture"):
        known_layout("sd3")
