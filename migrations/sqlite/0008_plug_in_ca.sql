-- Same as ../postgres/0008.
ALTER TABLE ca_generations ADD COLUMN chain BLOB;
CREATE TABLE ca_pending_keys (
    trust_domain   TEXT PRIMARY KEY REFERENCES trust_domains (name),
    key_algorithm  TEXT NOT NULL,
    sealed_key     BLOB NOT NULL,
    csr_pem        TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
