"""Which tokens did RL change? Analyse the model that train_custom_reward.py trained against the
model it started from, and write the HTML report.

    python examples/train_custom_reward.py && python examples/analyze_and_report.py
    python examples/analyze_and_report.py tiny-random      # [base model] after a tiny run
"""
import sys

import pivotal

base = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
summary = pivotal.analyze(rl="runs/example_custom/final", base=base, task="arithmetic", limit=50,
                          out="runs/example_analyze")
page = pivotal.report("runs/example_analyze")
print(f"{summary['n_tokens']} tokens, {summary['shifted_fraction']:.3f} of them shifted "
      f"(js >= {summary['shift_definition']['threshold']}); report: {page}")
