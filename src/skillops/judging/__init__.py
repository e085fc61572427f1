"""Judging a model: per-query ranking metrics (`evaluation`), scores kept per snapshot
(`score_cache`), the promotion policy and its paired test (`promotion`), and how much a new
champion moves the index (`index_churn`). The authority that applies them is `skillops.gate`."""
