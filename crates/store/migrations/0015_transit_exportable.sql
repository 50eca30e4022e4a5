-- A transit key is exportable only when it was created so
-- (`portcullis transit create --exportable`); keys created before stay not.
ALTER TABLE transit_keys ADD COLUMN exportable INTEGER NOT NULL DEFAULT 0;
