-- Citus (docs/scale.md): where the `citus` extension is installed, the readings, the current
-- state, the rollups and the register state are distributed by device id in one co-location
-- group (a device's rows of every table on the same worker: every per-device statement and
-- the batch's joins stay on one shard), the links and replacements are reference tables (on
-- every node: joined with any shard), and the rest stays on the coordinator (alerts and their
-- outbox, dead letters, chargers and charging sessions, dashboard sessions, migrations).
-- On plain PostgreSQL this migration only creates the function.
--
-- energy_distribute() is idempotent: it distributes what is not distributed yet, so it also
-- serves a schema migrated before Citus was installed (`energy-collector migrate --citus`).
-- Migrations after this one run on a distributed schema: they must not change the type of a
-- distribution column (tests/test_citus_rules.py checks it).
CREATE OR REPLACE FUNCTION energy_distribute() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    done integer := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN 0;
    END IF;
    FOR t IN SELECT * FROM (VALUES
            (1, 'meter_readings', 'meter_id'),
            (2, 'meter_current', 'meter_id'),
            (3, 'meter_hourly', 'meter_id'),
            (4, 'vehicle_readings', 'vehicle_id'),
            (5, 'vehicle_current', 'vehicle_id'),
            (6, 'vehicle_hourly', 'vehicle_id'),
            (7, 'register_devices', 'device_id')) AS v (n, name, column_name)
        ORDER BY n
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t.name::regclass
        ) THEN
            PERFORM create_distributed_table(
                t.name, t.column_name,
                colocate_with => CASE WHEN t.n = 1 THEN 'default' ELSE 'meter_readings' END
            );
            done := done + 1;
        END IF;
    END LOOP;
    FOR t IN SELECT * FROM (VALUES ('vehicle_meter_links'), ('register_replacements'))
        AS v (name)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t.name::regclass
        ) THEN
            PERFORM create_reference_table(t.name);
            done := done + 1;
        END IF;
    END LOOP;
    RETURN done;
END $$;

SELECT energy_distribute();
