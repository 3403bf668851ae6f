//! CityPulse read models.
//!
//! - [`Directory`]: `buildings`, `sensors`, `thresholds`, `alerts` — what exists and its state.
//! - [`Energy`]: `energy_hourly`, `energy_daily` — readings summed per building, sensor and
//!   time bucket.
//!
//! Both fold a whole batch in memory first and write it with a few set-based statements
//! (`UNNEST` arrays), so catch-up costs a handful of round trips per thousand events rather
//! than one per event. Folding must not hide an error that the event alone would hit (the
//! runner applies events one by one when a batch fails, and both ways must agree), so every
//! reading is checked as it is folded: a timestamp PostgreSQL cannot store, a sum that
//! overflows.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;
use universal_events::building::{BuildingEvent, EVENT_TYPES};
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

fn building_id(e: &RawEvent) -> anyhow::Result<Uuid> {
    let id = e
        .stream_id
        .strip_prefix("building-")
        .context("not a building stream")?;
    Ok(Uuid::parse_str(id)?)
}

/// The earliest instant a `timestamptz` holds (4714-11-24 BC, proleptic year -4713).
fn earliest_storable() -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(-4713, 11, 24)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc()
}

/// Fails on an instant PostgreSQL cannot store. In a batch only the latest reading of a
/// sensor is written, so an unstorable earlier one would pass unnoticed there and fail when
/// its event is applied alone.
fn storable(at: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    anyhow::ensure!(
        at >= earliest_storable(),
        "reading time {at} is out of the range PostgreSQL stores"
    );
    Ok(at)
}

fn decode(e: &RawEvent) -> anyhow::Result<BuildingEvent> {
    e.decode::<BuildingEvent>()
        .with_context(|| format!("event at position {}", e.position))
}

/// Buildings, sensors, thresholds and alerts.
pub struct Directory;

#[derive(Default)]
struct Touch {
    version: i64,
    position: i64,
    last_reading_at: Option<DateTime<Utc>>,
}

#[async_trait]
impl Projection for Directory {
    fn name(&self) -> &'static str {
        "citypulse_directory"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &EVENT_TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["buildings", "sensors", "thresholds", "alerts"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        // Per building: the last version and position seen in this batch.
        let mut touched: HashMap<Uuid, Touch> = HashMap::new();
        // Per sensor: the latest reading in this batch.
        let mut latest: HashMap<Uuid, (f64, DateTime<Utc>)> = HashMap::new();
        for e in events {
            let building = building_id(e)?;
            let event = decode(e)?;
            let touch = touched.entry(building).or_default();
            touch.version = touch.version.max(e.version);
            touch.position = touch.position.max(e.position);
            match event {
                BuildingEvent::BuildingRegistered(b) => {
                    sqlx::query(
                        "INSERT INTO buildings (id, name, address, floor_area_m2, registered_at, \
                         created_position, version, last_position, organization_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $6, $8) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(building)
                    .bind(&b.name)
                    .bind(&b.address)
                    .bind(b.floor_area_m2)
                    .bind(b.registered_at)
                    .bind(e.position)
                    .bind(e.version)
                    .bind(b.organization_id)
                    .execute(&mut *conn)
                    .await?;
                }
                BuildingEvent::SensorRegistered(s) => {
                    sqlx::query(
                        "INSERT INTO sensors (id, building_id, kind, unit, name, status, \
                         registered_position) VALUES ($1, $2, $3, $4, $5, 'active', $6) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(s.sensor_id)
                    .bind(building)
                    .bind(s.kind.as_str())
                    .bind(&s.unit)
                    .bind(&s.name)
                    .bind(e.position)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query(
                        "UPDATE buildings SET active_sensors = active_sensors + 1 WHERE id = $1",
                    )
                    .bind(building)
                    .execute(&mut *conn)
                    .await?;
                }
                BuildingEvent::SensorDecommissioned(s) => {
                    sqlx::query(
                        "UPDATE sensors SET status = 'decommissioned', decommissioned_reason = $2 \
                         WHERE id = $1",
                    )
                    .bind(s.sensor_id)
                    .bind(&s.reason)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query(
                        "UPDATE buildings SET active_sensors = active_sensors - 1 WHERE id = $1",
                    )
                    .bind(building)
                    .execute(&mut *conn)
                    .await?;
                }
                BuildingEvent::ReadingsRecorded(r) => {
                    for reading in &r.readings {
                        storable(reading.measured_at)?;
                        let slot = latest
                            .entry(reading.sensor_id)
                            .or_insert((reading.value, reading.measured_at));
                        if reading.measured_at >= slot.1 {
                            *slot = (reading.value, reading.measured_at);
                        }
                        if touch
                            .last_reading_at
                            .is_none_or(|t| reading.measured_at > t)
                        {
                            touch.last_reading_at = Some(reading.measured_at);
                        }
                    }
                }
                BuildingEvent::ThresholdSet(t) => {
                    sqlx::query(
                        "INSERT INTO thresholds (building_id, kind, min_value, max_value) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (building_id, kind) \
                         DO UPDATE SET min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value",
                    )
                    .bind(building)
                    .bind(t.kind.as_str())
                    .bind(t.min)
                    .bind(t.max)
                    .execute(&mut *conn)
                    .await?;
                }
                BuildingEvent::AlertRaised(a) => {
                    sqlx::query(
                        "INSERT INTO alerts (id, building_id, sensor_id, kind, bound, limit_value, \
                         value, raised_at, position) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(a.alert_id)
                    .bind(building)
                    .bind(a.sensor_id)
                    .bind(a.kind.as_str())
                    .bind(match a.bound {
                        universal_events::building::Bound::Min => "min",
                        universal_events::building::Bound::Max => "max",
                    })
                    .bind(a.limit)
                    .bind(a.value)
                    .bind(a.measured_at)
                    .bind(e.position)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query("UPDATE buildings SET open_alerts = open_alerts + 1 WHERE id = $1")
                        .bind(building)
                        .execute(&mut *conn)
                        .await?;
                }
                BuildingEvent::AlertResolved(a) => {
                    sqlx::query(
                        "UPDATE alerts SET resolved_at = $2, resolved_value = $3 WHERE id = $1",
                    )
                    .bind(a.alert_id)
                    .bind(a.measured_at)
                    .bind(a.value)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query("UPDATE buildings SET open_alerts = open_alerts - 1 WHERE id = $1")
                        .bind(building)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }

        let mut ids = Vec::with_capacity(touched.len());
        let mut versions = Vec::with_capacity(touched.len());
        let mut positions = Vec::with_capacity(touched.len());
        let mut reading_times = Vec::with_capacity(touched.len());
        for (id, t) in touched {
            ids.push(id);
            versions.push(t.version);
            positions.push(t.position);
            reading_times.push(t.last_reading_at);
        }
        let mut statements = super::Statements::new(ids.len());
        while let Some(r) = statements.next().await {
            sqlx::query(
                "UPDATE buildings b SET version = GREATEST(b.version, u.version), \
                 last_position = GREATEST(b.last_position, u.position), \
                 last_reading_at = GREATEST(b.last_reading_at, u.reading_at) \
                 FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::timestamptz[]) \
                 AS u(id, version, position, reading_at) WHERE b.id = u.id",
            )
            .bind(&ids[r.clone()])
            .bind(&versions[r.clone()])
            .bind(&positions[r.clone()])
            .bind(&reading_times[r.clone()])
            .execute(&mut *conn)
            .await?;
        }

        if !latest.is_empty() {
            let (sensor_ids, rest): (Vec<Uuid>, Vec<(f64, DateTime<Utc>)>) =
                latest.into_iter().unzip();
            let (values, times): (Vec<f64>, Vec<DateTime<Utc>>) = rest.into_iter().unzip();
            let mut statements = super::Statements::new(sensor_ids.len());
            while let Some(r) = statements.next().await {
                sqlx::query(
                    "UPDATE sensors s SET last_value = u.value, last_reading_at = u.at \
                     FROM UNNEST($1::uuid[], $2::float8[], $3::timestamptz[]) \
                     AS u(id, value, at) WHERE s.id = u.id \
                     AND (s.last_reading_at IS NULL OR s.last_reading_at <= u.at)",
                )
                .bind(&sensor_ids[r.clone()])
                .bind(&values[r.clone()])
                .bind(&times[r.clone()])
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }
}

/// Hourly and daily energy per building and sensor.
pub struct Energy;

#[derive(Clone, Copy)]
struct Agg {
    total: f64,
    samples: i64,
    min: f64,
    max: f64,
}

impl Agg {
    /// Adds a reading; a sum that leaves the finite range fails here, as adding the same
    /// readings one event at a time would fail in PostgreSQL (`float8` overflow).
    fn add(&mut self, v: f64) -> anyhow::Result<()> {
        let total = self.total + v;
        anyhow::ensure!(
            total.is_finite() && v.is_finite(),
            "the energy total overflows adding {v:e}"
        );
        self.total = total;
        self.samples += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        Ok(())
    }
}

type BucketKey = (Uuid, Uuid, DateTime<Utc>);

#[derive(Default)]
struct Buckets {
    map: HashMap<BucketKey, (Agg, &'static str, String)>,
}

impl Buckets {
    fn add(
        &mut self,
        key: BucketKey,
        kind: &'static str,
        unit: &str,
        value: f64,
    ) -> anyhow::Result<()> {
        self.map
            .entry(key)
            .or_insert_with(|| {
                (
                    Agg {
                        total: 0.0,
                        samples: 0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                    },
                    kind,
                    unit.to_owned(),
                )
            })
            .0
            .add(value)
    }

    async fn upsert(self, conn: &mut PgConnection, table: &str) -> anyhow::Result<()> {
        if self.map.is_empty() {
            return Ok(());
        }
        let n = self.map.len();
        let (mut b, mut s, mut t) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut kinds, mut units) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut totals, mut samples, mut mins, mut maxs) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((building, sensor, bucket), (agg, kind, unit)) in self.map {
            b.push(building);
            s.push(sensor);
            t.push(bucket);
            kinds.push(kind);
            units.push(unit);
            totals.push(agg.total);
            samples.push(agg.samples);
            mins.push(agg.min);
            maxs.push(agg.max);
        }
        // One runner writes a table at a time (its projection's lock; a rebuild writes
        // tables of its own), so `MERGE` meets no concurrent insert of the same bucket. It
        // joins the batch to the table once, where `INSERT … ON CONFLICT` tried each row's
        // insert first and locked the row it met (a WAL record of its own); the keys of a
        // batch are distinct (`self.map`), as `MERGE` requires.
        let merge = format!(
            "MERGE INTO {table} AS e \
             USING UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], \
             $6::float8[], $7::bigint[], $8::float8[], $9::float8[]) \
             AS u(building_id, sensor_id, bucket, kind, unit, total, samples, min_value, \
             max_value) \
             ON e.building_id = u.building_id AND e.bucket = u.bucket \
             AND e.sensor_id = u.sensor_id \
             WHEN MATCHED THEN UPDATE SET total = e.total + u.total, \
             samples = e.samples + u.samples, min_value = LEAST(e.min_value, u.min_value), \
             max_value = GREATEST(e.max_value, u.max_value) \
             WHEN NOT MATCHED THEN INSERT (building_id, sensor_id, bucket, kind, unit, total, \
             samples, min_value, max_value) VALUES (u.building_id, u.sensor_id, u.bucket, \
             u.kind, u.unit, u.total, u.samples, u.min_value, u.max_value)"
        );
        let mut statements = super::Statements::new(n);
        while let Some(r) = statements.next().await {
            sqlx::query(&merge)
                .bind(&b[r.clone()])
                .bind(&s[r.clone()])
                .bind(&t[r.clone()])
                .bind(&kinds[r.clone()])
                .bind(&units[r.clone()])
                .bind(&totals[r.clone()])
                .bind(&samples[r.clone()])
                .bind(&mins[r.clone()])
                .bind(&maxs[r.clone()])
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Projection for Energy {
    fn name(&self) -> &'static str {
        "citypulse_energy"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["ReadingsRecorded"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["energy_hourly", "energy_daily"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        let mut hourly = Buckets::default();
        let mut daily = Buckets::default();
        for e in events {
            let BuildingEvent::ReadingsRecorded(r) = decode(e)? else {
                continue;
            };
            let building = building_id(e)?;
            for reading in &r.readings {
                let hour = reading.measured_at.duration_trunc(TimeDelta::hours(1))?;
                let day = reading.measured_at.duration_trunc(TimeDelta::days(1))?;
                let kind = reading.kind.as_str();
                hourly.add(
                    (building, reading.sensor_id, hour),
                    kind,
                    &reading.unit,
                    reading.value,
                )?;
                daily.add(
                    (building, reading.sensor_id, day),
                    kind,
                    &reading.unit,
                    reading.value,
                )?;
            }
        }
        hourly.upsert(conn, "energy_hourly").await?;
        daily.upsert(conn, "energy_daily").await?;
        Ok(())
    }
}
