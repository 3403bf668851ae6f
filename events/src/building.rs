//! Events of a CityPulse building: its sensors, their readings, thresholds and alerts.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use serde_json::Value;

use crate::{payload, DecodeError, EventFamily};

/// What a sensor measures. Consumption kinds add up over time; temperature is averaged.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    Electricity,
    Gas,
    Water,
    Temperature,
}

impl SensorKind {
    pub const ALL: [SensorKind; 4] = [
        SensorKind::Electricity,
        SensorKind::Gas,
        SensorKind::Water,
        SensorKind::Temperature,
    ];

    /// The stable lowercase name, as used in JSON and in the read models.
    pub fn as_str(self) -> &'static str {
        match self {
            SensorKind::Electricity => "electricity",
            SensorKind::Gas => "gas",
            SensorKind::Water => "water",
            SensorKind::Temperature => "temperature",
        }
    }

    /// Consumption is never negative; a temperature may be.
    pub fn is_consumption(self) -> bool {
        !matches!(self, SensorKind::Temperature)
    }

    /// The units a sensor of this kind may report in.
    pub fn units(self) -> &'static [&'static str] {
        match self {
            SensorKind::Electricity => &["Wh", "kWh", "MWh"],
            SensorKind::Gas => &["m3", "kWh"],
            SensorKind::Water => &["L", "m3"],
            SensorKind::Temperature => &["C", "F", "K"],
        }
    }
}

/// The building enum: one variant per event type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum BuildingEvent {
    BuildingRegistered(BuildingRegistered),
    SensorRegistered(SensorRegistered),
    SensorDecommissioned(SensorDecommissioned),
    ReadingsRecorded(ReadingsRecorded),
    ThresholdSet(ThresholdSet),
    AlertRaised(AlertRaised),
    AlertResolved(AlertResolved),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct BuildingRegistered {
    pub building_id: Uuid,
    /// The owning organization (schema version 2; version 1 had none).
    pub organization_id: Option<Uuid>,
    pub name: String,
    pub address: Option<String>,
    pub floor_area_m2: Option<f64>,
    pub registered_at: DateTime<Utc>,
}

/// `BuildingRegistered` as schema version 1 stored it, before organizations existed. Never
/// written any more; it documents the stored shape that the upcaster lifts (the catalogue
/// shows its schema).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct BuildingRegisteredV1 {
    pub building_id: Uuid,
    pub name: String,
    pub address: Option<String>,
    pub floor_area_m2: Option<f64>,
    pub registered_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SensorRegistered {
    pub sensor_id: Uuid,
    pub kind: SensorKind,
    pub unit: String,
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SensorDecommissioned {
    pub sensor_id: Uuid,
    pub reason: Option<String>,
}

/// One measurement. For consumption kinds `value` is what was consumed since the sensor's
/// previous reading (an interval amount, not a meter total).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Reading {
    pub sensor_id: Uuid,
    pub kind: SensorKind,
    pub unit: String,
    pub value: f64,
    pub measured_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReadingsRecorded {
    pub readings: Vec<Reading>,
}

/// Limits for every sensor of one kind. A reading above `max` or below `min` is a breach.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ThresholdSet {
    pub kind: SensorKind,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Which limit a reading crossed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Min,
    Max,
}

/// A sensor went from within its limits to outside them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AlertRaised {
    pub alert_id: Uuid,
    pub sensor_id: Uuid,
    pub kind: SensorKind,
    pub bound: Bound,
    pub limit: f64,
    pub value: f64,
    pub measured_at: DateTime<Utc>,
}

/// A sensor in breach reported a reading within its limits again.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AlertResolved {
    pub alert_id: Uuid,
    pub sensor_id: Uuid,
    pub value: f64,
    pub measured_at: DateTime<Utc>,
}

impl EventFamily for BuildingEvent {
    fn schema_version(event_type: &str) -> i32 {
        match event_type {
            "BuildingRegistered" => 2,
            _ => 1,
        }
    }

    fn upcast(event_type: &str, version: i32, data: Value) -> Result<Value, DecodeError> {
        match (event_type, version) {
            // v1 → v2: buildings registered before organizations existed belong to none.
            ("BuildingRegistered", 1) => {
                let mut data = data;
                if let Value::Object(map) = &mut data {
                    map.entry("organization_id").or_insert(Value::Null);
                }
                Ok(data)
            }
            (t, v) if v == Self::schema_version(t) => Ok(data),
            (t, v) => Err(DecodeError::UnknownVersion {
                event_type: t.to_owned(),
                version: v,
            }),
        }
    }

    fn event_type(&self) -> &'static str {
        match self {
            BuildingEvent::BuildingRegistered(_) => "BuildingRegistered",
            BuildingEvent::SensorRegistered(_) => "SensorRegistered",
            BuildingEvent::SensorDecommissioned(_) => "SensorDecommissioned",
            BuildingEvent::ReadingsRecorded(_) => "ReadingsRecorded",
            BuildingEvent::ThresholdSet(_) => "ThresholdSet",
            BuildingEvent::AlertRaised(_) => "AlertRaised",
            BuildingEvent::AlertResolved(_) => "AlertResolved",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        Ok(match t {
            "BuildingRegistered" => BuildingEvent::BuildingRegistered(payload(t, data)?),
            "SensorRegistered" => BuildingEvent::SensorRegistered(payload(t, data)?),
            "SensorDecommissioned" => BuildingEvent::SensorDecommissioned(payload(t, data)?),
            "ReadingsRecorded" => BuildingEvent::ReadingsRecorded(payload(t, data)?),
            "ThresholdSet" => BuildingEvent::ThresholdSet(payload(t, data)?),
            "AlertRaised" => BuildingEvent::AlertRaised(payload(t, data)?),
            "AlertResolved" => BuildingEvent::AlertResolved(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every building event type, for filters and the sample tests.
pub const EVENT_TYPES: [&str; 7] = [
    "BuildingRegistered",
    "SensorRegistered",
    "SensorDecommissioned",
    "ReadingsRecorded",
    "ThresholdSet",
    "AlertRaised",
    "AlertResolved",
];
