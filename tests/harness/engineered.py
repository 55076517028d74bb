"""UNets whose cross-attention heads provably prefer known concepts, to test HRV builders.

For each transformer: norm2 gets weight 0 and a random bias b, so attn2's queries are
q = to_q(b) at every position of every image (q_h is head h's slice). Word embeddings are
rows of a random orthogonal matrix Q; to_k's weight is T @ Q, so the key of word w is T[:, w].
T is chosen so that head h's logit q_h . k_{w,h} is uniform noise in [-1, 1] for every word
except the words of concept pi(h) (all of them, or one when every_word=False), which get the
maximum plus `margin`. A correct builder must therefore give every vote of head h to pi(h), at
every step and for every prompt, whichever word of each concept it samples.
"""
from __future__ import annotations

import torch

from hrv.format.layout import layout_of_unet


def transformer_blocks(unet) -> dict[tuple[str, int, int], torch.nn.Module]:
    """{attn2 key: BasicTransformerBlock} in execution order."""
    groups = [("input", i, blk) for i, blk in enumerate(unet.input_blocks)]
    groups.append(("middle", 0, unet.middle_block))
    groups += [("output", i, blk) for i, blk in enumerate(unet.output_blocks)]
    found = {}
    for name, block_id, blk in groups:
        transformers = [t for layer in blk for t in getattr(layer, "transformer_blocks", [])]
        for index, t in enumerate(transformers):
            found[(name, block_id, index)] = t
    return found


@torch.no_grad()
def engineer_head_preferences(unet, word_concept: torch.Tensor, preferred: torch.Tensor, seed: int = 0,
                              margin: float = 4.0, every_word: bool = True, second_tokens: torch.Tensor | None = None,
                              sink_depth: float = 12.0, lure: float = 2.5) -> torch.Tensor:
    """Make head h of `unet` prefer concept preferred[h]; returns the word embeddings float32 [W, D].

    word_concept: int64 [W], the concept row of every word (or token); preferred: int64 [H] concept rows.
    second_tokens: bool [W], rows that are the second token of two-token words. In head h the second tokens of
    concept preferred[h] get logit -sink_depth and all other second tokens `lure` (below the planted first tokens):
    attended token by token the planted word still wins, but averaging a word's two embeddings into one key first
    averages their logits, and then the planted words sink below the lures.
    """
    g = torch.Generator().manual_seed(seed)
    layout = layout_of_unet(unet)
    if preferred.shape != (layout.num_heads,):
        raise ValueError(f"preferred must name one concept per head ({layout.num_heads}), got {list(preferred.shape)}")
    blocks = transformer_blocks(unet)
    context_dim = next(iter(blocks.values())).attn2.to_k.weight.shape[1]
    words = word_concept.shape[0]
    if words > context_dim:
        raise ValueError(f"at most {context_dim} words can have orthogonal embeddings, got {words}")
    q_basis, _ = torch.linalg.qr(torch.randn(context_dim, context_dim, generator=g))
    embeddings = q_basis[:words].contiguous()                 # [W, D], orthonormal rows
    for block in layout.blocks:
        t = blocks[block.key]
        attn2 = t.attn2
        inner = attn2.to_q.weight.shape[0]
        d = inner // block.num_heads
        bias = torch.randn(inner, generator=g)
        t.norm2.weight.zero_()
        t.norm2.bias.copy_(bias)
        attn2.to_q.weight.copy_(torch.randn(inner, inner, generator=g) / inner ** 0.5)
        q = attn2.to_q(bias)                                  # [inner], the same at every position
        target = torch.randn(inner, context_dim, generator=g) * 0.02   # T: columns >= W stay random
        for j in range(block.num_heads):
            rows = slice(j * d, (j + 1) * d)
            q_h = q[rows]
            logits = torch.rand(words, generator=g) * 2 - 1
            planted = word_concept == preferred[block.first_column + j]
            if second_tokens is not None:
                planted = planted & ~second_tokens
            candidates = torch.nonzero(planted).flatten()
            top = logits.max() + margin
            chosen = candidates if every_word else candidates[torch.randint(len(candidates), (1,), generator=g)]
            logits[chosen] = top
            if second_tokens is not None:
                sink = second_tokens & (word_concept == preferred[block.first_column + j])
                logits[second_tokens & ~sink] = lure
                logits[sink] = -sink_depth
            noise = torch.randn(d, words, generator=g)
            noise -= torch.outer(q_h, q_h @ noise) / (q_h @ q_h)   # orthogonal to q_h: no effect on logits
            target[rows, :words] = torch.outer(q_h, logits) / (q_h @ q_h) + noise
        attn2.to_k.weight.copy_(target @ q_basis)            # key of word w = T @ Q @ Q[w] = T[:, w]
    return embeddings
