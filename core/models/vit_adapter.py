"""Adapter of the ViT / DeiT family (:class:`~core.models.vit.VisionTransformer`).

Block ``i`` is ``blocks.i`` with a packed ``attn.qkv`` (``[q (H·d_qk) | k (H·d_qk) |
v (H·d_v)]``), ``attn.proj``, ``mlp.fc1``/``mlp.fc2`` and pre-norms ``norm1``/``norm2``; the
attention probabilities pass through ``attn.attn_drop``. Special tokens (class, distillation,
register) sit in front of the patch tokens; optional parts (LayerScale ``ls1``/``ls2``,
``fc_norm``, ``head_dist``) are sliced along the residual stream when present.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .adapter import BlockView, ModelAdapter, Slices, TokenLayout, register_adapter, rows_of
from .vit import BlockConfig, VisionTransformer, ViTConfig, with_blocks


def _prefix(config: ViTConfig) -> tuple[str, ...]:
    return config.prefix_tokens


def _gamma(module: nn.Module) -> Tensor | None:
    g = getattr(module, "gamma", None)
    return g.detach() if isinstance(g, Tensor) else None


class ViTAdapter(ModelAdapter):
    family = "vit"
    model_type = VisionTransformer
    config_type = ViTConfig
    merges_tokens = True

    def from_state_dict(self, config: ViTConfig, state: dict[str, Tensor]) -> VisionTransformer:
        return VisionTransformer.from_state_dict(config, state)

    def blocks(self, model: VisionTransformer) -> list[BlockView]:
        views = []
        C = model.config.embed_dim
        for blk, cfg in zip(model.blocks, model.config.blocks):
            H, dq, dv = cfg.num_heads, cfg.qk_dim, cfg.v_dim
            w = blk.attn.qkv.weight.detach()
            b = blk.attn.qkv.bias.detach() if blk.attn.qkv.bias is not None else None
            views.append(BlockView(
                H, dq, dv, cfg.mlp_hidden, blk.attn, blk.norm1, blk.norm2, blk.mlp.fc1,
                blk.mlp.fc2,
                q_weight=w[:H * dq].reshape(H, dq, C),
                k_weight=w[H * dq:2 * H * dq].reshape(H, dq, C),
                v_weight=w[2 * H * dq:].reshape(H, dv, C),
                q_bias=b[:H * dq].reshape(H, dq) if b is not None else None,
                k_bias=b[H * dq:2 * H * dq].reshape(H, dq) if b is not None else None,
                out_weight=blk.attn.proj.weight.detach(), scale=blk.attn.scale,
                split=blk.attn.split_qkv))
        return views

    def depth(self, model: VisionTransformer) -> int:
        return model.config.depth

    def residual_width(self, model: VisionTransformer) -> int:
        return model.config.embed_dim

    def token_layout(self, model: VisionTransformer) -> TokenLayout:
        return TokenLayout(model.prefix_tokens, model.cls_index)

    def num_tokens(self, model: VisionTransformer) -> int:
        return model.patch_embed.num_patches + len(_prefix(model.config))

    def residual_links(self, model: VisionTransformer) -> list[tuple[str, Tensor]]:
        pe = model.patch_embed.proj.weight.detach()
        links = [("patch_embed", pe.reshape(pe.shape[0], -1))]
        for i, (blk, b) in enumerate(zip(model.blocks, self.blocks(model))):
            g1, g2 = b.norm1.weight.detach(), b.norm2.weight.detach()
            proj, fc2 = b.out_weight, b.fc2.weight.detach()
            ls1, ls2 = _gamma(blk.ls1), _gamma(blk.ls2)
            if ls1 is not None:       # LayerScale multiplies the writer's output rows
                proj = proj * ls1[:, None]
            if ls2 is not None:
                fc2 = fc2 * ls2[:, None]
            qkv = torch.cat([b.q_weight.flatten(0, 1), b.k_weight.flatten(0, 1),
                             b.v_weight.flatten(0, 1)])
            links += [(f"blocks.{i}.qkv", (qkv * g1).T), (f"blocks.{i}.proj", proj),
                      (f"blocks.{i}.fc1", (b.fc1.weight.detach() * g2).T),
                      (f"blocks.{i}.fc2", fc2)]
        final = getattr(model, "fc_norm", None)
        if not isinstance(final, nn.LayerNorm):
            final = model.norm
        gain = final.weight.detach()
        links.append(("head", (model.head.weight.detach() * gain).T))
        head_dist = getattr(model, "head_dist", None)
        if isinstance(head_dist, nn.Linear):
            links.append(("head_dist", (head_dist.weight.detach() * gain).T))
        return links

    # -- attention
    def attention_modules(self, model: VisionTransformer) -> list[nn.Module]:
        return [blk.attn for blk in model.blocks]

    def hook_point(self, attn: nn.Module) -> nn.Module:
        return attn.attn_drop

    def key_point(self, attn: nn.Module) -> nn.Module:
        return attn.key_point

    def set_token_merging(self, model: VisionTransformer, merges: list[nn.Module],
                          unmerge: nn.Module) -> None:
        for blk, merge in zip(model.blocks, merges, strict=True):
            blk.token_merge = merge
        model.token_unmerge = unmerge

    # -- structured pruning
    def slices(self, model: VisionTransformer, plan) -> Slices:
        r = plan.residual
        s: Slices = {"cls_token": (None, None, r), "dist_token": (None, None, r),
                     "reg_token": (None, None, r), "pos_embed": (None, None, r),
                     "patch_embed.proj.weight": (r,), "patch_embed.proj.bias": (r,),
                     "norm.weight": (r,), "norm.bias": (r,),
                     "fc_norm.weight": (r,), "fc_norm.bias": (r,),
                     "head.weight": (None, r), "head_dist.weight": (None, r)}
        for i, (p, cfg) in enumerate(zip(plan.blocks, model.config.blocks)):
            H, dq, dv = cfg.num_heads, cfg.qk_dim, cfg.v_dim
            q_rows, v_rows = rows_of(p.heads, p.qk, dq), rows_of(p.heads, p.v, dv)
            qkv = torch.cat([q_rows, q_rows + H * dq, v_rows + 2 * H * dq])
            pre = f"blocks.{i}."
            s |= {pre + "attn.qkv.weight": (qkv, r), pre + "attn.qkv.bias": (qkv,),
                  pre + "attn.proj.weight": (r, v_rows), pre + "attn.proj.bias": (r,),
                  pre + "ls1.gamma": (r,), pre + "ls2.gamma": (r,)}
            for norm in ("norm1", "norm2"):
                s |= {f"{pre}{norm}.weight": (r,), f"{pre}{norm}.bias": (r,)}
            s |= {f"{pre}mlp.fc1.weight": (p.mlp, r), f"{pre}mlp.fc1.bias": (p.mlp,),
                  f"{pre}mlp.fc2.weight": (r, p.mlp), f"{pre}mlp.fc2.bias": (r,)}
        return s

    def fold_query_scale(self, state: dict[str, Tensor], block: int, n_q: int,
                         fold: float) -> None:
        for key in (f"blocks.{block}.attn.qkv.weight", f"blocks.{block}.attn.qkv.bias"):
            if key in state:
                state[key] = state[key].clone()
                state[key][:n_q] *= fold

    def shrunk_config(self, model: VisionTransformer, plan) -> ViTConfig:
        blocks = [BlockConfig(p.heads.numel(), p.qk.shape[1], p.v.shape[1], p.mlp.numel())
                  for p in plan.blocks]
        return with_blocks(model.config, blocks, embed_dim=plan.residual.numel())

    def block_sizes(self, config: ViTConfig) -> tuple[list[tuple[int, int, int, int]], int]:
        return ([(b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden) for b in config.blocks],
                config.embed_dim)

    def config_macs(self, config: ViTConfig) -> int:
        """``P·D·C_in·p² + Σ_blocks [N·D·H(2d_qk + d_v) + H·N²·(d_qk + d_v) + N·H·d_v·D
        + 2·N·D·hidden] + heads·D·classes`` with P patches, N = P + special tokens."""
        H0, W0 = config.img_size
        p = config.patch_size
        P = (H0 // p) * (W0 // p)
        N = P + len(_prefix(config))
        D = config.embed_dim
        macs = P * D * config.in_chans * p * p
        for b in config.blocks:
            H, dq, dv = b.num_heads, b.qk_dim, b.v_dim
            macs += (N * D * H * (2 * dq + dv) + H * N * N * (dq + dv) + N * H * dv * D
                     + 2 * N * D * b.mlp_hidden)
        heads = 2 if config.distilled and config.dist_head else 1
        return macs + heads * D * config.num_classes

    # -- AMAP
    def attention_slot_costs(self, model: VisionTransformer) -> list[int]:
        N, D = self.num_tokens(model), model.config.embed_dim
        return [2 * N * D + N * N for _ in model.config.blocks]

    def gate_channels(self, view: BlockView, factor: Callable[[int, Tensor], Tensor]
                      ) -> list[RemovableHandle]:
        ones = view.num_heads * view.qk_dim

        def hook(_m, _inp, out: Tensor) -> Tensor:
            return out * torch.cat([factor(0, out), out.new_ones(ones), factor(1, out)])
        return [view.attn.qkv.register_forward_hook(hook)]

    def scale_qv_rows(self, view: BlockView, q_factor: Tensor, v_factor: Tensor) -> None:
        qkv = view.attn.qkv
        f = torch.cat([q_factor, q_factor.new_ones(view.num_heads * view.qk_dim), v_factor])
        f = f.to(qkv.weight.dtype)
        qkv.weight.mul_(f[:, None])
        if qkv.bias is not None:
            qkv.bias.mul_(f)


register_adapter(ViTAdapter())
