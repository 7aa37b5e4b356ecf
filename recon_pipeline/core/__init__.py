"""Every reconciliation rule, as pure functions over DataFrames: no Dagster, no I/O."""
