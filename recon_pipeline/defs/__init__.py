"""The Dagster layer: thin assets, checks, partitions, schedules and resources."""
