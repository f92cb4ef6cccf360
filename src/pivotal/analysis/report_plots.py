"""The plots of `pivotal report`: matplotlib figures (sparsity, positions, entropy,
cross-sampling) rendered as inline SVG elements that share one page.
"""

from __future__ import annotations

import functools
import io
import re

import numpy as np

from .report_colors import BLUE_HEX, CRITERION_COLORS, PURPLE_HEX, RED_HEX, finite_or_none

DIRECTION_TITLES = {"forward": "forward: base decodes, rl's token at chosen positions",
                    "reverse": "reverse: rl decodes, base's token at chosen positions"}

# svg.fonttype none: text stays <text> (small, selectable, drawn in the page's own fonts)
PLOT_STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 9.5,
              "axes.spines.top": False, "axes.spines.right": False, "font.family": "sans-serif",
              "svg.hashsalt": "pivotal-report"}


def _styled(plot):
    """Run a plot function under PLOT_STYLE without touching the caller's matplotlib settings."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib
        matplotlib.use("Agg")
        with matplotlib.rc_context(PLOT_STYLE):
            return plot(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float, ncols: int = 1):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


def svg_of(fig, prefix: str, layout: bool = True) -> str:
    """The figure as an inline <svg> element: no XML prolog, no fixed size (it scales with its
    container through the viewBox), and every id prefixed so several plots can share one page.
    layout=False: the caller has already laid the figure out."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    if layout:
        fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    svg = re.sub(r'<svg [^>]*?(viewBox="[^"]*")[^>]*>',
                 lambda m: f'<svg xmlns="http://www.w3.org/2000/svg" '
                           f'xmlns:xlink="http://www.w3.org/1999/xlink" {m.group(1)} '
                           f'class="plot" role="img">', svg, count=1)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)
    return svg


def _log_axis(ax, values) -> None:
    """Log x when every threshold is positive, else symlog (a threshold of 0 has no log)."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values):
        ax.set_xscale("log")
    elif positive:
        ax.set_xscale("symlog", linthresh=min(positive))


@_styled
def plot_sparsity(summary: dict) -> str:
    """SVG: fraction of positions at or above each threshold, for JS and |Δlog p|, the shift
    threshold marked."""
    sparsity = summary.get("sparsity") or {}
    shift = summary.get("shift_definition") or {}
    fig, axes = _figure(7.2, 2.7, ncols=2)
    for ax, key, label in zip(axes, ("js", "abs_dlogp"), ("JS divergence", "|Δlog p| (nats)")):
        pts = [(p["threshold"], p["fraction"]) for p in sparsity.get(key, [])
               if finite_or_none(p.get("fraction")) is not None]
        if not pts:
            ax.text(0.5, 0.5, f"no {key} sparsity in summary.json", ha="center",
                    transform=ax.transAxes)
            continue
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", color="#444444" if key == "js" else BLUE_HEX, linewidth=1.5)
        _log_axis(ax, xs)
        ax.set_yscale("log" if min(ys) > 0 else "linear")
        if shift.get("metric") == key:
            ax.axvline(shift["threshold"], color=RED_HEX, linestyle="--", linewidth=1,
                       label=f"shift threshold {shift['threshold']:g}")
            ax.legend(fontsize=8, frameon=False)
        for x, y in zip(xs, ys):
            if y <= 0:  # "0%" labels pile up at the tail
                continue
            ax.annotate(f"{100 * y:.2g}%", (x, y), textcoords="offset points", xytext=(3, 4),
                        fontsize=7, color="#555555")
        ax.set_xlabel(f"threshold on {label}")
        ax.set_ylabel("fraction of positions ≥ threshold")
        ax.set_title(f"positions with {label} ≥ threshold")
        ax.grid(alpha=0.3, which="both")
    return svg_of(fig, "sparsity")


@_styled
def plot_positions(summary: dict) -> str:
    """SVG: share of all tokens vs of shifted tokens in each relative-position bin (each series
    sums to 1), with the shifted rate per bin on a second axis."""
    hist = summary.get("position_histogram") or {}
    edges = np.asarray(hist.get("bin_edges") or [], dtype=float)
    all_, shifted = (np.asarray(hist.get(k) or [], dtype=float) for k in ("all", "shifted"))
    fig, (ax,) = _figure(7.2, 2.7)
    if len(edges) < 2 or len(all_) != len(edges) - 1 or len(shifted) != len(all_):
        ax.text(0.5, 0.5, "no position histogram in summary.json", ha="center",
                transform=ax.transAxes)
        return svg_of(fig, "positions")
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    ax.bar(centers - width / 5, all_ / max(all_.sum(), 1), width=width * 0.4, color="#bbbbbb",
           label=f"all tokens ({int(all_.sum())})")
    ax.bar(centers + width / 5, shifted / max(shifted.sum(), 1), width=width * 0.4,
           color=RED_HEX, label=f"shifted tokens ({int(shifted.sum())})")
    rate = np.divide(shifted, all_, out=np.zeros_like(shifted), where=all_ > 0)
    twin = ax.twinx()
    twin.plot(centers, rate, color="#222222", marker=".", linewidth=1, label="shifted rate")
    twin.set_ylabel("shifted / all in bin")
    twin.set_ylim(bottom=0)
    twin.spines["top"].set_visible(False)
    ax.set_xlabel("relative position in the response (0 = first token, 1 = last)")
    ax.set_ylabel("share of the series")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_title("where the shifted tokens sit")
    handles = ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    ax.legend(handles[0] + twin_handles[0], handles[1] + twin_handles[1], fontsize=8,
              frameon=False, loc="upper center", ncol=3)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # room for the legend
    ax.grid(alpha=0.3, axis="y")
    return svg_of(fig, "positions")


@_styled
def plot_entropy(summary: dict, width: float = 7.2) -> str:
    """SVG: mean JS (bars) and shifted fraction (line) per base-entropy bin, counts on the bars;
    `width` in inches (the plot spans the page when no cross-sampling panel sits beside it)."""
    bins = summary.get("divergence_by_entropy") or []
    fig, (ax,) = _figure(width, 2.7)
    if not bins:
        ax.text(0.5, 0.5, "no entropy bins in summary.json", ha="center", transform=ax.transAxes)
        return svg_of(fig, "entropy")
    x = np.arange(len(bins))
    mean_js = [finite_or_none(b.get("mean_js")) or 0.0 for b in bins]
    bars = ax.bar(x, mean_js, color=PURPLE_HEX, width=0.6, label="mean JS")
    for bar, b in zip(bars, bins):
        ax.annotate(f"n={b.get('count', 0)}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), textcoords="offset points", xytext=(0, 2), ha="center",
                    fontsize=7, color="#555555")
    twin = ax.twinx()
    twin.plot(x, [finite_or_none(b.get("shifted_fraction")) or 0.0 for b in bins], color=RED_HEX,
              marker="o", linewidth=1.5, label="shifted fraction")
    twin.set_ylim(bottom=0)
    twin.set_ylabel("shifted fraction", color=RED_HEX)
    twin.spines["top"].set_visible(False)
    ax.set_xticks(x, [f"[{b['entropy_low']:g}, {b['entropy_high']:.3g})" for b in bins],
                  fontsize=8)
    ax.set_xlabel("base model entropy at the position (nats)")
    ax.set_ylabel("mean JS", color=PURPLE_HEX)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)
    ax.set_title("shift against the base model's uncertainty")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, frameon=False, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    return svg_of(fig, "entropy")


@_styled
def plot_cross_sampling(cross: dict) -> str:
    """SVG: accuracy against realised budget, one panel per direction, one line per criterion,
    base and rl accuracy as horizontal lines."""
    directions = [d for d in ("forward", "reverse") if any(p["direction"] == d
                                                           for p in cross["points"])]
    directions += sorted({p["direction"] for p in cross["points"]} - set(directions))
    directions = directions or ["forward"]
    fig, axes = _figure(7.2 if len(directions) > 1 else 4.8, 2.9, ncols=len(directions))
    criteria = list(CRITERION_COLORS) + sorted({p["criterion"] for p in cross["points"]}
                                               - set(CRITERION_COLORS))
    for ax, direction in zip(axes, directions):
        for criterion in criteria:
            pts = sorted((p["budget"], p["accuracy"]) for p in cross["points"]
                         if p["direction"] == direction and p["criterion"] == criterion
                         and finite_or_none(p["budget"]) is not None
                         and finite_or_none(p["accuracy"]) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3.5, linewidth=1.5, label=criterion,
                        color=CRITERION_COLORS.get(criterion))
        for key, style, who in (("accuracy_base", "--", "base"), ("accuracy_rl", ":", "rl")):
            acc = finite_or_none(cross[key])
            if acc is not None:
                ax.axhline(acc, color="#555555" if who == "base" else "#000000", linestyle=style,
                           linewidth=1, label=f"{who} alone ({acc:.2f})")
        ax.set_title(DIRECTION_TITLES.get(direction, direction), fontsize=8.5)
        ax.set_xlabel("realised budget (fraction of positions replaced)")
        ax.set_ylabel("greedy accuracy")
        ax.grid(alpha=0.3)
    # one legend above the panels: inside a panel it would cover the curves
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7.5, frameon=False, loc="upper center",
               ncol=min(len(labels), 6))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return svg_of(fig, "cross", layout=False)
