"""Table definitions (SQLAlchemy Core); the alembic migrations create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone: store UTC, tag on read)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


TS = UTCDateTime()

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("organization_id", sa.String(40), sa.ForeignKey("organizations.id"), nullable=False),
    # NULL: organisation-wide; else the key only sees this inbox.
    sa.Column("inbox_id", sa.String(320), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(20), nullable=False),
    # SHA-256 of the whole key: keys are 256-bit random, so a fast hash is enough (no brute force).
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("permissions", sa.JSON, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("used_at", TS, nullable=True),
    sa.Column("expires_at", TS, nullable=True),
)

domains = sa.Table(
    "domains",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("organization_id", sa.String(40), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("domain", sa.String(255), nullable=False, unique=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("feedback_enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("inbound_enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("client_id", sa.String(200), nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    # The last DNS check (service/dnscheck.py): [{type, name, value, status, reason}] per record.
    sa.Column("dns_check", sa.JSON, nullable=True),
    sa.Column("status_reason", sa.Text, nullable=True),
    sa.Column("checked_at", TS, nullable=True),
    sa.Column("verified_at", TS, nullable=True),
    sa.UniqueConstraint("organization_id", "client_id"),
)

# DKIM signing keys per domain (RFC 6376); private keys sealed with the server's secret_key.
dkim_keys = sa.Table(
    "dkim_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("domain_id", sa.String(40), sa.ForeignKey("domains.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("selector", sa.String(63), nullable=False),
    sa.Column("algorithm", sa.String(20), nullable=False),  # rsa-sha256 | ed25519-sha256
    sa.Column("private_enc", sa.Text, nullable=False),
    sa.Column("public_txt", sa.Text, nullable=False),
    # pending (published, not signing) -> active (signing) -> retiring (published for the grace
    # period, not signing) -> retired (its record to be removed); service/domains.py moves them.
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("activated_at", TS, nullable=True),
    sa.Column("retiring_at", TS, nullable=True),
    sa.Column("retired_at", TS, nullable=True),
    sa.UniqueConstraint("domain_id", "selector"),
)

inboxes = sa.Table(
    "inboxes",
    metadata,
    # The inbox id is its lowercased address (AgentMail: inbox_id is the email address).
    sa.Column("id", sa.String(320), primary_key=True),
    sa.Column("organization_id", sa.String(40), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("domain", sa.String(255), nullable=False, index=True),
    sa.Column("display_name", sa.String(200), nullable=True),
    sa.Column("client_id", sa.String(200), nullable=True),
    sa.Column("status", sa.String(10), nullable=False, default="active"),
    sa.Column("metadata", sa.JSON, nullable=True),
    # What the MX does with mail failing authentication ({"dmarc_reject", "unauthenticated"}); NULL = default.
    sa.Column("auth_policy", sa.JSON, nullable=True),
    # Guardrails (service/guardrails.py); NULL = default. {"send", "receive"}: refuse what no list allows.
    sa.Column("default_deny", sa.JSON, nullable=True),
    # {"per_hour", "per_day"}: sent messages per rolling window; NULL or a null field = no cap.
    sa.Column("send_limits", sa.JSON, nullable=True),
    # {"per_thread_per_hour", "answer_auto_submitted"}: RFC 3834 loop protection.
    sa.Column("loop_protection", sa.JSON, nullable=True),
    # Sends by inbox-scoped keys become drafts pending an org key's approval (service/drafts.py).
    sa.Column("send_requires_approval", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("organization_id", "client_id"),
)

threads = sa.Table(
    "threads",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("inbox_id", sa.String(320), sa.ForeignKey("inboxes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("organization_id", sa.String(40), nullable=False),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("labels", sa.Text, nullable=False),  # JSON array text: see messages.labels
    sa.Column("senders", sa.JSON, nullable=False),
    sa.Column("recipients", sa.JSON, nullable=False),
    sa.Column("preview", sa.Text, nullable=True),
    sa.Column("attachments", sa.JSON, nullable=True),
    sa.Column("last_message_id", sa.String(1000), nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("received_at", TS, nullable=True),
    sa.Column("sent_at", TS, nullable=True),
    # Ordering key of listings: the id of the newest message (time-ordered ids).
    sa.Column("last_pk", sa.String(40), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_threads_inbox_last", "inbox_id", "last_pk"),
    sa.Index("ix_threads_org_last", "organization_id", "last_pk"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # time-ordered; also the blob key
    sa.Column("inbox_id", sa.String(320), sa.ForeignKey("inboxes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("organization_id", sa.String(40), nullable=False),
    sa.Column("thread_id", sa.String(40), nullable=False, index=True),
    sa.Column("message_id", sa.String(1000), nullable=False),  # RFC 5322 Message-ID with <>
    # Labels as JSON array text, e.g. '["received","unread"]': a LIKE '%"unread"%' filter then
    # behaves the same on SQLite and PostgreSQL. Label names never contain '"'.
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("direction", sa.String(10), nullable=False),  # received | sent
    sa.Column("mail_from", sa.String(1000), nullable=False),
    sa.Column("header_from", sa.Text, nullable=False),
    sa.Column("to", sa.JSON, nullable=False),
    sa.Column("cc", sa.JSON, nullable=True),
    sa.Column("bcc", sa.JSON, nullable=True),
    sa.Column("reply_to", sa.JSON, nullable=True),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("preview", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("html", sa.Text, nullable=True),
    sa.Column("extracted_text", sa.Text, nullable=True),
    sa.Column("extracted_html", sa.Text, nullable=True),
    sa.Column("in_reply_to", sa.String(1000), nullable=True),
    sa.Column("references", sa.JSON, nullable=True),
    sa.Column("headers", sa.JSON, nullable=True),
    sa.Column("attachments", sa.JSON, nullable=True),
    sa.Column("defects", sa.JSON, nullable=True),
    sa.Column("auth", sa.JSON, nullable=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("blob_id", sa.String(40), nullable=False, index=True),  # raw bytes; shared by copies
    sa.Column("timestamp", TS, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_messages_inbox_msgid", "inbox_id", "message_id"),
    sa.Index("ix_messages_inbox_id", "inbox_id", "id"),
)

attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("message_pk", sa.String(40), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("attachment_id", sa.String(100), primary_key=True),
    sa.Column("filename", sa.Text, nullable=True),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("content_id", sa.String(1000), nullable=True),
    sa.Column("disposition", sa.String(20), nullable=False),
)

# Raw messages, byte-exact. Kept in the database so every node sharing PostgreSQL reads them.
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

# Append-only event log; the integer id orders the feed.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(40), nullable=False, unique=True),
    sa.Column("organization_id", sa.String(40), nullable=False),
    sa.Column("inbox_id", sa.String(320), nullable=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("organization_id", sa.String(40), nullable=False, index=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("inbox_ids", sa.JSON, nullable=True),
    sa.Column("secret_enc", sa.Text, nullable=False),  # encrypted at rest (Fernet)
    sa.Column("headers_enc", sa.Text, nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("client_id", sa.String(200), nullable=True),
    # The inbox a webhook was created through (an inbox route or an inbox-scoped key): it stays
    # limited to that inbox. None for an organisation webhook.
    sa.Column("inbox_id", sa.String(320), nullable=True),
    # Failed attempts since the last success; at [webhooks] disable_after_failures it is disabled.
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("disabled_reason", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("organization_id", "client_id"),
)

# One row per (webhook, event) to deliver; survives restarts.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("webhook_id", sa.String(40), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event_pk", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(10), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", TS, nullable=False),
    sa.Column("lease_until", TS, nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
)

# Named cursors into the event log (e.g. the webhook fan-out's position).
cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
)

# Results of send-like calls by Idempotency-Key, kept 24 h: a repeat returns the original result.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("organization_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

# Outbound queue: one item per (message, recipient domain); several recipients of one domain
# share one SMTP transaction. Claimed with a lease so a crashed worker's items are retried.
outbound_queue = sa.Table(
    "outbound_queue",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("organization_id", sa.String(40), nullable=False),
    sa.Column("inbox_id", sa.String(320), nullable=False),
    sa.Column("message_pk", sa.String(40), nullable=False, index=True),
    sa.Column("message_id", sa.String(1000), nullable=False),
    sa.Column("thread_id", sa.String(40), nullable=False),
    sa.Column("blob_id", sa.String(40), nullable=False),
    sa.Column("mail_from", sa.String(1000), nullable=False),
    sa.Column("rcpt_domain", sa.String(255), nullable=False),
    sa.Column("rcpt_to", sa.JSON, nullable=False),
    sa.Column("smtputf8", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),  # queued | delivered | bounced
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", TS, nullable=False),
    sa.Column("lease_until", TS, nullable=True),
    sa.Column("delay_notices", sa.Integer, nullable=False, server_default="0"),  # message.delayed events sent
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_outbound_queue_due", "status", "next_attempt_at"),
)

# Every delivery attempt per recipient, with the remote host and the full SMTP reply.
delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("queue_id", sa.String(40), nullable=False, index=True),
    sa.Column("message_pk", sa.String(40), nullable=False, index=True),
    sa.Column("rcpt", sa.String(1000), nullable=False),
    sa.Column("outcome", sa.String(12), nullable=False),  # delivered | deferred | bounced
    sa.Column("remote_host", sa.String(255), nullable=True),
    sa.Column("remote_ip", sa.String(64), nullable=True),
    sa.Column("code", sa.Integer, nullable=True),
    sa.Column("enhanced", sa.String(16), nullable=True),
    sa.Column("reply", sa.Text, nullable=True),
    sa.Column("tls_version", sa.String(16), nullable=True),
    sa.Column("tls_verified", sa.Boolean, nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    # What else the attempt learnt: {"mta_sts": {...}} (RFC 8461 policy applied and its result),
    # {"tls_failure": "..."} (why TLS was not used or not verified).
    sa.Column("details", sa.JSON, nullable=True),
)

# The last MTA-STS policy (RFC 8461 §5.1) fetched per recipient domain: enforced until expires_at,
# across restarts, even when the policy host cannot be reached.
mta_sts_policies = sa.Table(
    "mta_sts_policies",
    metadata,
    sa.Column("domain", sa.String(255), primary_key=True),  # A-label form, lower case
    sa.Column("policy_id", sa.String(32), nullable=False),  # the TXT record's id when fetched
    sa.Column("mode", sa.String(10), nullable=False),  # enforce | testing | none
    sa.Column("mx", sa.JSON, nullable=False),  # list of patterns
    sa.Column("max_age", sa.Integer, nullable=False),
    sa.Column("fetched_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
)

# Addresses not to send to, per organisation (inbox_id empty) or per inbox.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("organization_id", sa.String(40), primary_key=True),
    sa.Column("scope", sa.String(320), primary_key=True),  # "" = organisation, else an inbox id
    sa.Column("address", sa.String(320), primary_key=True),  # lowercased addr-spec
    sa.Column("reason", sa.String(20), nullable=False),  # bounced | complained | unsubscribed | manual
    sa.Column("reply", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
)

# Allow/block lists per organisation (scope empty) or inbox, per direction (send, receive, reply).
list_entries = sa.Table(
    "list_entries",
    metadata,
    sa.Column("organization_id", sa.String(40), primary_key=True),
    sa.Column("scope", sa.String(320), primary_key=True),  # "" = organisation, else an inbox id
    sa.Column("direction", sa.String(10), primary_key=True),  # send | receive | reply
    sa.Column("list_type", sa.String(10), primary_key=True),  # allow | block
    sa.Column("entry", sa.String(320), primary_key=True),  # lowercased addr-spec or domain
    sa.Column("entry_type", sa.String(10), nullable=False),  # email | domain
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
)

# Unsent messages: drafts an agent edits, scheduled sends (send_at) and sends held for approval.
# A reply draft keeps its derived recipients, subject and threading; a forward draft names its
# source (forward_of), merged in when it is sent. Attachments are kept inline (base64 in JSON).
drafts = sa.Table(
    "drafts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("organization_id", sa.String(40), nullable=False),
    sa.Column("inbox_id", sa.String(320), nullable=False),
    sa.Column("client_id", sa.String(200), nullable=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("to", sa.JSON, nullable=True),
    sa.Column("cc", sa.JSON, nullable=True),
    sa.Column("bcc", sa.JSON, nullable=True),
    sa.Column("reply_to", sa.JSON, nullable=True),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("html", sa.Text, nullable=True),
    sa.Column("attachments", sa.JSON, nullable=True),
    sa.Column("headers", sa.JSON, nullable=True),
    sa.Column("in_reply_to", sa.String(998), nullable=True),
    sa.Column("references", sa.JSON, nullable=True),
    sa.Column("forward_of", sa.String(998), nullable=True),
    sa.Column("send_at", TS, nullable=True),
    # NULL (a plain draft) | scheduled | sending | failed | pending_approval
    sa.Column("send_status", sa.String(20), nullable=True),
    sa.Column("send_error", sa.Text, nullable=True),
    # store/leases.py: the scheduler claims due rows (send_at copied here) with a lease.
    sa.Column("next_attempt_at", TS, nullable=True),
    sa.Column("lease_until", TS, nullable=True),
    sa.Column("requested_by", sa.String(40), nullable=True),  # the API key whose send was held
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("inbox_id", "client_id"),
    sa.Index("ix_drafts_org_updated", "organization_id", "updated_at"),
    sa.Index("ix_drafts_due", "send_status", "next_attempt_at"),
)
