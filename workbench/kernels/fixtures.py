"""Fixture registry: diagnostic input generators loaded from the workspace's fixtures/*.py.

A fixture module registers generators with the `fixture` decorator:

    @fixture("single", isolates="...", hides="...", needs=("q", "k", "v"))
    def single(specs, p, seed, device):
        return {"q": ..., "k": ..., "v": ...}

`specs` maps each input name of the stage to its TensorSpec; the generator returns one
torch tensor per input (it may ignore inputs it does not need to shape specially, but
must return all of them). Generators are deterministic for a seed.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from workbench.errors import UserError


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

    def applies_to(self, input_names) -> bool:
        return set(self.needs) <= set(input_names)


_registry: dict[str, Fixture] = {}


def fixture(
    name: str,
    *,
    isolates: str = "",
    hides: str = "",
    needs: tuple[str, ...] = (),
    variants: Mapping[str, str] | None = None,
    seeds: int = 1,
):
    """Register a fixture generator under `name`."""

    def register(fn):
        _registry[name] = Fixture(
            name=name,
            make=fn,
            isolates=" ".join(isolates.split()),
            hides=" ".join(hides.split()),
            needs=tuple(needs),
            variants=dict(variants or {}),
            seeds=seeds,
            module=fn.__module__,
        )
        return fn

    return register


def load_fixtures(fixtures_dir: Path) -> dict[str, Fixture]:
    """Import every fixtures/*.py once and return the registry."""
    for path in sorted(Path(fixtures_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        mod_name = f"wb_fixtures_{path.stem}"
        if mod_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise UserError(f"{path}: fixture module failed to import: {exc}") from exc
    return dict(_registry)


def get_fixture(registry: Mapping[str, Fixture], name: str) -> Fixture:
    try:
        return registry[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown fixture {name!r}{hint}; `wb fixtures` lists them") from None
