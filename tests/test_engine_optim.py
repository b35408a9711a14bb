"""Optimizers and schedulers by name: built with the config keys they take, names checked in the config."""

import pytest
import torch

from avbalance.engine import load_config
from avbalance.engine.optim import OPTIMIZERS, build_optimizer, build_scheduler
from avbalance.errors import ConfigError


def _parameters():
    return [torch.nn.Parameter(torch.ones(3))]


@pytest.mark.parametrize(
    "name, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_optimizers_get_the_configured_settings(name, kind):
    config = load_config(
        overrides=[f"optim.name={name}", "optim.lr=0.02", "optim.weight_decay=0.003", "optim.momentum=0.5"]
    )
    optimizer = build_optimizer(config, _parameters())
    assert isinstance(optimizer, kind)
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["weight_decay"] == 0.003
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.5


def test_schedulers_get_the_configured_settings():
    config = load_config(overrides=["optim.step_size=3", "optim.gamma=0.5", "trainer.epochs=9"])
    step = build_scheduler(config, build_optimizer(config, _parameters()))
    assert isinstance(step, torch.optim.lr_scheduler.StepLR) and (step.step_size, step.gamma) == (3, 0.5)
    config = load_config(overrides=["optim.scheduler=cosine", "trainer.epochs=9"])
    cosine = build_scheduler(config, build_optimizer(config, _parameters()))
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.T_max == 9
    config = load_config(overrides=["optim.scheduler=none"])
    assert build_scheduler(config, build_optimizer(config, _parameters())) is None


def test_unknown_names_are_refused_with_the_registered_choices():
    with pytest.raises(
        ConfigError,
        match=r"^config: optim.scheduler: Input should be 'step', 'cosine' or 'none' "
        r"\(got 'poly'\)$",
    ):
        load_config(overrides=["optim.scheduler=poly"])
    with pytest.raises(ConfigError, match=r"optim.name: Input should be 'sgd', 'adam' or 'adamw'"):
        load_config(overrides=["optim.name=rmsprop"])


def test_a_registered_optimizer_is_a_valid_name():
    @OPTIMIZERS.register("test_rmsprop")
    def rmsprop(parameters, lr: float, momentum: float) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(parameters, lr=lr, momentum=momentum)

    try:
        config = load_config(overrides=["optim.name=test_rmsprop", "optim.lr=0.04", "optim.momentum=0.25"])
        optimizer = build_optimizer(config, _parameters())
        assert type(optimizer) is torch.optim.RMSprop
        assert (optimizer.defaults["lr"], optimizer.defaults["momentum"]) == (0.04, 0.25)
    finally:
        OPTIMIZERS.remove("test_rmsprop")
