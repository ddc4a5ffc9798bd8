"""Training: one loop for GPT and ViT, checkpoints, torchrun/DDP, sweeps.

    from tucker_attention.train import TrainConfig, train, model_config_for, load_data
    data = load_data("lm", "stdlib")
    model_cfg = model_config_for("lm", data, block_size=64, n_layer=2, d_model=64, n_heads=4)
    result = train(model_cfg, TrainConfig(task="lm", steps=200), data=data)
"""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig, lr_at
from .distributed import DistInfo, init_distributed
from .loop import NonFiniteLossError, TrainingInterrupted, TrainResult, make_optimizer, param_groups, train
from .tasks import ImageTask, LMTask, load_data, make_task, model_config_for

__all__ = ["CheckpointError", "DistInfo", "ImageTask", "LMTask", "NonFiniteLossError", "TrainConfig", "TrainResult",
           "TrainingInterrupted", "init_distributed", "load_checkpoint", "load_data", "load_model", "lr_at",
           "make_optimizer", "make_task", "model_config_for", "param_groups", "save_checkpoint", "train"]
