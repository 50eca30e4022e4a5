-- Personal data of audit records, kept apart from the leaves. When `[audit]
-- pseudonymize` names a field, the record (the leaf) holds only a keyed hash
-- of its value; the clear value is kept here until `expires_ms` (the personal
-- data retention), then deleted. Deleting rows here never touches a leaf, so
-- verification keeps working.
CREATE TABLE audit_personal (
    seq        INTEGER NOT NULL,
    field      TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (seq, field)
) WITHOUT ROWID;
CREATE INDEX audit_personal_expiry ON audit_personal (expires_ms);
