"""The name registry behind methods, fusion heads, encoders and datasets."""

import sys
import textwrap

import pytest

from avb_testing import registered
from avbalance.errors import ConfigError
from avbalance.methods import METHODS, Method, get_method, register_method
from avbalance.registry import Registry, RegistryError


def scaled(value: float, factor: float = 2.0, label: str = "x") -> tuple:
    return value * factor, label


def no_options(value):
    return value


@pytest.fixture
def things():
    registry = Registry("thing")
    registry.register("scaled")(scaled)
    registry.register("plain")(no_options)
    return registry


def test_a_taken_name_is_refused_and_keeps_the_first_builder(things):
    def other(value):
        return value

    with pytest.raises(RegistryError, match="thing name 'scaled' is taken by test_registry.scaled; "):
        things.register("scaled")(other)
    assert things.get("scaled") is scaled
    things.register("scaled")(scaled)  # the same definition again (a module imported twice) is accepted


def test_unknown_name_is_one_line_listing_the_names(things):
    with pytest.raises(ConfigError) as error:
        things.get("scaling")
    assert str(error.value) == "unknown thing 'scaling'; choose one of: plain, scaled"


def test_names_sorted_or_in_registration_order():
    ordered = Registry("thing", sorted_names=False)
    for name in ("zeta", "alpha", "mid"):
        ordered.add(name, scaled)
    assert ordered.names() == ["zeta", "alpha", "mid"]
    assert "alpha" in ordered and "beta" not in ordered


def test_options_are_converted_and_defaults_filled(things):
    assert things.validate("scaled", {"factor": "3"}, skip=1) == {"factor": 3.0, "label": "x"}
    assert things.build("scaled", 1.5, factor="3", label="y") == (4.5, "y")
    assert things.defaults("scaled", skip=1) == {"factor": 2.0, "label": "x"}


def test_unknown_and_badly_typed_options_are_one_line_errors(things):
    with pytest.raises(ConfigError, match="^thing 'scaled' has no option 'facter'; its options are: factor, label$"):
        things.build("scaled", 1.0, facter=3)
    with pytest.raises(ConfigError, match="^thing 'plain' has no option 'factor'; it takes no options$"):
        things.build("plain", 1.0, factor=3)
    with pytest.raises(ConfigError, match=r"^thing 'scaled': factor: Input should be a valid number.*\(got 'big'\)$"):
        things.build("scaled", 1.0, factor="big")


def test_a_value_error_of_the_builder_becomes_a_config_error_naming_it_once():
    registry = Registry("thing")

    @registry.register("picky")
    def picky(size: int = 1):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if size > 10:
            raise ValueError(f"thing 'picky' allows at most 10, got {size}")
        return size

    with pytest.raises(ConfigError, match="^thing 'picky': size must be >= 0, got -1$"):
        registry.build("picky", size=-1)
    with pytest.raises(ConfigError, match="^thing 'picky' allows at most 10, got 11$"):
        registry.build("picky", size=11)


def test_discovery_imports_every_public_module_of_the_package(tmp_path, monkeypatch):
    package = tmp_path / "plugin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from avbalance.registry import Registry\n\nWIDGETS = Registry('widget', package='plugin_pkg')\n"
    )
    (package / "round_widget.py").write_text(
        textwrap.dedent("""
        from . import WIDGETS

        @WIDGETS.register("round")
        def round_widget(radius: float = 1.0):
            return ("round", radius)
    """)
    )
    (package / "_private.py").write_text("raise RuntimeError('private modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import plugin_pkg

        assert "plugin_pkg.round_widget" not in sys.modules  # nothing imported before the first look-up
        assert plugin_pkg.WIDGETS.names() == ["round"]
        assert plugin_pkg.WIDGETS.build("round", radius="2") == ("round", 2.0)
    finally:
        for name in ("plugin_pkg", "plugin_pkg.round_widget"):
            sys.modules.pop(name, None)


class Halving(Method):
    name = "test_registry_halving"

    def __init__(self, factor: float = 0.5) -> None:
        super().__init__()
        self.factor = factor


@pytest.fixture
def halving():
    with registered(METHODS, Halving):
        yield Halving


def test_methods_registry_builds_by_name_with_hyperparameters(halving):
    method = get_method("test_registry_halving", factor="0.25")
    assert isinstance(method, halving) and method.factor == 0.25
    assert "test_registry_halving" in METHODS.names() and "ogm_ge" in METHODS.names()
    with pytest.raises(
        ConfigError,
        match="^method 'test_registry_halving' has no hyperparameter 'alpha'; its hyperparameters are: factor$",
    ):
        get_method("test_registry_halving", alpha=1.0)


def test_a_method_without_hyperparameters_says_so():
    with pytest.raises(ConfigError) as error:
        get_method("baseline", alpha=0.3)
    assert str(error.value) == "method 'baseline' has no hyperparameter 'alpha'; it takes no hyperparameters"


def test_a_second_method_under_a_taken_name_is_refused():
    class OtherBaseline(Method):
        name = "baseline"

    with pytest.raises(RegistryError, match="method name 'baseline' is taken"):
        register_method(OtherBaseline)
    assert METHODS.get("baseline").__name__ != "OtherBaseline"
