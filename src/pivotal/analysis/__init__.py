"""Token-level diagnostics: where RL changed the policy, and whether those tokens matter.

- `shift`: per-token divergence / Δlog p / rank tables between a base and an RL model (`pivotal analyze`)
- `decoding`: two-model decoding: cross-sampling and test-time extrapolation (`pivotal cross-sample`,
  `pivotal eval --extrapolate-base`)
- `report`: one self-contained HTML page with the plots and a token view (`pivotal report`)
"""
