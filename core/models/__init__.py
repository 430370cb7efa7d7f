"""Model families (ViT/DeiT, Linformer-ViT), one adapter each, and the registry that builds,
loads and saves them."""
from .adapter import (BlockView, ModelAdapter, TokenLayout, block_views, get_adapter,
                      register_adapter, token_layout)
from .linformer_vit import LinformerViT, LinformerViTConfig, LinformerLayerConfig
from .macs import MacCounter, count_macs
from .registry import (CheckpointError, build_model, checkpoint_info, list_models, load_model,
                       load_weights, model_family, pretrained_path, register_model, save_model)
from .vit import Attention, BlockConfig, VisionTransformer, ViTConfig

__all__ = ["Attention", "BlockConfig", "BlockView", "CheckpointError", "LinformerLayerConfig",
           "LinformerViT", "LinformerViTConfig", "ModelAdapter", "TokenLayout", "block_views",
           "get_adapter", "register_adapter", "token_layout", "MacCounter", "VisionTransformer", "ViTConfig", "build_model",
           "checkpoint_info", "count_macs", "list_models", "load_model", "load_weights",
           "model_family", "pretrained_path", "register_model", "save_model"]
