"""stages/<kernel>/shapes.lock.yaml: the accepted shapes of a kernel's stages (workbench.compile.shapes).

Written by `wb shapes --accept`, read by `--check` and `--accept`; a person may have edited
it or a merge may have mangled it. Keys wb does not know are kept (a newer wb may add some).

    version: 1
    kernel: fmha
    stages:
      a:                                        # stage letter
        "sm_90a · d=128 dtype=bf16 m=128 n=128":  # arch · params · variants
          stage: fmha/stage-a
          commit: 82b7e16e7c+dirty
          date: '2026-11-28'
          all_ops: false
          records:
            tQgQ@stage_a_qk.py: {kind: probe, layout: ..., rank: 1, line: 133}
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from workbench.schemas import MiB

VERSION = 1  # the lock format wb writes; a newer one is refused

MAX_BYTES = 32 * MiB


def _date_text(value: Any) -> Any:
    """An unquoted YAML date reads as a date: keep it as the text it was."""
    return value.isoformat() if isinstance(value, (datetime.date, datetime.datetime)) else value


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Record(_Lenient):
    layout: Optional[StrictStr] = None
    rank: Optional[StrictInt] = None
    kind: StrictStr = "probe"
    line: Optional[StrictInt] = None


class Snapshot(_Lenient):
    stage: Optional[StrictStr] = None
    commit: Optional[StrictStr] = None
    date: Annotated[Optional[StrictStr], BeforeValidator(_date_text)] = None
    all_ops: StrictBool = False
    defaults: StrictBool = False  # accepted as the stage's default configuration (no -p, -V, --n)
    records: dict[StrictStr, Record] = Field(default_factory=dict)


def _known_version(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value > VERSION:
        raise PydanticCustomError("lock_version", "expected {version} or lower, got {got} (written by a newer wb?)", {"version": VERSION, "got": value})
    return value


class ShapesLock(_Lenient):
    version: Annotated[StrictInt, BeforeValidator(_known_version), Field(ge=1)] = VERSION
    kernel: Optional[StrictStr] = None
    stages: dict[StrictStr, dict[StrictStr, Snapshot]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if data is None:  # an empty file: nothing accepted yet
            return {}
        if not isinstance(data, dict):
            raise PydanticCustomError("lock_type", "expected a mapping with 'stages' (written by wb shapes --accept)")
        return data
