"""The summary and the invoice check read results added up by the database: the same
figures, exactly, as from every stored row."""

from __future__ import annotations

import pandas.testing as pdt

from recon_pipeline.core import summarise
from recon_pipeline.core.invoice import invoice_check, request_id_coverage
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.io.database import (
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
)
from recon_pipeline_tests.runs import SmallDemo


def test_summary_and_invoice_inputs_added_up_in_the_database_equal_the_rows(
    demo: SmallDemo, sqlite_engine
) -> None:
    day = demo.days[1]
    assert demo.run(day).success
    pg = demo.db()
    rows = pg.read_results(day)
    lite = Database(sqlite_engine)
    lite.replace_days(RECONCILED_USAGE, pg.read_day(RECONCILED_USAGE, day), [day])
    usage, costs = pg.read_day(OPENAI_DAILY_USAGE, day), pg.read_day(OPENAI_DAILY_COSTS, day)
    unlogged = pg.read_day(UNLOGGED_OPENAI_REQUESTS, day, ["model", "actual_cost_pico"])
    catalogue = PriceCatalogue()
    assert rows["reconciliation_status"].nunique() >= 3 and len(rows) > 100
    for db in (pg, lite):
        rollup = db.read_results_rollup(day)
        assert rollup["requests"].sum() == len(rows) > len(rollup)
        pdt.assert_frame_equal(
            summarise.daily_variance_summary(rollup), summarise.daily_variance_summary(rows)
        )
        pdt.assert_frame_equal(
            invoice_check(day, usage, costs, rollup, unlogged, catalogue),
            invoice_check(day, usage, costs, rows, unlogged, catalogue),
        )
        pdt.assert_frame_equal(
            request_id_coverage(rollup).reset_index(drop=True),
            request_id_coverage(rows).reset_index(drop=True),
        )
