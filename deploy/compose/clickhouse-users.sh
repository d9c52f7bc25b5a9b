#!/bin/bash
# Billing's ClickHouse user and the analysts', made by the clickhouse image
# at the first start of an empty data volume (/docker-entrypoint-initdb.d),
# as the administrator CLICKHOUSE_USER. On a volume that already has data,
# run the same statements once by hand (docs/billing.md).
#
# modelport_billing inserts and reads, creates its tables and views at
# start, and truncates only the hourly rollup it rebuilds: it may not drop,
# alter or truncate anything else. modelport_analyst reads.
set -euo pipefail
db="${CLICKHOUSE_DB:-modelport}"
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE USER IF NOT EXISTS modelport_billing IDENTIFIED WITH sha256_password BY '${MODELPORT_CLICKHOUSE_BILLING_PASSWORD}';
GRANT SELECT, INSERT, CREATE TABLE, CREATE VIEW ON ${db}.* TO modelport_billing;
GRANT CREATE DATABASE ON ${db}.* TO modelport_billing;
GRANT TRUNCATE ON ${db}.usage_hourly TO modelport_billing;
CREATE USER IF NOT EXISTS modelport_analyst IDENTIFIED WITH sha256_password BY '${MODELPORT_CLICKHOUSE_ANALYST_PASSWORD}' SETTINGS readonly = 1;
GRANT SELECT ON ${db}.* TO modelport_analyst;
SQL
