"""Exports for plain ``transformers`` (``thunderdlm export``, ``thunderdlm/export.py``).

- ``configuration_thunderdlm.py`` / ``modeling_thunderdlm.py``: the self-contained modelling code
  (torch + transformers only) copied into every export folder and registered through ``auto_map``;
- ``hf_config.py``: a loaded run -> its ``ThunderDLMConfig``, sampler settings and a probe batch;
- ``tokenizer.py``: thunderdlm tokenizers -> ``PreTrainedTokenizerFast`` with the mask / BOS token;
- ``card.py``: the model card (README.md).
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
#: the files copied into an export folder (``trust_remote_code`` loads them from there)
MODELING_FILES: tuple[Path, ...] = (_HERE / "configuration_thunderdlm.py", _HERE / "modeling_thunderdlm.py")
