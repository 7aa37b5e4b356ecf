"""Model names as both sides write them."""

from __future__ import annotations

import numpy as np
import pandas as pd

_SNAPSHOT_SUFFIX = r"-(\d{4}-\d{2}-\d{2}|\d{4})$"


def snapshot_base(models: pd.Series) -> pd.Series:
    """`gpt-4o-2024-08-06` -> `gpt-4o`, `gpt-4-0613` -> `gpt-4`; computed once per distinct name."""
    codes, uniques = pd.factorize(models, use_na_sentinel=True)
    bases = pd.Series(uniques, dtype=object).str.lower().str.strip()
    bases = bases.str.replace(_SNAPSHOT_SUFFIX, "", regex=True).to_numpy(object)
    return pd.Series(np.append(bases, None)[codes], index=models.index, dtype=object)
