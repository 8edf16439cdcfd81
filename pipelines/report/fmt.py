"""Number formatting for the report: the Jinja filters and the chart labels use the same few rules."""

from __future__ import annotations

import base64
import math

import numpy as np


def num(x, digits: int = 3) -> str:
    """Integers with thousands separators, others with about ``digits`` significant digits; "–" for none."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int | np.integer) or float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 1:
        return f"{x:.{max(digits - len(str(int(ax))), 0)}f}"
    return f"{x:.{digits}g}"


def pct(a: float, b: float) -> str:
    return "–" if not b else f"{100.0 * a / b:.1f}%"


def nbytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def short(text, n: int = 140) -> str:
    """One line of at most ``n`` characters (an ellipsis marks a cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[tuple[float, str]]:
    """Round tick values in [lo, hi] and their labels, with as many decimals as the step needs."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [(lo, num(lo))]
    raw = (hi - lo) / max(n - 1, 1)
    exp = math.floor(math.log10(raw))
    mult = next(m for m in (1, 2, 2.5, 5, 10) if m * 10**exp >= raw)
    step = mult * 10**exp
    decimals = max(0, -exp + (1 if mult == 2.5 else 0) - (1 if mult == 10 else 0))
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [(t, f"{0.0 if abs(t) < step * 1e-9 else t:,.{decimals}f}") for t in ticks]


def data_uri(blob: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode()}"
