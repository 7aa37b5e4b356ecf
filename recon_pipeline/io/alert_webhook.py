"""Posting alert messages to a Slack-compatible incoming webhook.

slack_sdk's `WebhookClient` does the HTTP (JSON body, timeout, proxy from the environment)
and its retry handlers retry once on a refused or reset connection and on HTTP 500/503
within the same attempt; anything else is left to the alert sensor's next tick. The
webhook's URL is a secret (it is the credential): the client's own logger, which writes the
URL when it retries, is silenced, and what `post` reports never contains the URL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

WEBHOOK_SHOWN = "<RECON_ALERT_WEBHOOK_URL>"


def _silent_logger() -> logging.Logger:
    """A logger outside the logging tree that writes nothing: slack_sdk logs the URL."""
    logger = logging.Logger("recon_pipeline.alert_webhook", level=logging.CRITICAL + 1)
    logger.disabled = True
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


def check_webhook_url(url: str, variable: str = "RECON_ALERT_WEBHOOK_URL") -> None:
    """Refuse a URL that is not http(s)://host/…, without ever showing it."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"{variable} must be an http:// or https:// URL with a host")


@dataclass(frozen=True)
class Delivery:
    """Whether the webhook took the message; `reason` says why not (never the URL)."""

    ok: bool
    reason: str = ""


class AlertWebhook:
    """One webhook; `post` sends one message and never raises for a webhook that is down."""

    def __init__(self, url: str, timeout_seconds: float = 10.0) -> None:
        check_webhook_url(url)
        self._url = url.strip()
        self._client = WebhookClient(
            self._url,
            timeout=max(1, round(timeout_seconds)),
            logger=_silent_logger(),
            retry_handlers=[
                ConnectionErrorRetryHandler(max_retry_count=1),
                ServerErrorRetryHandler(max_retry_count=1),
            ],
        )

    def __repr__(self) -> str:
        return f"AlertWebhook({WEBHOOK_SHOWN})"

    def _scrubbed(self, text: str) -> str:
        parts = urlsplit(self._url)
        for secret in sorted(
            {self._url, parts.path, parts.query, parts.netloc} - {"", "/"}, key=len, reverse=True
        ):
            text = text.replace(secret, WEBHOOK_SHOWN)
        return text

    def post(self, body: dict[str, object]) -> Delivery:
        try:
            response = self._client.send_dict(body)
        except Exception as error:  # a webhook that is down must never fail the caller
            return Delivery(
                False, self._scrubbed(f"webhook unreachable: {type(error).__name__}: {error}")
            )
        if 200 <= response.status_code < 300:
            return Delivery(True)
        answer = " ".join(str(response.body or "").split())[:200]
        return Delivery(
            False, self._scrubbed(f"webhook answered HTTP {response.status_code} {answer}".strip())
        )
