"""Where the cross-attention heads of a UNet live, and how they are numbered.

A head column of an HRV is identified by the ComfyUI attn2 key of its transformer
(block name, block id, transformer index) and its head index inside that block.
Columns run in UNet execution order (input blocks, middle, output blocks), which is
also diffusers' attention-processor order used by the published HRVs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2}
REFERENCE_SECTION = {"input": "down", "middle": "mid", "output": "up"}


class LayoutError(ValueError):
    pass


@dataclass(frozen=True)
class AttnBlock:
    """One transformer's cross-attention: its attn2 key and its heads' columns."""
    block: str            # "input" | "middle" | "output"
    block_id: int
    transformer_index: int
    num_heads: int
    first_column: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.block, self.block_id, self.transformer_index)

    @property
    def columns(self) -> slice:
        return slice(self.first_column, self.first_column + self.num_heads)

    @property
    def block_id_str(self) -> str:
        return f"{self.block}.{self.block_id}.{self.transformer_index}"


class HeadLayout:
    """Ordered cross-attention blocks of one architecture, H heads in all."""

    def __init__(self, arch: str, blocks: Iterable[tuple[str, int, int, int]]):
        self.arch = arch
        entries = sorted(blocks, key=lambda b: (BLOCK_ORDER[b[0]], b[1], b[2]))
        column = 0
        self.blocks: list[AttnBlock] = []
        for name, block_id, transformer_index, num_heads in entries:
            self.blocks.append(AttnBlock(name, int(block_id), int(transformer_index), int(num_heads), column))
            column += int(num_heads)
        self.num_heads = column
        self._by_key = {b.key: b for b in self.blocks}
        if len(self._by_key) != len(self.blocks):
            raise LayoutError("head layout lists the same transformer twice")

    def __eq__(self, other) -> bool:
        return isinstance(other, HeadLayout) and self.compact() == other.compact()

    def __repr__(self) -> str:
        return f"HeadLayout({self.arch!r}, {len(self.blocks)} blocks, {self.num_heads} heads)"

    def block(self, key: tuple[str, int, int]) -> AttnBlock:
        return self._by_key[key]

    def compact(self) -> list[list]:
        """JSON-friendly form: [[block, block_id, transformer_index, num_heads], ...]."""
        return [[b.block, b.block_id, b.transformer_index, b.num_heads] for b in self.blocks]

    @classmethod
    def from_compact(cls, arch: str, compact: list) -> "HeadLayout":
        try:
            entries = [(str(b), int(i), int(t), int(h)) for b, i, t, h in compact]
        except (TypeError, ValueError) as e:
            raise LayoutError(f"head layout is malformed: {e}") from None
        for b, _, _, h in entries:
            if b not in BLOCK_ORDER or h <= 0:
                raise LayoutError(f"head layout has an invalid block {b!r} with {h} heads")
        return cls(arch, entries)

    def head_labels(self) -> list[str]:
        """Column labels in ComfyUI terms, e.g. 'input.4.1 h3'."""
        return [f"{b.block_id_str} h{h}" for b in self.blocks for h in range(b.num_heads)]

    def reference_names(self) -> list[str]:
        """Column names as the published head_index files spell them ('down, layer: L, head: h')."""
        names, layer_in_section = [], {}
        for b in self.blocks:
            section = REFERENCE_SECTION[b.block]
            layer = layer_in_section.get(section, 0)
            layer_in_section[section] = layer + 1
            names += [f"{section}, layer: {layer}, head: {h}" for h in range(b.num_heads)]
        return names

    def permutation_from_reference(self, reference_names: list[str]) -> list[int]:
        """perm[c] = reference column holding our column c; raises unless it is a bijection."""
        ours = self.reference_names()
        position = {name: i for i, name in enumerate(reference_names)}
        if len(position) != len(reference_names) or len(reference_names) != len(ours):
            raise LayoutError(
                f"reference head order has {len(reference_names)} entries ({len(position)} distinct); "
                f"the {self.arch} layout has {len(ours)} heads")
        try:
            return [position[name] for name in ours]
        except KeyError as e:
            raise LayoutError(f"reference head order lacks head {e.args[0]!r} of the {self.arch} layout") from None


def _spec(*groups: tuple[str, Iterable[int], int, int]) -> list[tuple[str, int, int, int]]:
    # (block, block ids, transformers per block, heads per transformer)
    return [(b, i, t, h) for b, ids, n, h in groups for i in ids for t in range(n)]


KNOWN_LAYOUTS = {
    # SD1.x: 16 cross-attention transformers of 8 heads (128).
    "sd1": HeadLayout("sd1", _spec(("input", (1, 2, 4, 5, 7, 8), 1, 8), ("middle", (0,), 1, 8),
                                   ("output", range(3, 12), 1, 8))),
    # SDXL: 70 transformers in 11 blocks, 10 or 20 heads (1300).
    "sdxl": HeadLayout("sdxl", _spec(("input", (4, 5), 2, 10), ("input", (7, 8), 10, 20),
                                     ("middle", (0,), 10, 20), ("output", (0, 1, 2), 10, 20),
                                     ("output", (3, 4, 5), 2, 10))),
}
ARCHITECTURES = tuple(KNOWN_LAYOUTS)


def known_layout(arch: str) -> HeadLayout:
    try:
        return KNOWN_LAYOUTS[arch]
    except KeyError:
        raise LayoutError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}") from None


def walk_cross_attention(diffusion_model) -> list[tuple[str, int, int, int]]:
    """(block, block_id, transformer_index, num_heads) for every attn2 of a ComfyUI UNetModel."""
    return [(*key, int(attn2.heads)) for key, attn2 in cross_attention_modules(diffusion_model).items()]


def layout_of_unet(diffusion_model) -> HeadLayout:
    """The layout of a ComfyUI UNet, named after the known architecture it matches."""
    found = walk_cross_attention(diffusion_model)
    if not found:
        raise LayoutError("this model has no cross-attention heads (is it a UNet of SD1.x or SDXL?)")
    for arch, layout in KNOWN_LAYOUTS.items():
        if layout.compact() == [list(f) for f in found]:
            return layout
    return HeadLayout("custom", found)


def cross_attention_modules(diffusion_model) -> dict[tuple[str, int, int], object]:
    """{attn2 key: the attn2 module} of a ComfyUI UNetModel, in execution order (same walk as above)."""
    groups = [("input", i, blk) for i, blk in enumerate(getattr(diffusion_model, "input_blocks", []))]
    if getattr(diffusion_model, "middle_block", None) is not None:
        groups.append(("middle", 0, diffusion_model.middle_block))
    groups += [("output", i, blk) for i, blk in enumerate(getattr(diffusion_model, "output_blocks", []))]
    found = {}
    for name, block_id, blk in groups:
        transformers = [t for layer in blk for t in getattr(layer, "transformer_blocks", [])]
        for index, transformer in enumerate(transformers):
            attn2 = getattr(transformer, "attn2", None)
            if attn2 is not None:
                found[(name, block_id, index)] = attn2
    return found



def _resampling(layer) -> int:
    """+1 for a layer that halves the resolution (Downsample, or a ResBlock with down=True), -1 for one that doubles it."""
    name = type(layer).__name__
    if name == "ResBlock" and getattr(layer, "updown", False):
        name = type(getattr(layer, "h_upd", None)).__name__
    return {"Downsample": 1, "Upsample": -1}.get(name, 0)


def attention_levels(diffusion_model) -> dict[tuple[str, int, int], int]:
    """{transformer key: how many times the UNet has halved the latent's resolution where it runs}.

    SD1.x: 0 (64x64 at 512 px), 1, 2 (16x16) and 3 (the 8x8 middle block); SDXL: 1 and 2 (64x64 and 32x32 at 1024 px).
    A layer that resamples after its transformers (Downsample, Upsample) changes the level for the next block.
    """
    levels, level = {}, 0

    def walk(name, block_id, blk):
        nonlocal level
        index = 0
        for layer in blk:
            for transformer in getattr(layer, "transformer_blocks", []):
                if getattr(transformer, "attn2", None) is not None:
                    levels[(name, block_id, index)] = level
                index += 1
            level += _resampling(layer)

    for i, blk in enumerate(getattr(diffusion_model, "input_blocks", [])):
        walk("input", i, blk)
    if getattr(diffusion_model, "middle_block", None) is not None:
        walk("middle", 0, diffusion_model.middle_block)
    for i, blk in enumerate(getattr(diffusion_model, "output_blocks", [])):
        walk("output", i, blk)
    return levels
