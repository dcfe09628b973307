-- Same as ../postgres/0006: two fewer index inserts per issued certificate. The admin listing's
-- trust-domain and expiry filters walk the primary key newest-first instead. SQLite has no BRIN;
-- an expiry range over the whole record is a scan (the embedded store is for small meshes).
DROP INDEX certificates_trust_domain;
DROP INDEX certificates_not_after;
