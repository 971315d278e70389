"""A tiny PNG writer (zlib + struct, 8-bit RGB, no dependencies) and the pictures wb draws.

    write_png(path, width, height, rgb_bytes)     # rgb_bytes: height*width*3 bytes, row-major

Colour scale of the error heatmaps (`error_rgb`): the error of each element relative to
the largest |reference| of the output, on a log scale from 1e-5 (dark blue) through
1e-3 (teal), 1e-2 (green), 1e-1 (yellow) to 1 and above (red / white); exactly 0 is black.
Magenta: NaN/Inf where the reference is finite; cyan: never written (poison). A strip at
the bottom shows the scale left (1e-5) to right (1), then the magenta and cyan swatches.
Grey lines mark tile boundaries (and brighter ones head boundaries) when they are far
enough apart to be seen.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (log10 of relative error, RGB) stops of the colour scale
_STOPS = [
    (-5.0, (20, 20, 90)),
    (-3.0, (0, 120, 140)),
    (-2.0, (40, 170, 60)),
    (-1.0, (230, 210, 40)),
    (-0.3, (230, 60, 30)),
    (0.3, (255, 255, 255)),
]
MAGENTA = (255, 0, 255)
CYAN = (0, 230, 255)
GRID = (90, 90, 90)
GRID_MAJOR = (200, 200, 200)
MAX_SIDE = 768  # longest side of a picture, in pixels


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """PNG file bytes of an 8-bit RGB image (rows top to bottom, filter type 0 per row)."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"need {width * height * 3} bytes of RGB, got {len(rgb)}")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def write_png(path, width: int, height: int, rgb: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_png(width, height, rgb))
    tmp.replace(path)
    return path


def tensor_to_png(path, img) -> Path:
    """Write a (H, W, 3) uint8 torch tensor."""
    import ctypes

    import torch

    img = img.detach().to("cpu", torch.uint8).contiguous()
    h, w, _ = img.shape
    return write_png(path, w, h, ctypes.string_at(img.data_ptr(), h * w * 3))


def error_rgb(ratio, bad=None, unwritten=None):
    """(H, W) float tensor of |err| / ref_max (NaN allowed) -> (H, W, 3) uint8."""
    import torch

    x = ratio.float()
    logv = torch.log10(x.clamp(min=1e-12))
    out = torch.zeros((*x.shape, 3), dtype=torch.float32, device=x.device)
    xs = [s for s, _ in _STOPS]
    for (x0, c0), (x1, c1) in zip(_STOPS, _STOPS[1:]):
        sel = (logv >= x0) & (logv < x1) if x1 != xs[-1] else (logv >= x0)
        t = ((logv - x0) / (x1 - x0)).clamp(0, 1).unsqueeze(-1)
        col = torch.tensor(c0, dtype=torch.float32, device=x.device) * (1 - t) + torch.tensor(c1, dtype=torch.float32, device=x.device) * t
        out = torch.where(sel.unsqueeze(-1), col, out)
    low = (logv < xs[0]) & (x > 0)
    out = torch.where(low.unsqueeze(-1), torch.tensor(_STOPS[0][1], dtype=torch.float32, device=x.device), out)
    if bad is not None:
        out = torch.where(bad.unsqueeze(-1), torch.tensor(MAGENTA, dtype=torch.float32, device=x.device), out)
    if unwritten is not None:
        out = torch.where(unwritten.unsqueeze(-1), torch.tensor(CYAN, dtype=torch.float32, device=x.device), out)
    return out.round().clamp(0, 255).to(torch.uint8)


def legend_strip(width: int, height: int = 12):
    """The colour scale as a (height, width, 3) strip: 1e-5 .. 1 then magenta and cyan."""
    import torch

    sw = max(4, width // 10)
    ramp_w = max(1, width - 2 * sw)
    ratio = torch.logspace(-5, 0, ramp_w).view(1, -1).expand(height, ramp_w)
    ramp = error_rgb(ratio)
    mag = torch.tensor(MAGENTA, dtype=torch.uint8).view(1, 1, 3).expand(height, sw, 3)
    cya = torch.tensor(CYAN, dtype=torch.uint8).view(1, 1, 3).expand(height, width - ramp_w - sw, 3)
    return torch.cat([ramp, mag, cya], dim=1)


def pool_max(x, max_h: int = MAX_SIDE, max_w: int = MAX_SIDE):
    """Max-pool a (H, W) tensor (NaN propagates) so that it fits max_h x max_w; returns the
    pooled tensor and the (fy, fx) factors."""
    import torch

    H, W = x.shape
    fy, fx = -(-H // max_h), -(-W // max_w)
    if fy == 1 and fx == 1:
        return x, 1, 1
    Hp, Wp = -(-H // fy) * fy, -(-W // fx) * fx
    pad = torch.full((Hp, Wp), float("-inf"), dtype=torch.float32, device=x.device)
    pad[:H, :W] = x.float()
    nan = torch.isnan(pad)
    pooled = torch.where(nan, torch.full_like(pad, float("inf")), pad)
    pooled = pooled.view(Hp // fy, fy, Wp // fx, fx).amax(dim=(1, 3))
    anynan = nan.view(Hp // fy, fy, Wp // fx, fx).any(dim=3).any(dim=1)
    pooled = torch.where(anynan, torch.full_like(pooled, float("nan")), pooled)
    return pooled, fy, fx


def pool_any(m, fy: int, fx: int):
    """Boolean any-pool of a (H, W) mask with the factors of pool_max."""
    import torch

    if fy == 1 and fx == 1:
        return m
    H, W = m.shape
    Hp, Wp = -(-H // fy) * fy, -(-W // fx) * fx
    pad = torch.zeros((Hp, Wp), dtype=torch.bool, device=m.device)
    pad[:H, :W] = m
    return pad.view(Hp // fy, fy, Wp // fx, fx).any(dim=3).any(dim=1)


def upscale(img, min_side: int = 256):
    """Nearest-neighbour upscale of (H, W, 3) by an integer factor so the image is visible."""
    H, W, _ = img.shape
    f = max(1, min(min_side // max(1, min(H, W)), MAX_SIDE // max(1, max(H, W))))
    if f > 1:
        img = img.repeat_interleave(f, dim=0).repeat_interleave(f, dim=1)
    return img, f


def draw_lines(img, rows=(), cols=(), color=GRID):
    """Draw 1-pixel horizontal lines at pixel rows and vertical ones at pixel cols."""
    import torch

    c = torch.tensor(color, dtype=torch.uint8, device=img.device)
    H, W, _ = img.shape
    for r in rows:
        if 0 < r < H:
            img[r, :, :] = c
    for x in cols:
        if 0 < x < W:
            img[:, x, :] = c
    return img
