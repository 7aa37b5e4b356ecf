"""A day reconciled in slices gives, row for row, the tables the day in one piece gives
(real PostgreSQL, the demo's days with tags, fingerprints, duplicates and midnight calls)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core import summarise
from recon_pipeline.core.slices import DayTally, slice_count
from recon_pipeline.defs.resources import ReconciliationSettings
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline_tests.runs import AS_OF, SmallDemo


def table_digests(demo: SmallDemo) -> dict[str, tuple[int, str]]:
    """Every table of the demo's schema (token_usage and every output) as (rows, md5 of its
    rows in a total order); the pipeline's record of what it read is left out (it holds row
    versions and times)."""
    with demo.engine.connect() as conn:
        names = conn.execute(
            sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = :s"
                " AND tablename <> 'recon_day_inputs' ORDER BY 1"
            ),
            {"s": demo.schema},
        ).scalars()
        digests = {}
        for name in names:
            digests[name] = tuple(
                conn.execute(
                    sa.text(
                        "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)),"
                        f' \'\') FROM "{demo.schema}"."{name}" t'
                    )
                ).one()
            )
    return digests


def reset(demo: SmallDemo, tables: list[str]) -> None:
    """token_usage back to never reconciled, every output table empty."""
    with demo.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'UPDATE "{demo.schema}".token_usage SET actual_cost_cents = NULL,'
                " reconciled_at = NULL, reconciliation_status = 'pending'"
            )
        )
        for name in tables:
            if name != "token_usage":
                conn.execute(sa.text(f'TRUNCATE "{demo.schema}"."{name}"'))


def _run(demo: SmallDemo, slice_rows: int, as_of: str = AS_OF):
    resources = demo.resources(as_of)
    resources["settings"] = ReconciliationSettings(
        as_of=as_of, openai_project_ids=APP_PROJECT, slice_rows=slice_rows
    )
    result = demo.run(demo.days[0], demo.days[-1], resources=resources)
    assert result.success
    return result


def _slices_used(result, figure: str = "slices") -> list[int]:
    return [
        m.metadata["reading"].value[figure]
        for m in result.asset_materializations_for_node("reconciled_usage")
        if "reading" in m.metadata
    ]


@pytest.mark.parametrize("as_of", [AS_OF, "2026-11-20T06:00:00+00:00"])
def test_sliced_run_gives_the_tables_of_the_whole_day(demo, as_of) -> None:
    whole = _run(demo, 10_000_000, as_of)
    assert set(_slices_used(whole)) == set(_slices_used(whole, "groups_without_id")) == {1}
    expected = table_digests(demo)
    assert expected["reconciled_usage"][0] > 400
    assert expected["unlogged_openai_requests"][0] > 0
    methods = {
        r.match_method for r in demo.rows("SELECT DISTINCT match_method FROM {s}.reconciled_usage")
    }
    assert {s.MATCH_REQUEST_ID, s.MATCH_METADATA_TAG, s.MATCH_FINGERPRINT} <= methods

    reset(demo, [*expected, "recon_day_inputs"])
    assert table_digests(demo)["token_usage"] != expected["token_usage"]
    sliced = _run(demo, 10, as_of)
    assert min(_slices_used(sliced)) > 5
    assert min(_slices_used(sliced, "groups_without_id")) > 1
    assert table_digests(demo) == expected


def test_slice_size_is_validated() -> None:
    with pytest.raises(ValueError, match="RECON_SLICE_ROWS"):
        ReconciliationSettings(slice_rows=0).slice_size()
    assert slice_count(0, 0, 10) == 1
    assert slice_count(10, 3, 10) == 1
    assert slice_count(11, 3, 10) == 2
    assert slice_count(5, 31, 10) == 4


def test_tally_adds_up_to_the_totals_of_the_whole_frame() -> None:
    results = pd.DataFrame(
        {
            "reconciliation_status": [s.MATCHED, s.DISCREPANCY, s.DISCREPANCY, s.PENDING],
            "match_method": [s.MATCH_REQUEST_ID, s.MATCH_REQUEST_ID, None, None],
            "variance_class": ["exact", "under_estimate", "no_request_id", "awaiting_openai"],
            "openai_source": ["a", "b", None, None],
            "estimated_cost_pico": pd.array([10, 20, 30, None], dtype="Int64"),
            "actual_cost_pico": pd.array([10, 90, None, None], dtype="Int64"),
            "variance_pico": pd.array([0, 70, None, None], dtype="Int64"),
            "usage_date": date(2026, 11, 10),
        }
    )
    tally = DayTally()
    tally.add_results(results.iloc[:1])
    tally.add_results(results.iloc[1:])
    assert tally.totals() == summarise.totals(results)
    assert tally.sources == {"a", "b"}
    assert list(tally.largest_discrepancies()["variance_pico"]) == list(
        summarise.largest_discrepancies(results)["variance_pico"]
    )
