-- Admin API (SQLite): tokens, and the audit hash chain. Same as ../postgres/0003_admin.sql.

-- Admin bearer tokens: only the SHA-256 of the secret is stored.
CREATE TABLE admin_tokens (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_sha256  TEXT NOT NULL UNIQUE,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT
);

-- Each audit event carries the hash of the one before; audit_head holds the latest hash and is
-- the row writers lock, so the chain never forks.
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN hash TEXT NOT NULL DEFAULT '';
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, hash) VALUES (1, '');

CREATE INDEX certificates_trust_domain ON certificates (trust_domain, id);
