"""Putting outbox events on Stripe's wire, through the official SDK: one
`POST /v1/billing/meter_events` per event (v1), or up to 100 events per
`POST /v2/billing/meter_event_stream` call with a meter event session's token (v2).

Both wait out 429s and retry 5xx with backoff. What they cannot deliver raises
Undelivered, which says whether Stripe may have taken the events all the same (a timeout,
a 5xx after the SDK's own retries) or certainly did not (a 429 that did not end, a refused
key): the outbox keeps the first kind's first-attempt time, which bounds how long they may
be resent safely (docs/billing.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from .config import ExportError, StripeConfig

log = logging.getLogger("tallygate.billing")

RATE_LIMIT_RETRIES = 8
SERVER_RETRIES = 3  # after the SDK's own two
BACKOFF = 0.5  # seconds, doubled per retry, at most 30
STREAM_BATCH = 100  # Stripe: up to 100 events per meter event stream call
SESSION_MARGIN = timedelta(seconds=60)  # a session token is renewed this long before it expires
SESSION_RENEWALS = 3  # expired-token answers in a row before a call gives up


@dataclass(frozen=True)
class OutboxEvent:
    identifier: str
    event_name: str
    timestamp: int  # unix seconds
    customer_id: str
    value: int
    fresh: bool = True  # never offered to Stripe before this run


@dataclass
class Sent:
    sent: int = 0
    duplicates: int = 0  # v1: Stripe had the identifier already (delivered by an earlier attempt)
    rate_limited: int = 0  # 429 answers waited out
    server_errors: int = 0  # 5xx answers retried
    calls: int = 0  # v2: meter event stream calls that Stripe took
    sessions: int = 0  # v2: meter event sessions created
    held: dict[str, int] = field(default_factory=dict)  # tenant without a Stripe customer -> events held
    failed: list[tuple[str, str]] = field(default_factory=list)  # (identifier, Stripe's message)
    review: list[str] = field(default_factory=list)  # identifiers set aside for an operator


class Undelivered(ExportError):
    """The run stops; `not_landed` are identifiers Stripe certainly does not have."""

    def __init__(self, message: str, not_landed: list[str] | None = None) -> None:
        super().__init__(message)
        self.not_landed = not_landed or []


class _MaybeLanded(Exception):
    """Internal: a call failed in a way that does not say whether Stripe took it."""


class Marks:
    """What a sender reports back, written to the outbox as it happens."""

    def delivered(self, identifiers: list[str]) -> None:
        raise NotImplementedError

    def refused(self, identifier: str, message: str) -> None:
        raise NotImplementedError


def stripe_client(cfg: StripeConfig):
    import stripe

    # the SDK retries connection errors and 5xx itself (with an idempotency key); 429s are ours
    return stripe.StripeClient(
        cfg.api_key,
        base_addresses={"api": cfg.api_base, "meter_events": cfg.meter_events_base},
        max_network_retries=2,
    )


def _message(exc) -> str:
    return str(getattr(exc, "user_message", None) or exc or type(exc).__name__)[:500]


def retrying(call: Callable[[], object], sent: Sent, sleep: Callable[[float], None]) -> object:
    """`call()`, waiting out 429s and retrying 5xx with backoff. Raises Undelivered (nothing
    taken: 429s that did not end) or _MaybeLanded (connection errors, 5xx that did not end);
    any other Stripe error goes to the caller."""
    import stripe

    delay, limited, server = BACKOFF, 0, 0
    while True:
        try:
            return call()
        except stripe.RateLimitError:
            if limited == RATE_LIMIT_RETRIES:
                raise Undelivered(
                    f"Stripe kept answering 429 (rate limited) after {RATE_LIMIT_RETRIES} retries; "
                    "the events not sent stay in the outbox for the next run"
                ) from None
            limited += 1
            sent.rate_limited += 1
        except (
            stripe.InvalidRequestError,
            stripe.AuthenticationError,
            stripe.PermissionError,
            stripe.TemporarySessionExpiredError,
        ):
            raise  # answers about the request itself: the caller's to judge
        except stripe.APIError as exc:  # 5xx (the SDK retried twice already)
            if (exc.http_status or 500) < 500 or server == SERVER_RETRIES:
                raise _MaybeLanded(f"Stripe is not reachable ({type(exc).__name__}: {_message(exc)})") from None
            server += 1
            sent.server_errors += 1
        except stripe.StripeError as exc:  # connection errors the SDK's retries did not overcome, and the rest
            raise _MaybeLanded(f"Stripe is not reachable ({type(exc).__name__}: {_message(exc)})") from None
        sleep(delay)
        delay = min(delay * 2, 30.0)


def _key_refused(exc) -> Undelivered:
    return Undelivered(f"Stripe refused the API key (STRIPE_API_KEY): {_message(exc)}")


def _is_duplicate(exc) -> bool:
    message = _message(exc).lower()
    code = getattr(exc, "code", None)
    return code == "duplicate_meter_event" or ("already exists" in message and "identifier" in message)


class V1Sender:
    """One event per call; Stripe validates it at once (refusals and duplicates are answers)."""

    api = "v1"

    def __init__(self, client, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.sleep = client, sleep

    def send(self, chunk: list[OutboxEvent], marks: Marks, sent: Sent) -> None:
        import stripe

        for k, e in enumerate(chunk):
            params = {
                "event_name": e.event_name,
                "identifier": e.identifier,
                "timestamp": e.timestamp,
                "payload": {"stripe_customer_id": e.customer_id, "value": str(e.value)},
            }
            later = [x.identifier for x in chunk[k + 1 :]]  # not offered at all
            try:
                retrying(partial(self.client.v1.billing.meter_events.create, params=params), sent, self.sleep)
                sent.sent += 1
            except stripe.InvalidRequestError as exc:
                if not _is_duplicate(exc):
                    message = _message(exc)
                    marks.refused(e.identifier, message)
                    sent.failed.append((e.identifier, message))
                    log.error("Stripe refused meter event %s: %s", e.identifier, message)
                    continue
                sent.duplicates += 1
            except (stripe.AuthenticationError, stripe.PermissionError) as exc:
                raise Undelivered(str(_key_refused(exc)), [e.identifier, *later]) from None
            except Undelivered as exc:
                raise Undelivered(str(exc), [e.identifier, *later]) from None
            except _MaybeLanded as exc:
                raise Undelivered(f"{exc}; the events not sent stay in the outbox for the next run", later) from None
            marks.delivered([e.identifier])


def session_expiry(value) -> datetime:
    """A session's `expires_at`: RFC 3339 text (API v2), or unix seconds (earlier previews)."""
    text = str(value).strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class V2Sender:
    """Up to 100 events per meter event stream call, authenticated with a meter event
    session's short-lived token (created with the API key, renewed before it expires and
    when Stripe says it has). Stripe validates stream events after answering `{}`: a
    refused event shows in Stripe's meter error reports, not here; a repeated identifier is
    dropped by Stripe without a word."""

    api = "v2"

    def __init__(self, client, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.sleep = client, sleep
        self.token: str | None = None
        self.expires_at: datetime | None = None

    def _session_token(self, sent: Sent) -> str:
        import stripe

        now = datetime.now(UTC)
        if self.token is not None and self.expires_at is not None and now < self.expires_at - SESSION_MARGIN:
            return self.token
        try:
            session = retrying(lambda: self.client.v2.billing.meter_event_session.create(), sent, self.sleep)
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise _key_refused(exc) from None
        except _MaybeLanded as exc:  # a session holds no usage: nothing can have landed
            raise Undelivered(f"{exc}; the events not sent stay in the outbox for the next run") from None
        self.token = session["authentication_token"]  # type: ignore[index]
        self.expires_at = session_expiry(session["expires_at"])  # type: ignore[index]
        sent.sessions += 1
        return self.token

    def _stream(self, events: list[dict], token: str) -> None:
        self.client.v2.billing.meter_event_stream.create(params={"events": events}, options={"api_key": token})

    def send(self, chunk: list[OutboxEvent], marks: Marks, sent: Sent) -> None:
        import stripe

        events = [
            {
                "event_name": e.event_name,
                "identifier": e.identifier,
                "timestamp": _rfc3339(e.timestamp),
                "payload": {"stripe_customer_id": e.customer_id, "value": str(e.value)},
            }
            for e in chunk
        ]
        idents = [e.identifier for e in chunk]
        for _ in range(SESSION_RENEWALS):
            try:
                token = self._session_token(sent)
            except Undelivered as exc:
                raise Undelivered(str(exc), idents) from None
            try:
                retrying(partial(self._stream, events, token), sent, self.sleep)
            except (stripe.TemporarySessionExpiredError, stripe.AuthenticationError):
                self.token = None  # expired (or revoked) before its time: a new session, the same events
                continue
            except stripe.InvalidRequestError as exc:  # the call as a whole refused: no event taken
                message = _message(exc)
                for ident in idents:
                    marks.refused(ident, message)
                    sent.failed.append((ident, message))
                log.error("Stripe refused a meter event stream call of %d event(s): %s", len(idents), message)
                return
            except Undelivered as exc:
                raise Undelivered(str(exc), idents) from None
            except _MaybeLanded as exc:
                raise Undelivered(f"{exc}; the events not sent stay in the outbox for the next run") from None
            sent.sent += len(idents)
            sent.calls += 1
            marks.delivered(idents)
            return
        raise Undelivered(
            f"Stripe refused {SESSION_RENEWALS} meter event session tokens in a row; the events not sent stay in "
            "the outbox for the next run",
            idents,
        )


def make_sender(cfg: StripeConfig, sleep: Callable[[float], None] = time.sleep) -> V1Sender | V2Sender:
    client = stripe_client(cfg)
    return V2Sender(client, sleep) if cfg.meter_api == "v2" else V1Sender(client, sleep)
