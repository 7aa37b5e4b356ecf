"""The day's bill explained by cause, line items parsed, stale prices caught: small frames."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pandas as pd
import pytest

from recon_pipeline.core import invoice_gap as g
from recon_pipeline.core.billed_prices import override_rules, price_line_items, stale_prices
from recon_pipeline.core.line_items import parse_line_item, parse_line_items
from recon_pipeline.core.pricing import PriceCatalogue, load_overrides
from recon_pipeline.core.project_scope import (
    ALL_PROJECTS,
    day_unattributed_share,
    parse_project_ids,
    scoped_invoice_check,
)
from recon_pipeline_tests.frames import catalogue

DAY = date(2026, 11, 10)
MINI = "gpt-4o-mini-2024-07-18"
MINI_IN, MINI_CACHED, MINI_OUT = 150_000, 75_000, 600_000  # pico per token
WHISPER_MS = 100_000
APP, LABS = "proj_app", "proj_labs"


@pytest.mark.parametrize(
    ("line_item", "category", "model", "kind", "tier", "batch"),
    [
        ("gpt-4o-2024-08-06, input", "tokens", "gpt-4o-2024-08-06", "input", "default", False),
        ("gpt-4o-mini, cached input", "tokens", "gpt-4o-mini", "cached_input", "default", False),
        ("gpt-4.1-2025-04-14, output", "tokens", "gpt-4.1-2025-04-14", "output", "default", False),
        (
            "priority | gpt-5.6-sol, output, long context",
            "tokens",
            "gpt-5.6-sol",
            "output",
            "priority",
            False,
        ),
        (
            "gpt-audio-mini-2025-12-15 audio, input",
            "tokens",
            "gpt-audio-mini-2025-12-15",
            "input_audio",
            "default",
            False,
        ),
        ("gpt-4o-mini-2024-07-18, batch input", "tokens", MINI, "input", "default", True),
        ("batch | gpt-4o-mini-2024-07-18, output", "tokens", MINI, "output", "default", True),
        ("whisper-1, audio", "transcription_minutes", "whisper-1", "audio_ms", "default", False),
        ("web search tool calls", "web_search_tool_calls", None, None, "default", False),
        ("file search tool calls", "file_search_tool_calls", None, None, "default", False),
        ("Vector storage", "storage", None, None, "default", False),
        ("Code Interpreter sessions", "code_interpreter_sessions", None, None, "default", False),
        ("gpt-image-1 image, output", "images", None, None, "default", False),
        ("Image models", "images", None, None, "default", False),
        ("tts-1, characters", "tts_characters", None, None, "default", False),
        ("gpt-4o-mini-2024-07-18, training", "fine_tuning", None, None, "default", False),
    ],
)
def test_line_items_as_openai_writes_them(line_item, category, model, kind, tier, batch):
    parsed = parse_line_item(line_item)
    assert (parsed.category, parsed.model, parsed.kind) == (category, model, kind)
    assert (parsed.service_tier, parsed.batch, parsed.known) == (tier, batch, True)


def test_an_unknown_line_item_is_kept_verbatim_as_its_own_category():
    costs = pd.DataFrame({"line_item": ["Realtime sessions (beta)", None], "amount_pico": [5, 1]})
    parsed = parse_line_items(costs)
    assert parsed["category"].tolist() == ["Realtime sessions (beta)", "(no line item)"]
    assert parsed["known_line_item"].tolist() == [False, False]
    assert parsed["amount_pico"].tolist() == [5, 1]


def costs(*rows: tuple) -> pd.DataFrame:
    """(line_item, project, pico, quantity or None)."""
    return pd.DataFrame(
        {
            "usage_date": DAY,
            "line_item": [r[0] for r in rows],
            "project_id": [r[1] for r in rows],
            "amount_pico": pd.array([r[2] for r in rows], dtype="int64"),
            "quantity": pd.array([r[3] for r in rows], dtype="float64"),
        }
    )


def usage(*rows: dict) -> pd.DataFrame:
    defaults = {
        "usage_date": DAY,
        "endpoint": "completions",
        "model": MINI,
        "batch": False,
        "service_tier": "default",
        "project_id": APP,
        **dict.fromkeys(
            [
                "input_tokens",
                "input_cached_tokens",
                "output_tokens",
                "input_audio_tokens",
                "output_audio_tokens",
                "num_model_requests",
                "seconds",
            ],
            0,
        ),
    }
    return pd.DataFrame([{**defaults, **r} for r in rows], columns=list(defaults))


def results(*rows: dict) -> pd.DataFrame:
    """Rolled-up result rows: status, route, estimate and actual."""
    frame = pd.DataFrame(
        {
            "action_type": [r.get("action_type", "blueprint") for r in rows],
            "model_used": [r.get("model_used", "gpt-4o-mini") for r in rows],
            "openai_model": MINI,
            "reconciliation_status": [r.get("status", "matched") for r in rows],
            "with_request_id": [r.get("status") != "unverifiable" for r in rows],
            "requests": 1,
        }
    )
    frame["estimated_cost_pico"] = pd.array([r.get("estimate") for r in rows], "Int64")
    frame["actual_cost_pico"] = pd.array([r.get("actual") for r in rows], "Int64")
    return frame


def unlogged(*rows: tuple) -> pd.DataFrame:
    frame = pd.DataFrame({"model": [r[0] for r in rows]}, dtype=object)
    frame["actual_cost_pico"] = pd.array([r[1] for r in rows], "Int64")
    return frame


def causes(gap: pd.DataFrame, project: str = ALL_PROJECTS) -> dict[tuple[str, str], int]:
    part = gap[gap["project_id"] == project]
    return dict(
        zip(zip(part["cause"], part["detail"], strict=True), part["amount_pico"], strict=True)
    )


def test_every_cause_is_named_and_they_add_up_exactly_to_the_gap():
    tokens_in, tokens_out = 10_000, 2_000
    catalogue_cost = tokens_in * MINI_IN + tokens_out * MINI_OUT
    billed_in = tokens_in * 160_000  # billed above the catalogue's 0.15 per 1M
    day_costs = costs(
        (f"{MINI}, input", APP, billed_in, tokens_in),
        (f"{MINI}, output", APP, tokens_out * MINI_OUT, None),  # usage API stands in
        ("web search tool calls", APP, 30_000_000_000, 3),
        ("Vector storage", APP, 1_000_000_000, None),
        ("no-such-model-1, input", APP, 777, 10),
        ("gpt-4o-2024-08-06, input", LABS, 5_000_000_000, 2_000),
    )
    day_usage = usage({"output_tokens": tokens_out, "input_tokens": tokens_in})
    rows = results(
        {"actual": catalogue_cost - 7_000_000 - 11_000_000 - 13_000_000},
        {
            "status": "unverifiable",
            "estimate": 11_000_000,
            "action_type": "chat",
            "model_used": "gpt-4.1-mini",
        },
        {"status": "pending", "estimate": 13_000_000},
        {"status": "not_found", "estimate": 99},
    )
    orphans = unlogged((MINI, 7_000_000), ("no-such-model-1", None))
    gap, items = g.invoice_gap(
        DAY, day_costs, day_usage, rows, orphans, catalogue(), parse_project_ids(APP)
    )
    found = causes(gap)
    assert found == {
        ("unlogged_requests", "gpt-4o-mini"): 7_000_000,
        ("rows_without_request_id", "chat"): 11_000_000,
        ("pending_rows", "blueprint"): 13_000_000,
        ("unpriced_requests", "no-such-model-1"): 777,
        ("non_token_charges", "storage"): 1_000_000_000,
        ("non_token_charges", "web_search_tool_calls"): 30_000_000_000,
        ("price_difference", MINI): billed_in - tokens_in * MINI_IN,
        ("other_projects", LABS): 5_000_000_000,
        ("residual", ""): 0,
    }
    billed = int(day_costs["amount_pico"].sum())
    actual = int(rows["actual_cost_pico"].sum())
    assert sum(found.values()) == billed - actual
    assert items.loc[items["line_item"] == f"{MINI}, output", "quantity_source"].item() == (
        "usage_api"
    )
    # The project's own rows hold its billed-side causes and never other projects' spend.
    assert causes(gap, APP)[("non_token_charges", "storage")] == 1_000_000_000
    assert LABS not in set(gap["project_id"])


def test_unclaimed_records_first_stand_for_the_rows_without_an_id_never_counted_twice():
    # OpenAI holds the records of two id-less chat rows (nothing matched them) and of one
    # request nobody logged: the id-less rows count at their estimate, the rest as unlogged.
    day_costs = costs((f"{MINI}, input", APP, 100_000, None))
    rows = results(
        {"actual": 60_000},
        {"status": "unverifiable", "estimate": 14_000, "action_type": "chat"},
        {"status": "unverifiable", "estimate": 6_000, "action_type": "flip_frequency"},
    )
    orphans = unlogged((MINI, 10_500), (MINI, 9_500), (MINI, 15_000))
    gap, _ = g.invoice_gap(DAY, day_costs, usage(), rows, orphans, catalogue(), None)
    assert causes(gap) == {
        ("unlogged_requests", "gpt-4o-mini"): 15_000,
        ("rows_without_request_id", "chat"): 14_000,
        ("rows_without_request_id", "flip_frequency"): 6_000,
        ("residual", ""): 5_000,
    }
    # Records OpenAI never kept (store: false): nothing to net, the estimate stands alone.
    gap, _ = g.invoice_gap(DAY, day_costs, usage(), rows, unlogged(), catalogue(), None)
    assert causes(gap)[("residual", "")] == 100_000 - 60_000 - 20_000


def test_a_residual_is_what_no_cause_explains_and_is_never_hidden():
    day_costs = costs((f"{MINI}, input", APP, 1_000 * MINI_IN, 1_000))
    gap, _ = g.invoice_gap(
        DAY, day_costs, usage(), results({"actual": 400 * MINI_IN}), unlogged(), catalogue(), None
    )
    assert causes(gap) == {("price_difference", MINI): 0, ("residual", ""): 600 * MINI_IN}
    shares = g.residual_shares(gap, {DAY: 1_000 * MINI_IN})
    assert shares == {DAY: pytest.approx(0.6)}


def test_without_a_scope_other_projects_spend_is_not_a_cause_and_lands_in_the_residual():
    day_costs = costs(
        ("web search tool calls", APP, 10, None), ("web search tool calls", LABS, 5, None)
    )
    gap, _ = g.invoice_gap(DAY, day_costs, usage(), results(), unlogged(), catalogue(), None)
    assert causes(gap) == {("non_token_charges", "web_search_tool_calls"): 15, ("residual", ""): 0}
    assert causes(gap, LABS) == {("non_token_charges", "web_search_tool_calls"): 5}


def test_no_costs_means_nothing_to_explain():
    gap, _ = g.invoice_gap(
        DAY, costs(), usage(), results({"actual": 5}), unlogged(), catalogue(), None
    )
    assert gap.empty


def test_transcription_is_compared_at_the_catalogue_by_the_usage_apis_seconds():
    day_costs = costs(("whisper-1, audio", APP, 60_000 * WHISPER_MS + 5, None))
    day_usage = usage({"endpoint": "audio_transcriptions", "model": "whisper-1", "seconds": 60})
    gap, _ = g.invoice_gap(
        DAY,
        day_costs,
        day_usage,
        results({"actual": 60_000 * WHISPER_MS}),
        unlogged(),
        catalogue(),
        None,
    )
    assert causes(gap) == {("price_difference", "whisper-1"): 5, ("residual", ""): 0}


def test_a_stale_catalogue_price_is_reported_with_the_rule_that_fixes_it(tmp_path):
    day_costs = costs(
        (f"{MINI}, input", APP, 1_000_000 * 200_000, 1_000_000),
        (f"{MINI}, output", APP, 1_000_000 * MINI_OUT + 1, 1_000_000),  # 1e-6 %: not stale
    )
    priced = price_line_items(DAY, day_costs, usage(), catalogue())
    found = stale_prices(DAY, priced, usage())
    assert found[
        ["model", "kind", "billed_usd_per_unit", "catalogue_usd_per_unit"]
    ].values.tolist() == [[MINI, "input", "0.200000", "0.150000"]]
    later = stale_prices(DAY + timedelta(days=1), priced, usage())
    rules = override_rules(pd.concat([found, later]))
    assert rules == [
        {
            "model": MINI,
            "start": DAY.isoformat(),
            "prices": {"input_mtok": "0.200000"},
            "source": rules[0]["source"],
        }
    ]
    # The rule is one the catalogue accepts, and with it the bill matches the catalogue.
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"rules": rules}))
    fixed = PriceCatalogue(load_overrides(path))
    assert stale_prices(DAY, price_line_items(DAY, day_costs, usage(), fixed), usage()).empty


def test_a_new_cause_and_a_jump_are_flagged_against_the_previous_day():
    def day_gap(day, rows):
        return pd.DataFrame(
            [(day, ALL_PROJECTS, c, d, a, 0.0) for c, d, a in rows], columns=g.GAP_COLUMNS
        )

    first, second = DAY, DAY + timedelta(days=1)
    gap = pd.concat(
        [
            day_gap(
                first,
                [
                    ("pending_rows", "chat", 10**10),
                    ("rows_without_request_id", "chat", 10**10),
                    ("residual", "", 5),
                ],
            ),
            day_gap(
                second,
                [
                    ("pending_rows", "chat", 3 * 10**10),
                    ("pending_rows", "blueprint", 2 * 10**10),  # details add up: 5x
                    ("non_token_charges", "storage", 2 * 10**10),
                    ("unlogged_requests", "gpt-4o", 10**9),  # new, but under 1% of billed
                    ("rows_without_request_id", "chat", 15 * 10**9),  # moved, not doubled
                    ("residual", "", 10**11),  # the residual has a check of its own
                ],
            ),
        ]
    )
    changes = g.cause_changes(gap, {first: 10**12, second: 10**12}, min_share=0.01)
    assert changes[["cause", "previous_pico", "amount_pico", "change"]].values.tolist() == [
        ["pending_rows", 10**10, 5 * 10**10, "jump"],
        ["non_token_charges", 0, 2 * 10**10, "new"],
    ]
    assert g.cause_changes(gap[gap["usage_date"] == second], {second: 10**12}).empty
    # Under the default 5% of billed, these moves are noise.
    assert g.cause_changes(gap, {first: 10**12, second: 10**12}).empty


def test_a_scoped_invoice_check_leaves_other_projects_out_of_unattributed():
    day_costs = costs(
        (f"{MINI}, input", APP, 1_000, None),
        (f"{MINI}, input", "proj_app2", 500, None),
        (f"{MINI}, input", LABS, 90_000, None),
    )
    table = scoped_invoice_check(
        DAY,
        usage(),
        day_costs,
        results({"actual": 1_400}).assign(
            usage_id="u1", openai_request_id="x", logged_input_tokens=0, logged_output_tokens=0
        ),
        unlogged(),
        catalogue(),
        parse_project_ids(f" {APP}, proj_app2 ,{APP}"),
    )
    whole = table[(table["project_id"] == ALL_PROJECTS) & (table["model"] == "(all)")]
    assert int(whole["billed_pico"].item()) == 1_500
    assert int(whole["unattributed_pico"].item()) == 100
    assert day_unattributed_share(table) == round(100 / 1_500, 6)
    per_project = table[table["project_id"] != ALL_PROJECTS]
    assert dict(zip(per_project["project_id"], per_project["billed_pico"], strict=True)) == {
        APP: 1_000,
        "proj_app2": 500,
    }
    assert per_project["reconciled_actual_pico"].isna().all()
    assert parse_project_ids("") is None and parse_project_ids(None) is None
