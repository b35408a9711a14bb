"""The README's "use it in your own training loop" snippet runs as written."""

import re

import torch
from torch import nn

from avb_testing import REPO


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    marker = text.index("<!-- plug-in-snippet")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_snippet_is_short():
    lines = [line for line in readme_snippet().splitlines() if line.strip()]
    assert len(lines) <= 15


def test_snippet_trains_with_ogm_ge_on_user_encoders():
    torch.manual_seed(0)
    my_audio_net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 512)
    )
    my_visual_net = nn.Sequential(
        nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 512)
    )
    labels = torch.randint(0, 6, (32,))
    audio = torch.randn(32, 1, 12, 12) + labels.view(-1, 1, 1, 1).float()  # audio carries the label
    visual = torch.randn(32, 3, 2, 8, 8)
    loader = [
        {"audio": audio[i : i + 8], "visual": visual[i : i + 8], "label": labels[i : i + 8]} for i in range(0, 32, 8)
    ]
    epochs = 3
    namespace = {"my_audio_net": my_audio_net, "my_visual_net": my_visual_net, "loader": loader, "epochs": epochs}
    initial = my_audio_net[0].weight.detach().clone()
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    method, model = namespace["ogm_ge"], namespace["model"]
    logs = method.logs()
    assert set(logs) == {"ratio/audio", "ratio/visual", "coeff/audio", "coeff/visual"}
    assert float(min(logs["coeff/audio"], logs["coeff/visual"])) < 1.0  # one modality was slowed
    assert not torch.equal(my_audio_net[0].weight, initial)
    assert model.encoders["visual"] is my_visual_net
