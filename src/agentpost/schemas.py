"""Wire models of the HTTP API (AgentMail v0 shapes plus agentpost extensions), shared by adapters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Metadata = dict[str, str | float | bool]


class Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---- inboxes -------------------------------------------------------------------------------


class AuthPolicy(Wire):
    """An inbox's handling of mail that fails sender authentication (agentpost extension).

    ``dmarc_reject``: a DMARC failure whose domain publishes p=reject is refused at DATA with
    ``550 5.7.1`` (``refuse``) or stored with labels ``spam`` and ``unauthenticated`` (``quarantine``).
    ``unauthenticated``: other mail without an aligned pass is stored with label ``unauthenticated``
    (``label``), with ``spam`` and ``unauthenticated`` (``spam``), or without a label (``accept``).
    """

    dmarc_reject: Literal["refuse", "quarantine"] = "refuse"
    unauthenticated: Literal["label", "spam", "accept"] = "label"


class AuthPolicyUpdate(Request):
    """The fields of ``AuthPolicy`` to change; the others keep their value."""

    dmarc_reject: Literal["refuse", "quarantine"] | None = None
    unauthenticated: Literal["label", "spam", "accept"] | None = None


class DefaultDeny(Wire):
    """Refuse what no allow list admits (agentpost extension): recipients of sends (``send``),
    senders of received mail and replies (``receive``)."""

    send: bool = False
    receive: bool = False


class DefaultDenyUpdate(Request):
    send: bool | None = None
    receive: bool | None = None


class SendLimits(Wire):
    """Sent messages per rolling hour and day (agentpost extension); null = no cap. Over a cap a
    send is refused with 429 and ``Retry-After``."""

    per_hour: int | None = Field(default=None, ge=1)
    per_day: int | None = Field(default=None, ge=1)


class SendLimitsUpdate(Request):
    """The given fields replace (null removes that cap), the others stay."""

    per_hour: int | None = Field(default=None, ge=1)
    per_day: int | None = Field(default=None, ge=1)


class LoopProtection(Wire):
    """Mail loop protection (agentpost extension). ``per_thread_per_hour``: messages this inbox may
    send into one thread per rolling hour (null: no cap). ``answer_auto_submitted``: allow replies to
    automatic mail (RFC 3834 Auto-Submitted, Precedence bulk/junk/list, a null sender)."""

    per_thread_per_hour: int | None = Field(default=20, ge=1)
    answer_auto_submitted: bool = False


class LoopProtectionUpdate(Request):
    per_thread_per_hour: int | None = Field(default=None, ge=1)
    answer_auto_submitted: bool | None = None


class Inbox(Wire):
    pod_id: str
    inbox_id: str
    email: str
    display_name: str | None = None
    client_id: str | None = None
    status: Literal["active", "paused"] | None = None
    metadata: Metadata | None = None
    auth_policy: AuthPolicy = Field(default_factory=AuthPolicy)
    # agentpost extension: sends by inbox-scoped keys wait as drafts for an org key's approval.
    send_requires_approval: bool = False
    # agentpost extension: guardrails (service/guardrails.py).
    default_deny: DefaultDeny = Field(default_factory=DefaultDeny)
    send_limits: SendLimits = Field(default_factory=SendLimits)
    loop_protection: LoopProtection = Field(default_factory=LoopProtection)
    updated_at: datetime
    created_at: datetime


class ListInboxes(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    inboxes: list[Inbox]


class CreateInbox(Request):
    username: str | None = None
    domain: str | None = None
    display_name: str | None = None
    client_id: str | None = None
    status: Literal["active", "paused"] | None = None
    metadata: Metadata | None = None
    auth_policy: AuthPolicyUpdate | None = None
    default_deny: DefaultDenyUpdate | None = None
    send_limits: SendLimitsUpdate | None = None
    loop_protection: LoopProtectionUpdate | None = None
    send_requires_approval: bool | None = None


class UpdateInbox(Request):
    display_name: str | None = None
    status: Literal["active", "paused"] | None = None
    metadata: dict[str, str | float | bool | None] | None = None
    auth_policy: AuthPolicyUpdate | None = None
    default_deny: DefaultDenyUpdate | None = None
    send_limits: SendLimitsUpdate | None = None
    loop_protection: LoopProtectionUpdate | None = None
    send_requires_approval: bool | None = None


# ---- messages and threads -------------------------------------------------------------------


class Attachment(Wire):
    attachment_id: str
    filename: str | None = None
    size: int
    content_type: str | None = None
    content_disposition: Literal["inline", "attachment"] | None = None
    content_id: str | None = None


class AttachmentResponse(Attachment):
    download_url: str
    expires_at: datetime


class MessageItem(Wire):
    inbox_id: str
    thread_id: str
    message_id: str
    labels: list[str]
    timestamp: datetime
    from_: str = Field(alias="from")
    to: list[str]
    cc: list[str] | None = None
    bcc: list[str] | None = None
    subject: str | None = None
    preview: str | None = None
    attachments: list[Attachment] | None = None
    in_reply_to: str | None = None
    references: list[str] | None = None
    headers: dict[str, str] | None = None
    size: int
    updated_at: datetime
    created_at: datetime


class Message(MessageItem):
    reply_to: list[str] | None = None
    text: str | None = None
    html: str | None = None
    extracted_text: str | None = None
    extracted_html: str | None = None
    # agentpost extensions
    defects: list[str] | None = None
    auth: dict[str, Any] | None = None


class SendAttachment(Request):
    filename: str | None = None
    content_type: str | None = None
    content_disposition: Literal["inline", "attachment"] | None = None
    content_id: str | None = None
    content: str | None = None  # base64
    url: str | None = None


class SendMessage(Request):
    labels: list[str] | None = None
    reply_to: str | list[str] | None = None
    to: str | list[str] | None = None
    cc: str | list[str] | None = None
    bcc: str | list[str] | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[SendAttachment] | None = None
    headers: dict[str, str] | None = None
    track_opens: bool | None = None


class ReplyMessage(SendMessage):
    reply_all: bool | None = None


class SendMessageResponse(Wire):
    message_id: str
    thread_id: str


class PendingApproval(Wire):
    """A send held for approval (agentpost extension, HTTP 202): the draft an org key approves or rejects."""

    draft_id: str
    status: Literal["pending_approval"] = "pending_approval"


class ListMessages(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    messages: list[MessageItem]


class RawMessage(Wire):
    message_id: str
    size: int
    download_url: str
    expires_at: datetime


class UpdateLabels(Request):
    add_labels: str | list[str] | None = None
    remove_labels: str | list[str] | None = None


class UpdateMessageResponse(Wire):
    message_id: str
    labels: list[str]


class BatchGetMessages(Request):
    message_ids: list[str]


class BatchGetMessagesResponse(Wire):
    limit: int
    count: int
    messages: list[Message]


class BatchUpdateMessages(Request):
    message_ids: list[str]
    add_labels: str | list[str] | None = None
    remove_labels: str | list[str] | None = None


class BatchUpdateMessagesResponse(Wire):
    limit: int
    count: int
    updates: list[UpdateMessageResponse]  # in request order; ids not found are left out


class SearchHighlights(Wire):
    """Matched fragments per field, matched words wrapped in `**`; a key only for a field that matched."""

    from_: list[str] | None = Field(default=None, alias="from")
    recipients: list[str] | None = None
    subject: list[str] | None = None
    text: list[str] | None = None


class SearchMessageItem(MessageItem):
    highlights: SearchHighlights | None = None


class SearchMessagesResponse(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    messages: list[SearchMessageItem]  # best match first


class ThreadItem(Wire):
    inbox_id: str
    thread_id: str
    labels: list[str]
    timestamp: datetime
    received_timestamp: datetime | None = None
    sent_timestamp: datetime | None = None
    senders: list[str]
    recipients: list[str]
    subject: str | None = None
    preview: str | None = None
    attachments: list[Attachment] | None = None
    last_message_id: str
    message_count: int
    size: int
    updated_at: datetime
    created_at: datetime


class Thread(ThreadItem):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    messages: list[Message]


class ListThreads(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    threads: list[ThreadItem]


class SearchThreadItem(ThreadItem):
    highlights: SearchHighlights | None = None


class SearchThreadsResponse(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    threads: list[SearchThreadItem]  # best match first


class UpdateThreadResponse(Wire):
    thread_id: str
    labels: list[str]


# ---- domains ---------------------------------------------------------------------------------


class VerificationRecord(Wire):
    type: str
    name: str
    value: str
    # UNKNOWN (beyond AgentMail's three): the last lookup failed, so nothing is known yet;
    # REMOVE: the record of a retired DKIM key, to delete.
    status: Literal["MISSING", "INVALID", "VALID", "UNKNOWN", "REMOVE"]
    priority: int | None = None
    reason: str | None = None


class DomainItem(Wire):
    pod_id: str | None = None
    domain_id: str
    domain: str
    feedback_enabled: bool
    inbound_enabled: bool | None = None
    subdomains_enabled: bool
    tracking_enabled: bool
    client_id: str | None = None
    updated_at: datetime
    created_at: datetime


class Domain(DomainItem):
    status: str
    reason: str | None = None
    records: list[VerificationRecord]


class ListDomains(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    domains: list[DomainItem]


class CreateDomain(Request):
    domain: str
    feedback_enabled: bool | None = None
    inbound_enabled: bool | None = None
    subdomains_enabled: bool | None = None
    tracking_enabled: bool | None = None
    allow_conflicting_provider: bool | None = None
    client_id: str | None = None


class UpdateDomain(Request):
    feedback_enabled: bool | None = None
    inbound_enabled: bool | None = None
    subdomains_enabled: bool | None = None
    tracking_enabled: bool | None = None


# ---- webhooks --------------------------------------------------------------------------------


class Webhook(Wire):
    webhook_id: str
    url: str
    event_types: list[str] | None = None
    pod_ids: list[str] | None = None
    inbox_ids: list[str] | None = None
    inbox_id: str | None = None
    secret: str
    enabled: bool
    client_id: str | None = None
    updated_at: datetime
    created_at: datetime


class ListWebhooks(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    webhooks: list[Webhook]


class CreateWebhook(Request):
    url: str
    event_types: list[str]
    inbox_ids: list[str] | None = None
    pod_ids: list[str] | None = None
    client_id: str | None = None
    headers: dict[str, str] | None = None


class UpdateWebhook(Request):
    event_types: list[str] | None = None
    enabled: bool | None = None
    url: str | None = None
    add_inbox_ids: list[str] | None = None
    remove_inbox_ids: list[str] | None = None
    add_pod_ids: list[str] | None = None
    remove_pod_ids: list[str] | None = None


class ReplayWebhook(Request):
    after: datetime
    before: datetime


class WebhookReplay(Wire):
    webhook_id: str
    count: int


# ---- API keys and identity -------------------------------------------------------------------


class ApiKeyPermissions(Wire):
    model_config = ConfigDict(extra="allow")


class ApiKey(Wire):
    type: Literal["bearer"] = "bearer"
    api_key_id: str
    prefix: str
    name: str
    pod_id: str | None = None
    inbox_id: str | None = None
    used_at: datetime | None = None
    permissions: dict[str, bool] | None = None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None


class CreateApiKey(Request):
    name: str | None = None
    inbox_id: str | None = None
    permissions: dict[str, bool] | None = None
    expires_at: datetime | None = None


class CreateApiKeyResponse(Wire):
    api_key_id: str
    api_key: str
    prefix: str
    name: str
    pod_id: str | None = None
    inbox_id: str | None = None
    permissions: dict[str, bool] | None = None
    created_at: datetime
    expires_at: datetime | None = None


class ListApiKeys(Wire):
    count: int
    next_page_token: str | None = None
    api_keys: list[ApiKey]


class Identity(Wire):
    scope_type: Literal["organization", "pod", "inbox"]
    scope_id: str
    organization_id: str
    pod_id: str | None = None
    inbox_id: str | None = None
    api_key_id: str | None = None


class ErrorBody(Wire):
    name: str
    code: str | None = None
    message: str
    fix: str | None = None
    docs: str | None = None
    errors: list[dict[str, str]] | None = None


# ---- drafts ---------------------------------------------------------------------------------

# AgentMail's send_status, plus agentpost's "pending_approval" (held for an org key's approval).
DraftStatus = Literal["scheduled", "sending", "failed", "pending_approval"]


class DraftItem(Wire):
    inbox_id: str
    draft_id: str
    labels: list[str]
    to: list[str] | None = None
    cc: list[str] | None = None
    bcc: list[str] | None = None
    subject: str | None = None
    preview: str | None = None
    attachments: list[Attachment] | None = None
    in_reply_to: str | None = None
    forward_of: str | None = None
    send_status: DraftStatus | None = None
    send_at: datetime | None = None
    updated_at: datetime


class Draft(DraftItem):
    client_id: str | None = None
    reply_to: list[str] | None = None
    text: str | None = None
    html: str | None = None
    references: list[str] | None = None
    created_at: datetime
    # agentpost extension: why the last scheduled send failed.
    send_error: str | None = None


class ListDrafts(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    drafts: list[DraftItem]


class CreateDraft(Request):
    labels: list[str] | None = None
    reply_to: str | list[str] | None = None
    to: str | list[str] | None = None
    cc: str | list[str] | None = None
    bcc: str | list[str] | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[SendAttachment] | None = None
    in_reply_to: str | None = None
    forward_of: str | None = None
    reply_all: bool | None = None
    send_at: datetime | None = None
    client_id: str | None = None


class UpdateDraft(Request):
    """Omitted fields stay; ``null`` (or ``[]``) clears; ``send_at: null`` unschedules."""

    reply_to: str | list[str] | None = None
    to: str | list[str] | None = None
    cc: str | list[str] | None = None
    bcc: str | list[str] | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    add_attachments: list[SendAttachment] | None = None
    remove_attachments: list[str] | None = None
    add_labels: list[str] | None = None
    remove_labels: list[str] | None = None
    send_at: datetime | None = None


class SendDraft(Request):
    add_labels: str | list[str] | None = None
    remove_labels: str | list[str] | None = None


class RejectDraft(Request):
    reason: str | None = None


# ---- allow/block lists ---------------------------------------------------------------------


class ListEntry(Wire):
    entry: str
    organization_id: str
    reason: str | None = None
    direction: Literal["send", "receive", "reply"]
    list_type: Literal["allow", "block"]
    entry_type: Literal["email", "domain"]
    created_at: datetime
    read_only: bool | None = None
    inbox_id: str | None = None  # set on inbox-scoped entries


class ListListEntries(Wire):
    count: int
    limit: int | None = None
    next_page_token: str | None = None
    entries: list[ListEntry]


class CreateListEntry(Request):
    entry: str
    reason: str | None = None
