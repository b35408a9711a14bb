"""Instruments for measuring modality imbalance on trained runs.

* :mod:`.probe` -- linear probes on each frozen encoder and on their concatenation;
* :mod:`.shapley` -- dataset-level Shapley values of the modalities and an imbalance degree;
* :mod:`.confusion` -- confusion matrices and per-class accuracy, fused and per modality;
* :mod:`.report` -- a self-contained HTML report comparing run folders.

See docs/analysis.md. The names below are imported on first use, so that building the command
line parser does not load the training engine or scikit-learn.
"""

from importlib import import_module

_EXPORTS = {
    "analyse_checkpoint": "analyse",
    "analyse_features": "analyse",
    "analyse_run": "analyse",
    "extract_features": "features",
    "load_run": "runs",
    "modality_contributions": "shapley",
    "probe_checkpoint": "probe",
    "probe_model": "probe",
    "probe_run": "probe",
    "shapley_values": "shapley",
    "write_report": "report",
    "REMOVAL_RULES": "shapley",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
