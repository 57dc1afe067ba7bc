"""One registry maps a model name to its class, so `train --model NAME` and checkpoints agree."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from sdmvae_cli.core.errors import SdmvaeError

if TYPE_CHECKING:
    from sdmvae_cli.nets.base import ModelConfig, SpectrogramVAE

REGISTRY: dict[str, type["SpectrogramVAE"]] = {}
T = TypeVar("T")


def register(name: str) -> Callable[[T], T]:
    def deco(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def model_names() -> list[str]:
    return sorted(REGISTRY)


def validate_config(cfg: "ModelConfig") -> type["SpectrogramVAE"]:
    """The model class of ``cfg``, after its checks (one clear line for a bad option)."""
    if cfg.model not in REGISTRY:
        raise SdmvaeError(f"unknown model {cfg.model!r}; registered models: {', '.join(model_names())}")
    cls = REGISTRY[cfg.model]
    cls.validate(cfg)
    return cls


def build_model(cfg: "ModelConfig") -> "SpectrogramVAE":
    return validate_config(cfg)(cfg)


def foreign_options(model: str, fields: list[str], cfg: "ModelConfig | None" = None) -> list[str]:
    """The ModelConfig fields among ``fields`` that the architecture ``model`` does not read (its
    class's ``OPTIONS``, or with ``cfg`` what that configuration reads: :meth:`reads`): set there,
    they would be stored in config.json and used by nothing, and the run would look like another
    model in its config."""
    reads = set(REGISTRY[model].reads(cfg)) | {"model", "n_bins"}
    return [f for f in fields if f not in reads]
