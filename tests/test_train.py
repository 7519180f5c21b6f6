"""Training, checkpoints, distillation, and a 2-process torchrun run."""

import os
import subprocess
import sys

import pytest
import torch

from sepconv.convert import convert
from sepconv.models import digits_cnn, digits_separable_cnn
from sepconv.train import distill, evaluate, save_atomic, train


def test_training_reaches_stated_accuracy(trained_digits_cnn, digits):
    # the session fixture trained 6 epochs (~10 s on 2 cores); stated accuracy: >= 97% on test
    assert evaluate(trained_digits_cnn, digits[1]) >= 0.97


def test_separable_twin_trains(digits):
    torch.manual_seed(0)
    twin = digits_separable_cnn(32)
    history = train(twin, digits[0], epochs=6, eval_data=digits[1], progress=False)
    assert history.eval_accuracy[-1] >= 0.9 and history.train_loss[-1] < history.train_loss[0]


def test_checkpoint_resume_continues_where_it_stopped(digits, tmp_path):
    data = torch.utils.data.Subset(digits[0], range(256))
    torch.manual_seed(0)
    straight = digits_cnn(8)
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    train(straight, data, epochs=3, progress=False)

    class Crashing(torch.utils.data.Dataset):
        """The same data, but the process "dies" early in the third epoch."""

        def __init__(self):
            self.calls = 0

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            self.calls += 1
            if self.calls > 2 * len(data) + 40:
                raise RuntimeError("simulated crash")
            return data[i]

    ckpt = str(tmp_path / "run.pt")
    interrupted = digits_cnn(8)
    interrupted.load_state_dict(start)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(interrupted, Crashing(), epochs=3, checkpoint=ckpt, progress=False)
    resumed = digits_cnn(8)
    resumed.load_state_dict(start)  # a fresh process: only the checkpoint survives
    history = train(resumed, data, epochs=3, checkpoint=ckpt, progress=False)
    assert history.resumed_from == 2 and history.epochs == [0, 1, 2]
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)
    assert sorted(os.listdir(tmp_path)) == ["run.pt"]  # no temporary files left behind


def test_save_atomic_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "model.pt"
    save_atomic({"a": torch.ones(3)}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": torch.zeros(3), "b": Unpicklable()}, str(path))
    assert torch.equal(torch.load(path)["a"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_distillation_recovers_accuracy(trained_digits_cnn, digits):
    x = digits[1].tensors()[0]
    student, report = convert(trained_digits_cnn, method="depthwise", budget=0.3, example_input=x)
    before = evaluate(student, digits[1])
    teacher_state = {k: v.clone() for k, v in trained_digits_cnn.state_dict().items()}
    history = distill(student, trained_digits_cnn, digits[0], epochs=2, lr=2e-3, eval_data=digits[1], progress=False)
    assert history.eval_accuracy[-1] > max(before, 0.9)
    assert all(torch.equal(v, trained_digits_cnn.state_dict()[k]) for k, v in teacher_state.items())
    assert not trained_digits_cnn.training


def test_train_bad_input(digits):
    model = digits_cnn(4)
    with pytest.raises(ValueError, match="epochs: expected a int >= 1, got 0"):
        train(model, digits[0], epochs=0)
    with pytest.raises(ValueError, match="lr: expected a positive learning rate, got -1"):
        train(model, digits[0], lr=-1)
    with pytest.raises(TypeError, match="data: expected a torch.utils.data.Dataset, got list"):
        train(model, [1, 2, 3])
    with pytest.raises(ValueError, match=r"alpha: expected a weight in \[0, 1\], got 2"):
        distill(model, model, digits[0], alpha=2)


def test_torchrun_two_processes_equal_single_process(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp_out, single_out = str(tmp_path / "ddp.pt"), str(tmp_path / "single.pt")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          worker, ddp_out], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    single = subprocess.run([sys.executable, worker, single_out], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = torch.load(ddp_out), torch.load(single_out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in a.values())
