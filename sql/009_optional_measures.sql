-- Voltage, state of charge and battery temperature become optional (issue 27: most real
-- meters and chargers send energy alone). A reading without one stores NULL; the hourly
-- rollups count the readings that had each (`voltage_n`, `soc_n`, `temp_n`), and an
-- average is its sum over that count, never over all readings.
ALTER TABLE meter_readings ALTER COLUMN voltage DROP NOT NULL;
ALTER TABLE meter_current ALTER COLUMN voltage DROP NOT NULL;
ALTER TABLE vehicle_readings ALTER COLUMN soc DROP NOT NULL,
    ALTER COLUMN battery_temp DROP NOT NULL;
ALTER TABLE vehicle_current ALTER COLUMN soc DROP NOT NULL,
    ALTER COLUMN battery_temp DROP NOT NULL;

ALTER TABLE meter_hourly
    ALTER COLUMN voltage_sum DROP NOT NULL,
    ALTER COLUMN voltage_min DROP NOT NULL,
    ALTER COLUMN voltage_max DROP NOT NULL,
    ADD COLUMN voltage_n integer NOT NULL DEFAULT 0;
ALTER TABLE vehicle_hourly
    ALTER COLUMN soc_sum DROP NOT NULL,
    ALTER COLUMN soc_min DROP NOT NULL,
    ALTER COLUMN soc_max DROP NOT NULL,
    ADD COLUMN soc_n integer NOT NULL DEFAULT 0,
    ALTER COLUMN temp_sum DROP NOT NULL,
    ALTER COLUMN temp_min DROP NOT NULL,
    ALTER COLUMN temp_max DROP NOT NULL,
    ADD COLUMN temp_n integer NOT NULL DEFAULT 0;
-- Until now every reading had them all.
UPDATE meter_hourly SET voltage_n = readings;
UPDATE vehicle_hourly SET soc_n = readings, temp_n = readings;
