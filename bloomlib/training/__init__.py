"""Training: the course corpus and synthetic tasks, the training loop, distributed helpers, `bloomlib bench core`."""
from bloomlib.training.data import TASKS, get_batch, load_corpus, make_task, train_val_split
from bloomlib.training.distributed import (ColumnParallelLinear, RowParallelLinear, TensorParallelMLP,
                                           init_distributed, launch, tensor_parallel_demo)
from bloomlib.training.train import TrainConfig, evaluate, train

__all__ = ["TASKS", "get_batch", "load_corpus", "make_task", "train_val_split", "ColumnParallelLinear",
           "RowParallelLinear", "TensorParallelMLP", "init_distributed", "launch", "tensor_parallel_demo",
           "TrainConfig", "evaluate", "train"]
