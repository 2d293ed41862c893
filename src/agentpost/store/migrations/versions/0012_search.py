"""search: the full-text index over messages (SQLite FTS5 + triggers, PostgreSQL GIN expression index)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-21 14:00:00

Existing messages are indexed here. On SQLite the index is a contentless FTS5 table keyed by
the messages rowid and kept in step by triggers: a later migration that rebuilds `messages`
(alembic batch mode copies the table) drops these triggers and renumbers rowids, so it must
re-create them and rebuild `message_search` (the statements in `_SQLITE`).
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Keep in step with agentpost.store.search (tokens, BODY_LIMIT, SEARCH_VECTOR).
_RECIPIENTS = "coalesce({t}.\"to\", '') || ' ' || coalesce({t}.cc, '') || ' ' || coalesce({t}.bcc, '')"
_BODY = "substr(coalesce({t}.text, {t}.extracted_text, ''), 1, 100000)"


def _values(t: str) -> str:
    return f"{t}.header_from, {_RECIPIENTS.format(t=t)}, coalesce({t}.subject, ''), {_BODY.format(t=t)}"


_SQLITE = [
    # remove_diacritics 0: PostgreSQL's 'simple' configuration keeps accents too.
    "CREATE VIRTUAL TABLE message_search USING fts5("
    "sender, recipients, subject, body, content='', tokenize='unicode61 remove_diacritics 0')",
    # A contentless table forgets a row only when told its original values ('delete' command).
    "CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO message_search(rowid, sender, recipients, subject, body) "
    f"VALUES (new.rowid, {_values('new')}); END",
    "CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO message_search(message_search, rowid, sender, recipients, subject, body) "
    f"VALUES ('delete', old.rowid, {_values('old')}); END",
    # Label changes (the common update) do not touch the indexed columns, nor the index.
    'CREATE TRIGGER message_search_update AFTER UPDATE OF header_from, "to", cc, bcc, subject, text, '
    "extracted_text ON messages BEGIN "
    "INSERT INTO message_search(message_search, rowid, sender, recipients, subject, body) "
    f"VALUES ('delete', old.rowid, {_values('old')}); "
    "INSERT INTO message_search(rowid, sender, recipients, subject, body) "
    f"VALUES (new.rowid, {_values('new')}); END",
    "INSERT INTO message_search(rowid, sender, recipients, subject, body) "
    f"SELECT messages.rowid, {_values('messages')} FROM messages",
]

# The expression of agentpost.store.search.SEARCH_VECTOR, character for character.
_VECTOR = (
    "(setweight(to_tsvector('simple'::regconfig, regexp_replace(coalesce(messages.subject, ''),"
    " '[[:punct:]]+', ' ', 'g')), 'A')"
    " || setweight(to_tsvector('simple'::regconfig, regexp_replace(messages.header_from,"
    " '[[:punct:]]+', ' ', 'g')), 'B')"
    " || setweight(to_tsvector('simple'::regconfig, regexp_replace(coalesce(messages.\"to\"::text, '')"
    " || ' ' || coalesce(messages.cc::text, '') || ' ' || coalesce(messages.bcc::text, ''),"
    " '[[:punct:]]+', ' ', 'g')), 'C')"
    " || to_tsvector('simple'::regconfig, regexp_replace(left(coalesce(messages.text,"
    " messages.extracted_text, ''), 100000), '[[:punct:]]+', ' ', 'g')))"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE:
            op.execute(statement)
    else:
        # Building the index reads every existing message: that is the backfill.
        op.execute(f"CREATE INDEX ix_messages_search ON messages USING gin ({_VECTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("message_search_insert", "message_search_delete", "message_search_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS message_search")
    else:
        op.execute("DROP INDEX IF EXISTS ix_messages_search")
