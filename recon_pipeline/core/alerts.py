"""Alerts on failed checks, as rules: what a problem is, its message, and what was sent.

A failing check names each problem it found by day and project (`Finding`); the alert
sensor turns every finding of a failed check evaluation into a `Problem` and sends one
message per problem, once: `AlertLedger` remembers which problems were delivered (by `key`)
and which still wait for a webhook that was down. Nothing here does I/O; the ledger travels
as the sensor's cursor (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from urllib.parse import quote, urlencode

from recon_pipeline.core.project_scope import ALL_PROJECTS, Scope

# The check-metadata convention shared by every check of the project: a failing check
# carries its worst finding under these keys, and every finding under FINDINGS.
DAY, PROJECT_ID, FIGURE, BOUND = "day", "project_id", "figure", "bound"
FINDINGS = "problems"

# A delivered problem is remembered this long after its day, so that a re-run of the day
# does not alert again; a re-run of a day older than this alerts once more.
REMEMBER_DAYS = 400
# Longest text taken from a check's description into a message.
DESCRIPTION_CHARS = 400


@dataclass(frozen=True)
class Finding:
    """One problem a check found: the day (YYYY-MM-DD), the project (`(all)`: the projects in
    scope together), the measured figure and the bound it broke, as the reader sees them;
    `subject` tells two problems of one check, day and project apart (a model, a cause)."""

    day: str
    project_id: str
    figure: str
    bound: str
    subject: str = ""


def scope_project(scope: Scope) -> str:
    """The `project_id` of a finding about the projects in scope taken together: their ids,
    or `(all)` for the whole organisation."""
    return ",".join(scope) if scope else ALL_PROJECTS


def finding_metadata(findings: Sequence[Finding]) -> dict[str, object]:
    """A failing check's metadata by the convention: the first (worst) finding's day,
    project, figure and bound, and all findings as a list (plain values; the Dagster layer
    wraps the list as JSON)."""
    if not findings:
        return {}
    worst = findings[0]
    return {
        DAY: worst.day,
        PROJECT_ID: worst.project_id,
        FIGURE: worst.figure,
        BOUND: worst.bound,
        FINDINGS: [asdict(f) for f in findings],
    }


def findings_from_metadata(metadata: Mapping[str, object]) -> list[Finding]:
    """The findings a failed check's metadata names: its list if it has one, else the one
    finding of its four keys; none when it follows neither form."""
    listed = metadata.get(FINDINGS)
    if isinstance(listed, list) and listed:
        return [
            Finding(**{k: str(item.get(k, "")) for k in Finding.__dataclass_fields__})
            for item in listed
            if isinstance(item, Mapping)
        ]
    if metadata.get(DAY) is None:
        return []
    return [
        Finding(
            day=str(metadata[DAY]),
            project_id=str(metadata.get(PROJECT_ID, "")),
            figure=str(metadata.get(FIGURE, "")),
            bound=str(metadata.get(BOUND, "")),
        )
    ]


@dataclass(frozen=True)
class Problem:
    """A finding of a failed check of an asset: what one alert message is about."""

    check: str
    asset: str
    severity: str
    finding: Finding
    description: str = ""

    @property
    def key(self) -> str:
        """Check, asset, day, project and subject: the same problem found again (a re-run of
        the day) has the same key, so it is not sent twice."""
        f = self.finding
        return "|".join((self.check, self.asset, f.day, f.project_id, f.subject))

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "finding": asdict(self.finding)}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Problem:
        finding = Finding(**dict(data["finding"]))  # type: ignore[arg-type]
        return cls(**{**data, "finding": finding})  # type: ignore[arg-type]


def asset_link(base_url: str, asset: str, day: str) -> str:
    """The asset's page in the Dagster UI, on the day's partition."""
    path = "/".join(quote(part, safe="") for part in asset.split("/"))
    query = urlencode({"view": "partitions", "partition": day}) if day else ""
    return f"{base_url.rstrip('/')}/assets/{path}" + (f"?{query}" if query else "")


def check_link(base_url: str, asset: str, check: str) -> str:
    """The check's own tab on the asset's page in the Dagster UI."""
    path = "/".join(quote(part, safe="") for part in asset.split("/"))
    return f"{base_url.rstrip('/')}/assets/{path}?" + urlencode(
        {"view": "checks", "checkDetail": check}
    )


def _escaped(text: str) -> str:
    """Text as Slack's mrkdwn shows it literally (its three control characters escaped)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def alert_message(problem: Problem, ui_base_url: str | None = None) -> dict[str, object]:
    """The Slack-compatible JSON of one problem's message: the check and asset, the day,
    project, figure and bound, the check's own words (shortened), and links to the asset's
    partition and to the check in the UI when its address is known. Only `text` is used, so
    any Slack-compatible webhook (Slack, Mattermost, Rocket.Chat) shows all of it."""
    f = problem.finding
    subject = f" ({_escaped(f.subject)})" if f.subject else ""
    lines = [
        f"*recon_pipeline: {_escaped(problem.check)} failed*{subject}"
        f" [{problem.severity.lower()}] on `{_escaped(problem.asset)}`",
        f"day: {_escaped(f.day or 'unknown')}    project: {_escaped(f.project_id or 'unknown')}",
        f"figure: {_escaped(f.figure or 'n/a')}    bound: {_escaped(f.bound or 'n/a')}",
    ]
    if problem.description:
        lines.append(f"> {_escaped(_shortened(problem.description))}")
    if ui_base_url:
        lines.append(
            f"<{asset_link(ui_base_url, problem.asset, f.day)}|{_escaped(problem.asset)}"
            f"{' on ' + _escaped(f.day) if f.day else ''}>"
            f"  ·  <{check_link(ui_base_url, problem.asset, problem.check)}|the check>"
        )
    return {"text": "\n".join(lines), "unfurl_links": False, "unfurl_media": False}


@dataclass
class AlertLedger:
    """What the alert sensor knows between ticks (its cursor):

    - `after`: per check (`asset:check`), the id of the last check execution read, so each
      evaluation is read once;
    - `sent`: per day, the keys of the problems delivered, kept REMEMBER_DAYS;
    - `pending`: problems found but not delivered yet (the webhook was down), oldest first.
    """

    after: dict[str, int] = field(default_factory=dict)
    sent: dict[str, list[str]] = field(default_factory=dict)
    pending: list[Problem] = field(default_factory=list)
    started: bool = False

    @classmethod
    def from_cursor(cls, cursor: str | None) -> AlertLedger:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(
            after={k: int(v) for k, v in data.get("after", {}).items()},
            sent={k: list(v) for k, v in data.get("sent", {}).items()},
            pending=[Problem.from_json(p) for p in data.get("pending", [])],
            started=True,
        )

    def to_cursor(self) -> str:
        return json.dumps(
            {
                "after": self.after,
                "sent": self.sent,
                "pending": [p.to_json() for p in self.pending],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    def was_sent(self, problem: Problem) -> bool:
        return problem.key in self.sent.get(problem.finding.day, ())

    def add(self, problems: Iterable[Problem]) -> int:
        """Queue the problems neither delivered nor already waiting; returns how many."""
        waiting = {p.key for p in self.pending}
        added = 0
        for problem in problems:
            if problem.key in waiting or self.was_sent(problem):
                continue
            waiting.add(problem.key)
            self.pending.append(problem)
            added += 1
        return added

    def delivered(self, problem: Problem) -> None:
        self.pending = [p for p in self.pending if p.key != problem.key]
        keys = self.sent.setdefault(problem.finding.day, [])
        if problem.key not in keys:
            keys.append(problem.key)

    def forget_before(self, today: date) -> None:
        """Drop what was sent about days older than REMEMBER_DAYS (a day that is not a date
        is kept)."""
        oldest = (today - timedelta(days=REMEMBER_DAYS)).isoformat()
        self.sent = {
            day: keys for day, keys in self.sent.items() if not _is_day(day) or day >= oldest
        }


def _is_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def problems_of(
    check: str,
    asset: str,
    severity: str,
    metadata: Mapping[str, object],
    description: str | None,
    fallback_day: str = "",
) -> list[Problem]:
    """The problems of one failed check evaluation. A check that names no finding is one
    problem on `fallback_day` (the run's partition), its description as the figure."""
    findings = findings_from_metadata(metadata) or [
        Finding(
            day=fallback_day, project_id="", figure=_shortened(description or "failed"), bound=""
        )
    ]
    text = _shortened(description or "")
    return [Problem(check, asset, severity, finding, text) for finding in findings]


def _shortened(text: str) -> str:
    """Text on one line, at most DESCRIPTION_CHARS long (the message and the cursor keep
    no more)."""
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 1] + "…"
