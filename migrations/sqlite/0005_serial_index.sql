-- Serials are unique per issuer; a unique index leading with the serial also serves lookups by
-- serial alone, so the separate index on serial goes. SQLite cannot drop the table's inline
-- UNIQUE (issuer_key_id, serial) without rebuilding the table, so it keeps that one too; on
-- Postgres (../postgres/0005) the old unique key is dropped.
CREATE UNIQUE INDEX certificates_serial_issuer ON certificates (serial, issuer_key_id);
DROP INDEX certificates_serial;
