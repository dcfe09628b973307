-- Plug-in CAs (SPEC 10): a generation whose intermediate was signed outside. Its root's key is
-- not here (root_key is empty), and the intermediates between its issuing certificate and the
-- root are kept in chain (their DER, concatenated; NULL when the root signed the intermediate).
ALTER TABLE ca_generations ADD COLUMN chain BYTEA;
-- The key of the next intermediate, made here for a CSR signed outside (cactl ca csr), until
-- its certificate is installed (cactl ca install). One per trust domain; sealed under the KEK.
CREATE TABLE ca_pending_keys (
    trust_domain   TEXT PRIMARY KEY REFERENCES trust_domains (name),
    key_algorithm  TEXT NOT NULL,
    sealed_key     BYTEA NOT NULL,
    csr_pem        TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
