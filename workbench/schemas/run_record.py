"""runs/<id>/run.json: the fields every reader of a run record uses, with their types.

Unknown fields are allowed (a newer wb may add some); the ones declared here must have
the declared type, and the text that ends up in MEMORY.md, tables and file names is bounded
and drawn from a safe alphabet. A record that fails is skipped with a warning by every
reader (`wb runs`, `diff-run`, `report`, `explain`) and refused by `wb import`.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from workbench.schemas import COMMIT_PATTERN, CONTROL_CHARS, LINE_MAX, PARAM_TEXT_MAX

MAX_BYTES = 64 << 20  # a whole run.json (records with every probe and fixture are ~1 MB)

Word = Annotated[str, Field(pattern=r"^[A-Z][A-Z_]{0,31}$")]  # PASS, FAIL, COMPILE_ERROR, ...
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.#@+-]{1,128}$")]  # fixture, output, probe keys
StageId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64})?$")]
Key = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Line = Annotated[str, Field(max_length=LINE_MAX)]  # one value shown in a table or MEMORY.md
Text = Annotated[str, Field(max_length=4 << 20)]  # messages, logs, tracebacks
Scalar = Union[None, bool, int, float, Annotated[str, Field(max_length=PARAM_TEXT_MAX, pattern=f"^[^{CONTROL_CHARS}]*$")]]
Number = Optional[Union[int, float]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Metrics(_Model):
    verdict: Word
    cos: Number = None
    rel_l2: Number = None
    max_abs_err: Number = None
    tolerance: Number = None
    max_err_at: Any = None
    nan: Optional[int] = None
    inf: Optional[int] = None
    unwritten: Optional[int] = None
    reasons: list[Line] = []


class Case(_Model):
    fixture: Name
    label: Optional[Name] = None
    seed: Optional[int] = None
    verdict: Word
    variants: dict[Key, Scalar] = {}
    outputs: dict[Name, Metrics] = {}
    launch_s: Number = None
    reference_peak_bytes: Optional[int] = None
    diagnosis: Optional[dict[str, Any]] = None


class Shape(_Model):
    name: Optional[Line] = None
    key: Optional[Line] = None
    location: Optional[Line] = None
    layout: Optional[Text] = None
    rank: Union[None, int, Line] = None
    kind: Optional[Line] = None


class Error(_Model):
    message: Optional[Text] = None
    location: Optional[Line] = None
    log: Optional[Text] = None
    type: Optional[Line] = None
    traceback: Optional[Text] = None


class About(_Model):
    proves: Optional[Text] = None
    cannot_see: Optional[Text] = None


class FixtureNote(_Model):
    isolates: Optional[Text] = None
    hides: Optional[Text] = None


class Timing(_Model):
    compile_s: Number = None
    run_s: Number = None
    total_s: Number = None
    compile_cached: Optional[bool] = None
    compiles: list[dict[str, Any]] = []
    worker_reused: Optional[bool] = None


class Provenance(_Model):
    commit: Optional[Annotated[str, Field(pattern=COMMIT_PATTERN)]] = None
    dirty: Optional[bool] = None
    diff_hash: Optional[Line] = None
    gpu: Optional[Line] = None
    gpu_uuid: Optional[Line] = None
    cuda_visible_devices: Optional[Line] = None
    dsl: Optional[Line] = None
    torch: Optional[Line] = None
    arch: Optional[Line] = None
    host: Optional[Line] = None
    wb: Optional[Line] = None
    python: Optional[Line] = None
    compute_capability: Optional[Line] = None
    driver: Optional[Line] = None
    cuda_runtime: Optional[Line] = None
    sources: dict[Line, Line] = {}


class PeerTime(_Model):
    tflops: Number = None
    skipped: Optional[Text] = None


class BenchCase(_Model):
    case: Line
    row: Optional[Line] = None  # MEMORY.md's speed row (run/bench.speed_row)
    column: Optional[Key] = None  # the parameter of MEMORY.md's speed columns (kernel.yaml bench.column)
    verdict: Optional[Word] = None
    params: dict[Key, Scalar] = {}
    tflops: Number = None
    peers: dict[Name, PeerTime] = {}


class Finding(_Model):  # wb run --sanitize (workbench/run/sanitize.py)
    message: Line
    kernel: Optional[Text] = None
    file: Optional[Line] = None
    line: Optional[int] = None
    details: list[Line] = []
    stage_kernel: bool = False
    count: Optional[int] = None


class Sanitizer(_Model):
    tool: Key
    verdict: Word
    run_verdict: Optional[Word] = None
    errors: Optional[int] = None
    warnings: Optional[int] = None
    findings_total: int = 0
    findings_in_stage: int = 0
    findings: list[Finding] = []
    log: Optional[Line] = None
    notes: list[Text] = []  # e.g. a log wb would not read (workbench.run.instrument.read_tool_log)


class Stall(_Model):
    reason: Line
    value: Number = None


class Counters(_Model):  # wb profile's headline counters (workbench/run/profile.py); missing ones are None
    duration_us: Number = None
    tensor_pipe_pct: Number = None
    stalls_top5: list[Stall] = []


class KernelProfile(_Model):
    kernel: Optional[Text] = None
    grid: Optional[Line] = None
    block: Optional[Line] = None
    counters: Optional[Counters] = None


class Roofline(_Model):
    flops: Number = None
    tflops: Number = None
    intensity: Number = None
    dram_peak_gbps: Number = None


class PeerPoint(_Model):
    peer: Optional[Name] = None
    run: Optional[Line] = None
    verdict: Optional[Word] = None
    kernel: Optional[Text] = None
    kernels: Optional[int] = None
    duration_us: Number = None
    tensor_pipe_pct: Number = None
    tflops: Number = None
    intensity: Number = None


class Profile(_Model):
    tool: Key
    peer: Optional[Name] = None
    peers: list[PeerPoint] = []
    kernel: Optional[Text] = None
    grid: Optional[Line] = None
    block: Optional[Line] = None
    kernels: int = 0
    counters: Optional[Counters] = None
    each: list[KernelProfile] = []
    roofline: Optional[Roofline] = None
    picture: Optional[Name] = None
    log: Optional[Line] = None
    notes: list[Line] = []
    metrics_count: Optional[int] = None


class TraceSummary(_Model):  # wb run --trace (workbench/run/timeline.py)
    error: Optional[Text] = None
    file: Optional[Name] = None
    fixture: Optional[Name] = None
    events: Optional[int] = None
    lanes: list[Line] = []
    ctas: Optional[int] = None
    cta_start_skew_ns: Number = None
    cta_end_first_ns: Number = None
    cta_end_median_ns: Number = None
    cta_end_last_ns: Number = None
    tail_ns: Number = None
    tiles_per_cta: Optional[Annotated[list[int], Field(min_length=2, max_length=2)]] = None
    tiles_stamped_per_cta: Optional[int] = None  # the stamp layout's limit (a CTA's first tiles)
    phase_median_ns: dict[Line, Union[int, float]] = {}
    bits_differing_from_untraced: dict[Name, int] = {}


class Peak(_Model):
    tflops: Number = None


class RunRecord(_Model):
    schema_: Optional[int] = Field(None, alias="schema")
    id: Optional[Annotated[str, Field(pattern=r"^[0-9]{8}-[0-9]{6}-[0-9]{6}$")]] = None
    kind: Optional[Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]] = None
    kernel: Optional[Name] = None
    stage: StageId
    letter: Optional[Name] = None
    stage_title: Optional[Line] = None
    verdict: Word
    params: dict[Key, Scalar] = Field({}, max_length=64)
    variants: dict[Key, Scalar] = Field({}, max_length=64)
    variants_changed: dict[Key, Scalar] = Field({}, max_length=64)
    fixtures_requested: list[Name] = []
    seed: Optional[int] = None
    error: Optional[Error] = None
    crashed_on: Optional[Line] = None
    results: list[Case] = []
    shapes: list[Shape] = []
    about: Optional[About] = None
    fixture_notes: dict[Name, FixtureNote] = {}
    timing: Timing = Timing()
    provenance: Provenance = Provenance()
    started: Optional[Annotated[str, Field(pattern=r"^\d{4}-\d\d-\d\d[T ][0-9:.+-]{0,40}Z?$")]] = None
    finished: Optional[Line] = None
    bench: list[BenchCase] = []
    bench_sweep: Optional[bool] = None  # wb bench --sweep timed it (the kernel's perf doc comes from it)
    peak: Optional[Peak] = None
    notes: list[Text] = []
    host_name: Optional[Name] = None
    remote: Optional[dict[str, Any]] = None
    sweep: Optional[dict[str, Any]] = None
    exported: Optional[dict[str, Any]] = None
    sanitizer: Optional[Sanitizer] = None
    profile: Optional[Profile] = None
    trace: Optional[TraceSummary] = None
