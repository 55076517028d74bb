"""Our head columns proven on weights: a diffusers UNet converted by ComfyUI's own key map.

The published HRV columns name diffusers heads ("down, layer: L, head: h": the h-th head of the
L-th cross-attention of that section, in diffusers' processor order). A tiny diffusers UNet of
the SD1.x or SDXL shape with random weights is converted to ComfyUI's layout with
comfy.utils.unet_to_diffusers and loaded into ComfyUI's UNetModel. For every column c of our
layout, the ComfyUI attn2 and channel slice it names must hold exactly the to_k rows of the
diffusers head that the published head order puts at column c.
"""
import re

import numpy as np
import pytest
import torch

from hrv.format.layout import cross_attention_modules, known_layout, layout_of_unet
from scripts.demo.unets import init_random_, unet_config

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test-only dependency (requirements-test.txt)")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Tiny channels, real heads per transformer. ComfyUI's GroupNorm has 32 groups, so every width
# is a multiple of 32. SDXL: ComfyUI counts heads as width / num_head_channels, so 10 and 20 heads
# need widths 160 and 320 (head width 16); diffusers' attention_head_dim is the number of heads.
DIFFUSERS = {
    "sd1": dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                block_out_channels=(32, 64, 128, 128), layers_per_block=2, attention_head_dim=8,
                cross_attention_dim=64),
    "sdxl": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(160, 160, 320), layers_per_block=2, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=32, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=16, projection_class_embeddings_input_dim=96),
}
COMFY = {
    "sd1": dict(model_channels=32, context_dim=64),
    "sdxl": dict(model_channels=160, channel_mult=[1, 1, 2], num_head_channels=16, context_dim=32, adm_in_channels=96),
}
HEAD_INDEX = {"sd1": "head_index_sd_v1_4.npy", "sdxl": "head_index_sd_xl_base_1_0.npy"}
SECTION = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}


def diffusers_unet(arch):
    """The diffusers UNet, built on the meta device (no default init) and filled with seeded random weights."""
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, **DIFFUSERS[arch])
    return init_random_(unet.to_empty(device="cpu"), seed=5, std=1.0)


def comfy_unet(arch, diffusers_state):
    """ComfyUI's UNetModel of our config with the diffusers weights, renamed by ComfyUI's own key map."""
    import comfy.ops
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    config = {**unet_config(arch, "full"), **COMFY[arch]}
    # diffusers key -> ComfyUI key; it also names keys of other variants (shortcuts, class embeddings),
    # which ComfyUI's loader skips when absent, as here.
    key_map = comfy.utils.unet_to_diffusers(config)
    assert not set(diffusers_state) - set(key_map), set(diffusers_state) - set(key_map)
    with torch.device("meta"):
        unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
    # strict: every ComfyUI parameter is some diffusers parameter of the same shape.
    unet.load_state_dict({key_map[k]: v for k, v in diffusers_state.items()}, strict=True, assign=True)
    return unet


def diffusers_heads(unet):
    """{"down, layer: L, head: h": float [d, context] to_k rows}, layer L counted per section in processor order."""
    modules = dict(unet.named_modules())
    heads, layer_in_section = {}, {}
    for name in unet.attn_processors:
        if ".attn2." not in name:
            continue
        section = SECTION[name.split(".")[0]]
        layer = layer_in_section.get(section, 0)
        layer_in_section[section] = layer + 1
        attn2 = modules[name.rsplit(".", 1)[0]]                            # "...attn2.processor" -> attn2
        rows = attn2.to_k.weight.detach().reshape(attn2.heads, -1, attn2.to_k.weight.shape[1])
        for h in range(attn2.heads):
            heads[f"{section}, layer: {layer}, head: {h}"] = rows[h]
    return heads


def comfy_cells(layout):
    """(attn2 key, head) that each of our columns names."""
    return [(block.key, h) for block in layout.blocks for h in range(block.num_heads)]


def mismatched_columns(cells, perm, reference, heads, comfy_modules):
    """Columns c whose ComfyUI attn2 rows differ from the diffusers head at reference position perm[c]."""
    bad = []
    for c, (key, h) in enumerate(cells):
        attn2 = comfy_modules[key]
        d = attn2.to_k.weight.shape[0] // attn2.heads
        if not torch.equal(attn2.to_k.weight[h * d:(h + 1) * d], heads[reference[perm[c]]]):
            bad.append(c)
    return bad


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def converted(request):
    arch = request.param
    source = diffusers_unet(arch)
    return arch, diffusers_heads(source), comfy_unet(arch, source.state_dict())


def test_reference_head_order_is_diffusers_processor_order_within_each_section(reference_dir, converted):
    arch, heads, _ = converted
    reference = [str(s) for s in np.load(f"{reference_dir}/{HEAD_INDEX[arch]}", allow_pickle=False)]
    assert sorted(reference) == sorted(heads)                              # the same heads, each once
    # Section by section the file runs as the processors do (the file puts mid before up;
    # unet.attn_processors lists up_blocks before mid_block).
    for section in ("down", "mid", "up"):
        in_file = [r for r in reference if r.startswith(section + ",")]
        in_processors = [n for n in heads if n.startswith(section + ",")]
        assert in_file == in_processors, section
    parsed = [re.fullmatch(r"(down|mid|up), layer: (\d+), head: (\d+)", r) for r in reference]
    assert all(parsed)


def test_each_column_points_at_the_comfyui_weights_of_its_diffusers_head(reference_dir, converted):
    arch, heads, unet = converted
    layout = layout_of_unet(unet)
    assert layout == known_layout(arch) and layout.arch == arch
    reference = [str(s) for s in np.load(f"{reference_dir}/{HEAD_INDEX[arch]}", allow_pickle=False)]
    perm = layout.permutation_from_reference(reference)
    modules = cross_attention_modules(unet)
    cells = comfy_cells(layout)
    assert mismatched_columns(cells, perm, reference, heads, modules) == []
    # export_npy writes our columns as they are: that is right only because the order is the same.
    assert perm == list(range(layout.num_heads))


def test_a_wrong_mapping_fails_the_same_check(reference_dir, converted):
    arch, heads, unet = converted
    layout = known_layout(arch)
    reference = [str(s) for s in np.load(f"{reference_dir}/{HEAD_INDEX[arch]}", allow_pickle=False)]
    perm = layout.permutation_from_reference(reference)
    modules = cross_attention_modules(unet)
    cells = comfy_cells(layout)
    # Heads reversed inside every transformer.
    reversed_heads = [(key, layout.block(key).num_heads - 1 - h) for key, h in cells]
    assert len(mismatched_columns(reversed_heads, perm, reference, heads, modules)) == layout.num_heads
    # Transformers of one ComfyUI block in the wrong order (input 4/5 of SDXL hold 2 each), or for
    # SD1 (one transformer a block) the two transformers of the first resolution swapped.
    first, second = layout.blocks[0].key, layout.blocks[1].key
    swapped = [({first: second, second: first}.get(key, key), h) for key, h in cells]
    bad = mismatched_columns(swapped, perm, reference, heads, modules)
    assert bad == list(range(layout.blocks[0].num_heads + layout.blocks[1].num_heads))
    # The up section read in reverse (output blocks counted from the bottom).
    up = [c for c, name in enumerate(layout.reference_names()) if name.startswith("up,")]
    flipped = list(perm)
    for c, r in zip(up, reversed([perm[c] for c in up])):
        flipped[c] = r
    assert len(mismatched_columns(cells, flipped, reference, heads, modules)) == len(up)
