-- CA lifecycle (SPEC 10): generations move prepared -> active -> retired -> removed, or to
-- revoked in an emergency; each transition's time is kept. Exactly one active generation per
-- trust domain stays a database rule (ca_generations_one_active).
ALTER TABLE ca_generations DROP CONSTRAINT ca_generations_state_check;
ALTER TABLE ca_generations ADD CONSTRAINT ca_generations_state_check
    CHECK (state IN ('prepared', 'active', 'retired', 'removed', 'revoked'));
ALTER TABLE ca_generations ADD COLUMN activated_at BIGINT;
ALTER TABLE ca_generations ADD COLUMN retired_at BIGINT;
ALTER TABLE ca_generations ADD COLUMN removed_at BIGINT;
-- An emergency revocation's RFC 5280 reason (the root-signed CRL lists the intermediate).
ALTER TABLE ca_generations ADD COLUMN revocation_reason TEXT;
-- At most one generation waits to be activated (a root rotation in flight).
CREATE UNIQUE INDEX ca_generations_one_prepared ON ca_generations (trust_domain) WHERE state = 'prepared';
UPDATE ca_generations SET activated_at = created_at WHERE state IN ('active', 'retired');
