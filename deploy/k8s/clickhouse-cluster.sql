-- Billing's tables on a ClickHouse cluster (shards and replicas), for
-- example one run by the ClickHouse operator. Run once, before billing
-- starts, with clickhouse-client against any server of the cluster. The
-- cluster is named 'modelport' below; {shard} and {replica} are the macros
-- the operator defines on each server. README.md, "ClickHouse beyond one
-- server", says why each piece is as it is.
--
-- Billing then finds usage_events and schema_migrations in place: it
-- creates neither (CREATE ... IF NOT EXISTS leaves them be) and records
-- no migration twice.

CREATE DATABASE IF NOT EXISTS modelport ON CLUSTER 'modelport';

-- The rows, on each shard, replicated within it. Same columns, sort key
-- and merge rule as billing's own table (services/billing/internal/clickhouse).
CREATE TABLE IF NOT EXISTS modelport.usage_events_local ON CLUSTER 'modelport' (
	event_id          String,
	request_id        String,
	service_id        String,
	owner_id          String,
	access_name       String,
	base_model        String,
	api_key_id        String,
	instance_id       String,
	endpoint          String,
	status            UInt16,
	prompt_tokens     UInt32,
	completion_tokens UInt32,
	total_tokens      UInt32,
	started_at        DateTime,
	finished_at       DateTime,
	occurred_at       DateTime,
	inserted_at       DateTime DEFAULT now()
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/modelport/usage_events', '{replica}', inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (service_id, occurred_at, event_id);

-- What billing reads and writes: every shard at once. Rows go to a shard
-- by service, so a redelivered event lands where its first copy is and
-- one service's totals are read from one shard.
CREATE TABLE IF NOT EXISTS modelport.usage_events ON CLUSTER 'modelport'
AS modelport.usage_events_local
ENGINE = Distributed('modelport', 'modelport', 'usage_events_local', cityHash64(service_id));

-- Billing's migration record, the same on every server.
CREATE TABLE IF NOT EXISTS modelport.schema_migrations ON CLUSTER 'modelport' (
	version    UInt32,
	name       String,
	applied_at DateTime DEFAULT now()
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/modelport/schema_migrations', '{replica}')
ORDER BY version;

-- The migration the statements above stand for. Replicated inserts are
-- deduplicated, so running this file again adds nothing.
INSERT INTO modelport.schema_migrations (version, name) VALUES (1, 'usage_events');
