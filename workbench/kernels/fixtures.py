"""Fixture registry: diagnostic input generators loaded from the workspace's fixtures/*.py.

A fixture module registers generators with the `fixture` decorator:

    @fixture("single", isolates="...", hides="...", needs=("q", "k", "v"))
    def single(specs, p, seed, device):
        return {"q": ..., "k": ..., "v": ...}

`specs` maps each input name of the stage to its TensorSpec; the generator returns one
torch tensor per input (it may ignore inputs it does not need to shape specially, but
must return all of them). Generators are deterministic for a seed.

One name may have several fixtures, one per kernel family (every family wants a "random"),
told apart by `needs`: a stage gets, among that name's fixtures whose needs it has, the most
specific one (the largest `needs`). Two fixtures of one name with the same needs are an
error at load.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from workbench.errors import UserError
from workbench.user_code import import_file


@dataclass(frozen=True)
class Fixture:
    name: str
    make: Callable[..., dict[str, Any]]
    isolates: str = ""  # what a PASS on this fixture proves
    hides: str = ""  # which bugs it cannot see
    needs: tuple[str, ...] = ()  # input names the stage must have for this fixture to apply
    variants: Mapping[str, str] = field(default_factory=dict)  # compile-time switches it needs
    seeds: int = 1  # how many seeds a default run uses
    module: str = ""
    source: str = ""  # the file that registered it

    def applies_to(self, input_names) -> bool:
        return set(self.needs) <= set(input_names)

    def inputs(self, specs: Mapping[str, Any], params, seed: int, device) -> dict[str, Any]:
        """The stage's inputs as this fixture makes them, each checked against its spec: what
        else it returns (None from a forgotten return, a list, a tensor of another shape) is
        the fixture's bug, one line, never the kernel's crash."""
        import torch

        made = self.make(specs, params, seed, device)
        if not isinstance(made, dict):
            raise UserError(f"fixture {self.name!r} returned {type(made).__name__}, not a dict of the stage's input tensors")
        for name, spec in specs.items():
            got = made.get(name)
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(spec.shape) or got.dtype != spec.torch_dtype():
                shape = (tuple(got.shape), got.dtype) if isinstance(got, torch.Tensor) else (None if got is None else type(got).__name__)
                raise UserError(f"fixture {self.name!r} made {name}={shape}, the stage expects {(spec.shape, spec.dtype)}")
        return made

    @property
    def where(self) -> str:
        """The registering file as fixtures/NAME.py (its folder and name)."""
        path = Path(self.source)
        return f"{path.parent.name}/{path.name}" if self.source else self.module


#: fixtures registered by each imported module, by module name (load_fixtures empties a
#: module's entry before it runs the module, so a re-run does not register twice)
_by_module: dict[str, list[Fixture]] = {}


def fixture(
    name: str,
    *,
    isolates: str = "",
    hides: str = "",
    needs: tuple[str, ...] = (),
    variants: Mapping[str, str] | None = None,
    seeds: int = 1,
):
    """Register a fixture generator under `name` (for stages that have every input in `needs`)."""
    _check_arguments(name, isolates, hides, needs, variants, seeds)

    def register(fn):
        _by_module.setdefault(fn.__module__, []).append(
            Fixture(
                name=name,
                make=fn,
                isolates=" ".join(isolates.split()),
                hides=" ".join(hides.split()),
                needs=tuple(needs),
                variants=dict(variants or {}),
                seeds=seeds,
                module=fn.__module__,
                source=fn.__code__.co_filename,
            )
        )
        return fn

    return register


#: a fixture's name as kernel.yaml and run records take it (schemas/kernel_yaml's FixtureName)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


# Fixtures seed torch, numpy and random with seed + i: below 2^31 every one of them takes it
# (a larger --seed crashed the fixture and was recorded as the kernel's CRASH)
MAX_SEED = 2**31 - 1
MAX_SEEDS = 1000  # seeds of one fixture (its own, or wb run --seeds): a million cases ran into a HANG


def _check_arguments(name, isolates, hides, needs, variants, seeds) -> None:
    """@fixture's arguments, checked where the module registers them: a bare @fixture registered
    nothing, a needs="q" or seeds="2" passed until a run used them and was recorded as the
    kernel's CRASH, a name that is no text was a traceback in `wb fixtures`. A TypeError here is
    the module's one-line import error (naming its file)."""
    if callable(name):
        raise TypeError(f"@fixture needs a name: write @fixture(\"{getattr(name, '__name__', 'name')}\", isolates=..., hides=..., needs=(...))")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TypeError(f"@fixture({name!r:.60}): expected a name of letters, digits, _ . and -, at most 40 characters")
    problems = [
        what for what, bad in (
            ("isolates and hides: expected text", not isinstance(isolates, str) or not isinstance(hides, str)),
            ("needs: expected a tuple of input names", isinstance(needs, (str, bytes)) or not isinstance(needs, Iterable)
             or not all(isinstance(n, str) for n in needs)),
            ("variants: expected a mapping of variant name to value, both text", variants is not None and (
                not isinstance(variants, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in variants.items()))),
            (f"seeds: expected a whole number of seeds, 1 to {MAX_SEEDS}",
             isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS),
        ) if bad
    ]
    if problems:
        raise TypeError(f"@fixture({name!r}): " + "; ".join(problems))


def fill_inputs(specs: Mapping[str, Any], made: Mapping[str, Any], generator, device) -> dict[str, Any]:
    """Every input of ``specs`` as a fixture returns it: the fixture's own tensor where it made
    one (cast to the spec's dtype, contiguous), else N(0, 1) from ``generator`` for floating
    inputs and zeros for integer ones; then moved to ``device``. A made tensor of another shape
    than its spec is a ValueError (a fixture bug, not a kernel's)."""
    import torch

    out = {}
    for name, spec in specs.items():
        dtype = spec.torch_dtype()
        if name in made:
            t = made[name].to(dtype).contiguous()
        elif dtype.is_floating_point:
            t = torch.randn(spec.shape, generator=generator).to(dtype)
        else:
            t = torch.zeros(spec.shape, dtype=dtype)
        if tuple(t.shape) != tuple(spec.shape):
            raise ValueError(f"fixture made {name} with shape {tuple(t.shape)}, expected {spec.shape}")
        out[name] = t.to(device)
    return out


def _needs_text(needs: Iterable[str]) -> str:
    return ", ".join(needs) or "nothing"


class Fixtures:
    """The fixtures of one workspace: each name with its fixtures (variants by `needs`)."""

    def __init__(self, fixtures: Iterable[Fixture] = ()):
        self._by_name: dict[str, list[Fixture]] = {}
        for fx in fixtures:
            same = self._by_name.setdefault(fx.name, [])
            for other in same:
                if set(other.needs) == set(fx.needs):
                    where = f"twice in {fx.where}" if other.source == fx.source else f"in {other.where} and {fx.where}"
                    raise UserError(
                        f"fixture {fx.name!r} is defined {where} with the same needs ({_needs_text(fx.needs)}): "
                        "rename one or give it different needs"
                    )
            same.append(fx)
        for same in self._by_name.values():
            same.sort(key=lambda f: (-len(f.needs), f.needs))

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Fixture]:
        """Every fixture, by name, the most specific variant of a name first."""
        for name in self.names():
            yield from self._by_name[name]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    def variants(self, name: str) -> list[Fixture]:
        """The fixtures called `name`, most specific first; a UserError when there are none."""
        try:
            return list(self._by_name[name])
        except KeyError:
            close = difflib.get_close_matches(name, self.names(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"unknown fixture {name!r}{hint}; `wb fixtures` lists them") from None

    def resolve(self, name: str, input_names: Iterable[str]) -> Fixture | None:
        """The fixture `name` for a stage with these inputs: the applicable one with the largest
        needs; None when none applies. Two applicable ones of equal size are a UserError."""
        inputs = set(input_names)
        fits = [f for f in self.variants(name) if f.applies_to(inputs)]
        if not fits:
            return None
        best = [f for f in fits if len(f.needs) == len(fits[0].needs)]
        if len(best) > 1:
            a, b = best[:2]
            raise UserError(
                f"fixture {name!r} is ambiguous for inputs {_needs_text(sorted(inputs))}: {a.where} needs "
                f"{_needs_text(a.needs)}, {b.where} needs {_needs_text(b.needs)}; give one more needs"
            )
        return best[0]

    def __getitem__(self, name: str) -> Fixture:
        """The only fixture called `name` (a name with several needs variants: use resolve)."""
        found = self.variants(name)
        if len(found) > 1:
            raise UserError(
                f"fixture {name!r} has {len(found)} variants ("
                + "; ".join(f"{f.where} needs {_needs_text(f.needs)}" for f in found)
                + "): resolve it by the stage's inputs"
            )
        return found[0]


def load_fixtures(fixtures_dir: Path) -> Fixtures:
    """Import every fixtures/*.py of the folder once and return its fixtures."""
    found: list[Fixture] = []
    for path in sorted(Path(fixtures_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        if not path.is_file():  # a FIFO named *.py blocked the import forever; a folder, a dangling link
            if path.is_dir() or not path.exists():
                continue
            raise UserError(f"{path}: not a regular file (a pipe or a device?): a fixture module must be a file")
        mod_name = f"wb_fixtures_{path.stem}"
        loaded = sys.modules.get(mod_name)
        if loaded is None or Path(getattr(loaded, "__file__", "") or "").resolve() != path.resolve():
            _import(mod_name, path)
        found += _by_module.get(mod_name, [])
    return Fixtures(found)


def _import(mod_name: str, path: Path) -> None:
    _by_module.pop(mod_name, None)
    try:
        import_file(mod_name, path, "fixture module")
    except UserError:
        _by_module.pop(mod_name, None)
        raise


def forget_modules() -> None:
    """Drop the imported fixture modules (and what they registered): the next load re-imports."""
    for name in [n for n in sys.modules if n.startswith("wb_fixtures_")]:
        del sys.modules[name]
    for name in [n for n in _by_module if n.startswith("wb_fixtures_")]:
        del _by_module[name]


def get_fixture(registry: Fixtures, name: str, input_names: Iterable[str]) -> Fixture:
    """The fixture `name` for a stage with these inputs; a UserError when none applies."""
    inputs = set(input_names)
    found = registry.resolve(name, inputs)
    if found is None:
        raise UserError(f"fixture {name!r} does not apply to inputs {_needs_text(sorted(inputs))}: {missing_text(registry, name, inputs)}")
    return found


def missing_text(registry: Fixtures, name: str, input_names: Iterable[str]) -> str:
    """What the stage lacks for `name`: 'it needs inputs v' (one variant) or each variant's lack."""
    inputs = set(input_names)
    found = registry.variants(name)
    lacks = [(f, [n for n in f.needs if n not in inputs]) for f in found]
    if len(lacks) == 1:
        return f"it needs inputs {', '.join(lacks[0][1])}"
    return "its variants need " + "; ".join(f"{', '.join(miss)} ({f.where})" for f, miss in lacks)
