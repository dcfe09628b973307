-- One index fewer per issued certificate (Postgres). Serials are unique per issuer; the unique
-- key now leads with the serial, so it also serves lookups by serial alone (admin `certs show`,
-- revocation by serial) and the separate index on serial goes. Same as ../sqlite/0005.
CREATE UNIQUE INDEX certificates_serial_issuer ON certificates (serial, issuer_key_id);
ALTER TABLE certificates DROP CONSTRAINT certificates_issuer_key_id_serial_key;
DROP INDEX certificates_serial;
