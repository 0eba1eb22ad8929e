"""Stored emails in their canonical form (NFC, lower case, IDNA domain), as every route now compares them

Accounts registered before ``shared.addresses`` kept their email trimmed and lower-cased only; an
account at a Unicode domain (``…@exämple.com``) could then no longer sign in, because sign-in now
looks up ``…@xn--exmple-cua.com``. This rewrites each such email once. Two accounts that turn out to
be look-alikes of one address are both left as they are (a person has to choose), and so is text that
is no address at all.

Revision ID: 5e0c1d7a9b24
Revises: 12c3a8ad20ef
Create Date: 2026-12-03 08:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.addresses import InvalidEmail, canonical_email

revision: str = "5e0c1d7a9b24"
down_revision: str | None = "12c3a8ad20ef"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACCOUNTS = sa.table("user_account", sa.column("id"), sa.column("email"), schema="users")


def upgrade() -> None:
    bind = op.get_bind()
    # Only what can differ from its canonical form: non-ASCII text, or an upper-case letter left over.
    candidates = bind.execute(
        sa.select(_ACCOUNTS.c.id, _ACCOUNTS.c.email).where(
            sa.or_(_ACCOUNTS.c.email.op("~")("[^\\x01-\\x7f]"), _ACCOUNTS.c.email != sa.func.lower(_ACCOUNTS.c.email))
        )
    ).all()
    for account_id, email in candidates:
        try:
            canonical = canonical_email(email)
        except InvalidEmail:
            continue
        if canonical == email:
            continue
        taken = bind.execute(sa.select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.email == canonical)).first()
        if taken is None:
            bind.execute(sa.update(_ACCOUNTS).where(_ACCOUNTS.c.id == account_id).values(email=canonical))


def downgrade() -> None:
    # The earlier forms are not kept; canonical emails are valid emails for the earlier code too.
    pass
