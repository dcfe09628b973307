-- Initial schema (SQLite). Same tables and constraints as ../postgres/0001_initial.sql.
-- Timestamps are unix seconds (BIGINT) in both dialects.

CREATE TABLE trust_domains (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

-- One row per CA generation of a trust domain: root + issuing intermediate, keys sealed under the
-- KEK. At most one generation per trust domain is active; rotation adds 'prepared' rows later.
CREATE TABLE ca_generations (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    trust_domain       TEXT NOT NULL REFERENCES trust_domains (name),
    generation         INTEGER NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('prepared', 'active', 'retired')),
    key_algorithm      TEXT NOT NULL,
    root_cert          BLOB NOT NULL,
    root_key           BLOB NOT NULL,
    intermediate_cert  BLOB NOT NULL,
    intermediate_key   BLOB NOT NULL,
    issuer_key_id      TEXT NOT NULL UNIQUE,
    not_after          BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    UNIQUE (trust_domain, generation)
);
CREATE UNIQUE INDEX ca_generations_one_active ON ca_generations (trust_domain) WHERE state = 'active';

-- The issuance record: every certificate that ever left the server.
CREATE TABLE certificates (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    issuer_key_id      TEXT NOT NULL,
    serial             TEXT NOT NULL,
    trust_domain       TEXT NOT NULL,
    spiffe_id          TEXT NOT NULL,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    spki_sha256        TEXT NOT NULL,
    der                BLOB NOT NULL,
    requested_by       TEXT NOT NULL,
    request_id         TEXT NOT NULL,
    api                TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    revocation_reason  TEXT,
    UNIQUE (issuer_key_id, serial)
);
CREATE INDEX certificates_spiffe_id ON certificates (spiffe_id);
CREATE INDEX certificates_serial ON certificates (serial);
CREATE INDEX certificates_not_after ON certificates (not_after);

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    detail      TEXT NOT NULL
);
