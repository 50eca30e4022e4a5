-- PostgreSQL twin of ../0015_transit_exportable.sql.
ALTER TABLE transit_keys ADD COLUMN exportable BOOLEAN NOT NULL DEFAULT FALSE;
