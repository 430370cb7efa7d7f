"""Adapter of the Linformer-ViT family (:class:`~core.models.linformer_vit.LinformerViT`).

Layer ``i`` is ``transformer.net.layers.i``: ``0`` the pre-normed attention
(``0.norm``, ``0.fn`` a ``linformer`` ``LinformerSelfAttention`` with ``to_q``/``to_k``/``to_v``,
``proj_k``/``proj_v`` (seq_len, k) and ``to_out``), ``1`` the pre-normed FFN (``1.fn.w1``,
``1.fn.w2``). The package's attention keeps one ``dim_head`` for q, k and v (so q/k and v keep
equal counts) and asserts ``dim % heads == 0``.

Linformer (Wang et al. 2020) never forms an N×N matrix: with ``P̄ = softmax(Q (E K)ᵀ/√d)``
(B, H, N, k) over k projected keys and values ``F V`` (``F = proj_v[:N]``, (N, k)), the output
is ``out_i = Σ_t (P̄ Fᵀ)_{it} v_t``, so the token-to-token map is the signed ``P̄ Fᵀ``.
"""
from __future__ import annotations

from typing import Callable

import torch
from linformer.linformer import LinformerSelfAttention
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .adapter import BlockView, ModelAdapter, Slices, register_adapter, rows_of
from .linformer_vit import LinformerLayerConfig, LinformerViT, LinformerViTConfig, with_layers


def _sequence_projection(attn: LinformerSelfAttention, n: int) -> Tensor:
    """F = proj_v[:N] (N, k), the value projection applied along the sequence."""
    proj = attn.proj_k if attn.share_kv else attn.proj_v
    return proj[:n]


def _split(a: LinformerSelfAttention) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    def split(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, _ = x.shape
        H, d = a.heads, a.dim_head
        q = a.to_q(x).reshape(B, N, H, d).transpose(1, 2)
        k = torch.einsum("bnd,nk->bkd", a.to_k(x), a.proj_k[:N])
        v = torch.einsum("bnd,nk->bkd", a.to_k(x) if a.share_kv else a.to_v(x),
                         _sequence_projection(a, N))
        return q, k.reshape(B, -1, H, d).transpose(1, 2), v.reshape(B, -1, H, d).transpose(1, 2)
    return split


class LinformerAdapter(ModelAdapter):
    family = "linformer-vit"
    model_type = LinformerViT
    config_type = LinformerViTConfig
    tied_qk_v = True
    heads_divide_width = True

    def blocks(self, model: LinformerViT) -> list[BlockView]:
        views = []
        C = model.config.dim
        for layer, cfg in zip(model.transformer.net.layers, model.config.layers):
            attn, ff = layer[0].fn, layer[1].fn
            H, d = cfg.heads, cfg.dim_head
            views.append(BlockView(
                H, d, d, cfg.ff_hidden, attn, layer[0].norm, layer[1].norm, ff.w1, ff.w2,
                q_weight=attn.to_q.weight.detach().reshape(H, d, C),
                k_weight=attn.to_k.weight.detach().reshape(H, d, C),
                v_weight=attn.to_v.weight.detach().reshape(H, d, C),
                q_bias=None, k_bias=None, out_weight=attn.to_out.weight.detach(),
                scale=d ** -0.5, split=_split(attn)))
        return views

    def depth(self, model: LinformerViT) -> int:
        return model.config.depth

    def residual_width(self, model: LinformerViT) -> int:
        return model.config.dim

    def num_tokens(self, model: LinformerViT) -> int:
        return model.config.seq_len

    def residual_links(self, model: LinformerViT) -> list[tuple[str, Tensor]]:
        pe = model.patch_embed.proj.weight.detach()
        links = [("patch_embed", pe.reshape(pe.shape[0], -1))]
        for i, b in enumerate(self.blocks(model)):
            g1, g2 = b.norm1.weight.detach(), b.norm2.weight.detach()
            qkv = torch.cat([b.q_weight.flatten(0, 1), b.k_weight.flatten(0, 1),
                             b.v_weight.flatten(0, 1)])
            links += [(f"blocks.{i}.qkv", (qkv * g1).T), (f"blocks.{i}.proj", b.out_weight),
                      (f"blocks.{i}.fc1", (b.fc1.weight.detach() * g2).T),
                      (f"blocks.{i}.fc2", b.fc2.weight.detach())]
        links.append(("head", (model.head.weight.detach() * model.norm.weight.detach()).T))
        return links

    def sequence_projections(self, model: LinformerViT) -> list[tuple[str, nn.Module, str]]:
        out = []
        for name, mod in model.named_modules():
            if isinstance(mod, LinformerSelfAttention):
                out.append((name, mod, "proj_k"))
                if not mod.share_kv:
                    out.append((name, mod, "proj_v"))
        return out

    # -- attention
    def attention_modules(self, model: LinformerViT) -> list[nn.Module]:
        return [layer[0].fn for layer in model.transformer.net.layers]

    def hook_point(self, attn: nn.Module) -> nn.Module:
        return attn.dropout

    def to_tokens(self, attn: nn.Module, probs: Tensor) -> Tensor:
        """P̄ (B, H, N, k) → the effective token-to-token P̄·Fᵀ (B, H, N, N), signed."""
        return torch.einsum("bhnk,tk->bhnt", probs, _sequence_projection(attn, probs.shape[2]))

    # -- structured pruning
    def slices(self, model: LinformerViT, plan) -> Slices:
        r = plan.residual
        s: Slices = {"cls_token": (None, None, r), "pos_embed": (None, None, r),
                     "patch_embed.proj.weight": (r,), "patch_embed.proj.bias": (r,),
                     "norm.weight": (r,), "norm.bias": (r,), "head.weight": (None, r)}
        for i, (p, cfg) in enumerate(zip(plan.blocks, model.config.layers)):
            d = cfg.dim_head
            q_rows, v_rows = rows_of(p.heads, p.qk, d), rows_of(p.heads, p.v, d)
            pre = f"transformer.net.layers.{i}."
            # separate to_q / to_k / to_v: q and k take the same rows
            s |= {pre + "0.fn.to_q.weight": (q_rows, r), pre + "0.fn.to_k.weight": (q_rows, r),
                  pre + "0.fn.to_v.weight": (v_rows, r),
                  pre + "0.fn.to_out.weight": (r, v_rows), pre + "0.fn.to_out.bias": (r,)}
            for norm in ("0.norm", "1.norm"):
                s |= {f"{pre}{norm}.weight": (r,), f"{pre}{norm}.bias": (r,)}
            s |= {f"{pre}1.fn.w1.weight": (p.mlp, r), f"{pre}1.fn.w1.bias": (p.mlp,),
                  f"{pre}1.fn.w2.weight": (r, p.mlp), f"{pre}1.fn.w2.bias": (r,)}
        return s

    def fold_query_scale(self, state: dict[str, Tensor], block: int, n_q: int,
                         fold: float) -> None:
        key = f"transformer.net.layers.{block}.0.fn.to_q.weight"
        state[key] = state[key] * fold

    def shrunk_config(self, model: LinformerViT, plan) -> LinformerViTConfig:
        layers = [LinformerLayerConfig(p.heads.numel(), p.qk.shape[1], p.mlp.numel())
                  for p in plan.blocks]
        return with_layers(model.config, layers, dim=plan.residual.numel())

    def block_sizes(self, config: LinformerViTConfig
                    ) -> tuple[list[tuple[int, int, int, int]], int]:
        return ([(b.heads, b.dim_head, b.dim_head, b.ff_hidden) for b in config.layers],
                config.dim)

    def config_macs(self, config: LinformerViTConfig) -> int:
        """Per layer ``3·N·D·H·d + 2·N·k·H·d (E K, F V) + 2·H·N·k·d (QKᵀ, AV) + N·H·d·D
        + 2·N·D·hidden``, plus the patch embedding and the head."""
        H0, W0 = config.img_size
        p = config.patch_size
        P = (H0 // p) * (W0 // p)
        N, D, k = P + 1, config.dim, config.k
        macs = P * D * config.in_chans * p * p
        for b in config.layers:
            Hd = b.heads * b.dim_head
            macs += 3 * N * D * Hd + 2 * N * k * Hd + 2 * N * k * Hd + N * Hd * D \
                + 2 * N * D * b.ff_hidden
        return macs + D * config.num_classes

    # -- AMAP
    def attention_slot_costs(self, model: LinformerViT) -> list[int]:
        N, c = model.config.seq_len, model.config
        return [2 * N * c.dim + 2 * N * c.k for _ in c.layers]

    def check_channel_gating(self, model: LinformerViT) -> None:
        for b in self.blocks(model):
            a: LinformerSelfAttention = b.attn
            if a.share_kv or a.to_k.out_features != a.to_q.out_features:
                raise ValueError("amap needs Linformer attention with separate keys and values "
                                 "(share_kv=False, one_kv_head=False)")

    def gate_channels(self, view: BlockView, factor: Callable[[int, Tensor], Tensor]
                      ) -> list[RemovableHandle]:
        return [view.attn.to_q.register_forward_hook(lambda _m, _i, out: out * factor(0, out)),
                view.attn.to_v.register_forward_hook(lambda _m, _i, out: out * factor(1, out))]

    def scale_qv_rows(self, view: BlockView, q_factor: Tensor, v_factor: Tensor) -> None:
        a = view.attn
        a.to_q.weight.mul_(q_factor[:, None].to(a.to_q.weight.dtype))
        a.to_v.weight.mul_(v_factor[:, None].to(a.to_v.weight.dtype))


register_adapter(LinformerAdapter())
