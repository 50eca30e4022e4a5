-- Which replica journaled each intent (issue 18, cluster mode): the random id
-- a `serve` process takes at start (`Store::replica_id`). When a replica
-- dies with intents open, a survivor whose lease check finds the owner gone
-- (`cluster_replicas`, PostgreSQL only) takes its intents over and records
-- them; one node recovers every intent at start, whatever its owner. Rows
-- journaled before this column existed have no owner (''): nobody holds
-- them, so they are recovered at once.
ALTER TABLE audit_intents ADD COLUMN owner TEXT NOT NULL DEFAULT '';
