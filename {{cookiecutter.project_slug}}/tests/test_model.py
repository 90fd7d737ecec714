"""Your model (my_classes.build_model) on a batch of your data: a score for each class of each
sample, and finite gradients for every parameter it trains."""

import pytest
import torch
from torch import nn

from conftest import some
from my_classes import Dataset, build_model


@pytest.fixture(scope="module")
def batch(data_dir: object, index: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """8 training samples, as float32 (as training moves them to the device), and labels."""
    partition, labels, _ = index
    dataset = Dataset(partition["train"], labels, data_dir)
    rows = [dataset[i] for i in some(range(len(dataset)), 8)]
    return torch.stack([X for X, _ in rows]).float(), torch.tensor([int(y) for _, y in rows])


def test_the_model_gives_a_score_for_each_class(batch: tuple, index: tuple) -> None:
    X, _ = batch
    _, _, num_classes = index
    torch.manual_seed(0)
    model = build_model(tuple(X.shape[1:]), num_classes)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        outputs = model(X)
        assert outputs.shape == (len(X), num_classes), f"in {mode} mode"
        assert torch.isfinite(outputs).all(), f"in {mode} mode"


def test_every_trained_parameter_gets_a_finite_gradient(batch: tuple, index: tuple) -> None:
    """A parameter without one is left out of the graph (DistributedDataParallel refuses it)."""
    X, y = batch
    _, _, num_classes = index
    torch.manual_seed(0)
    model = build_model(tuple(X.shape[1:]), num_classes)
    nn.functional.cross_entropy(model(X), y).backward()
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trained, "the model has no parameter to train"
    for name, parameter in trained.items():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name}'s gradient is not finite"
