"""MEMORY.json: the data behind MEMORY.md's status, speed and shapes blocks (workbench.records.memory).

Written by wb beside MEMORY.md (committed with it, so a fresh clone knows every stage's
status); a person or a git merge may have edited it. Keys wb does not know are kept.

    {"version": 1,
     "status": {"fmha/stage-c": {"verdict": "PASS", "last_run": "20261203-175907-855034",
                                 "commit": "14e83d647b", "date": "2026-12-03", "card": "NVIDIA H200",
                                 "cases": {"m=256 d=128 dtype=bf16": {"1024": "PASS"}}}},
     "speed":  {"fmha/stage-d · d=128 m=4096 ... · NVIDIA H200":
                   {"tflops": 711.2, "verdict": "PASS", "peers": {"fa4": 706.1}, "run": "...", ...}},
     "shapes": {"fmha/stage-a": {"sm_90a · d=128 ...": {"probes": [["gQ", "(128,128):(1@1,1@0)", 2]], ...}}}}
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from workbench.schemas import MiB

VERSION = 1  # the format wb writes; a newer one is refused

MAX_BYTES = 64 * MiB

Number = Optional[StrictFloat | StrictInt]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class StageStatus(_Lenient):
    verdict: StrictStr
    last_run: StrictStr
    commit: Optional[StrictStr] = None
    date: Optional[StrictStr] = None
    card: Optional[StrictStr] = None
    cases: dict[StrictStr, dict[StrictStr, StrictStr]] = Field(default_factory=dict)  # parameter set -> n -> verdict
    wrong_on_purpose: list[StrictStr] = Field(default_factory=list)  # kernel.yaml's variant=value words


class Speed(_Lenient):
    tflops: Number = None
    verdict: Optional[StrictStr] = None
    peers: dict[StrictStr, Number] = Field(default_factory=dict)
    run: Optional[StrictStr] = None
    commit: Optional[StrictStr] = None
    date: Optional[StrictStr] = None
    row: Optional[StrictStr] = None  # the speed table's row and column (wb bench's speed_cell)
    n: Optional[StrictInt] = None
    column: Optional[StrictStr] = None  # the parameter `n` holds the value of (absent: n)


class Shapes(_Lenient):
    commit: Optional[StrictStr] = None
    date: Optional[StrictStr] = None
    ops: StrictInt = 0
    defaults: StrictBool = False  # accepted as the stage's default configuration
    probes: list[tuple[StrictStr, Optional[StrictStr], Optional[StrictInt]]] = Field(default_factory=list)  # name, layout, modes


StatusBlock = dict[StrictStr, StageStatus]
SpeedBlock = dict[StrictStr, Speed]
ShapesBlock = dict[StrictStr, dict[StrictStr, Shapes]]  # stage -> arch · params · variants -> probes


def _known_version(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value > VERSION:
        raise PydanticCustomError("data_version", "expected {version} or lower, got {got} (written by a newer wb?)", {"version": VERSION, "got": value})
    return value


class MemoryData(_Lenient):
    version: Annotated[StrictInt, BeforeValidator(_known_version), Field(ge=1)] = VERSION
    status: StatusBlock = Field(default_factory=dict)
    speed: SpeedBlock = Field(default_factory=dict)
    shapes: ShapesBlock = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise PydanticCustomError("data_type", "expected a JSON object with 'status', 'speed', 'shapes' (written by wb)")
        return data
