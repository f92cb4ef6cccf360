"""Colours of `pivotal report`: the token colour scales (Δlog p diverging, JS sequential), the
plot palette, and the finite-number helpers they share with the plots and the page.
"""

from __future__ import annotations

import math

import numpy as np

# colour scales. Endpoints are mid-saturation so black token text stays legible on them.
WHITE = (255, 255, 255)
RED = (214, 72, 62)      # Δlog p < 0: rl finds the token less likely
BLUE = (52, 128, 196)    # Δlog p > 0: rl finds it more likely
PURPLE = (136, 98, 190)  # JS, sequential
MISSING = "#dddddd"      # a non-finite statistic
RED_HEX, BLUE_HEX, PURPLE_HEX = (f"#{r:02x}{g:02x}{b:02x}" for r, g, b in (RED, BLUE, PURPLE))
CRITERION_COLORS = {"dlogp": "#2166ac", "divergence": "#e08214", "entropy": "#1b9e77",
                    "random": "#7f7f7f"}


def finite_or_none(x) -> float | None:
    """float(x), or None for None / NaN / inf (JSON has no inf; the page shows 'n/a')."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def rounded(x, digits: int = 4) -> float | None:
    """x rounded to `digits` significant digits (keeps the embedded hover data small)."""
    x = finite_or_none(x)
    return None if x is None else float(f"{x:.{digits}g}")


def _lerp(a: tuple, b: tuple, t: float) -> str:
    """Hex colour a + t (b - a), t in [0, 1]."""
    return "#" + "".join(f"{round(ca + t * (cb - ca)):02x}" for ca, cb in zip(a, b))


def dlogp_color(dlogp, vmax: float) -> str:
    """Diverging colour of a Δlog p: white at 0, RED at <= -vmax, BLUE at >= +vmax, linear between
    (so blue minus red is monotone in Δlog p). Non-finite -> MISSING."""
    d = finite_or_none(dlogp)
    if d is None:
        return MISSING
    t = max(-1.0, min(1.0, d / vmax))
    return _lerp(WHITE, RED, -t) if t < 0 else _lerp(WHITE, BLUE, t)


def js_color(js, vmax: float) -> str:
    """Sequential colour of a JS divergence: white at 0, PURPLE at >= vmax."""
    j = finite_or_none(js)
    if j is None:
        return MISSING
    return _lerp(WHITE, PURPLE, max(0.0, min(1.0, j / vmax)))


def color_scale(values, floor: float, cap: float) -> float:
    """The saturation point of a colour scale: the 99th percentile of |values| clipped to
    [floor, cap], so a few extreme tokens do not wash out the rest."""
    v = np.abs(np.asarray([x for x in values if finite_or_none(x) is not None], dtype=np.float64))
    top = float(np.quantile(v, 0.99)) if len(v) else floor
    return max(floor, min(cap, top))
