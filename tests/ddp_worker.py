"""Run by tests/test_train.py under torchrun (2 processes) and in one process: same global batch."""

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from sepconv.train import distill


def main(out: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(96, 3, 8, 8)
    y = torch.randint(0, 4, (96,))
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4))
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))
    distill(student, teacher, TensorDataset(x, y), epochs=2, lr=1e-2, batch_size=32, progress=False, seed=3)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        torch.save(student.state_dict(), out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
