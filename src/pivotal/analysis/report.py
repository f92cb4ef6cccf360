"""`pivotal report`: one self-contained HTML page of a `pivotal analyze` output directory.

    html = render_report("runs/analyze", cross_sampling_path="runs/cs/cross_sampling.json")
    write_report("runs/analyze")            # -> runs/analyze/report.html

What the page shows (every number comes from the files `pivotal analyze` / `pivotal cross-sample`
write; the schemas are in `pivotal.analysis.shift` and `pivotal.analysis.decoding`):

- the header: base and rl models, responses, tokens, accuracy, the shifted fraction and what
  "shifted" means (summary.json "shift_definition");
- sparsity curves: the fraction of positions whose JS / |Δlog p| is at least each threshold
  ("Sparse but Critical": only a small fraction of positions shift; details [reconstruction]);
- where the shifted positions sit in the response (relative position, all vs shifted tokens);
- shift against the base model's entropy (mean JS and shifted fraction per entropy bin);
- cross-sampling (optional file): greedy accuracy against the realised replacement budget, one
  line per selection criterion, one panel per direction ("Sparse but Critical" cross-sampling and
  the Δlog p paper's selective token replacement; see docs/methods.md);
- a token view of the first responses, each token coloured by Δlog p = log p_rl - log p_base
  (red: rl finds it less likely, blue: more likely) or by JS, with a tooltip of both models' top-5;
- the tokens with the most negative / positive mean Δlog p and the most often shifted tokens.

The page needs nothing from the network: plots are inline SVG from matplotlib's SVG backend, CSS
and JavaScript are inline. Its size is bounded: at most `max_responses` responses (and
MAX_TOKENS_PER_RESPONSE tokens each) carry per-token hover data; tokens.parquet is read only for
those responses. Open it with `?hover=N` to pin the tooltip of token N (for screenshots) and
`?color=js` to start coloured by JS.

The code is split by purpose: report_data (reading and checking the input files), report_colors
(colour scales), report_plots (the SVG plots) and this module (the HTML page). The public names
of those modules stay importable from here.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

# F401: names not used here are re-exported (`from pivotal.analysis.report import X`)
from .report_colors import (  # noqa: F401
    BLUE,
    BLUE_HEX,
    CRITERION_COLORS,
    MISSING,
    PURPLE,
    PURPLE_HEX,
    RED,
    RED_HEX,
    WHITE,
    color_scale,
    dlogp_color,
    finite_or_none,
    js_color,
    rounded,
)
from .report_data import (  # noqa: F401
    CROSS_KEYS,
    POINT_KEYS,
    SUMMARY_KEYS,
    TOKEN_COLUMNS,
    WRITTEN_BY_ANALYZE,
    WRITTEN_BY_CROSS,
    load_cross_sampling,
    load_responses,
    load_summary,
    load_tokens,
)
from .report_plots import (  # noqa: F401
    DIRECTION_TITLES,
    PLOT_STYLE,
    plot_cross_sampling,
    plot_entropy,
    plot_positions,
    plot_sparsity,
    svg_of,
)

MAX_TOKENS_PER_RESPONSE = 1024   # tokens of one response shown in the token view
MAX_PROMPT_CHARS = 2000          # characters of a prompt shown (the tail: the question is last)
TOP_N = 5                        # alternatives per model in the tooltip
COLOR_BY = ("dlogp", "js", "cig")  # cig: only for an analysis run with --cig-hint


# ----------------------------------------------------------------------------------------------
# Token text and number formatting for the page
# ----------------------------------------------------------------------------------------------

_WS = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible_token(text: str) -> str:
    """HTML of a token's text: escaped, with spaces / tabs / newlines drawn as faint · ⇥ ↵ (a
    newline also breaks the line, so the response keeps its layout); the empty token shows ∅."""
    if text == "":
        return '<i class="ws">∅</i>'
    out = []
    for piece in re.split(r"([ \t\r\n])", text):
        if piece in _WS:
            out.append(f'<i class="ws">{_WS[piece]}</i>' + ("<br>" if piece == "\n" else ""))
        elif piece:
            out.append(html.escape(piece))
    return "".join(out)


def _pct(x, digits: int = 1) -> str:
    x = finite_or_none(x)
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _fmt(x, digits: int = 3) -> str:
    x = finite_or_none(x)
    return "n/a" if x is None else f"{x:.{digits}f}"


def _json_for_script(value) -> str:
    """JSON safe inside <script>: '<', '>' and '&' escaped, so token text like '</script>' cannot
    end the element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ----------------------------------------------------------------------------------------------
# HTML pieces
# ----------------------------------------------------------------------------------------------

def _header(summary: dict, analysis_dir: Path, cross: dict | None) -> str:
    shift = summary.get("shift_definition") or {"metric": "js", "threshold": 0.1}
    metric = {"js": "JS(base, rl)", "abs_dlogp": "|Δlog p|"}.get(shift["metric"], shift["metric"])
    cards = [("responses", f"{summary['n_responses']:,}"), ("tokens", f"{summary['n_tokens']:,}")]
    if summary.get("accuracy") is not None:
        cards.append(("accuracy of the responses", _pct(summary["accuracy"])))
    cards.append(("shifted positions", _pct(summary.get("shifted_fraction"), 2)))
    mass = summary.get("mass_moved") or {}
    if finite_or_none(mass.get("mean_topk_mass_base")) is not None:
        moved = (f"{_fmt(mass['mean_topk_mass_base'])} → "
                 f"{_fmt(mass.get('mean_topk_mass_rl_on_base_topk'))}")
        cards.append(("base top-5 mass: base → rl", moved))
    if cross is not None:
        cards.append(("greedy accuracy base → rl (cross-sampling set)",
                      f"{_pct(cross['accuracy_base'])} → {_pct(cross['accuracy_rl'])}"))
    card_html = "".join(f'<div class="card"><div class="v">{html.escape(v)}</div>'
                        f'<div class="k">{html.escape(k)}</div></div>' for k, v in cards)
    source = summary.get("source")
    return f"""<header>
<h1>Where did RL change the policy?</h1>
<p class="models"><span class="role">base</span> <code>{html.escape(str(summary['base']))}</code>
 → <span class="role">rl</span> <code>{html.escape(str(summary['rl']))}</code></p>
<div class="cards">{card_html}</div>
<p class="def">A position is <b>shifted</b> when {html.escape(metric)} ≥ {shift['threshold']:g}
between the two models' next-token distributions on the same prefix. Δlog p of a token y is
log p<sub>rl</sub>(y | prefix) − log p<sub>base</sub>(y | prefix) (natural log).
{f'Responses: {html.escape(str(source))}. ' if source else ''}Analysis directory:
<code>{html.escape(str(analysis_dir))}</code>.</p>
<nav><a href="#plots">plots</a> <a href="#token-view">token view</a>
 <a href="#top-tokens">top tokens</a></nav>
</header>"""


def _plot_card(title: str, svg: str, caption: str, wide: bool = False) -> str:
    return (f'<figure class="pcard{" wide" if wide else ""}"><figcaption><b>{title}</b> '
            f'{caption}</figcaption>{svg}</figure>')


def _plots(summary: dict, cross: dict | None) -> str:
    shift = summary.get("shift_definition") or {}
    cards = [
        _plot_card("Sparsity.", plot_sparsity(summary),
                   "Fraction of all response positions whose divergence is at least each "
                   "threshold (log axes): few positions move."),
        _plot_card("Position.", plot_positions(summary),
                   f"Relative position of all tokens vs of shifted tokens "
                   f"({html.escape(str(shift.get('metric', 'js')))} ≥ "
                   f"{shift.get('threshold', 0.1):g}); each series is normalised to 1."),
        _plot_card("Entropy.", plot_entropy(summary, 7.2 if cross is not None else 14.4),
                   "Mean JS and shifted fraction by the base model's entropy at the position.",
                   wide=cross is None),
    ]
    note = ""
    if cross is not None:
        cards.append(_plot_card(
            "Cross-sampling.", plot_cross_sampling(cross),
            f"Greedy accuracy on {cross.get('n_problems', '?')} problems when one model decodes "
            "and the other supplies the token at positions a criterion selects, against the "
            "realised fraction replaced."))
    else:
        note = ('<p class="note">Cross-sampling curves: not shown; pass <code>--cross-sampling '
                'cross_sampling.json</code> (written by <code>pivotal cross-sample</code>).</p>')
    return f'<section id="plots"><div class="grid">{"".join(cards)}</div>{note}</section>'


def _token_tables(summary: dict) -> str:
    by_dlogp = summary.get("top_tokens_by_dlogp") or []
    by_count = summary.get("top_tokens_by_count") or []
    vmax = color_scale([t.get("mean_dlogp") for t in by_dlogp], 0.5, 5.0)
    rows_d = "".join(
        f'<tr><td class="tk">{visible_token(str(t["token"]))}</td><td>{t.get("count", "")}</td>'
        f'<td style="background:{dlogp_color(t.get("mean_dlogp"), vmax)}">'
        f'{_fmt(t.get("mean_dlogp"))}</td></tr>' for t in by_dlogp)
    rows_c = "".join(
        f'<tr><td class="tk">{visible_token(str(t["token"]))}</td><td>{t.get("count", "")}</td>'
        + (f'<td>{t["occurrences"]}</td><td>{_pct(t["count"] / t["occurrences"], 0)}</td>'
           if t.get("occurrences") else '<td></td><td></td>') + '</tr>' for t in by_count)
    empty = '<tr><td colspan="4" class="note">none in summary.json</td></tr>'
    return f"""<section id="top-tokens"><h2>Top shifted tokens</h2><div class="tables">
<table><caption>Most negative, then most positive mean Δlog p (tokens seen ≥ 3 times)</caption>
<thead><tr><th>token</th><th>count</th><th>mean Δlog p</th></tr></thead>
<tbody>{rows_d or empty}</tbody></table>
<table><caption>Most often shifted tokens</caption>
<thead><tr><th>token</th><th>times shifted</th><th>occurrences</th><th>rate</th></tr></thead>
<tbody>{rows_c or empty}</tbody></table></div></section>"""


def _hover_record(row) -> list:
    """The per-token hover data: [token, logp_base, logp_rl, dlogp, js, rank_base, rank_rl,
    entropy_base, entropy_rl, top_base_tokens, top_base_probs, top_rl_tokens, top_rl_probs]."""
    def strings(v):
        return [str(s) for s in list(v)[:TOP_N]] if v is not None else []

    def probs(v):
        return [rounded(p, 3) for p in list(v)[:TOP_N]] if v is not None else []

    def rank(v):
        return None if v is None or finite_or_none(v) is None else int(v)

    return [str(row.token), rounded(row.logp_base), rounded(row.logp_rl), rounded(row.dlogp), rounded(row.js),
            rank(row.rank_base), rank(row.rank_rl), rounded(row.entropy_base, 3),
            rounded(row.entropy_rl, 3), strings(row.top_base_tokens), probs(row.top_base_probs),
            strings(row.top_rl_tokens), probs(row.top_rl_probs)]


def _token_view(records: list[dict], tokens, summary: dict, n_total: int,
                color_by: str) -> tuple[str, list, dict]:
    """(HTML of the token view, hover records in span order, colour scale maxima)."""
    shift = summary.get("shift_definition") or {"metric": "js", "threshold": 0.1}
    by_response = {int(r): g for r, g in tokens.groupby("response", sort=False)} if len(tokens) \
        else {}
    shown = [g.head(MAX_TOKENS_PER_RESPONSE) for g in by_response.values()]
    dl = np.concatenate([g["dlogp"].to_numpy(dtype=float) for g in shown]) if shown else []
    js = np.concatenate([g["js"].to_numpy(dtype=float) for g in shown]) if shown else []
    vmax = {"dlogp": color_scale(dl, 0.5, 5.0), "js": color_scale(js, 0.05, math.log(2))}
    has_cig = "cig" in tokens.columns
    if has_cig:
        cig = np.concatenate([g["cig"].to_numpy(dtype=float) for g in shown]) if shown else []
        vmax["cig"] = color_scale(cig, 0.5, 5.0)
    hover: list = []
    blocks = []
    for record in records:
        idx = int(record["response"])
        group = by_response.get(idx)
        correct = record.get("correct")
        badge = {True: ('ok', '✓ correct'), False: ('bad', '✗ incorrect')}.get(
            correct, ('unk', '? not judged'))
        head = (f'<span class="badge {badge[0]}">{badge[1]}</span> response {idx}'
                f' · problem <code>{html.escape(str(record.get("problem_id", "?")))}</code>')
        if group is None or not len(group):
            blocks.append(f'<article class="resp"><h3>{head}</h3><p class="note">no rows in '
                          f'tokens.parquet for this response</p></article>')
            continue
        metric_values = group["js"].to_numpy(dtype=float) if shift["metric"] == "js" \
            else np.abs(group["dlogp"].to_numpy(dtype=float))
        n_shifted = int(np.nansum(metric_values >= shift["threshold"]))
        head += (f' · {len(group)} tokens, {n_shifted} shifted'
                 f' · mean Δlog p {_fmt(np.nanmean(group["dlogp"].to_numpy(dtype=float)))}')
        spans = []
        for row in group.head(MAX_TOKENS_PER_RESPONSE).itertuples(index=False):
            i = len(hover)
            hover.append(_hover_record(row))
            cc = f';--cc:{dlogp_color(row.cig, vmax["cig"])}' if has_cig else ""
            spans.append(f'<span class="tok" data-i="{i}" style="--cd:'
                         f'{dlogp_color(row.dlogp, vmax["dlogp"])};--cj:'
                         f'{js_color(row.js, vmax["js"])}{cc}">{visible_token(str(row.token))}</span>')
        more = len(group) - MAX_TOKENS_PER_RESPONSE
        if more > 0:
            spans.append(f'<span class="note"> … {more} more tokens not shown</span>')
        prompt = str(record.get("prompt") or "")
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = "…" + prompt[-MAX_PROMPT_CHARS:]
        prompt_html = (f'<details><summary>prompt</summary><pre>{html.escape(prompt)}</pre>'
                       f'</details>') if prompt else ""
        blocks.append(f'<article class="resp"><h3>{head}</h3>{prompt_html}'
                      f'<div class="toks">{"".join(spans)}</div></article>')
    checked = {c: " checked" if c == color_by else "" for c in COLOR_BY}
    legend = (f'<div class="legend" data-for="dlogp"><span>Δlog p ≤ −{vmax["dlogp"]:.2g}<br>'
              f'rl less likely</span><span class="bar" style="background:linear-gradient(90deg,'
              f'{RED_HEX},#ffffff,{BLUE_HEX})"></span><span>≥ +{vmax["dlogp"]:.2g}<br>rl more '
              f'likely</span></div><div class="legend" data-for="js"><span>JS 0</span>'
              f'<span class="bar" style="background:linear-gradient(90deg,#ffffff,{PURPLE_HEX})">'
              f'</span><span>≥ {vmax["js"]:.2g}</span></div>')
    cig_choice = ""
    if has_cig:
        legend += (f'<div class="legend" data-for="cig"><span>CIG ≤ −{vmax["cig"]:.2g}<br>the hint '
                   f'makes it less likely</span><span class="bar" style="background:'
                   f'linear-gradient(90deg,{RED_HEX},#ffffff,{BLUE_HEX})"></span><span>≥ '
                   f'+{vmax["cig"]:.2g}<br>more likely</span></div>')
        cig_choice = (f'<label><input type="radio" name="colorby" value="cig"{checked["cig"]}> '
                      f'CIG (hint)</label>')
    note = (f"the first {len(records)} of {n_total} responses" if n_total > len(records)
            else f"all {len(records)} responses")
    html_ = f"""<section id="token-view"><h2>Token view</h2>
<div class="toolbar"><span>colour by</span>
<label><input type="radio" name="colorby" value="dlogp"{checked['dlogp']}> Δlog p</label>
<label><input type="radio" name="colorby" value="js"{checked['js']}> JS</label>{cig_choice}{legend}</div>
<p class="note" id="js-status">Showing {note}. (Hover details need JavaScript.)</p>
{"".join(blocks) or '<p class="note">no responses</p>'}</section>"""
    return html_, hover, vmax


def _page_template() -> str:
    """The page (package data `report_page.html`): HTML, CSS and JS with __NAME__ placeholders,
    filled in one pass by `render_report` (CSS and JS are full of braces, so no str.format)."""
    return resources.files("pivotal.analysis").joinpath("report_page.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------

def render_report(analysis_dir: str | Path, cross_sampling_path: str | Path | None = None,
                  max_responses: int = 20, color_by: str = "dlogp") -> str:
    """The HTML report of a `pivotal analyze` output directory (summary.json, tokens.parquet,
    responses.jsonl), plus cross-sampling curves when a cross_sampling.json path is given.

    max_responses: responses shown in the token view (the first ones, in responses.jsonl order);
    color_by: "dlogp", "js" or "cig" (an analysis with --cig-hint), the token colouring the page
    opens with (a toggle switches).
    """
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {', '.join(COLOR_BY)}, got {color_by!r}")
    if max_responses < 0:
        raise ValueError(f"max_responses must be >= 0, got {max_responses}")
    analysis_dir = Path(analysis_dir)
    summary = load_summary(analysis_dir)
    cross = load_cross_sampling(cross_sampling_path) if cross_sampling_path else None
    records = load_responses(analysis_dir)
    if records is None:  # no responses.jsonl: the response indices of the token table
        import pyarrow.parquet as pq
        path = analysis_dir / "tokens.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {WRITTEN_BY_ANALYZE}")
        indices = sorted(set(pq.read_table(path, columns=["response"]).column(0).to_pylist()))
        records = [{"response": i} for i in indices]
    n_total = len(records)
    records = records[:max_responses]
    tokens = load_tokens(analysis_dir, [r["response"] for r in records])
    if color_by == "cig" and "cig" not in tokens.columns:
        raise ValueError(f"{analysis_dir / 'tokens.parquet'} has no 'cig' column to colour by: "
                         f"run `pivotal analyze` with --cig-hint solution|template")
    token_view, hover, _ = _token_view(records, tokens, summary, n_total, color_by)
    title = f"{summary['base']} → {summary['rl']}"
    parts = {"__TITLE__": html.escape(title), "__COLOR_BY__": color_by,
             "__HEADER__": _header(summary, analysis_dir, cross),
             "__PLOTS__": _plots(summary, cross), "__TOKEN_VIEW__": token_view,
             "__TABLES__": _token_tables(summary), "__DATA__": _json_for_script(hover)}
    # one pass over the template: text from the inputs (a model named "__DATA__", say) is never
    # scanned for placeholders
    return re.sub("|".join(parts), lambda m: parts[m.group(0)], _page_template())


def write_report(analysis_dir: str | Path, out: str | Path | None = None,
                 cross_sampling_path: str | Path | None = None, max_responses: int = 20,
                 color_by: str = "dlogp") -> Path:
    """Render the report and write it atomically (a temporary file beside `out`, then
    os.replace) to `out` (default ANALYSIS_DIR/report.html); returns the path written."""
    page = render_report(analysis_dir, cross_sampling_path, max_responses, color_by)
    out = Path(out) if out is not None else Path(analysis_dir) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
