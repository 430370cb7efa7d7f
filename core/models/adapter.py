"""Family adapters: the one place that knows how a model family is built inside.

Everything outside ``core/models`` — attention capture and rollout, SNP shrinking, AMAP, MAC
closed forms, the dashboard — asks :func:`get_adapter(model) <get_adapter>` instead of testing
``isinstance`` against model classes (timm keeps family quirks in the model file and exposes a
uniform surface; Torch-Pruning needs a dependency graph because its users' models have none).

An adapter says, for its family:

- the blocks, as :class:`BlockView` (sizes, q/k/v/out/FFN weights as views, the pre-norms);
- the attention hook point (the submodule whose input is the post-softmax probabilities) and
  how a recorded tensor becomes a token-to-token map (Linformer: the effective ``P̄·Fᵀ``);
- the special tokens in front of the patch tokens (:class:`TokenLayout`);
- the residual stream's writers and readers, the state-dict slices that remove a structure,
  how a shrunk configuration is written, and the closed-form MACs.

Adding a family = one adapter file registered with :func:`register_adapter`, plus its tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

# state-dict key → kept indices per dim (None = all): the one description from which both the
# shrunk weights (index_select) and the masks (ones at the kept positions) are made
Slices = dict[str, tuple[Tensor | None, ...]]


@dataclass(frozen=True)
class TokenLayout:
    """The tokens of a sequence: ``prefix`` special tokens (names in order, e.g. ``("cls",)``,
    ``("cls", "dist")``, ``("cls", "reg0", …)``), then the patch tokens.

    ``cls_index`` is the class token's position, or None for a model that pools the patch
    tokens (global average pooling): then "the CLS row" of a map is the mean over patch queries.
    """

    prefix: tuple[str, ...] = ("cls",)
    cls_index: int | None = 0

    @property
    def num_prefix(self) -> int:
        return len(self.prefix)


DEFAULT_LAYOUT = TokenLayout()


@dataclass(eq=False)
class BlockView:
    """Family-independent access to one block's sizes, modules and weights (views, no copies).

    ``q_weight``/``k_weight`` (H, d_qk, C), ``q_bias``/``k_bias`` (H, d_qk) or None,
    ``v_weight`` (H, d_v, C), ``out_weight`` (C, H·d_v), ``fc1``/``fc2`` the FFN linears,
    ``norm1``/``norm2`` the pre-norms; ``attn`` the attention module (its input is the
    LayerNorm-ed block input); ``scale`` the softmax scale; ``split`` maps the normed input
    x (B, N, C) to q (B, H, N, d_qk), the keys the queries are scored against (B, H, M, d_qk)
    and the values the probabilities weigh (B, H, M, d_v) — M = N for softmax attention,
    M = k for Linformer's sequence-projected ``E K`` / ``F V``.
    """

    num_heads: int
    qk_dim: int
    v_dim: int
    mlp_hidden: int
    attn: nn.Module
    norm1: nn.LayerNorm
    norm2: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear
    q_weight: Tensor
    k_weight: Tensor
    v_weight: Tensor
    q_bias: Tensor | None
    k_bias: Tensor | None
    out_weight: Tensor
    scale: float
    split: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normed input x (B, N, C) → q, keys, values (see the class docstring)."""
        return self.split(x)

    def qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normed input x (B, N, C) → q (B, H, N, d_qk) and the keys scored against it."""
        return self.split(x)[:2]

    def head_output_norms(self, x: Tensor) -> Tensor:
        """(B, H): per head, the mean over tokens of the L2 norm of its contribution to the
        block's output, ``‖softmax(q kᵀ·scale) v W_out[:, h]ᵀ‖``."""
        q, k, v = self.split(x)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        o = attn @ v                                                   # (B, H, N, d_v)
        w = self.out_weight.reshape(-1, self.num_heads, self.v_dim)   # (C, H, d_v)
        gram = torch.einsum("chd,che->hde", w, w)                      # W_hᵀ W_h per head
        sq = torch.einsum("bhnd,hde,bhne->bhn", o, gram, o)
        return sq.clamp(min=0).sqrt().mean(dim=-1)


def rows_of(heads: Tensor, within: Tensor, per_head: int) -> Tensor:
    """Flat row indices of channels ``within`` (H', d') of ``heads`` in a (H·per_head) layout."""
    return (heads[:, None] * per_head + within).flatten()


class ModelAdapter:
    """What PruneLens needs to know about one model family. Subclasses fill every method;
    ``family`` names it (stored in checkpoints), ``model_type``/``config_type`` are the classes
    it serves. Class attributes describe constraints of the family:

    ``tied_qk_v``: q/k and v share one per-head dim (Linformer's package);
    ``heads_divide_width``: the residual width must stay a multiple of every layer's heads;
    ``merges_tokens``: the attention takes any number of tokens, so blocks can merge them
    (ToMe, :mod:`core.tokens`); Linformer's sequence projections fix the length.
    """

    family: ClassVar[str] = ""
    model_type: ClassVar[type[nn.Module]]
    config_type: ClassVar[type]
    tied_qk_v: ClassVar[bool] = False
    heads_divide_width: ClassVar[bool] = False
    merges_tokens: ClassVar[bool] = False

    # -- building
    def build(self, config: Any) -> nn.Module:
        return self.model_type(config)

    def config_from_dict(self, d: dict) -> Any:
        return self.config_type.from_dict(d)

    def from_state_dict(self, config: Any, state: dict[str, Tensor]) -> nn.Module:
        """A model of ``config`` holding ``state`` (strict)."""
        model = self.build(config)
        model.load_state_dict(state, strict=True)
        return model

    # -- structure
    def blocks(self, model: nn.Module) -> list[BlockView]:
        raise NotImplementedError

    def depth(self, model: nn.Module) -> int:
        return len(self.blocks(model))

    def residual_width(self, model: nn.Module) -> int:
        raise NotImplementedError

    def num_tokens(self, model: nn.Module) -> int:
        """N: tokens per image, special tokens included."""
        raise NotImplementedError

    def token_layout(self, model: nn.Module) -> TokenLayout:
        return DEFAULT_LAYOUT

    def residual_links(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        """The layers joined by the residual stream, each as (name, (D, fan) channel vectors):
        writers give their output rows, readers their input columns times the gain of the
        LayerNorm in front of them (the weight that channel effectively meets)."""
        raise NotImplementedError

    def sequence_projections(self, model: nn.Module) -> list[tuple[str, nn.Module, str]]:
        """Extra prunable tensors along the sequence (Linformer's E/F): (module name, module,
        attribute). Empty for softmax attention."""
        return []

    # -- attention
    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """The attention layers, first to last."""
        return [b.attn for b in self.blocks(model)]

    def hook_point(self, attn: nn.Module) -> nn.Module:
        """The submodule whose input is the post-softmax probabilities (B, H, N, M)."""
        raise NotImplementedError

    def to_tokens(self, attn: nn.Module, probs: Tensor) -> Tensor:
        """Recorded probabilities (B, H, N, M) → token-to-token map (B, H, N, N). Identity for
        softmax attention (M = N)."""
        return probs

    # -- token merging (only where ``merges_tokens``)
    def key_point(self, attn: nn.Module) -> nn.Module:
        """The submodule whose output is the keys (B, H, N, d_qk) the queries are scored
        against (ToMe's similarity metric)."""
        raise NotImplementedError

    def set_token_merging(self, model: nn.Module, merges: list[nn.Module],
                          unmerge: nn.Module) -> None:
        """Put ``merges[i]`` ((B, N, C) → (B, N', C)) between block i's attention and its FFN,
        and ``unmerge`` ((B, N', C) → (B, N, C)) after the final norm, in place."""
        raise NotImplementedError

    # -- structured pruning
    def slices(self, model: nn.Module, plan: Any) -> Slices:
        raise NotImplementedError

    def fold_query_scale(self, state: dict[str, Tensor], block: int, n_q: int,
                         fold: float) -> None:
        """Multiply block ``block``'s first ``n_q`` query rows (weights and bias) by ``fold``,
        in ``state`` (a shrunk state dict), in place."""
        raise NotImplementedError

    def shrunk_config(self, model: nn.Module, plan: Any) -> Any:
        raise NotImplementedError

    def block_sizes(self, config: Any) -> tuple[list[tuple[int, int, int, int]], int]:
        """Per block (heads, d_qk, d_v, FFN hidden), and the residual width."""
        raise NotImplementedError

    def config_macs(self, config: Any) -> int:
        """Closed-form MACs of one image (what ``count_macs`` measures)."""
        raise NotImplementedError

    # -- AMAP
    def attention_slot_costs(self, model: nn.Module) -> list[int]:
        """Per block the attention MACs of one channel (a q/k pair or a v channel) in one head."""
        raise NotImplementedError

    def check_channel_gating(self, model: nn.Module) -> None:
        """Raise ValueError if q/v channels cannot be gated one by one (AMAP)."""

    def gate_channels(self, view: BlockView, factor: Callable[[int, Tensor], Tensor]
                      ) -> list[RemovableHandle]:
        """Forward hooks multiplying the block's q channels by ``factor(0, out)`` (H·d_qk,)
        and v channels by ``factor(1, out)`` (H·d_v,). The caller removes the handles."""
        raise NotImplementedError

    def scale_qv_rows(self, view: BlockView, q_factor: Tensor, v_factor: Tensor) -> None:
        """In place: q rows (H·d_qk,) and v rows (H·d_v,) multiplied, biases included."""
        raise NotImplementedError


_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Make ``adapter`` serve its ``model_type`` / ``config_type`` / ``family``."""
    if adapter.family in _ADAPTERS and type(_ADAPTERS[adapter.family]) is not type(adapter):
        raise ValueError(f"an adapter for family {adapter.family!r} is already registered")
    _ADAPTERS[adapter.family] = adapter
    return adapter


def families() -> list[str]:
    return list(_ADAPTERS)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model``'s family; TypeError naming the supported families if none."""
    for adapter in _ADAPTERS.values():
        if isinstance(model, adapter.model_type):
            return adapter
    raise TypeError(f"{type(model).__name__} is not a model family PruneLens knows; "
                    f"supported: {', '.join(_ADAPTERS)}")


def adapter_for_config(config: Any) -> ModelAdapter:
    for adapter in _ADAPTERS.values():
        if isinstance(config, adapter.config_type):
            return adapter
    raise TypeError(f"{type(config).__name__} is not a PruneLens model configuration")


def adapter_for_family(family: str) -> ModelAdapter:
    if family not in _ADAPTERS:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(_ADAPTERS)}")
    return _ADAPTERS[family]


def token_layout(model: nn.Module) -> TokenLayout:
    """The special tokens of ``model`` (class, distillation, register tokens)."""
    return get_adapter(model).token_layout(model)


def block_views(model: nn.Module) -> list[BlockView]:
    """One :class:`BlockView` per block, first to last."""
    return get_adapter(model).blocks(model)

