-- PostgreSQL twin of ../0027_audit_intent_owner.sql.
ALTER TABLE audit_intents ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_intents_owner ON audit_intents (owner);
