"""A realistic synthetic `pivotal analyze` output directory (and cross_sampling.json) for the
report tests and for docs/report_screenshot.png.

    python tests/report_fixture.py                      # -> docs/report_screenshot.png
    python tests/report_fixture.py --analysis-dir DIR --cross-sampling FILE --out PNG

Files follow the shared spec exactly (tokens.parquet with every column, responses.jsonl,
summary.json computed from the token table, cross_sampling.json). The numbers are synthetic but
shaped like a real base -> RL comparison: most positions barely move, the shifted ones sit at
high-entropy positions, near the start and the end of a response, mostly with Δlog p > 0.
Response 0 holds a token '<b>&' (escaping) and newline tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

JS_THRESHOLDS = [0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5]
ABS_DLOGP_THRESHOLDS = [0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0]
ENTROPY_EDGES = [0.0, 0.05, 0.25, 0.5, 1.0, 2.0, 4.0]
SHIFT_THRESHOLD = 0.1
NAMES = ["Sam", "Ana", "Lee", "Kim", "Ravi", "Mia", "Tom", "Zoe"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils"]
DISTRACTORS = [" the", " so", " We", " First", " total", " =", " is", ".", ",", "\n", " 1", " 2",
               " 5", " more", " has", " left", " answer", ":", " Let", " then", " of", " each"]


def _tokenise(text: str) -> list[str]:
    """GPT-style pieces: a word with its leading space, single digits, punctuation, newlines."""
    return re.findall(r"\n| ?[A-Za-z]+| ?\d|\d| ?[^\sA-Za-z\d]+| ", text)


def _problem(i: int, rng) -> tuple[str, str, bool]:
    a, b = int(rng.integers(3, 60)), int(rng.integers(2, 40))
    name, item = NAMES[i % len(NAMES)], ITEMS[i % len(ITEMS)]
    question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    correct = bool(rng.random() < 0.6)
    answer = a + b if correct else a + b + int(rng.integers(1, 9))
    response = (f"Let's think step by step.\n{name} starts with {a} {item}.\n"
                f"Then {name} gets {b} more, so {a} + {b} = {answer}.\nThe answer is {answer}.")
    return question, response, correct


def _token_rows(i: int, problem_id: str, tokens: list[str], rng) -> list[dict]:
    """Per-token statistics of one response (see the module docstring for their shape)."""
    n = len(tokens)
    rows = []
    for pos, tok in enumerate(tokens):
        rel = pos / max(n - 1, 1)
        is_digit = tok.strip().isdigit()
        # base entropy: low on boilerplate, high at numbers and at the first words
        h_base = float(rng.exponential(1.2 if (is_digit or rel < 0.08) else 0.15))
        edge = rel < 0.1 or rel > 0.88
        p_shift = min(0.9, 0.01 + 0.22 * edge + 0.2 * min(h_base, 2.0) / 2.0)
        shifted = rng.random() < p_shift
        p_base = float(np.clip(math.exp(-h_base * rng.uniform(0.3, 0.9)), 0.05, 0.9995))
        if shifted:
            dlogp = float(rng.normal(1.0, 0.5) * (1 if rng.random() < 0.75 else -1.3))
        else:
            dlogp = float(rng.normal(0.0, 0.03))
        logp_base = math.log(p_base)
        logp_rl = min(-1e-4, logp_base + dlogp)
        dlogp = logp_rl - logp_base
        p_rl = math.exp(logp_rl)
        js = float(min(math.log(2), 0.11 * abs(dlogp) + abs(rng.normal(0, 0.004))
                       + (0.08 if shifted else 0.0)))

        def top5(p_chosen, tok=tok):
            others = [t for t in DISTRACTORS if t != tok]
            pick = [others[k] for k in rng.choice(len(others), 4, replace=False)]
            rest = (1 - p_chosen) * np.array([0.55, 0.2, 0.1, 0.05])
            pairs = sorted([(p_chosen, tok)] + list(zip(rest.tolist(), pick)), reverse=True)
            rank = 1 + [t for _, t in pairs].index(tok)
            return [t for _, t in pairs], [float(p) for p, _ in pairs], rank

        tb, pb, rank_b = top5(p_base)
        tr, pr, rank_r = top5(p_rl)
        rows.append({
            "response": i, "problem_id": problem_id, "position": pos, "length": n,
            "rel_position": rel, "token_id": zlib.crc32(tok.encode()) % 49152, "token": tok,
            "js": js,
            "kl_policy_base": 2.1 * js, "kl_base_policy": 1.9 * js, "entropy_base": h_base,
            "entropy_rl": h_base * (0.6 if shifted else 0.97), "logp_base": logp_base,
            "logp_rl": logp_rl, "dlogp": dlogp, "rank_base": rank_b, "rank_rl": rank_r,
            "topk_mass_base": float(sum(pb)), "topk_mass_rl_on_base_topk": float(
                min(1.0, sum(pb) + (0.02 if dlogp > 0 else -0.02))),
            "top_base_tokens": tb, "top_rl_tokens": tr, "top_base_probs": pb,
            "top_rl_probs": pr})
    return rows


def summarise(df: pd.DataFrame, responses: list[dict], base: str, rl: str) -> dict:
    """summary.json of a token table, per the shared spec (JS >= SHIFT_THRESHOLD is shifted)."""
    js, dl = df["js"].to_numpy(), df["dlogp"].to_numpy()
    shifted = js >= SHIFT_THRESHOLD
    edges = np.linspace(0, 1, 11)
    ent = df["entropy_base"].to_numpy()
    bins = []
    for k, (lo, hi) in enumerate(zip(ENTROPY_EDGES, ENTROPY_EDGES[1:] + [max(ent.max(), 4.0)])):
        inside = (ent >= lo) & ((ent <= hi) if k == len(ENTROPY_EDGES) - 1 else (ent < hi))
        if inside.any():
            bins.append({"entropy_low": lo, "entropy_high": float(hi), "count": int(inside.sum()),
                         "mean_js": float(js[inside].mean()),
                         "shifted_fraction": float(shifted[inside].mean())})
    g = df.assign(shifted=shifted).groupby("token").agg(n=("dlogp", "size"),
                                                        mean_dlogp=("dlogp", "mean"),
                                                        n_shifted=("shifted", "sum"))
    frequent = g[g["n"] >= 3].sort_values("mean_dlogp")
    frequent = pd.concat([frequent.head(6), frequent.tail(6)]) if len(frequent) > 12 else frequent
    often = g[g["n_shifted"] > 0].sort_values("n_shifted", ascending=False).head(10)
    known = [r["correct"] for r in responses if r["correct"] is not None]
    return {
        "base": base, "rl": rl, "n_responses": len(responses), "n_tokens": len(df),
        "source": "synthetic fixture (tests/report_fixture.py)",
        "accuracy": sum(known) / len(known) if known else None,
        "thresholds": {"js": JS_THRESHOLDS, "abs_dlogp": ABS_DLOGP_THRESHOLDS},
        "sparsity": {"js": [{"threshold": t, "fraction": float((js >= t).mean())}
                            for t in JS_THRESHOLDS],
                     "abs_dlogp": [{"threshold": t, "fraction": float((np.abs(dl) >= t).mean())}
                                   for t in ABS_DLOGP_THRESHOLDS]},
        "shift_definition": {"metric": "js", "threshold": SHIFT_THRESHOLD},
        "shifted_fraction": float(shifted.mean()),
        "position_histogram": {
            "bin_edges": edges.tolist(),
            "all": np.histogram(df["rel_position"], bins=edges)[0].tolist(),
            "shifted": np.histogram(df["rel_position"][shifted], bins=edges)[0].tolist()},
        "divergence_by_entropy": bins,
        "top_tokens_by_dlogp": [{"token": t, "count": int(r["n"]),
                                 "mean_dlogp": float(r["mean_dlogp"])}
                                for t, r in frequent.iterrows()],
        "top_tokens_by_count": [{"token": t, "count": int(r["n_shifted"])}
                                for t, r in often.iterrows()],
        "mass_moved": {"mean_topk_mass_base": float(df["topk_mass_base"].mean()),
                       "mean_topk_mass_rl_on_base_topk":
                           float(df["topk_mass_rl_on_base_topk"].mean())},
    }


def make_analysis_dir(out: str | Path, n_responses: int = 12, seed: int = 0,
                      base: str = "smollm2-135m",
                      rl: str = "runs/grpo-arith/checkpoints/step_000200") -> Path:
    """Write tokens.parquet, responses.jsonl and summary.json into `out`; returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, responses = [], []
    for i in range(n_responses):
        question, text, correct = _problem(i, rng)
        tokens = _tokenise(text)
        if i == 0:  # escaping: a token that is HTML markup
            tokens = tokens[:3] + [" <b>&"] + tokens[3:]
            text = "".join(tokens)
        assert "".join(tokens) == text
        pid = f"arith-{i:04d}"
        prompt = (f"<|im_start|>user\nSolve the problem. Put the final answer after "
                  f"'The answer is'.\n{question}<|im_end|>\n<|im_start|>assistant\n")
        rows += _token_rows(i, pid, tokens, rng)
        responses.append({"response": i, "problem_id": pid, "prompt": prompt, "text": text,
                          "correct": None if i == 2 else correct, "length": len(tokens)})
    df = pd.DataFrame(rows)
    df.to_parquet(out / "tokens.parquet", index=False)
    with open(out / "responses.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in responses)
    summary = summarise(df, responses, base, rl)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return out


def make_cross_sampling(path: str | Path, base: str = "smollm2-135m",
                        rl: str = "runs/grpo-arith/checkpoints/step_000200") -> Path:
    """A cross_sampling.json shaped like the papers' result: forward Δlog p recovers rl accuracy
    with ~5% of positions, divergence / entropy need more, random little; reverse collapses."""
    acc_base, acc_rl = 0.32, 0.58
    speed = {"dlogp": 60.0, "divergence": 22.0, "entropy": 14.0, "random": 2.0}
    budgets = [0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2]
    points = []
    for direction, (start, end) in (("forward", (acc_base, acc_rl)),
                                    ("reverse", (acc_rl, acc_base))):
        for criterion, k in speed.items():
            for tau, budget in zip([-0.1 * j for j in range(len(budgets))], budgets):
                acc = start + (end - start) * (1 - math.exp(-k * budget))
                n = 1000
                points.append({"direction": direction, "criterion": criterion, "tau": tau,
                               "budget": budget, "accuracy": round(acc, 3),
                               "replaced": int(budget * n), "positions": n})
    path = Path(path)
    path.write_text(json.dumps({"base": base, "rl": rl, "n_problems": 200,
                                "accuracy_base": acc_base, "accuracy_rl": acc_rl,
                                "points": points}, indent=2))
    return path


def find_chromium() -> str | None:
    """The path of a chromium / chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium(args: list[str], url: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run headless chromium on a URL (sandbox off: tests may run as root)."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                               "--hide-scrollbars", f"--user-data-dir={profile}",
                               "--virtual-time-budget=5000", *args, url],
                              capture_output=True, text=True, timeout=timeout,
                              check=False)


def screenshot(html_path: Path, png: Path, hover: int | None = None,
               size: tuple[int, int] = (1280, 2000)) -> Path:
    """A PNG of the page (optionally with token `hover`'s tooltip pinned)."""
    url = html_path.resolve().as_uri() + (f"?hover={hover}" if hover is not None else "")
    proc = chromium([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}"], url)
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot: {proc.stderr[-2000:]}")
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--analysis-dir", help="a real `pivotal analyze` output (default: synthetic)")
    p.add_argument("--cross-sampling", help="a real cross_sampling.json (default: synthetic)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"
                                        / "report_screenshot.png"))
    p.add_argument("--hover", type=int, default=None, help="token whose tooltip is pinned")
    p.add_argument("--height", type=int, default=2000)
    p.add_argument("--max-responses", type=int, default=6)
    args = p.parse_args(argv)
    from pivotal.analysis.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        analysis = Path(args.analysis_dir) if args.analysis_dir else make_analysis_dir(tmp / "an")
        # synthetic curves only beside the synthetic analysis: never mixed with real data
        cross = args.cross_sampling or (None if args.analysis_dir
                                        else make_cross_sampling(tmp / "cross_sampling.json"))
        page = write_report(analysis, tmp / "report.html", cross_sampling_path=cross,
                            max_responses=args.max_responses)
        hover = args.hover
        if hover is None:  # the most shifted token of the first response, for the tooltip
            data = json.loads(re.search(r'id="token-data">(.*?)</script>',
                                        page.read_text(), re.DOTALL).group(1))
            hover = max(range(min(60, len(data))), key=lambda k: abs(data[k][3] or 0.0))
        raw = tmp / "shot.png"
        screenshot(page, raw, hover=hover, size=(1280, args.height))
        from PIL import Image
        # a 256-colour palette keeps a text-and-lines page small with no visible loss
        Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT) \
            .save(args.out, optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size / 1024:.0f} KiB (hover={hover})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
