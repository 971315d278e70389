"""stages/<kernel>/kernel.yaml: a kernel and its ordered stages (read by workbench.kernels.registry).

Messages keep the registry's style, naming file, key and what was expected:

    stages/toy/kernel.yaml: stages[1].letter: expected one lowercase letter, got 'B'
    stages/toy/kernel.yaml: timeuot: expected one of the known keys (kernel, ...); did you mean timeout?

Stage parameters are partial: merged over the kernel's parameter of the same name (a null
removes a bound, e.g. `multiple_of: null`).
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from workbench.arches import ARCHES, DEFAULT_ARCH, known_arch
from workbench.schemas import PARAM_TEXT_MAX, MiB, SchemaError, fits_param_text, read_text, safe_load_yaml, short, yaml_problem

DEFAULT_TIMEOUT = 120.0  # seconds before a run is HANG, when kernel.yaml gives none

MAX_BYTES = 1 * MiB
MAX_NAME = 40  # parameter, variant, stage and fixture names
MAX_TEXT = 300  # titles, help texts, string values
MAX_ITEMS = 64  # entries of one list or mapping (choices, variant values, parameters, ...)


def _expected(what: str, at: tuple = (), **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("expected", "expected {what}", {"what": what, "at": at, **ctx})


def _rule(test: Callable[[Any], bool], what: str, convert: Callable[[Any], Any] = lambda v: v) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not test(value):
            raise _expected(what)
        return convert(value)

    return BeforeValidator(check)


def _text(pattern: str | None, max_len: int, what: str, min_len: int = 1) -> Any:
    regex = re.compile(pattern) if pattern else None

    def ok(v: Any) -> bool:
        return isinstance(v, str) and min_len <= len(v) <= max_len and (regex is None or bool(regex.fullmatch(v)))

    return Annotated[str, _rule(ok, what)]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scalar(v: Any) -> bool:
    """A parameter value as a run record keeps it (run_record.Scalar)."""
    return _number(v) or isinstance(v, bool) or (isinstance(v, str) and fits_param_text(v))


def _none_is_empty(v: Any) -> Any:
    return {} if v is None else v


Letter = _text(r"[a-z]", 1, "one lowercase letter")
Name = _text(r"[A-Za-z_][A-Za-z0-9_]*", MAX_NAME, f"a name of letters, digits and _, not starting with a digit, at most {MAX_NAME} characters")
StageName = _text(r"[A-Za-z][A-Za-z0-9_-]*", MAX_NAME, f"a stage name of letters, digits, _ and -, starting with a letter, at most {MAX_NAME} characters")
ModuleFile = _text(r"[A-Za-z_][A-Za-z0-9_]*\.py", MAX_NAME + 3, "a .py file name beside kernel.yaml (a Python module name, no folders)")
FixtureName = _text(r"[A-Za-z0-9][A-Za-z0-9_.-]*", MAX_NAME, f"a fixture name of letters, digits, _ . and -, at most {MAX_NAME} characters")
Text = _text(None, MAX_TEXT, f"a string of at most {MAX_TEXT} characters", min_len=0)
Arch = Annotated[str, _rule(lambda v: isinstance(v, str) and known_arch(v), "an arch wb knows: " + ", ".join(ARCHES))]
Flag = Annotated[bool, _rule(lambda v: isinstance(v, bool), "true or false")]
Int = Annotated[int, _rule(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")]
Step = Annotated[int, _rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1")]
Seconds = Annotated[float, _rule(lambda v: _number(v) and v > 0, "a positive number of seconds")]
Factor = Annotated[float, _rule(lambda v: _number(v) and v >= 0, "a number >= 0 (YAML reads 1e-4 as text: write 1.0e-4)")]
Scalar = Annotated[Any, _rule(_scalar, f"a number, a string or true/false (strings of at most {PARAM_TEXT_MAX} characters, no control characters)")]
VariantValue = Annotated[
    str,
    _rule(
        lambda v: (_number(v) or isinstance(v, str)) and bool(re.fullmatch(r"[A-Za-z0-9_.+-]{1,%d}" % MAX_NAME, str(v))),
        f"a value of letters, digits, _ . + and -, at most {MAX_NAME} characters",
        convert=str,
    ),
]


def _variant_values(v: Any) -> Any:
    if not isinstance(v, list) or not v:
        raise _expected("a non-empty list of values (first is the default)")
    if any(isinstance(x, bool) for x in v):
        raise _expected("strings: quote on/off/yes/no/true/false (YAML reads them as booleans)")
    if len(v) > MAX_ITEMS:  # refused for its length; the quadratic look for a repeat is not worth it
        return v
    repeated = next((x for i, x in enumerate(v) if x in v[:i]), None)
    if repeated is not None:
        raise _expected(f"distinct values ({short(repeated)} is given twice)")
    return v


def _wrong_values(v: Any) -> Any:
    if not isinstance(v, list) or not v:
        raise _expected("a non-empty list of the variant's values that are wrong on purpose")
    return _variant_values(v)


class _Keys(BaseModel):
    """A mapping with known keys: an unknown key is refused, once the known ones check out,
    with a did-you-mean; something other than a mapping is refused as `what`."""

    model_config = ConfigDict(extra="allow")
    what: ClassVar[str] = "a mapping"

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        data = cls._shorthand(data)
        if not isinstance(data, dict):
            raise _expected(cls.what)
        for key in data:  # a misspelt key first: the known key it stands for reads as missing
            if key not in cls.model_fields and cls._close_match(key, exclude=data):
                raise cls._unknown(key)
        return data

    @model_validator(mode="after")
    def _no_unknown_keys(self):
        for key in self.model_extra or {}:
            raise self._unknown(key)
        return self

    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return data

    @classmethod
    def _close_match(cls, key: Any, exclude: Any = ()) -> str | None:
        known = [k for k in cls.model_fields if k not in exclude]
        close = difflib.get_close_matches(str(key), known, n=1)
        return close[0] if close else None

    @classmethod
    def _unknown(cls, key: Any) -> PydanticCustomError:
        close = cls._close_match(key)
        hint = f"; did you mean {close}?" if close else ""
        return _expected(f"one of the known keys ({', '.join(cls.model_fields)}){hint}", at=(key,))


class ParamOverride(_Keys):
    """A stage's parameter: only what it changes in the kernel's parameter of that name."""

    default: Scalar = None
    choices: Optional[Annotated[list[Scalar], Field(min_length=1, max_length=MAX_ITEMS)]] = None
    min: Optional[Int] = None
    max: Optional[Int] = None
    multiple_of: Optional[Step] = None
    help: Optional[Text] = None

    @classmethod
    def _shorthand(cls, data: Any) -> Any:  # `n: 128` is `n: {default: 128}`
        return data if isinstance(data, dict) else {"default": data}


class Param(ParamOverride):
    default: Scalar


class Tolerance(_Keys):
    factor: Optional[Factor] = None
    atol: Optional[Factor] = None
    rtol: Optional[Factor] = None


class Stage(_Keys):
    what: ClassVar[str] = "a mapping with letter, name, module"

    letter: Letter
    name: Optional[StageName] = None
    title: Text = ""
    module: ModuleFile
    parameters: Annotated[dict[Name, ParamOverride], BeforeValidator(_none_is_empty), Field(max_length=MAX_ITEMS)] = {}
    variants: Annotated[
        dict[Name, Annotated[list[VariantValue], BeforeValidator(_variant_values), Field(max_length=MAX_ITEMS)]],
        BeforeValidator(_none_is_empty),
        Field(max_length=MAX_ITEMS),
    ] = {}
    # variant values that make the stage wrong on purpose (a teaching variant, kept to show what
    # the right code prevents): counted like a `bug` variant's cases, apart from the real ones
    wrong_on_purpose: Annotated[
        dict[Name, Annotated[list[VariantValue], BeforeValidator(_wrong_values), Field(min_length=1, max_length=MAX_ITEMS)]],
        BeforeValidator(_none_is_empty),
        Field(max_length=MAX_ITEMS),
    ] = {}
    fixtures: Annotated[
        list[FixtureName],
        _rule(lambda v: isinstance(v, list) and bool(v), "a non-empty list of fixture names (a stage is verified on its fixtures)"),
        Field(max_length=MAX_ITEMS),
    ] = ["random"]
    tolerance: Optional[Tolerance] = None
    timeout: Optional[Seconds] = None
    arch: Optional[Arch] = None
    size: Optional[Name] = None  # the parameter `--n` sets in this stage (default: the kernel's)

    _params: dict[str, Param] = PrivateAttr(default_factory=dict)

    @property
    def params(self) -> dict[str, Param]:
        """The kernel's parameters overlaid with this stage's (set by KernelFile)."""
        return self._params


CaseParams = Annotated[dict[Name, Scalar], BeforeValidator(_none_is_empty), Field(max_length=MAX_ITEMS)]
PeerName = FixtureName
DocPath = _text(r"(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_./-]+\.md", MAX_TEXT, "a .md path relative to the workspace root (no '..')")


def _sweep(v: Any) -> Any:
    if isinstance(v, dict) and not all(isinstance(x, list) and x for x in v.values()):
        raise _expected("a list of cases, or a mapping of axes, each a non-empty list of values")
    return v


class Bench(_Keys):
    """`wb bench`'s data for this kernel (docs/architecture.md, "Kernel hooks")."""

    what: ClassVar[str] = "a mapping with stage, peers, cases, sweep, columns, ..."

    stage: Optional[Letter] = None
    peers: Annotated[list[PeerName], BeforeValidator(_none_is_empty), Field(max_length=MAX_ITEMS)] = []
    yardsticks: Annotated[list[PeerName], BeforeValidator(_none_is_empty), Field(max_length=MAX_ITEMS)] = []
    cases: Annotated[list[CaseParams], Field(min_length=1, max_length=MAX_ITEMS)] = [{}]
    sweep: Annotated[
        list[CaseParams] | dict[Name, Annotated[list[Scalar], Field(max_length=MAX_ITEMS)]],
        BeforeValidator(_sweep),
        Field(max_length=256),
    ] = []
    columns: Annotated[list[Name], Field(max_length=MAX_ITEMS)] = []
    case_keys: Annotated[list[Name], Field(max_length=MAX_ITEMS)] = []
    quiet: Annotated[list[Name], Field(max_length=MAX_ITEMS)] = []
    column: Name = "n"
    perf_doc: Optional[DocPath] = None
    title: Optional[Text] = None
    note: Text = ""


class KernelFile(_Keys):
    what: ClassVar[str] = "a mapping with 'kernel' and 'stages'"

    kernel: Optional[Name] = None
    title: Optional[Text] = None
    arch: Arch = DEFAULT_ARCH
    default: Flag = False
    parameters: Annotated[dict[Name, Param], BeforeValidator(_none_is_empty), Field(max_length=MAX_ITEMS)] = {}
    tolerance: Optional[Tolerance] = None
    timeout: Seconds = DEFAULT_TIMEOUT
    size: Name = "n"  # the parameter `--n` sets (a stage may name its own)
    stages: Annotated[
        list[Stage],
        _rule(lambda v: isinstance(v, list) and bool(v), "a non-empty list of stages"),
        Field(max_length=26, validate_default=True),
    ] = None
    bench: Optional[Bench] = None

    @model_validator(mode="after")
    def _stages_fit_together(self):
        seen: set[str] = set()
        modules: dict[str, str] = {}
        for i, stage in enumerate(self.stages):
            if stage.letter in seen:
                raise _expected(f"a letter not used before ({stage.letter!r} repeats)", at=("stages", i, "letter"))
            seen.add(stage.letter)
            if stage.module in modules:  # a module defines one Stage: the second would run the first's
                raise _expected(f"a module of its own (stage {modules[stage.module]} has {stage.module})", at=("stages", i, "module"))
            modules[stage.module] = stage.letter
            stage._params = self._merged_params(i, stage)
            _check_wrong_on_purpose(i, stage)
        if self.bench is not None and self.bench.stage is not None and self.bench.stage not in seen:
            raise _expected(f"a letter of one of the stages ({', '.join(sorted(seen))})", at=("bench", "stage"), got=self.bench.stage)
        return self

    def _merged_params(self, i: int, stage: Stage) -> dict[str, Param]:
        params = dict(self.parameters)
        for name, override in stage.parameters.items():
            at = ("stages", i, "parameters", name)
            base = self.parameters.get(name)
            merged = {**(base.model_dump() if base else {}), **override.model_dump(exclude_unset=True)}
            merged = {k: v for k, v in merged.items() if v is not None}
            if "default" not in merged:
                raise _expected(f"a default value (the kernel has no parameter {name})", at=(*at, "default"))
            params[name] = Param.model_construct(**merged)
        def at(name: str) -> tuple:
            return ("stages", i, "parameters", name) if name in stage.parameters else ("parameters", name)

        copies: dict[str, str] = {}  # name -> the parameter its '=' default copies
        for name, param in params.items():
            _check_bounds(param, at(name))
            if isinstance(param.default, str) and param.default.startswith("="):
                copies[name] = param.default[1:]
                if copies[name] not in params:
                    raise _expected("'=NAME' naming a parameter of this stage", at=(*at(name), "default"), got=param.default)
        # '=' defaults that name each other in a ring resolve to nothing (the stage's defaults
        # would fail at its first compile, not here)
        for start in copies:
            chain = [start]
            while chain[-1] in copies and copies[chain[-1]] not in chain:
                chain.append(copies[chain[-1]])
            if chain[-1] in copies:  # the next one is already in the chain: a ring
                raise _expected(f"'=' defaults that resolve to a value ({' -> '.join(chain + [copies[chain[-1]]])} name each other)",
                                at=(*at(start), "default"), got=params[start].default)
        return params


def _check_wrong_on_purpose(i: int, stage: Stage) -> None:
    """Each name a variant of the stage; each value one of its values, never its default."""
    for name, values in stage.wrong_on_purpose.items():
        at = ("stages", i, "wrong_on_purpose", name)
        choices = stage.variants.get(name)
        if not choices:
            raise _expected(f"a variant of this stage ({', '.join(stage.variants) or 'it has none'})", at=at, got=name)
        for value in values:
            if value not in choices[1:]:
                raise _expected(f"one of {name}'s values other than its default {choices[0]!r} ({', '.join(choices[1:]) or 'none'})", at=at, got=value)


def _check_bounds(param: Param, at: tuple) -> None:
    if param.min is not None and param.max is not None and param.min > param.max:
        raise _expected("min <= max", at=at, got=f"min={param.min} max={param.max}")


# --------------------------------------------------------------------------------------
# Reading and messages
# --------------------------------------------------------------------------------------
def load(path: Path) -> KernelFile:
    """The checked kernel.yaml at `path`, or SchemaError naming the file, the key and what was expected."""
    import yaml

    source = str(path)
    try:
        text = read_text(path, MAX_BYTES, source)
    except FileNotFoundError:
        raise SchemaError(source, "does not exist (a dangling link?)") from None
    try:
        data = safe_load_yaml(text, source)
    except yaml.YAMLError as exc:
        raise SchemaError(source, yaml_problem(exc)) from None
    try:
        return KernelFile.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(source, _problem(exc)) from None
    except RecursionError:
        raise SchemaError(source, "nested too deeply") from None


def key_path(loc: tuple) -> str:
    """("stages", 1, "letter") -> "stages[1].letter"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (the name)"
        else:
            out += ("." if out else "") + str(part)
    return out


_PHRASES = {
    "missing": "a value (this key is required)",
    "invalid_key": "text keys",
    "too_long": "at most {max_length} entries",
    "too_short": "a non-empty list",
    "dict_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
}


def _problem(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    ctx = first.get("ctx") or {}
    key = key_path((*first.get("loc", ()), *ctx.get("at", ())))
    if first["type"] == "expected":
        message = f"expected {ctx['what']}"
    elif first["type"] in _PHRASES:
        message = "expected " + _PHRASES[first["type"]].format(**ctx)
    else:
        message = first.get("msg", "invalid")
    if "got" in ctx:
        message += f", got {short(ctx['got'])}"
    elif first["type"] != "missing" and not ctx.get("at") and "input" in first:
        message += f", got {short(first['input'])}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return f"{key}: {message}" if key else message
