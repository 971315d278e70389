"""The GPU architectures wb compiles for, known without importing the DSL."""

from __future__ import annotations

from workbench.errors import UserError

DEFAULT_ARCH = "sm_90a"

# The archs the DSL (nvidia-cutlass-dsl 4.8, cutlass.base_dsl.enums.Arch) compiles for, known
# here without importing it; a newer DSL's extra archs are asked of the DSL itself.
ARCHES = (
    "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a",
    *(f"sm_{n}{suffix}" for n in (100, 101, 103, 107, 110, 120, 121) for suffix in ("", "a", "f")),
)


def _dsl_arches() -> tuple[str, ...]:
    try:
        from cutlass.base_dsl.enums import Arch
    except Exception:  # no DSL here, or one that moved its enum: wb's own list stands
        return ()
    return tuple(Arch.__members__)


def known_arch(arch: str) -> bool:
    return arch in ARCHES or arch in _dsl_arches()


def check_arch(arch: str | None, option: str = "--arch") -> str | None:
    """`arch` itself when wb or the DSL knows it (None passes: the kernel's arch applies)."""
    if arch is None or known_arch(arch):
        return arch
    known = ", ".join(dict.fromkeys([*ARCHES, *_dsl_arches()]))
    raise UserError(f"{option} {arch!r} is not an arch wb knows; choose from {known}")
