"""The compile cache's own files: `<key>/meta.json` and `<alias>.link` (workbench.compile.cache).

Only wb writes them, but a crash, a full disk, a hand edit or another wb version may leave
anything there, and the values reach the file system (names of files to load, paths to
hash) and every table of `wb shapes`. An entry that fails this schema is removed with a
warning and rebuilt; it is never used.

    key, link key   24 lowercase hex digits (a digest, never a path)
    file names      a plain name inside the entry: letters, digits, _ . - (no '/', not '.' or '..')
    symbol prefix   a C identifier (what the kernel's object file exports)
    deps            path -> sha256 (64 hex digits); a path relative to the workspace, or
                    absolute for a file outside it; no NUL or line break, at most 4096 characters
    records         the probe / op records of workbench.compile.probe: declared fields typed, text bounded
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_META_BYTES = 32 << 20  # stage D's meta.json, every op record included, is well under 1 MB
MAX_LINK_BYTES = 1 << 20

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{24}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
Symbol = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
DepPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00\n\r]+$")]
Line = Annotated[str, Field(max_length=4096)]
Text = Annotated[str, Field(max_length=1 << 20)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Record(_Model):
    """One probe or captured-op record (workbench.compile.probe)."""

    name: Line
    kind: Literal["probe", "op"] = "probe"
    stage: Optional[Line] = None
    op: Optional[Line] = None
    location: Optional[Line] = None
    source: Optional[Text] = None
    what: Optional[Line] = None
    layout: Optional[Text] = None
    type: Optional[Text] = None
    dtype: Optional[Line] = None
    memspace: Optional[Line] = None
    swizzle: Optional[Line] = None
    shape: Optional[Text] = None
    rank: Optional[Count] = None
    depth: Optional[Count] = None
    modes: Optional[list[Text]] = None
    dynamic: Optional[list[Line]] = None
    size: Optional[Count] = None
    count: Annotated[int, Field(ge=1)] = 1
    key: Optional[Line] = None


class KernelResources(_Model):
    name: Line
    location: Optional[Line] = None
    registers: Optional[Count] = None
    barriers: Optional[Count] = None
    stack_bytes: Optional[Count] = None
    spill_store_bytes: Optional[Count] = None
    spill_load_bytes: Optional[Count] = None
    dynamic_smem_bytes: Optional[Count] = None
    smem_fields: list[Line] = []
    static_smem_bytes: Count = 0
    reserved_smem_bytes: Count = 0


class Check(_Model):
    level: Literal["error", "warning", "info"]
    message: Text
    check: Optional[Line] = None
    location: Optional[Line] = None
    source: Optional[Text] = None


class Resources(_Model):
    arch: Optional[Line] = None
    smem_capacity_bytes: Optional[Count] = None
    kernels: list[KernelResources] = []
    checks: list[Check] = []
    capture_error: Optional[Text] = None


class KernelFunction(_Model):
    file: FileName
    prefix: Symbol


class KernelFiles(_Model):
    pickle: FileName
    functions: Annotated[list[KernelFunction], Field(min_length=1, max_length=1024)]


class CacheMeta(_Model):
    """<root>/<kernel>/<letter>/<key>/meta.json"""

    format: int
    key: Digest
    material: dict[str, Any]
    stage: Line
    arch: Line
    created: float
    seconds: Seconds
    shapes: Annotated[list[Record], Field(max_length=100_000)]
    resources: Optional[Resources] = None
    deps: Annotated[dict[DepPath, Sha256], Field(max_length=100_000)]
    kernel: Optional[KernelFiles] = None
    kernel_note: Optional[Text] = None
    checksums: Annotated[dict[FileName, Sha256], Field(max_length=1024)]

    @model_validator(mode="after")
    def _kernel_files_are_checksummed(self) -> "CacheMeta":
        if self.kernel is not None:
            for name in [self.kernel.pickle, *(f.file for f in self.kernel.functions)]:
                if name not in self.checksums:
                    raise ValueError(f"kernel file {name!r} has no checksum")
        return self


class CacheLink(_Model):
    """<root>/<kernel>/<letter>/<alias key>.link: the entry an all-parameters key compiles to."""

    key: Digest
    material: dict[str, Any]
