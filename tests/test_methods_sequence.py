"""Every registered method trains sequence encoders on variable-length padded batches.

Two modalities served as ``(T, F)`` sequences of varying length, padded per batch by
:func:`avbalance.data.collate.make_collate` (so each batch holds ``<m>_lengths``), encoded by ``gru``
or ``transformer``; three epochs of one batch through the method's hooks (or its own training step),
as the engine calls them. Each step's loss is finite and both modalities' encoders are updated.
"""

import re

import pytest
import torch

from avb_testing import EARLY_SCHEDULES, ListData
from avbalance.data.collate import make_collate
from avbalance.methods import get_method, method_names
from avbalance.methods.base import PlainStep
from avbalance.models import build_model, model_spec

FEATURES = {"audio": 6, "visual": 5}
MAX_STEPS = 7
ENCODER_OPTIONS = {
    "gru": {"hidden": 4},
    "transformer": {"d_model": 4, "heads": 1, "layers": 1, "ff": 8, "dropout": 0.0},
}
#: Methods that cannot use these encoders, with the start of their one-line refusal.
REFUSALS = {
    "greedy": "MMTM blocks need ResNet encoders (2-D inputs or clips); the 'audio' encoder "
    "(model.encoders.audio.name) is "
}


def sequence_batch(seed: int, size: int = 6, num_classes: int = 5) -> dict[str, torch.Tensor]:
    """``size`` samples (indices 0, 1, ...) of random lengths (the first one the longest, ``MAX_STEPS``)
    padded by the collate."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for row in range(size):
        lengths = torch.randint(1, MAX_STEPS + 1, (2,), generator=generator)
        sample = {
            m: torch.randn(MAX_STEPS if row == 0 else int(length), features, generator=generator)
            for (m, features), length in zip(FEATURES.items(), lengths)
        }
        sample["label"] = torch.tensor(row % num_classes)
        sample["index"] = torch.tensor(row)
        samples.append(sample)
    return make_collate(set(FEATURES), dict.fromkeys(FEATURES, 0))(samples)


def sequence_model(method, encoder: str):
    spec = model_spec(
        {m: (MAX_STEPS, features) for m, features in FEATURES.items()},
        5,
        encoders={m: {"name": encoder, **ENCODER_OPTIONS[encoder]} for m in FEATURES},
        input_kinds=dict.fromkeys(FEATURES, "sequence"),
        variable_length=list(FEATURES),
    )
    return build_model(method.adapt_model_spec(spec))


def train_step(method, model, batch, step: PlainStep) -> torch.Tensor:
    if method.overrides_step:
        return method.training_step(model, batch, step)
    output = model(batch)
    loss = method.loss(output, batch)
    step.zero_grad()
    step.backward(loss)
    method.after_backward(model, output, batch)
    step.optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("encoder", ENCODER_OPTIONS)
@pytest.mark.parametrize("name", method_names())
def test_method_trains_sequence_encoders_on_padded_batches(name, encoder):
    method = get_method(name, **EARLY_SCHEDULES.get(name, {}))
    torch.manual_seed(0)
    if name in REFUSALS:
        with pytest.raises(ValueError, match=f"^{re.escape(REFUSALS[name])}"):
            sequence_model(method, encoder)
        return
    model = sequence_model(method, encoder)
    batches = [sequence_batch(0)]
    assert batches[0]["audio"].shape[1] == MAX_STEPS and "audio_lengths" in batches[0]
    data = ListData(batches, [sequence_batch(50)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method.setup(model, optimizer, data)
    before = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in FEATURES}
    for epoch in range(3):  # reconboost trains the second modality's encoder in the third epoch
        method.on_epoch_start(epoch, model, data)
        for index, batch in enumerate(batches):
            loss = train_step(method, model, batch, PlainStep(optimizer, epoch, index, len(batches)))
            assert torch.isfinite(loss).all(), (epoch, loss)
        method.on_epoch_end(epoch, model, data)
    for m in FEATURES:
        changed = [not torch.equal(a, b) for a, b in zip(before[m], model.encoders[m].parameters())]
        assert any(changed), f"{name}: the {m} encoder did not change"
