"""The pictures a diagnosis draws, with matplotlib (the optional `pictures` extra):

- the error map of an output: |err| / max|ref| per element on a log colour scale with its
  colour bar, NaN/Inf (where the reference is finite) in magenta, never-written elements
  (the poison survived) in cyan, tiles outlined, axes in element indices with the tile and
  matrix (head) labels;
- the read map of a one-hot-P fixture: for every query, the V row it was meant to read (grey)
  and the row it read (green when right, red when wrong; magenta ticks at the top: no V row).

Without matplotlib, ``available()`` is False and the diagnosis says so in a note instead of
drawing. Large outputs are max-pooled to at most MAX_SIDE elements a side first (an error
anywhere in a pooled cell shows).
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import UserError

MAX_SIDE = 768
MAGENTA = (1.0, 0.0, 1.0)
CYAN = (0.0, 0.9, 1.0)
LOG_FLOOR = -6.0  # log10 of the smallest relative error shown; exactly 0 draws at the floor
INSTALL = "pip install 'cute-wb[pictures]' (matplotlib)"


class PicturesUnavailable(RuntimeError):
    pass


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot():
    if not available():
        raise PicturesUnavailable(f"pictures need matplotlib: {INSTALL}")
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def pool_max(x, max_h: int = MAX_SIDE, max_w: int = MAX_SIDE):
    """Max-pool a (H, W) tensor (NaN propagates) to fit max_h x max_w; returns it and (fy, fx)."""
    import torch

    H, W = x.shape
    fy, fx = -(-H // max_h), -(-W // max_w)
    if fy == 1 and fx == 1:
        return x.float(), 1, 1
    Hp, Wp = -(-H // fy) * fy, -(-W // fx) * fx
    pad = torch.full((Hp, Wp), float("-inf"), dtype=torch.float32, device=x.device)
    pad[:H, :W] = x.float()
    nan = torch.isnan(pad)
    pooled = torch.where(nan, torch.full_like(pad, float("inf")), pad).view(Hp // fy, fy, Wp // fx, fx).amax(dim=(1, 3))
    anynan = nan.view(Hp // fy, fy, Wp // fx, fx).any(dim=3).any(dim=1)
    return torch.where(anynan, torch.full_like(pooled, float("nan")), pooled), fy, fx


def pool_any(m, fy: int, fx: int):
    """Boolean any-pool of a (H, W) mask with pool_max's factors."""
    import torch

    if fy == 1 and fx == 1:
        return m
    H, W = m.shape
    Hp, Wp = -(-H // fy) * fy, -(-W // fx) * fx
    pad = torch.zeros((Hp, Wp), dtype=torch.bool, device=m.device)
    pad[:H, :W] = m
    return pad.view(Hp // fy, fy, Wp // fx, fx).any(dim=3).any(dim=1)


def _title(ax, text: str, width: int = 95) -> None:
    """A title of up to two lines (summaries run long), cut with an ellipsis beyond that."""
    import textwrap

    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 1] + "…"]
    ax.set_title("\n".join(lines), fontsize=9)


def save(fig, path: Path) -> Path:
    """Write the figure as a PNG atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    except OSError as exc:  # a folder or a read-only file where the picture goes
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path


def draw_error_map(path: Path, drawing: dict, title: str = "", row_label: str = "", col_label: str = "",
                   col_names: list[str] | None = None) -> Path:
    """The element-level heatmap of |err| / max|ref| (see the module docstring)."""
    import torch

    plt = pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ratio = drawing["err"].float().cpu() / drawing["scale"]
    pooled, fy, fx = pool_max(ratio)
    bad = pool_any(drawing["bad"].cpu(), fy, fx)
    unwritten = pool_any(drawing["unwritten"].cpu(), fy, fx)
    logv = torch.log10(torch.nan_to_num(pooled, nan=0.0).clamp(min=10 ** LOG_FLOOR)).numpy()
    rows, cols = ratio.shape
    extent = (0, cols, rows, 0)  # axes in element indices of the drawn canvas
    width = min(12.0, 3.0 + 9.0 * min(1.0, cols / max(rows, 1)))
    fig, ax = plt.subplots(figsize=(max(width, 5.0), 6.0), constrained_layout=True)
    image = ax.imshow(logv, cmap="magma", vmin=LOG_FLOOR, vmax=0.0, extent=extent, aspect="auto", interpolation="nearest")
    overlay = torch.zeros(bad.shape, dtype=torch.int64)
    overlay[bad & ~unwritten] = 1
    overlay[unwritten] = 2
    if bool(overlay.any()):
        masked = overlay.numpy().astype(float)
        masked[masked == 0] = float("nan")
        ax.imshow(masked, cmap=ListedColormap([MAGENTA, CYAN]), vmin=1, vmax=2, extent=extent, aspect="auto", interpolation="nearest")
    tr, tc = drawing["tile"]
    group = drawing.get("group")
    step_x = group or tc
    for y in range(tr, rows, tr):
        if rows // tr <= 64:
            ax.axhline(y, color="0.55", linewidth=0.5)
    for x in range(step_x, cols, step_x):
        if cols // step_x <= 64:
            ax.axvline(x, color="0.85" if group else "0.55", linewidth=0.8 if group else 0.5)
    if col_names and group and len(col_names) <= 32:
        ax.set_xticks([group * (i + 0.5) for i in range(len(col_names))], col_names, rotation=90 if len(col_names) > 8 else 0)
    ax.set_xlabel(f"column ({col_label})" if col_label else "column")
    ax.set_ylabel(f"row ({row_label})" if row_label else "row")
    if fy > 1 or fx > 1:
        ax.text(0.0, -0.06 if not col_names else -0.12, f"max-pooled {fy} x {fx}", transform=ax.transAxes, fontsize=8, color="0.4")
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label("log10 |error| / max |reference|")
    ax.legend(handles=[Patch(color=MAGENTA, label="NaN/Inf (reference finite)"), Patch(color=CYAN, label="never written")],
              loc="upper right", fontsize=8, framealpha=0.85)
    _title(ax, title)
    return save(fig, path)


def draw_read_map(path: Path, exp_rows, got_rows, n_keys: int, kv_tile: int, labels: list[str] | None = None, title: str = "") -> Path:
    """x: queries (matrices side by side, e.g. fmha's heads), y: key rows (KV tiles outlined)."""
    plt = pyplot()

    exp_rows, got_rows = exp_rows.cpu(), got_rows.cpu()
    G, M = exp_rows.shape
    x = __import__("torch").arange(G * M).view(G, M)
    valid = exp_rows >= 0
    ok = valid & (got_rows == exp_rows)
    wrong = valid & (got_rows >= 0) & ~ok
    none = valid & (got_rows < 0)
    fig, ax = plt.subplots(figsize=(max(6.0, min(12.0, 3 + G * M / 128)), 6.0), constrained_layout=True)
    dot = 4 if G * M <= 2048 else 1
    ax.scatter(x[valid].numpy(), exp_rows[valid].numpy(), s=dot * 3, color="0.75", label="intended V row", linewidths=0)
    ax.scatter(x[ok].numpy(), got_rows[ok].numpy(), s=dot, color=(0.2, 0.75, 0.2), label="read the intended row", linewidths=0)
    ax.scatter(x[wrong].numpy(), got_rows[wrong].numpy(), s=dot * 2, color=(0.9, 0.15, 0.15), label="read another row", linewidths=0)
    if bool(none.any()):
        ax.scatter(x[none].numpy(), [-0.02 * n_keys] * int(none.sum()), s=dot * 2, marker="|", color=MAGENTA, label="read no V row")
    for y in range(kv_tile, n_keys, kv_tile):
        if n_keys // kv_tile <= 64:
            ax.axhline(y, color="0.6", linewidth=0.6, linestyle="--")
    for g in range(1, G):
        ax.axvline(g * M, color="0.5", linewidth=0.8)
    if labels and len(labels) == G and 1 < G <= 32:
        ax.set_xticks([M * (g + 0.5) for g in range(G)], labels, rotation=90 if G > 8 else 0)
    ax.set_xlim(0, G * M)
    ax.set_ylim(n_keys, -0.04 * n_keys)
    ax.set_xlabel("query" + (" (matrices side by side)" if G > 1 else ""))
    ax.set_ylabel(f"key row read from V ({kv_tile}-row KV tiles outlined)")
    ax.legend(loc="upper right", fontsize=8, markerscale=3, framealpha=0.85)
    _title(ax, title)
    return save(fig, path)
