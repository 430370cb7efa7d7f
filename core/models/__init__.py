"""Model families (ViT/DeiT, Linformer-ViT), one adapter each, the registry that builds,
loads and saves them, and readers / writers of Hugging Face, timm and ONNX formats (``hf``,
``timm_format``, ``export``)."""
from .adapter import (DEFAULT_LAYOUT, BlockView, ModelAdapter, TokenLayout, block_views,
                      get_adapter, register_adapter, token_layout)
from .linformer_vit import LinformerViT, LinformerViTConfig, LinformerLayerConfig
from .macs import MacCounter, approx_macs, count_macs
from .registry import (CheckpointError, build_model, checkpoint_info, list_models, load_model,
                       load_weights, model_family, pretrained_path, register_model, save_model)
from .timm_format import load_timm_state_dict
from .vit import Attention, BlockConfig, LayerScale, VisionTransformer, ViTConfig

__all__ = ["DEFAULT_LAYOUT", "Attention", "BlockConfig", "BlockView", "CheckpointError", "LayerScale",
           "LinformerLayerConfig", "LinformerViT", "LinformerViTConfig", "MacCounter",
           "ModelAdapter", "TokenLayout", "VisionTransformer", "ViTConfig", "approx_macs",
           "block_views",
           "build_model", "checkpoint_info", "count_macs", "get_adapter", "list_models",
           "load_model", "load_timm_state_dict", "load_weights", "model_family",
           "pretrained_path", "register_adapter", "register_model", "save_model",
           "token_layout"]
