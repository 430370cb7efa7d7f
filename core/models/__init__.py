"""Model families (ViT/DeiT, Linformer-ViT), the registry that builds them, and readers /
writers of Hugging Face, timm and ONNX formats (``hf``, ``timm_format``, ``export``)."""
from .linformer_vit import LinformerViT, LinformerViTConfig, LinformerLayerConfig
from .macs import MacCounter, count_macs
from .registry import (CheckpointError, build_model, checkpoint_info, list_models, load_model,
                       load_weights, model_family, pretrained_path, register_model, save_model)
from .timm_format import load_timm_state_dict
from .vit import Attention, BlockConfig, LayerScale, VisionTransformer, ViTConfig

__all__ = ["Attention", "BlockConfig", "CheckpointError", "LayerScale", "LinformerLayerConfig",
           "LinformerViT", "LinformerViTConfig", "MacCounter", "VisionTransformer", "ViTConfig",
           "build_model", "checkpoint_info", "count_macs", "list_models", "load_model",
           "load_timm_state_dict", "load_weights", "model_family", "pretrained_path",
           "register_model", "save_model"]
