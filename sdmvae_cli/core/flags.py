"""How an option is spelled on the command line, from its field name in ModelConfig or
TrainOptions: one table for every message that names a flag (a model's own checks in nets/,
specs in training/, the CLI), so that an error names the flag the user types.
"""

from __future__ import annotations

#: an option's command-line flag where it differs from its field (ModelConfig / TrainOptions):
#: `train --arch` sets ``model``, ``--dict`` sets ``dictionary``; every other flag is its field
#: with ``-`` for ``_``. Sweep specs take both spellings; `sdmvae models` shows the flags.
FIELD_FLAGS: dict[str, str] = {"model": "arch", "dictionary": "dict"}
#: a boolean option is named by both its spellings (``--causal`` given to a DKF is the same mistake)
SWITCH_FLAGS: dict[str, str] = {"non_causal": "--non-causal/--causal"}


def flag_with_value(field_name: str, value: object) -> str:
    """An option as typed with its value: ``--latent 64``; a switch by the spelling that sets
    ``value`` (``--causal`` for ``non_causal`` False; the value or its text)."""
    if field_name in SWITCH_FLAGS:
        on, off = SWITCH_FLAGS[field_name].split("/")
        return on if value in (True, "True") else off
    return f"{flag_of(field_name)} {value}"


def flag_of(field_name: str) -> str:
    """``dictionary`` -> ``--dict``, ``batch_size`` -> ``--batch-size``."""
    if field_name in SWITCH_FLAGS:
        return SWITCH_FLAGS[field_name]
    return "--" + FIELD_FLAGS.get(field_name, field_name).replace("_", "-")
