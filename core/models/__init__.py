"""Model families (ViT/DeiT, Linformer-ViT) and the registry that builds them."""
from .linformer_vit import LinformerViT, LinformerViTConfig, LinformerLayerConfig
from .registry import (CheckpointError, build_model, count_macs, list_models, load_model,
                       load_weights, model_family, pretrained_path, register_model, save_model)
from .vit import Attention, BlockConfig, VisionTransformer, ViTConfig

__all__ = ["Attention", "BlockConfig", "CheckpointError", "LinformerLayerConfig", "LinformerViT",
           "LinformerViTConfig", "VisionTransformer", "ViTConfig", "build_model", "count_macs",
           "list_models", "load_model", "load_weights", "model_family", "pretrained_path",
           "register_model", "save_model"]
