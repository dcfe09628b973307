-- Same as ../postgres/0007. SQLite cannot change a CHECK constraint in place: the table is
-- rebuilt with the wider state set and the transition times, rows copied, indexes recreated.
CREATE TABLE ca_generations_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    trust_domain       TEXT NOT NULL REFERENCES trust_domains (name),
    generation         INTEGER NOT NULL,
    state              TEXT NOT NULL
                       CHECK (state IN ('prepared', 'active', 'retired', 'removed', 'revoked')),
    key_algorithm      TEXT NOT NULL,
    root_cert          BLOB NOT NULL,
    root_key           BLOB NOT NULL,
    intermediate_cert  BLOB NOT NULL,
    intermediate_key   BLOB NOT NULL,
    issuer_key_id      TEXT NOT NULL UNIQUE,
    not_after          BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    activated_at       BIGINT,
    retired_at         BIGINT,
    removed_at         BIGINT,
    revocation_reason  TEXT,
    UNIQUE (trust_domain, generation)
);
INSERT INTO ca_generations_new (id, trust_domain, generation, state, key_algorithm, root_cert,
    root_key, intermediate_cert, intermediate_key, issuer_key_id, not_after, created_at,
    activated_at)
SELECT id, trust_domain, generation, state, key_algorithm, root_cert, root_key,
    intermediate_cert, intermediate_key, issuer_key_id, not_after, created_at,
    CASE WHEN state IN ('active', 'retired') THEN created_at END
FROM ca_generations;
DROP TABLE ca_generations;
ALTER TABLE ca_generations_new RENAME TO ca_generations;
CREATE UNIQUE INDEX ca_generations_one_active ON ca_generations (trust_domain) WHERE state = 'active';
CREATE UNIQUE INDEX ca_generations_one_prepared ON ca_generations (trust_domain) WHERE state = 'prepared';
