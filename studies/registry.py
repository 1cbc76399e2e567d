"""Registry of studies by name (``scg-study list`` / ``run NAME``)."""

from __future__ import annotations

import importlib

from scg.studies.base import Study

__all__ = ["STUDIES", "get_study", "study_names"]

#: name -> "module:Class" (imported lazily so ``scg-study list`` stays fast).
STUDIES: dict[str, str] = {
    "gaussian": "scg.studies.gaussian:Gaussian",
    "bernoulli-toy": "scg.studies.bernoulli_toy:BernoulliToy",
    "iwae-snr": "scg.studies.iwae_snr:IWAESNR",
    "blr": "scg.studies.blr:BLR",
    "doubly-stochastic": "scg.studies.doubly_stochastic:DoublyStochastic",
    "discrete-vae": "scg.studies.discrete_vae:DiscreteVAEStudy",
    "flows-2d": "scg.studies.flows_2d:Flows2D",
    "categorical": "scg.studies.categorical:Categorical",
}


def study_names() -> list[str]:
    return list(STUDIES)


def get_study(name: str) -> Study:
    """The study called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid studies: {', '.join(STUDIES) or '(none)'}.")
    module, cls = STUDIES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
