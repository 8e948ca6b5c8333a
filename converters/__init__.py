"""torchvision ResNet-18 ``.pth`` ⇄ Flax converters (strict, exact) and checkpoint file helpers."""
from converters.io import (atomic_write, convert_file, load_flax_variables, load_model_variables,
                           load_torch_checkpoint, save_flax_variables, save_torch_checkpoint, torch_bytes)
from converters.resnet18 import (CheckpointError, check_flax_variables, flax_to_torch, infer_model_config,
                                 torch_keys, torch_to_flax, unwrap_state_dict)

__all__ = ["CheckpointError", "atomic_write", "check_flax_variables", "convert_file", "flax_to_torch",
           "infer_model_config", "load_flax_variables", "load_model_variables", "load_torch_checkpoint",
           "save_flax_variables", "save_torch_checkpoint", "torch_bytes", "torch_keys", "torch_to_flax",
           "unwrap_state_dict"]
