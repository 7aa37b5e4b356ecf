"""A month's statement as files finance can open: a CSV of its table and a self-contained
HTML page (inline CSS and SVG, no script, nothing fetched), rendered with Jinja2.

Each file is written to a temporary name beside its final one and then renamed over it,
so a reader sees the previous statement or the new one, never half of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import jinja2
import pandas as pd

from recon_pipeline.core.invoice_gap import RESIDUAL
from recon_pipeline.core.money import group_sums
from recon_pipeline.core.monthly_statement import BILLED, LINES, RECONCILED, Statement
from recon_pipeline.core.output_tables import MONTHLY_STATEMENT
from recon_pipeline.core.project_scope import ALL_PROJECTS
from recon_pipeline.core.summarise import pico_to_usd_text
from recon_pipeline.io.statement_chart import trend, waterfall

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("recon_pipeline.io", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class StatementFiles:
    csv: Path
    html: Path


def usd(pico: int | None) -> str:
    """Exact dollars to the micro-dollar, the sign before the currency: `-$0.000063`."""
    if pico is None or pd.isna(pico):
        return ""
    text = pico_to_usd_text(int(pico))
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def share(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2%}"


def _cents(pico: int) -> str:
    return f"{Decimal(int(pico)).scaleb(-10):.10f}"


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def statement_csv(statement: Statement) -> str:
    """The table as stored: money as exact NUMERIC cents (`<name>_cents`)."""
    table = statement.table
    shown = pd.DataFrame(
        {
            MONTHLY_STATEMENT.stored_name(c): [_cents(v) for v in table[name]]
            if c.kind == "money"
            else table[name]
            for c in MONTHLY_STATEMENT.columns
            for name in [MONTHLY_STATEMENT.frame_name(c)]
        }
    )
    return shown.to_csv(index=False, lineterminator="\n")


def _waterfall_steps(scope: pd.DataFrame) -> list[tuple[str, int]]:
    """The causes with their details added up, in the statement's order; residual last."""
    causes = scope[~scope["line"].isin([BILLED, RECONCILED])]
    summed = group_sums(causes, ["line"], ["amount_pico"], min_count=0, sort=False)["amount_pico"]
    return [(line, int(summed[line])) for line in LINES if line in summed.index]


def statement_html(
    statement: Statement, month: date, scope_text: str, generated_at: datetime
) -> str:
    table = statement.table
    scope = table[table["project_id"] == ALL_PROJECTS]
    head = scope.iloc[0]
    billed = statement.line(BILLED)
    reconciled = statement.line(RECONCILED)
    days = statement.days
    chart = waterfall(billed, reconciled, _waterfall_steps(scope))
    lines = [
        {
            "project": r.project_id,
            "line": r.line,
            "detail": r.detail,
            "amount": usd(r.amount_pico),
            "share": share(r.share_of_billed),
            "total": r.line in (BILLED, RECONCILED, RESIDUAL),
        }
        for r in table.itertuples()
    ]
    day_rows = [
        {
            "day": r.usage_date.isoformat(),
            "status": r.day_status,
            "billed": usd(r.billed_pico),
            "reconciled": usd(r.reconciled_actual_pico) if r.day_status != "not run" else "",
            "residual": usd(r.residual_pico),
            "match_rate": share(r.match_rate),
            "unattributed": share(r.unattributed_share),
            "ties": r.ties,
        }
        for r in days.itertuples()
    ]
    labels = [d.isoformat() for d in days["usage_date"]]
    daily = trend(
        labels,
        {
            "match rate": [None if pd.isna(v) else float(v) for v in days["match_rate"]],
            "unexplained share": [
                None if pd.isna(v) else float(v) for v in days["unattributed_share"]
            ],
        },
    )
    scope_billed = days["billed_scope_pico"].dropna()
    return _TEMPLATES.get_template("monthly_statement.html").render(
        month=month.strftime("%B %Y"),
        month_key=month.strftime("%Y-%m"),
        scope=scope_text,
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        billed=usd(billed),
        billed_scope=usd(sum(int(v) for v in scope_billed)),
        reconciled=usd(reconciled),
        gap=usd(billed - reconciled),
        residual=usd(statement.line(RESIDUAL)),
        match_rate=share(head["match_rate"]),
        coverage=share(head["request_id_coverage"]),
        days=int(head["days"]),
        days_reconciled=int(head["days_reconciled"]),
        days_open=int(head["days_open"]),
        days_restated=int(head["days_restated"]),
        untied=[d.isoformat() for d in statement.untied],
        chart=chart,
        daily=daily,
        lines=lines,
        day_rows=day_rows,
        usd=usd,
    )


def write_statement(
    folder: Path, month: date, statement: Statement, scope_text: str, generated_at: datetime
) -> StatementFiles:
    """`monthly_statement_<YYYY-MM>.csv` and `.html` in `folder` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"monthly_statement_{month:%Y-%m}"
    files = StatementFiles(folder / f"{stem}.csv", folder / f"{stem}.html")
    _replace(files.csv, statement_csv(statement))
    _replace(files.html, statement_html(statement, month, scope_text, generated_at))
    return files
