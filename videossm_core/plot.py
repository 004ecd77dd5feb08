"""The Inspect State node's picture of a stream's chunk history (``StreamState.history``), as an RGB array."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .state import StreamState

# One colour per layer (cycled), the same in every panel.
COLOURS = [(230, 90, 80), (90, 180, 230), (120, 210, 120), (230, 200, 90), (190, 120, 230), (240, 150, 60)]


def plot_history(state: StreamState, width: int = 768, height: int = 480) -> np.ndarray:
    """Router weight, per-layer memory norms, the memory read's share of each layer's attention output and window
    occupancy per chunk, as an RGB image."""
    img = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    history = state.history
    panels = [("router weight gamma (per layer)", [h.get("gamma", []) for h in history]),
              ("memory norm (per layer)", [h.get("memory_norm", []) for h in history]),
              # states from before it was recorded have no read share: that panel says "no data"
              ("memory read share ||gamma H_global|| / ||H_local|| (per layer)",
               [h.get("read_share", []) for h in history]),
              ("window occupancy (latent frames)", [[h.get("window", 0)] for h in history])]
    ph = height // len(panels)
    for p, (title, rows) in enumerate(panels):
        top, left, right, bottom = p * ph + 22, 50, width - 12, (p + 1) * ph - 12
        draw.rectangle([left, top, right, bottom], outline=(90, 90, 100))
        draw.text((left, top - 16), title, fill=(220, 220, 220))
        series = list(zip(*rows)) if rows and all(rows) else []
        values = [v for s in series for v in s]
        if not values:
            draw.text((left + 8, top + 8), "no data yet (generate some chunks)", fill=(150, 150, 150))
            continue
        lo, hi = min(0.0, min(values)), max(values) or 1.0
        draw.text((4, top), f"{hi:.3g}", fill=(160, 160, 160))
        draw.text((4, bottom - 10), f"{lo:.3g}", fill=(160, 160, 160))
        n = len(rows)
        for i, s in enumerate(series):
            pts = [(left + (right - left) * (j / max(1, n - 1)), bottom - (bottom - top) * (v - lo) / (hi - lo or 1))
                   for j, v in enumerate(s)]
            draw.line(pts if len(pts) > 1 else pts * 2, fill=COLOURS[i % len(COLOURS)], width=2)
    return np.asarray(img, dtype=np.float32) / 255.0
