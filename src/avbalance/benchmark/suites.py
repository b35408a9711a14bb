"""The benchmark suites: dataset, preparation, shared recipe and per-method settings.

A suite's methods are registered method names, or variants ``NAME[TAG]`` (e.g. ``ogm_ge[lr]``): the
registered method ``NAME`` with the settings the suite declares for the variant in ``method_params``,
reported in its own row.

Overrides may use ``{epochs}`` (the suite's epochs, or the quick mode's) and ``{third}``
(``max(1, epochs // 3)``): methods with a warm-up or a schedule in epochs get it scaled to the run
length, so the same definitions serve the full suite and the quick mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

# Settings that every suite applies to a method unless the suite overrides that method.
# OGM / OGM-GE: alpha chosen on validation (see docs/results.md), modulation over the whole run.
# Methods with a warm-up measured in epochs get a third of the run.
COMMON_METHOD_PARAMS: dict[str, list[str]] = {
    "ogm": ["method.params.alpha=0.5", "method.params.modulation_starts=0", "method.params.modulation_ends={epochs}"],
    "ogm_ge": [
        "method.params.alpha=0.5",
        "method.params.modulation_starts=0",
        "method.params.modulation_ends={epochs}",
    ],
    "mmcosine": ["method.params.scaling=10"],
    "umt": ["method.params.pretrain_epochs={third}"],
    "gblending": ["method.params.super_epoch={third}"],
    "relearning": ["method.params.reinit_epoch={third}"],
    "opm": ["method.params.modulation_starts={third}"],
    "valuation": ["method.params.warmup={third}"],
    # chosen on validation (grid-digit, avmnist sweeps): alternating every epoch beats one long
    # stage per modality
    "reconboost": ["method.params.stage_epochs=1", "method.params.correct_epochs=1"],
    "pmr": ["method.params.entropy_epochs={third}", "method.params.modulation_ends={epochs}"],
    "cml": ["method.params.modulation_ends={epochs}"],
    "mbsd": ["method.params.modulation_ends={epochs}"],
}

DETERMINISTIC = [
    "trainer.deterministic=true",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "data.num_workers=0",
]


# the unimodal reference rows: the modality each trains on
REFERENCE_MODALITY = {"audio_only": "audio", "visual_only": "visual"}


def base_method(name: str) -> str:
    """The registered method of a row name: ``ogm_ge[lr]`` -> ``ogm_ge``."""
    return name.split("[", 1)[0]


def is_variant(name: str) -> bool:
    return name != base_method(name)


@dataclass
class Suite:
    name: str
    description: str
    dataset: str
    recipe: list[str]
    epochs: int
    quick_epochs: int = 1
    seeds: int = 5
    quick_recipe: list[str] = field(default_factory=list)  # extra overrides in quick mode
    # `avbalance prepare` arguments; {raw} and {cache} are replaced. None: nothing to prepare.
    prepare: list[str] | None = None
    raw_required: str | None = None  # path under --raw that must exist
    method_params: dict[str, list[str]] = field(default_factory=dict)
    notes: str = ""
    # validation sweep (`--sweep`): method -> list of override sets tried (chosen on validation only)
    sweep: dict[str, list[list[str]]] = field(default_factory=dict)
    methods: list[str] | None = None  # the rows run by default (None: every registered method)

    def sweep_overrides(self, method: str, setting: list[str], quick: bool) -> list[str]:
        """The run's overrides with ``setting`` replacing the method's own values of the same keys."""
        epochs = self.quick_epochs if quick else self.epochs
        values = {"epochs": epochs, "third": max(1, epochs // 3)}
        setting = [s.format(**values) for s in setting]
        keys = {s.split("=", 1)[0] for s in setting}
        return [o for o in self.overrides(method, quick) if o.split("=", 1)[0] not in keys] + setting

    def overrides(self, method: str, quick: bool) -> list[str]:
        """The run's overrides, without seed, output folder and data root."""
        epochs = self.quick_epochs if quick else self.epochs
        values = {"epochs": epochs, "third": max(1, epochs // 3)}
        extra = [f"trainer.epochs={epochs}"] + (self.quick_recipe if quick else [])
        recipe = [o.format(**values) for o in self.recipe]
        if method in REFERENCE_MODALITY:
            modality = REFERENCE_MODALITY[method]
            run = [f"data.modalities=[{modality}]"]
            # the other modality's encoder settings have no encoder to apply to
            recipe = [
                o for o in recipe if not o.startswith("model.encoders.") or o.startswith(f"model.encoders.{modality}.")
            ]
        else:
            params = self.method_params.get(method, COMMON_METHOD_PARAMS.get(base_method(method), []))
            run = [f"method.name={base_method(method)}"] + [p.format(**values) for p in params]
        return DETERMINISTIC + recipe + extra + run


SMALL_GRID = [
    "model.width=8",
    "model.layers=[1,1,1]",
    "data.batch_size=64",
    "optim.name=sgd",
    "optim.lr=0.05",
    "optim.momentum=0.9",
    "optim.weight_decay=0.0001",
    "optim.scheduler=cosine",
]
# The mouth of GRID speaker s1 (360x288 frames, fixed camera): x, y, width, height in pixels.
S1_MOUTH = "105,178,90,72"


def grid_prepare(task: str) -> list[str]:
    """``avbalance prepare`` arguments of a GRID suite: speaker s1's mouth at 32x32, 40-bin fbank."""
    return [
        "grid",
        "--root",
        "{raw}/grid",
        "--out",
        "{cache}",
        "--task",
        task,
        "--size",
        "32",
        "--mel-bins",
        "40",
        "--crop",
        S1_MOUTH,
        "--workers",
        "2",
    ]


def grid_loader(frames: int) -> list[str]:
    """GRID frames per clip; lip reading: no random resized crop (it can cut the mouth away)."""
    return ["data.dataset=grid", f"data.options.frames={frames}", "data.options.augment=false"]


# The validation sweep of every real-data suite: OGM-GE alpha x modulation window (last modulated
# epoch; OGM shares the chosen values); AGM's alpha (BalanceMM 0.1, official 1.0, the official README's
# 2.5); PMR's alpha (BalanceMM 0.6, official 1.0, the paper's 2.0); LFM's weighting (the official fitted
# schedule, or the learned weight from the official 0.95 or BalanceMM's 0.05); and ReconBoost's stage
# lengths (a third of the run each, or 1 + 1 epochs as BalanceMM).
VALIDATION_SWEEP = {
    "ogm_ge": [
        [f"method.params.alpha={a}", f"method.params.modulation_ends={e}"]
        for a, e in ((0.1, "{epochs}"), (0.5, "{epochs}"), (1.0, "{epochs}"), (0.5, "{third}"))
    ],
    "agm": [[f"method.params.alpha={a}"] for a in (0.1, 1.0, 2.5)],
    "pmr": [[f"method.params.alpha={a}"] for a in (0.6, 1.0, 2.0)],
    "lfm": [
        ["method.params.weighting=fitted"],
        ["method.params.weighting=learned", "method.params.init_weight=0.95"],
        ["method.params.weighting=learned", "method.params.init_weight=0.05"],
    ],
    "reconboost": [
        ["method.params.stage_epochs={third}", "method.params.correct_epochs={third}"],
        ["method.params.stage_epochs=1", "method.params.correct_epochs=1"],
    ],
}


def ogm_settings(alpha: float, ends: str = "{epochs}") -> dict[str, list[str]]:
    """OGM and OGM-GE with ``alpha`` from the first epoch to the last modulated epoch ``ends``."""
    setting = [
        f"method.params.alpha={alpha}",
        "method.params.modulation_starts=0",
        f"method.params.modulation_ends={ends}",
    ]
    return {"ogm": setting, "ogm_ge": list(setting)}


def chosen_settings(ogm_alpha: float, agm_alpha: float, pmr_alpha: float, lfm: list[str]) -> dict[str, list[str]]:
    """The settings a suite's validation sweep chose (benchmarks/results/<suite>/sweep.md). ReconBoost's
    choice (1 + 1 epoch stages) is common to every suite."""
    return {
        **ogm_settings(ogm_alpha),
        "agm": [f"method.params.alpha={agm_alpha}"],
        "pmr": [*COMMON_METHOD_PARAMS["pmr"], f"method.params.alpha={pmr_alpha}"],
        "lfm": lfm,
    }


# LFM's learned weight from BalanceMM's initial value (the official 0.95 under-trains short runs)
LFM_LEARNED_0_05 = ["method.params.weighting=learned", "method.params.init_weight=0.05"]
# OGM / OGM-GE with alpha 0.1 over the whole run (the AdamW suite's recipe)
OGM_ALPHA_0_1 = ogm_settings(0.1)


def adamw_variants() -> dict[str, list[str]]:
    """Method variants for AdamW: OGM-GE modulating the gradient or (Adam-aware) the update's learning
    rate, and AGM through the learning rate; each with the suite's usual settings of the method."""
    return {
        "ogm_ge[grad]": [*OGM_ALPHA_0_1["ogm_ge"], "method.params.modulate_via=grad"],
        "ogm_ge[lr]": [*OGM_ALPHA_0_1["ogm_ge"], "method.params.modulate_via=lr"],
        "agm[lr]": ["method.params.modulate_via=lr"],
    }


def validated_suite(
    name: str, description: str, dataset: str, recipe: list[str], epochs: int, prepare: list[str],
    raw_required: str, chosen: dict[str, list[str]],
) -> Suite:  # fmt: skip
    """A real-data suite with the validation sweep; ``chosen``: the settings ``--sweep`` chose on
    validation (benchmarks/results/<name>/sweep.md)."""
    suite = Suite(name, description, dataset, recipe, epochs, prepare=prepare, raw_required=raw_required)
    suite.sweep, suite.method_params = VALIDATION_SWEEP, chosen
    return suite


def grid_suite(
    name: str, description: str, task: str, frames: int, options: list[str], epochs: int, chosen: dict[str, list[str]]
) -> Suite:
    """A suite on GRID speaker s1 (mouth crops at 32x32, 40-bin fbank) with the small model."""
    recipe = [*grid_loader(frames), *options, *SMALL_GRID]
    return validated_suite(name, description, "grid", recipe, epochs, grid_prepare(task), "grid/s1", chosen)


SUITES: dict[str, Suite] = {
    "synthetic": Suite(
        name="synthetic",
        description="the built-in synthetic audio-visual data (audio easy, visual weak); no preparation",
        dataset="synthetic",
        recipe=[
            "data.dataset=synthetic",
            "data.options.train_size=1200",
            "data.options.test_size=400",
            "model.width=8",
            "model.layers=[1,1,1]",
            "data.batch_size=64",
            "optim.name=sgd",
            "optim.lr=0.01",
            "optim.scheduler=cosine",
        ],
        epochs=10,
        quick_epochs=1,
        quick_recipe=["data.options.train_size=192", "data.options.test_size=64"],
        sweep={"ogm_ge": [["method.params.alpha=0.1"], ["method.params.alpha=0.5"]]},
    ),
    "grid-digit": grid_suite(
        "grid-digit",
        "GRID speaker s1, word-level spoken digit (10 classes): the digit word cut out of "
        "each clip with the alignment, 3 mouth-crop frames at 32x32 + 1 s 40-bin log-mel fbank",
        task="digit",
        frames=3,
        options=[],
        epochs=16,
        chosen=chosen_settings(ogm_alpha=0.1, agm_alpha=0.1, pmr_alpha=0.6, lfm=LFM_LEARNED_0_05),
    ),
    "grid-command": grid_suite(
        "grid-command",
        "GRID speaker s1, whole-sentence clips labelled by the command word (4 classes): "
        "5 mouth-crop frames at 32x32 + 3 s 40-bin log-mel fbank",
        task="sentence",
        frames=5,
        options=["data.options.task=command"],
        epochs=8,
        chosen=chosen_settings(ogm_alpha=0.1, agm_alpha=0.1, pmr_alpha=2.0, lfm=LFM_LEARNED_0_05),
    ),
    "avmnist": validated_suite(
        "avmnist",
        "AV-MNIST: FSDD spoken digits paired by class with MNIST images (10 classes), "
        "28x28 image + 1 s 40-bin log-mel fbank",
        dataset="avmnist",
        prepare=["avmnist", "--root", "{raw}", "--out", "{cache}", "--workers", "2"],
        raw_required="fsdd/recordings",
        recipe=["data.dataset=avmnist", *SMALL_GRID],
        epochs=5,
        chosen=chosen_settings(ogm_alpha=1.0, agm_alpha=0.1, pmr_alpha=1.0, lfm=LFM_LEARNED_0_05),
    ),
}
# GRID digits as true sequences: every mouth frame of the digit word through the frame-stack encoder
# (lip reading needs time) and the filterbank as a (T, F) sequence through a temporal CNN.
SEQUENCE_ENCODERS = [
    "model.encoders.visual.name=framestack",
    "model.encoders.visual.temporal=gru",
    "model.encoders.visual.temporal_options={{hidden: 32}}",  # braces doubled: the recipe is formatted
    "model.encoders.audio.name=conv1d",
    "model.encoders.audio.channels=64",
]
SUITES["grid-digit-seq"] = Suite(
    "grid-digit-seq",
    "GRID speaker s1 digit word as sequences: every mouth frame (4-8 at 32x32) through the frame-stack "
    "encoder (per-frame ResNet + GRU) + the 1 s 40-bin fbank as a (98, 40) sequence through a temporal CNN",
    dataset="grid",
    prepare=SUITES["grid-digit"].prepare,
    raw_required="grid/s1",
    recipe=[
        "data.dataset=grid",
        "data.options.frames=all",
        "data.options.audio_layout=sequence",
        "data.options.augment=false",
        *SMALL_GRID,
        *SEQUENCE_ENCODERS,
    ],
    epochs=16,
    method_params=ogm_settings(0.1),  # grid-digit's validation choice
    methods=["baseline", "ogm_ge", "mmcosine", "mmpareto"],
)
# AV-MNIST with AdamW (lr 1e-3, the rest as avmnist): how OGM-GE and AGM modulate under an adaptive
# optimizer, through the gradient or through the learning rate.
SUITES["avmnist-adamw"] = Suite(
    "avmnist-adamw",
    "AV-MNIST as the avmnist suite, trained with AdamW (lr 1e-3): baseline, OGM-GE modulating the "
    "gradient or the learning rate, AGM modulating the learning rate",
    dataset="avmnist",
    prepare=SUITES["avmnist"].prepare,
    raw_required=SUITES["avmnist"].raw_required,
    recipe=[
        *(o for o in SUITES["avmnist"].recipe if not o.startswith(("optim.name=", "optim.lr=", "optim.momentum="))),
        "optim.name=adamw",
        "optim.lr=0.001",
    ],
    epochs=SUITES["avmnist"].epochs,
    method_params=adamw_variants(),
    methods=["baseline", "ogm_ge[grad]", "ogm_ge[lr]", "agm[lr]"],
)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown benchmark suite {name!r}; choose one of: {', '.join(SUITES)}")
    return SUITES[name]
