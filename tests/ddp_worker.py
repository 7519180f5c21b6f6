"""Runs of tests/test_train.py, under torchrun (2 processes) and in one process: same global batch.

Float64 BatchNorm models on datasets that no batch size divides evenly: 37 samples in batches of 8
(the last global batch of 5 splits 2 + 3) and 33 (the last global batch of 1 leaves one process
nothing). Usage: ``torchrun --nproc_per_node=2 ddp_worker.py OUT_DIR`` writes ``OUT_DIR/ddp.pt``.
"""

import os
import sys
from datetime import timedelta

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from sepconv._distributed import epoch_batches
from sepconv.train import distill, train


def bn_model(seed: int, classes: int = 3, bn1d: bool = True) -> nn.Module:
    """A tiny float64 classifier with BatchNorm2d (and BatchNorm1d) layers; conv without bias."""
    torch.manual_seed(seed)
    head = ([nn.Linear(64, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, classes)] if bn1d
            else [nn.Linear(64, classes)])
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), *head).double()


def dataset(n: int, classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(n)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64),
                         torch.randint(0, classes, (n,), generator=g))


def train_run(**kwargs) -> dict:
    model = bn_model(0)
    train(model, dataset(37), epochs=2, lr=1e-2, batch_size=8, progress=False, seed=3, **kwargs)
    return model.state_dict()


def distill_run() -> dict:
    student, teacher = bn_model(1, bn1d=False), bn_model(2, bn1d=False)
    teacher.train()(dataset(33).tensors[0])  # running statistics for the teacher's eval mode
    distill(student, teacher, dataset(33), epochs=2, lr=1e-2, batch_size=8, progress=False, seed=5)
    return student.state_dict()


class CrashOnSecondEvaluation(Dataset):
    """Eval data that "kills" every process after the first epoch's checkpoint was written."""

    def __init__(self):
        self.data, self.calls = dataset(6), 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls > len(self.data):
            raise RuntimeError("simulated crash")
        return self.data[i]


def resumed_run(checkpoint: str) -> dict:
    try:
        train_run(checkpoint=checkpoint, eval_data=CrashOnSecondEvaluation())
    except RuntimeError as exc:
        assert "simulated crash" in str(exc)
    else:
        raise AssertionError("the first run should have crashed")
    return train_run(checkpoint=checkpoint)  # a fresh model: only the checkpoint survives


def failing_run() -> tuple[int, str]:
    """A NaN input in one process's part of the first step: every process stops, none waits."""
    data = dataset(37)
    bad = epoch_batches(37, 8, 3, 0, 1, 2)[0][0][0]  # process 1's first sample
    data.tensors[0][bad, 0, 0, 0] = float("nan")
    try:
        train(bn_model(0), data, epochs=1, lr=1e-2, batch_size=8, progress=False, seed=3)
    except (ValueError, RuntimeError) as exc:
        return bad, f"{type(exc).__name__}: {exc}"
    return bad, "no error"


def single_process() -> dict:
    return {"train": train_run(), "distill": distill_run()}


def main(out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hang fails in a minute
    results = {"train": train_run(), "train_unsynced": train_run(sync_batchnorm=False), "distill": distill_run(),
               "resumed": resumed_run(os.path.join(out_dir, "ddp-run.pt"))}
    errors = [None, None]
    torch.distributed.all_gather_object(errors, failing_run())
    results["errors"] = errors
    if torch.distributed.get_rank() == 0:
        torch.save(results, os.path.join(out_dir, "ddp.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
