"""The GPU scripts in benchmarks/ spend device time, which is scarce (30 minutes a session): a
misspelt ``-V`` variant there costs a device call before anyone sees the one-line error. Every
``-V key=value`` they pass (values not built from shell variables) must be a value a stage of
stages/ declares in its kernel.yaml."""

import re
from pathlib import Path

from workbench.kernels.registry import load_kernel

ROOT = Path(__file__).resolve().parents[1]
VARIANT = re.compile(r"-V\s+([A-Za-z_]\w*)=([^\s\"')]+)")


def _declared() -> dict[str, set[str]]:
    declared: dict[str, set[str]] = {}
    for kernel_yaml in sorted((ROOT / "stages").glob("*/kernel.yaml")):
        for stage in load_kernel(kernel_yaml).stages:
            for key, values in stage.variants.items():
                declared.setdefault(key, set()).update(values)
    return declared


def test_every_variant_a_gpu_script_passes_is_declared():
    declared = _declared()
    seen, unknown = 0, []
    for script in sorted((ROOT / "benchmarks").glob("*.sh")):
        for key, values in VARIANT.findall(script.read_text()):
            if "$" in values:
                continue
            for value in values.split(","):
                seen += 1
                if value not in declared.get(key, ()):
                    unknown.append(f"{script.name}: -V {key}={value}")
    assert seen > 50, f"only {seen} -V values found: has the scripts' spelling changed?"
    assert not unknown, unknown

