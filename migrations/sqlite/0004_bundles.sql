-- Trust bundles (SQLite): our own trust domains' roots and the last good bundle of each
-- federated trust domain, with the spiffe_sequence that survives restarts. Same as
-- ../postgres/0004_bundles.sql.
CREATE TABLE bundles (
    trust_domain    TEXT PRIMARY KEY,
    sequence        BIGINT NOT NULL,
    content_sha256  TEXT NOT NULL,
    roots_pem       TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('local', 'federated')),
    updated_at      BIGINT NOT NULL
);
