"""The base every config model derives from: strict, immutable, documented per field.

Each field carries a docstring right under it; pydantic turns those into field
descriptions (`use_attribute_docstrings`), so `vidrl ... --help-config` and error
messages can say what a key means.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Unknown keys and wrong types are errors; configs never change once built."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=False,
        use_attribute_docstrings=True,
        validate_default=True,
    )
