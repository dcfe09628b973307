-- Revocation (Postgres): denied identities, CRL numbers. Same as ../sqlite/0002_revocation.sql.

-- Identities that get nothing on any path until the deny is lifted.
CREATE TABLE denied_identities (
    id           BIGSERIAL PRIMARY KEY,
    spiffe_id    TEXT NOT NULL UNIQUE,
    trust_domain TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- The last CRL number used per issuer: incremented atomically, never reused across replicas.
CREATE TABLE crl_numbers (
    issuer_key_id  TEXT PRIMARY KEY,
    last_number    BIGINT NOT NULL
);

CREATE INDEX certificates_revoked ON certificates (issuer_key_id, revoked_at) WHERE revoked_at IS NOT NULL;
