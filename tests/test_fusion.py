"""Fusion heads: decompositions, cosine logits, modality-count checks."""

import pytest
import torch

from avb_testing import registered, tiny_spec
from avbalance.errors import ConfigError
from avbalance.models import HEADS, FusionHead, HeadOutput, build_head, build_model, register_head, shapley_split
from avbalance.registry import RegistryError

DIMS = {"audio": 6, "visual": 6}


def features(batch=4, dims=DIMS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=generator) for m, d in dims.items()}


@pytest.mark.parametrize("name", ["sum", "concat"])
@pytest.mark.parametrize("dims", [DIMS, {"audio": 5, "visual": 7, "flow": 3}, {"audio": 4}])
def test_sum_and_concat_decompose_exactly(name, dims):
    torch.manual_seed(0)
    head = build_head(name, dims, 3)
    torch.nn.init.normal_(getattr(head, "fc_out", head).bias if name == "concat" else head.fc[next(iter(dims))].bias)
    x = features(dims=dims)
    out = head(x)
    assert set(out.unimodal_logits) == set(dims)
    torch.testing.assert_close(sum(out.unimodal_logits.values()), out.logits, atol=1e-6, rtol=0)


def test_concat_matches_one_linear_layer_and_shares_bias_equally():
    torch.manual_seed(0)
    head = build_head("concat", {"audio": 5, "visual": 7, "flow": 3}, 4)
    torch.nn.init.normal_(head.fc_out.bias)
    x = features(dims=head.dims)
    out = head(x)
    torch.testing.assert_close(out.logits, head.fc_out(torch.cat([x["audio"], x["visual"], x["flow"]], 1)))
    weight, bias = head.fc_out.weight, head.fc_out.bias
    torch.testing.assert_close(out.unimodal_logits["visual"], x["visual"] @ weight[:, 5:12].t() + bias / 3)


def test_sum_unimodal_logits_are_each_modalitys_linear_output():
    torch.manual_seed(0)
    head = build_head("sum", DIMS, 3)
    x = features()
    out = head(x)
    for m in DIMS:
        torch.testing.assert_close(out.unimodal_logits[m], head.fc[m](x[m]))


@pytest.mark.parametrize("scale", [1.0, 10.0, 15.0])
def test_cosine_head_is_scaled_sum_of_cosines(scale):
    torch.manual_seed(0)
    head = build_head("cosine", {"audio": 5, "visual": 7}, 4, scale=scale)
    x = features(dims=head.dims)
    out = head(x)
    weight = head.fc_out.weight
    blocks = {"audio": weight[:, :5], "visual": weight[:, 5:]}
    expected = {}
    for m, w in blocks.items():
        for i in range(4):
            for k in range(4):
                expected[m, i, k] = scale * float((x[m][i] @ w[k] / (x[m][i].norm() * w[k].norm())).detach())
    for (m, i, k), value in expected.items():
        assert out.unimodal_logits[m][i, k].item() == pytest.approx(value, abs=1e-5)
        assert out.logits[i, k].item() == pytest.approx(expected["audio", i, k] + expected["visual", i, k], abs=1e-5)
    assert out.logits.abs().max().item() <= 2 * scale + 1e-5


@pytest.mark.parametrize("name", ["film", "gated"])
def test_original_film_and_gated_split_exactly_and_by_shapley(name):
    torch.manual_seed(0)
    head = build_head(name, DIMS, 3)
    x = features()
    out = head(x)
    torch.testing.assert_close(sum(out.unimodal_logits.values()), out.logits, atol=1e-5, rtol=0)
    zero = {m: torch.zeros_like(v) for m, v in x.items()}
    f = head.fused
    f_av, f_0 = f(x), f(zero)
    f_a = f({"audio": x["audio"], "visual": zero["visual"]})
    f_v = f({"audio": zero["audio"], "visual": x["visual"]})
    torch.testing.assert_close(out.logits, f_av)
    torch.testing.assert_close(out.unimodal_logits["audio"], f_0 / 2 + (f_av - f_v + f_a - f_0) / 2, atol=1e-5, rtol=0)


def test_film_matches_official_formula():
    torch.manual_seed(0)
    head = build_head("film", DIMS, 3, condition="visual")
    x = features()
    gamma, beta = torch.split(head.fc(x["visual"]), 6, dim=1)
    torch.testing.assert_close(head(x).logits, head.fc_out(gamma * x["audio"] + beta))


def test_shapley_split_of_a_linear_head_is_the_concat_split():
    torch.manual_seed(0)
    concat = build_head("concat", {"audio": 3, "visual": 4, "flow": 2}, 5)
    torch.nn.init.normal_(concat.fc_out.bias)
    x = features(dims=concat.dims)
    linear = lambda f: concat.fc_out(torch.cat([f["audio"], f["visual"], f["flow"]], 1))  # noqa: E731
    shapley = shapley_split(linear, x)
    direct = concat(x)
    for m in x:
        torch.testing.assert_close(shapley.unimodal_logits[m], direct.unimodal_logits[m], atol=1e-5, rtol=0)


def test_symmetric_heads_follow_mmcosine_formulas():
    torch.manual_seed(0)
    x = features()
    film = build_head("film_sym", DIMS, 3)
    gx, bx = film.fc_x(x["audio"]).chunk(2, 1)
    gy, by = film.fc_y(x["visual"]).chunk(2, 1)
    streams = torch.cat([gy * x["audio"] + by, gx * x["visual"] + bx], 1)
    torch.testing.assert_close(film(x).logits, film.fc_out(streams))
    gated = build_head("gated_sym", DIMS, 3)
    ox, oy = gated.fc_x(x["audio"]), gated.fc_y(x["visual"])
    streams = torch.cat([torch.sigmoid(oy) * ox, torch.sigmoid(ox) * oy], 1)
    out = gated(x)
    torch.testing.assert_close(out.logits, gated.fc_out(streams))
    w, b = gated.fc_out.weight, gated.fc_out.bias
    torch.testing.assert_close(out.unimodal_logits["visual"], (torch.sigmoid(ox) * oy) @ w[:, 6:].t() + b / 2)


@pytest.mark.parametrize("name", ["film", "gated", "film_sym", "gated_sym"])
def test_two_modality_heads_refuse_three(name):
    with pytest.raises(ConfigError, match=f"^fusion '{name}' supports exactly 2 modalities, got 3"):
        build_head(name, {"audio": 4, "visual": 4, "flow": 4}, 3)


def test_unknown_fusion_lists_choices():
    with pytest.raises(
        ConfigError,
        match="unknown fusion 'mlp'; choose one of: sum, concat, cosine, film, gated, "
        "film_sym, gated_sym, amco, shared$",
    ):
        build_head("mlp", DIMS, 3)


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_is_consistent_between_train_and_eval(name):
    torch.manual_seed(0)
    head = build_head(name, DIMS, 3)
    x = features()
    train_out = head.train()(x)
    eval_out = head.eval()(x)
    for m in DIMS:
        torch.testing.assert_close(train_out.unimodal_logits[m], eval_out.unimodal_logits[m])


def test_head_options_are_checked_and_converted():
    assert build_head("cosine", DIMS, 3, scale="4").cosine_scale == 4.0
    with pytest.raises(ConfigError, match="^fusion 'cosine' has no option 'scaling'; its options are: scale$"):
        build_head("cosine", DIMS, 3, scaling=4.0)
    with pytest.raises(ConfigError, match="^fusion 'sum' has no option 'scale'; it takes no options$"):
        build_head("sum", DIMS, 3, scale=4.0)
    with pytest.raises(ConfigError, match="^fusion 'cosine': scale: Input should be a valid number"):
        build_head("cosine", DIMS, 3, scale="wide")


class MeanHead(FusionHead):
    """A head defined outside the package: the mean of per-modality linear logits, times ``gain``."""

    name = "test_mean"

    def __init__(self, dims, num_classes, gain: float = 1.0):
        super().__init__(dims, num_classes)
        self.gain = gain
        self.fc = torch.nn.ModuleDict({m: torch.nn.Linear(d, num_classes) for m, d in dims.items()})

    def forward(self, features):
        unimodal = {m: self.gain * self.fc[m](features[m]) / len(self.modalities) for m in self.modalities}
        return HeadOutput(sum(unimodal.values()), unimodal)


@pytest.fixture
def mean_head():
    with registered(HEADS, MeanHead):
        yield MeanHead


def test_a_registered_head_is_built_by_name_in_a_model(mean_head):
    model = build_model(tiny_spec("test_mean", gain=3))
    assert isinstance(model.head, mean_head) and model.head.gain == 3.0
    assert "test_mean" in HEADS.names()
    batch = {"audio": torch.randn(2, 1, 16, 16), "visual": torch.randn(2, 3, 2, 16, 16)}
    out = model(batch)
    features = model.encode(batch)
    expected = sum(3.0 * model.head.fc[m](features[m]) / 2 for m in ("audio", "visual"))
    torch.testing.assert_close(out.logits, expected)


def test_a_second_head_under_a_taken_name_is_refused():
    class OtherConcat(FusionHead):
        name = "concat"

    with pytest.raises(RegistryError, match="fusion name 'concat' is taken by avbalance.models.fusion.ConcatFusion"):
        register_head(OtherConcat)
    assert HEADS.get("concat").__name__ == "ConcatFusion"
