-- CityPulse read models. Written only by projections (src/projections/citypulse.rs).
CREATE TABLE buildings (
    id                uuid        PRIMARY KEY,
    name              text        NOT NULL,
    address           text,
    floor_area_m2     double precision,
    registered_at     timestamptz NOT NULL,
    created_position  bigint      NOT NULL UNIQUE,
    version           bigint      NOT NULL,
    last_position     bigint      NOT NULL,
    active_sensors    integer     NOT NULL DEFAULT 0,
    open_alerts       integer     NOT NULL DEFAULT 0,
    last_reading_at   timestamptz
);

CREATE TABLE sensors (
    id                 uuid        PRIMARY KEY,
    building_id        uuid        NOT NULL,
    kind               text        NOT NULL,
    unit               text        NOT NULL,
    name               text,
    status             text        NOT NULL,
    registered_position bigint     NOT NULL,
    decommissioned_reason text,
    last_value         double precision,
    last_reading_at    timestamptz
);
CREATE INDEX sensors_building ON sensors (building_id, registered_position);

CREATE TABLE thresholds (
    building_id uuid NOT NULL,
    kind        text NOT NULL,
    min_value   double precision,
    max_value   double precision,
    PRIMARY KEY (building_id, kind)
);

CREATE TABLE alerts (
    id           uuid        PRIMARY KEY,
    building_id  uuid        NOT NULL,
    sensor_id    uuid        NOT NULL,
    kind         text        NOT NULL,
    bound        text        NOT NULL,
    limit_value  double precision NOT NULL,
    value        double precision NOT NULL,
    raised_at    timestamptz NOT NULL,
    position     bigint      NOT NULL,
    resolved_at  timestamptz,
    resolved_value double precision
);
CREATE INDEX alerts_building ON alerts (building_id, position DESC);

-- Energy per building, sensor and time bucket. `total` is the sum of readings (for
-- temperature the average is total / samples).
CREATE TABLE energy_hourly (
    building_id uuid             NOT NULL,
    sensor_id   uuid             NOT NULL,
    bucket      timestamptz      NOT NULL,
    kind        text             NOT NULL,
    unit        text             NOT NULL,
    total       double precision NOT NULL,
    samples     bigint           NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    PRIMARY KEY (building_id, bucket, sensor_id)
);

CREATE TABLE energy_daily (LIKE energy_hourly INCLUDING ALL);
