"""`pivotal report` (pivotal.analysis.report): the HTML page of an analysis directory.

The fixture (tests/report_fixture.py) writes a synthetic analysis directory that follows the
shared spec: tokens.parquet with every column, responses.jsonl, summary.json, cross_sampling.json.
The browser tests render the page in headless chromium (skipped when none is installed).
"""

from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import report_fixture
from pivotal.analysis import report as R
from pivotal.analysis.cli_report import add_parser

SPAN = re.compile(r'<span class="tok" data-i="(\d+)" style="--cd:(#[0-9a-f]{6});'
                  r'--cj:(#[0-9a-f]{6})">(.*?)</span>', re.DOTALL)


@pytest.fixture(scope="module")
def analysis(tmp_path_factory) -> Path:
    return report_fixture.make_analysis_dir(tmp_path_factory.mktemp("an") / "an", n_responses=8)


@pytest.fixture(scope="module")
def cross(tmp_path_factory) -> Path:
    return report_fixture.make_cross_sampling(tmp_path_factory.mktemp("cs") / "cs.json")


@pytest.fixture(scope="module")
def page(analysis, cross) -> str:
    return R.render_report(analysis, cross_sampling_path=cross, max_responses=3)


def hover_data(page: str) -> list:
    blob = re.search(r'<script type="application/json" id="token-data">(.*?)</script>', page,
                     re.DOTALL)
    return json.loads(blob.group(1))


def span_text(inner: str) -> str:
    """A token span's HTML back to the token text (whitespace markers undone, entities decoded)."""
    inner = inner.replace("<br>", "")
    for mark, ch in (("·", " "), ("↵", "\n"), ("⇥", "\t"), ("␍", "\r"), ("∅", "")):
        inner = inner.replace(f'<i class="ws">{mark}</i>', ch)
    assert "<" not in inner, inner
    return html.unescape(inner)


# ----------------------------------------------------------------------------------------------
# Content
# ----------------------------------------------------------------------------------------------

def test_page_has_every_section(page, analysis):
    summary = json.loads((analysis / "summary.json").read_text())
    for anchor in ('id="plots"', 'id="token-view"', 'id="top-tokens"', 'id="tip"',
                   'id="token-data"'):
        assert anchor in page
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg"') == 4   # 3 plots + cross-sampling
    for title in ("positions with JS divergence ≥ threshold", "where the shifted tokens sit",
                  "shift against the base model", "forward: base decodes", "reverse: rl decodes"):
        assert title in page
    assert summary["base"] in page and summary["rl"] in page
    # the header: counts, the shifted fraction (as computed by the fixture) and its definition
    assert f">{summary['n_tokens']:,}<" in page and f">{summary['n_responses']:,}<" in page
    assert f"{100 * summary['shifted_fraction']:.2f}%" in page
    assert "JS(base, rl) ≥ 0.1" in page
    assert "32.0% → 58.0%" in page                   # base and rl accuracy of cross_sampling.json
    # top-token tables: one row per summary entry
    tables = page[page.index('id="top-tokens"'):]
    n_rows = len(summary["top_tokens_by_dlogp"]) + len(summary["top_tokens_by_count"])
    assert tables.count("<tr><td") == n_rows
    # nothing loaded from the network
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page


def test_svg_ids_are_unique(page):
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)) > 20
    # every internal reference points at an id of the page
    for ref in re.findall(r'(?:url\(#|href="#)([^)"]+)', page):
        assert ref in ids or ref in ("plots", "token-view", "top-tokens"), ref


def test_without_cross_sampling(analysis):
    import matplotlib

    before = matplotlib.rcParams["svg.fonttype"], matplotlib.rcParams["font.size"]
    page = R.render_report(analysis, max_responses=1)
    # the plot style is scoped: a caller's matplotlib settings are left as they were
    assert (matplotlib.rcParams["svg.fonttype"], matplotlib.rcParams["font.size"]) == before
    assert R.render_report(analysis, max_responses=1) == page       # deterministic output
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg"') == 3
    assert "Cross-sampling curves: not shown; pass <code>--cross-sampling" in page
    assert 'class="pcard wide"' in page           # the entropy plot takes the free space
    assert "Showing the first 1 of 8 responses" in page


def test_token_spans_are_the_shown_responses_tokens(page, analysis):
    df = pd.read_parquet(analysis / "tokens.parquet")
    shown = df[df["response"] < 3].sort_values(["response", "position"])
    spans = SPAN.findall(page)
    assert page.count('class="tok"') == len(spans) == len(shown) == len(hover_data(page))
    assert [int(s[0]) for s in spans] == list(range(len(shown)))
    assert [span_text(s[3]) for s in spans] == shown["token"].tolist()
    assert "Showing the first 3 of 8 responses" in page
    # correctness badges from responses.jsonl (response 2 is unjudged in the fixture)
    records = [json.loads(line) for line in (analysis / "responses.jsonl").read_text().splitlines()]
    badges = re.findall(r'<span class="badge (ok|bad|unk)">', page)
    expect = {True: "ok", False: "bad", None: "unk"}
    assert badges == [expect[r["correct"]] for r in records[:3]]


def test_token_text_is_escaped(page):
    # response 0 holds the token ' <b>&' and newline tokens; the prompt holds '<|im_start|>'
    assert "<b>&" not in page and "<|im_start|>" not in page
    assert '<span class="tok"' in page
    assert '<i class="ws">·</i>&lt;b&gt;&amp;</span>' in page
    assert "&lt;|im_start|&gt;" in page
    assert '<i class="ws">↵</i><br>' in page
    blob = re.search(r'id="token-data">(.*?)</script>', page, re.DOTALL).group(1)
    assert "<" not in blob and ">" not in blob and "&" not in blob.replace("\\u0026", "")
    assert " <b>&" in [r[0] for r in hover_data(page)]
    assert R.visible_token("a </script>\n") == ('a<i class="ws">·</i>&lt;/script&gt;'
                                                '<i class="ws">↵</i><br>')
    assert R.visible_token("") == '<i class="ws">∅</i>'


def test_hover_data_matches_the_table(page, analysis):
    df = pd.read_parquet(analysis / "tokens.parquet")
    shown = df[df["response"] < 3].sort_values(["response", "position"]).reset_index(drop=True)
    data = hover_data(page)
    for k in (0, 7, len(shown) - 1):
        row, rec = shown.iloc[k], data[k]
        assert rec[0] == row["token"]
        for j, col in ((1, "logp_base"), (2, "logp_rl"), (3, "dlogp"), (4, "js")):
            assert rec[j] == pytest.approx(row[col], rel=1e-3, abs=1e-9)
        assert rec[5:7] == [row["rank_base"], row["rank_rl"]]
        assert rec[9] == list(row["top_base_tokens"]) and rec[11] == list(row["top_rl_tokens"])
        assert rec[10] == pytest.approx(list(row["top_base_probs"]), rel=5e-3)  # 3 digits


def test_colours_are_monotone_in_dlogp_and_js(page, analysis):
    df = pd.read_parquet(analysis / "tokens.parquet")
    shown = df[df["response"] < 3].sort_values(["response", "position"])
    spans = SPAN.findall(page)

    def rgb(hex_):
        return tuple(int(hex_[i:i + 2], 16) for i in (1, 3, 5))

    # signed distance from white: negative for red hues, positive for blue ones. Each rounded
    # channel is monotone in Δlog p, so this sum is too (B - R alone is not, after rounding).
    dl = shown["dlogp"].to_numpy()
    colours = [rgb(s[1]) for s in spans]
    signed = np.array([(765 - sum(c)) * np.sign(c[2] - c[0]) for c in colours])
    order = np.argsort(dl, kind="stable")
    assert np.all(np.diff(signed[order]) >= 0)
    assert all(c[0] > c[2] for c, d in zip(colours, dl) if d < -0.05)     # red: rl less likely
    assert all(c[2] > c[0] for c, d in zip(colours, dl) if d > 0.05)      # blue: more likely
    assert signed[order[0]] < -200 and signed[order[-1]] > 200
    js = shown["js"].to_numpy()
    lightness = np.array([sum(rgb(s[2])) for s in spans])
    o = np.argsort(js, kind="stable")
    assert np.all(np.diff(lightness[o]) <= 0)
    # the scale by hand: a quarter of the way from white to RED = (214, 72, 62) at dlogp = -vmax/4
    assert R.dlogp_color(-0.5, 2.0) == "#f5d1cf"   # 255-.25*41=244.75, 255-.25*183, 255-.25*193
    assert R.dlogp_color(0.0, 2.0) == "#ffffff"
    assert R.dlogp_color(-9.0, 2.0) == R.RED_HEX and R.dlogp_color(9.0, 2.0) == R.BLUE_HEX
    assert R.js_color(0.2, 0.1) == R.PURPLE_HEX
    assert R.dlogp_color(float("nan"), 2.0) == R.MISSING
    # the saturation point: the 99th percentile of |values|, clipped
    assert R.color_scale(list(range(101)), 0.5, 500.0) == pytest.approx(99.0)
    assert R.color_scale([0.01, -0.02], 0.5, 5.0) == 0.5
    assert R.color_scale([100.0], 0.5, 5.0) == 5.0


def test_non_finite_values_and_missing_responses_file(tmp_path):
    an = report_fixture.make_analysis_dir(tmp_path / "an", n_responses=2)
    df = pd.read_parquet(an / "tokens.parquet")
    df.loc[0, "dlogp"] = np.nan
    df.loc[1, "js"] = np.inf
    df.to_parquet(an / "tokens.parquet", index=False)
    (an / "responses.jsonl").unlink()
    page = R.render_report(an, color_by="js")
    data = hover_data(page)          # valid JSON: NaN / inf became null
    assert data[0][3] is None and data[1][4] is None and len(data) == len(df)
    spans = SPAN.findall(page)
    assert spans[0][1] == R.MISSING and spans[1][2] == R.MISSING
    assert '<body class="by-js">' in page and 'value="js" checked' in page
    assert page.count('class="badge unk"') == 2


def test_plot_with_missing_summary_sections(tmp_path):
    an = report_fixture.make_analysis_dir(tmp_path / "an", n_responses=1)
    summary = json.loads((an / "summary.json").read_text())
    for key in ("sparsity", "position_histogram", "divergence_by_entropy"):
        del summary[key]
    (an / "summary.json").write_text(json.dumps(summary))
    page = R.render_report(an)
    for text in ("no js sparsity in summary.json", "no position histogram in summary.json",
                 "no entropy bins in summary.json"):
        assert text in page


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_errors_name_the_file_and_its_writer(tmp_path, analysis, cross):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*pivotal analyze"):
        R.render_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/summary\.json not found.*pivotal analyze"):
        R.render_report(tmp_path / "empty")
    an = report_fixture.make_analysis_dir(tmp_path / "an", n_responses=1)
    (an / "tokens.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"an/tokens\.parquet not found.*pivotal analyze"):
        R.render_report(an)
    (an / "summary.json").write_text(json.dumps({"base": "b", "rl": "r"}))
    with pytest.raises(ValueError, match=r"summary\.json lacks key\(s\) n_responses, n_tokens"):
        R.render_report(an)
    data = json.loads(cross.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in data.items() if k != "points"}))
    with pytest.raises(ValueError, match=r"bad\.json lacks required key\(s\) points.*cross-sample"):
        R.render_report(analysis, cross_sampling_path=bad)
    del data["points"][3]["budget"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"points\[3\] lacks required key\(s\) budget"):
        R.render_report(analysis, cross_sampling_path=bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.json not found"):
        R.render_report(analysis, cross_sampling_path=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="color_by must be one of dlogp, js"):
        R.render_report(analysis, color_by="kl")


def test_missing_token_columns(tmp_path):
    an = report_fixture.make_analysis_dir(tmp_path / "an", n_responses=1)
    pd.read_parquet(an / "tokens.parquet").drop(columns=["top_rl_probs", "js"]).to_parquet(
        an / "tokens.parquet")
    with pytest.raises(ValueError, match=r"tokens\.parquet lacks column\(s\) js, top_rl_probs"):
        R.render_report(an)


# ----------------------------------------------------------------------------------------------
# Writing and the command line
# ----------------------------------------------------------------------------------------------

def test_cli_writes_the_report(tmp_path, analysis, cross, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "sub" / "r.html"
    args = parser.parse_args(["report", str(analysis), "--cross-sampling", str(cross), "--out",
                              str(out), "--max-responses", "2", "--color-by", "js"])
    assert args.fn(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert len(SPAN.findall(text)) == len(hover_data(text)) > 0
    assert "Showing the first 2 of 8 responses" in text and '<body class="by-js">' in text
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]     # no temporary file left
    args = parser.parse_args(["report", str(analysis)])                # default --out
    assert args.fn(args) == 0
    assert capsys.readouterr().out.strip() == str(analysis / "report.html")
    assert (analysis / "report.html").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(analysis), "--color-by", "kl"])


# ----------------------------------------------------------------------------------------------
# Headless browser
# ----------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(report_fixture.find_chromium() is None,
                                    reason="no chromium binary found (apt-get install chromium)")


@pytest.mark.browser
@needs_chromium
def test_browser_runs_the_scripts(tmp_path, analysis, cross):
    path = R.write_report(analysis, tmp_path / "report.html", cross_sampling_path=cross,
                          max_responses=3)
    n_tokens = len(hover_data(path.read_text()))
    proc = report_fixture.chromium(["--dump-dom"], path.as_uri() + "?hover=4&color=js")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-js="ready"' in dom                                    # the script ran to its end
    assert f"{n_tokens} tokens: hover one for both models" in dom       # text the script wrote
    assert dom.count('class="plot"') == 4 and "<svg" in dom
    assert len(re.findall(r'<span class="tok( pin)?" data-i=', dom)) == n_tokens
    assert 'class="tok pin" data-i="4"' in dom                          # ?hover=4 pinned it
    tip = dom[dom.index('<div id="tip"'):]
    assert "display: block" in tip[:200] and "base top-5" in tip and "rl top-5" in tip
    assert 'class="by-js"' in dom                                       # ?color=js switched it


@pytest.mark.browser
@needs_chromium
def test_browser_screenshot_is_not_blank(tmp_path, analysis, cross):
    path = R.write_report(analysis, tmp_path / "report.html", cross_sampling_path=cross,
                          max_responses=3)
    png = report_fixture.screenshot(path, tmp_path / "shot.png", hover=4, size=(1280, 2000))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    try:
        from PIL import Image
    except ImportError:
        assert png.stat().st_size > 50_000       # a blank 1280x2000 PNG compresses to a few KB
        return
    image = Image.open(png).convert("L")
    assert image.size == (1280, 2000)
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.std() > 10
    # the pinned tooltip (a white box with a grey border) is drawn below the first response
    assert (pixels < 128).mean() > 0.01
