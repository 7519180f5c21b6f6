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


def _tiny(n=12, classes=10, nan_at=None):
    x = torch.rand(n, 1, 16, 16)
    if nan_at is not None:
        x[nan_at, 0, 3, 4] = float("nan")
    return torch.utils.data.TensorDataset(x, torch.arange(n) % classes)


BAD_TRAIN = [  # (keyword arguments of train, error type, exact message)
    (dict(model="m"), TypeError, "model: expected an nn.Module, got str"),
    (dict(data=[1, 2, 3]), TypeError, "data: expected a torch.utils.data.Dataset, got list"),
    (dict(data=torch.utils.data.TensorDataset(torch.zeros(0, 1))), ValueError,
     "data: expected a non-empty dataset, got 0 samples"),
    (dict(epochs=0), ValueError, "epochs: expected a positive int, got 0"),
    (dict(epochs=1.5), TypeError, "epochs: expected a positive int, got 1.5 (float)"),
    (dict(batch_size=0), ValueError, "batch_size: expected a positive int, got 0"),
    (dict(batch_size="64"), TypeError, "batch_size: expected a positive int, got '64' (str)"),
    (dict(lr=-1), ValueError, "lr: expected a finite number > 0, got -1"),
    (dict(lr=float("inf")), ValueError, "lr: expected a finite number > 0, got inf"),
    (dict(lr="a"), TypeError, "lr: expected a finite number > 0, got 'a' (str)"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay: expected a finite number >= 0, got -0.1"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay: expected a finite number >= 0, got nan"),
    (dict(eval_data="test"), TypeError, "eval_data: expected a torch.utils.data.Dataset, got str"),
    (dict(seed="a"), TypeError, "seed: expected an int, got 'a' (str)"),
    (dict(seed=2**63), ValueError, "seed: expected an int in [-2**63, 2**63), got 9223372036854775808"),
    (dict(resume="no"), TypeError, "resume: expected True or False, got 'no' (str)"),
    (dict(progress=None), TypeError, "progress: expected True or False, got None (NoneType)"),
    (dict(sync_batchnorm=1), TypeError, "sync_batchnorm: expected True or False, got 1 (int)"),
    (dict(checkpoint=3), TypeError, "checkpoint: expected None or a file path, got 3 (int)"),
    (dict(checkpoint=""), ValueError, "checkpoint: expected None or a file path, got ''"),
    (dict(eval_data=torch.utils.data.TensorDataset(torch.rand(4, 1, 16, 16))), ValueError,
     "eval_data: expected (input, label) pairs, got inputs only"),
    (dict(model=torch.nn.Flatten()), ValueError, "model: expected trainable parameters, got none in Flatten"),
    (dict(data=torch.utils.data.TensorDataset(torch.rand(4, 1, 16, 16))), ValueError,
     "data: expected (input, label) pairs for train(), got inputs only"),
    (dict(data=_tiny(nan_at=5), batch_size=4), ValueError,
     "data: expected finite inputs, got NaN or Inf in sample 5"),
    (dict(data=torch.utils.data.TensorDataset(torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 12, 3]))), ValueError,
     "data: expected labels in [0, 9] for a model with 10 outputs, got 12"),
    (dict(model=torch.nn.Conv2d(1, 10, 3)), ValueError,
     "model: expected (batch, classes) scores from forward(), got (12, 10, 14, 14)"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_TRAIN)
def test_train_bad_input(kwargs, error, message):
    args = {"model": digits_cnn(4), "data": _tiny(), "epochs": 1, "progress": False, **kwargs}
    with pytest.raises(error) as info:
        train(**args)
    assert str(info.value) == message


BAD_DISTILL = [
    (dict(student="s"), TypeError, "student: expected an nn.Module, got str"),
    (dict(teacher=None), TypeError, "teacher: expected an nn.Module, got NoneType"),
    (dict(temperature="a"), TypeError, "temperature: expected a finite number > 0, got 'a' (str)"),
    (dict(temperature=0), ValueError, "temperature: expected a finite number > 0, got 0"),
    (dict(temperature=float("nan")), ValueError, "temperature: expected a finite number > 0, got nan"),
    (dict(alpha=2), ValueError, "alpha: expected a weight in [0, 1], got 2"),
    (dict(alpha=None), TypeError, "alpha: expected a weight in [0, 1], got None (NoneType)"),
    (dict(alpha=float("nan")), ValueError, "alpha: expected a weight in [0, 1], got nan"),
    (dict(epochs=-1), ValueError, "epochs: expected a positive int, got -1"),
    (dict(lr=0), ValueError, "lr: expected a finite number > 0, got 0"),
    (dict(batch_size=2.0), TypeError, "batch_size: expected a positive int, got 2.0 (float)"),
    (dict(student=digits_cnn(4, num_classes=4)), ValueError,
     "student: expected outputs shaped like the teacher's (8, 10), got (8, 4)"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_DISTILL)
def test_distill_bad_input(kwargs, error, message):
    args = {"student": digits_cnn(4), "teacher": digits_cnn(4), "data": _tiny(), "batch_size": 8, "progress": False,
            **kwargs}
    with pytest.raises(error) as info:
        distill(**args)
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(model="m"), TypeError, "model: expected an nn.Module, got str"),
    (dict(data=None), TypeError, "data: expected a torch.utils.data.Dataset, got NoneType"),
    (dict(batch_size=0), ValueError, "batch_size: expected a positive int, got 0"),
    (dict(data=torch.utils.data.TensorDataset(torch.rand(4, 1, 16, 16))), ValueError,
     "data: expected (input, label) pairs for evaluate(), got inputs only"),
])
def test_evaluate_bad_input(kwargs, error, message):
    with pytest.raises(error) as info:
        evaluate(**{"model": digits_cnn(4), "data": _tiny(), **kwargs})
    assert str(info.value) == message


class _Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_non_finite_outputs_never_reach_the_weights():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10), _Scale(float("inf")))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError) as info:
        train(model, _tiny(), epochs=1, batch_size=4, progress=False)
    assert str(info.value) == ("loss: got nan at epoch 0, step 0; the weights are kept from before this step "
                               "(a lower lr may help)")
    teacher, student = digits_cnn(4), digits_cnn(4)
    with torch.no_grad():
        teacher.classifier.bias[3] = float("nan")
    before.update({f"student.{k}": v.detach().clone() for k, v in student.named_parameters()})
    with pytest.raises(ValueError) as info:
        distill(student, teacher, _tiny(), progress=False)
    assert str(info.value) == "teacher: expected finite outputs, got NaN or Inf (are its weights finite?)"
    after = {**model.state_dict(), **{f"student.{k}": v for k, v in student.named_parameters()}}
    assert all(torch.equal(after[k], v) for k, v in before.items())  # (BatchNorm statistics: finite batches)
    assert all(torch.isfinite(v).all() for v in student.state_dict().values())


def test_save_atomic_bad_path(tmp_path):
    with pytest.raises(TypeError) as info:
        save_atomic({}, 3)
    assert str(info.value) == "path: expected a file path, got 3 (int)"
    with pytest.raises(ValueError) as info:
        save_atomic({}, tmp_path)
    assert str(info.value) == f"path: expected a file path, got the directory {str(tmp_path)!r}"
    assert os.listdir(tmp_path) == []


class _Counting(torch.utils.data.Dataset):
    def __init__(self):
        self.data, self.calls = _tiny(), 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        return self.data[i]


def test_unwritable_checkpoint_path_is_refused_before_training(tmp_path):
    (tmp_path / "a-file").write_text("x")
    under_a_file = tmp_path / "a-file" / "run.pt"
    for path, message in ((tmp_path, f"checkpoint: expected a file path, got the directory {str(tmp_path)!r}"),
                          (under_a_file, f"checkpoint: cannot write {str(under_a_file)!r}: "
                           f"{str(tmp_path / 'a-file')!r} is not a directory")):
        data = _Counting()
        with pytest.raises(ValueError) as info:
            train(digits_cnn(4), data, epochs=1, checkpoint=str(path), progress=False)
        assert str(info.value) == message
        assert data.calls == 0  # nothing was trained


def test_checkpoint_folder_that_refuses_writes_is_found_before_training():
    """Permission bits do not tell (root may write anywhere they allow): a real write is tried.
    /proc exists as a folder but takes no new files, for root too."""
    data = _Counting()
    with pytest.raises(ValueError, match=r"^checkpoint: cannot write '/proc/sepconv-run\.pt': ") as info:
        train(digits_cnn(4), data, epochs=1, checkpoint="/proc/sepconv-run.pt", progress=False)
    assert "\n" not in str(info.value)
    assert data.calls == 0


class Foreign:
    """Not something a training checkpoint holds."""


def test_foreign_or_corrupt_checkpoint_is_refused_with_the_reason(tmp_path):
    model = digits_cnn(4)
    ckpt = tmp_path / "run.pt"
    train(model, _tiny(), epochs=1, checkpoint=str(ckpt), progress=False)
    good = ckpt.read_bytes()
    torch.save(digits_cnn(4).state_dict(), tmp_path / "weights.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"model": Foreign()}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "half.pt").write_bytes(good[: len(good) // 2])
    keys = "['model', 'optimizer', 'scheduler', 'rng', 'epoch', 'history']"
    cases = {
        "weights.pt": f"is not a training checkpoint: expected a dict with keys {keys}, got a dict without {keys}",
        "list.pt": f"is not a training checkpoint: expected a dict with keys {keys}, got a list",
        "foreign.pt": (f"is not a training checkpoint: it holds a {__name__}.Foreign object, which is not loaded "
                       "(unpickling it could run code)"),
    }
    for name, rest in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(ValueError) as info:
            train(digits_cnn(4), _tiny(), epochs=2, checkpoint=path, progress=False)
        assert str(info.value) == f"checkpoint: {path!r} {rest}"
    for name in ("text.pt", "half.pt"):
        path = str(tmp_path / name)
        with pytest.raises(ValueError) as info:
            train(digits_cnn(4), _tiny(), epochs=2, checkpoint=path, progress=False)
        assert str(info.value).startswith(f"checkpoint: cannot read {path!r}: not a file written by torch.save, "
                                          "or corrupt or truncated (")
    with pytest.raises(ValueError) as info:  # the checkpoint of another model
        train(digits_cnn(8), _tiny(), epochs=2, checkpoint=str(ckpt), progress=False)
    assert str(info.value) == (f"checkpoint: {str(ckpt)!r} holds the weights of a different model (shapes: "
                               "features.0.weight (4, 1, 3, 3) instead of (8, 1, 3, 3), features.1.weight (4,) "
                               "instead of (8,), features.1.bias (4,) instead of (8,) and 18 more)")
    history = train(model, _tiny(), epochs=2, checkpoint=str(ckpt), progress=False)  # ours still resumes
    assert history.resumed_from == 1 and history.epochs == [0, 1]


def test_torchrun_two_processes_equal_single_process(tmp_path):
    """BatchNorm models on uneven datasets, float64: weights equal to 1e-9 after 2 epochs of AdamW.

    Also with a process that gets no sample in the last step, and after a crash and a resume.
    Without global BatchNorm statistics the runs differ (so the comparison can fail). A NaN input
    in one process's part stops every process with an error instead of leaving the others waiting.
    """
    import ddp_worker

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          ddp_worker.__file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt")
    single = ddp_worker.single_process()
    for name, reference in (("train", "train"), ("distill", "distill"), ("resumed", "train")):
        for k, v in single[reference].items():
            torch.testing.assert_close(ddp[name][k], v, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name} {k}: {m}")
    gap = max(float((ddp["train_unsynced"][k] - v).abs().max()) for k, v in single["train"].items()
              if v.is_floating_point())
    assert gap > 1e-3
    (bad, stopped), (bad_too, found) = ddp["errors"]  # a bad sample in one process stops both, none hangs
    assert bad == bad_too
    assert stopped == "RuntimeError: training stopped: process 1 failed at this step (its own error says why)"
    assert found == f"ValueError: data: expected finite inputs, got NaN or Inf in sample {bad}"
    assert any(not torch.equal(v, ddp_worker.bn_model(0).state_dict()[k]) for k, v in ddp["train"].items())
