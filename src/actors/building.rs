//! The CityPulse building: sensors, readings, consumption thresholds and alerts.
//!
//! The decider owns every rule: which units a sensor kind accepts, that consumption is never
//! negative, that readings come from active sensors of this building, and when a batch of
//! readings raises or resolves an alert. An alert is raised when a sensor goes from within
//! its kind's limits to outside them and resolved when it comes back, so a sensor that stays
//! in breach does not raise an alert per reading.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use universal_events::building::{
    AlertRaised, AlertResolved, Bound, BuildingEvent, BuildingRegistered, Reading,
    ReadingsRecorded, SensorDecommissioned, SensorKind, SensorRegistered, ThresholdSet,
};
use uuid::Uuid;

use super::runtime::Entity;
use super::validate;

/// Most readings accepted in one command.
pub const MAX_READINGS: usize = 1000;
/// Longest building or sensor name.
pub const MAX_NAME: usize = 200;
/// Longest address or decommissioning reason.
pub const MAX_TEXT: usize = 500;
/// Most sensors one building may have (decommissioned ones included).
pub const MAX_SENSORS: usize = 10_000;
/// Largest floor area, in square metres.
const MAX_FLOOR_AREA: f64 = 1e8;
/// How far in the future (by the server's clock) a reading may be stamped.
const CLOCK_SKEW: Duration = Duration::minutes(5);

#[derive(Debug, Clone)]
pub enum BuildingCommand {
    Register {
        name: String,
        address: Option<String>,
        floor_area_m2: Option<f64>,
        at: DateTime<Utc>,
        building_id: Uuid,
    },
    RegisterSensor {
        sensor_id: Uuid,
        kind: SensorKind,
        unit: String,
        name: Option<String>,
    },
    DecommissionSensor {
        sensor_id: Uuid,
        reason: Option<String>,
    },
    RecordReadings {
        /// Seeds the ids of the alerts this batch raises, keeping `decide` deterministic.
        command_id: Uuid,
        received_at: DateTime<Utc>,
        readings: Vec<ReadingInput>,
    },
    SetThreshold {
        kind: SensorKind,
        min: Option<f64>,
        max: Option<f64>,
    },
}

/// A command on behalf of an organization: a building answers only to its own.
#[derive(Debug, Clone)]
pub struct ScopedCommand {
    pub organization_id: Option<Uuid>,
    pub cmd: BuildingCommand,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadingInput {
    pub sensor_id: Uuid,
    pub value: f64,
    pub measured_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildingError {
    #[error("building not found")]
    NotFound,
    #[error("building is already registered")]
    AlreadyRegistered,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("sensor {0} is not registered in this building")]
    UnknownSensor(Uuid),
    #[error("sensor {0} is decommissioned")]
    SensorDecommissioned(Uuid),
    #[error("sensor {0} is already registered")]
    SensorExists(Uuid),
}

fn invalid(field: &'static str, message: impl Into<String>) -> BuildingError {
    BuildingError::Invalid {
        field,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SensorState {
    pub kind: SensorKind,
    pub unit: String,
    pub active: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Limits {
    /// The bound a value crosses, if any.
    fn breach(&self, value: f64) -> Option<(Bound, f64)> {
        match (self.min, self.max) {
            (_, Some(max)) if value > max => Some((Bound::Max, max)),
            (Some(min), _) if value < min => Some((Bound::Min, min)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Building {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub name: String,
    pub sensors: HashMap<Uuid, SensorState>,
    pub thresholds: HashMap<SensorKind, Limits>,
    /// Sensors currently in breach, with the id of their open alert.
    pub open_alerts: HashMap<Uuid, Uuid>,
}

fn check_name(field: &'static str, name: &str) -> Result<(), BuildingError> {
    validate::name(name, MAX_NAME).map_err(|m| invalid(field, m))
}

fn check_text(field: &'static str, text: &Option<String>) -> Result<(), BuildingError> {
    match text {
        Some(t) => validate::text(t, MAX_TEXT).map_err(|m| invalid(field, m)),
        None => Ok(()),
    }
}

impl Building {
    fn registered(&self) -> Result<(), BuildingError> {
        self.id.map(|_| ()).ok_or(BuildingError::NotFound)
    }

    fn decide_readings(
        &self,
        command_id: Uuid,
        received_at: DateTime<Utc>,
        inputs: &[ReadingInput],
    ) -> Result<Vec<BuildingEvent>, BuildingError> {
        if inputs.is_empty() {
            return Err(invalid("readings", "must hold at least one reading"));
        }
        if inputs.len() > MAX_READINGS {
            return Err(invalid(
                "readings",
                format!(
                    "at most {MAX_READINGS} readings per request, got {}",
                    inputs.len()
                ),
            ));
        }
        let mut readings = Vec::with_capacity(inputs.len());
        for (i, r) in inputs.iter().enumerate() {
            let sensor = self
                .sensors
                .get(&r.sensor_id)
                .ok_or(BuildingError::UnknownSensor(r.sensor_id))?;
            if !sensor.active {
                return Err(BuildingError::SensorDecommissioned(r.sensor_id));
            }
            validate::quantity(r.value)
                .map_err(|m| invalid("value", format!("reading {i}: {m}")))?;
            if sensor.kind.is_consumption() && r.value < 0.0 {
                return Err(invalid(
                    "value",
                    format!("{} consumption cannot be negative", sensor.kind.as_str()),
                ));
            }
            validate::time(r.measured_at, received_at + CLOCK_SKEW)
                .map_err(|m| invalid("timestamp", format!("reading {i}: {m}")))?;
            readings.push(Reading {
                sensor_id: r.sensor_id,
                kind: sensor.kind,
                unit: sensor.unit.clone(),
                value: r.value,
                measured_at: r.measured_at,
            });
        }

        let mut alerts = Vec::new();
        let mut open = self.open_alerts.clone();
        for (i, r) in readings.iter().enumerate() {
            let Some(limits) = self.thresholds.get(&r.kind) else {
                continue;
            };
            match (limits.breach(r.value), open.get(&r.sensor_id).copied()) {
                (Some((bound, limit)), None) => {
                    let alert_id = Uuid::new_v5(&command_id, &(i as u64).to_be_bytes());
                    open.insert(r.sensor_id, alert_id);
                    alerts.push(BuildingEvent::AlertRaised(AlertRaised {
                        alert_id,
                        sensor_id: r.sensor_id,
                        kind: r.kind,
                        bound,
                        limit,
                        value: r.value,
                        measured_at: r.measured_at,
                    }));
                }
                (None, Some(alert_id)) => {
                    open.remove(&r.sensor_id);
                    alerts.push(BuildingEvent::AlertResolved(AlertResolved {
                        alert_id,
                        sensor_id: r.sensor_id,
                        value: r.value,
                        measured_at: r.measured_at,
                    }));
                }
                _ => {}
            }
        }
        let mut events = vec![BuildingEvent::ReadingsRecorded(ReadingsRecorded {
            readings,
        })];
        events.extend(alerts);
        Ok(events)
    }
}

impl Entity for Building {
    type Command = ScopedCommand;
    type Event = BuildingEvent;
    type Error = BuildingError;

    const CATEGORY: &'static str = "building";

    fn decide(&self, scoped: &ScopedCommand) -> Result<Vec<BuildingEvent>, BuildingError> {
        self.decide_in(scoped.organization_id, &scoped.cmd)
    }

    fn evolve(&mut self, event: &BuildingEvent) {
        self.apply(event)
    }
}

impl Building {
    /// The rules, for a command sent on behalf of organization `org`. Another
    /// organization's building answers as if it did not exist.
    pub fn decide_in(
        &self,
        org: Option<Uuid>,
        cmd: &BuildingCommand,
    ) -> Result<Vec<BuildingEvent>, BuildingError> {
        if self.id.is_some() && self.organization_id != org {
            return Err(BuildingError::NotFound);
        }
        use BuildingCommand as C;
        match cmd {
            C::Register {
                name,
                address,
                floor_area_m2,
                at,
                building_id,
            } => {
                if self.id.is_some() {
                    return Err(BuildingError::AlreadyRegistered);
                }
                check_name("name", name)?;
                check_text("address", address)?;
                if let Some(a) = floor_area_m2 {
                    if !a.is_finite() || *a <= 0.0 || *a > MAX_FLOOR_AREA {
                        return Err(invalid(
                            "floor_area_m2",
                            format!("must be a positive number up to {MAX_FLOOR_AREA:e}"),
                        ));
                    }
                }
                validate::time(*at, *at).map_err(|m| invalid("registered_at", m))?;
                Ok(vec![BuildingEvent::BuildingRegistered(
                    BuildingRegistered {
                        building_id: *building_id,
                        organization_id: org,
                        name: name.trim().to_owned(),
                        address: address.clone(),
                        floor_area_m2: *floor_area_m2,
                        registered_at: *at,
                    },
                )])
            }
            C::RegisterSensor {
                sensor_id,
                kind,
                unit,
                name,
            } => {
                self.registered()?;
                if self.sensors.contains_key(sensor_id) {
                    return Err(BuildingError::SensorExists(*sensor_id));
                }
                if self.sensors.len() >= MAX_SENSORS {
                    return Err(invalid(
                        "sensor",
                        format!("a building holds at most {MAX_SENSORS} sensors"),
                    ));
                }
                if !kind.units().contains(&unit.as_str()) {
                    return Err(invalid(
                        "unit",
                        format!(
                            "a {} sensor reports in one of {:?}",
                            kind.as_str(),
                            kind.units()
                        ),
                    ));
                }
                if let Some(n) = name {
                    check_name("name", n)?;
                }
                Ok(vec![BuildingEvent::SensorRegistered(SensorRegistered {
                    sensor_id: *sensor_id,
                    kind: *kind,
                    unit: unit.clone(),
                    name: name.clone(),
                })])
            }
            C::DecommissionSensor { sensor_id, reason } => {
                self.registered()?;
                check_text("reason", reason)?;
                let sensor = self
                    .sensors
                    .get(sensor_id)
                    .ok_or(BuildingError::UnknownSensor(*sensor_id))?;
                if !sensor.active {
                    return Err(BuildingError::SensorDecommissioned(*sensor_id));
                }
                Ok(vec![BuildingEvent::SensorDecommissioned(
                    SensorDecommissioned {
                        sensor_id: *sensor_id,
                        reason: reason.clone(),
                    },
                )])
            }
            C::RecordReadings {
                command_id,
                received_at,
                readings,
            } => {
                self.registered()?;
                self.decide_readings(*command_id, *received_at, readings)
            }
            C::SetThreshold { kind, min, max } => {
                self.registered()?;
                if min.is_none() && max.is_none() {
                    return Err(invalid("threshold", "set at least one of min and max"));
                }
                if let Some(v) = min {
                    validate::quantity(*v).map_err(|m| invalid("min", m))?;
                }
                if let Some(v) = max {
                    validate::quantity(*v).map_err(|m| invalid("max", m))?;
                }
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(invalid("threshold", "min must not exceed max"));
                    }
                }
                let new = Limits {
                    min: *min,
                    max: *max,
                };
                if self.thresholds.get(kind) == Some(&new) {
                    return Ok(vec![]); // already so: nothing to record
                }
                Ok(vec![BuildingEvent::ThresholdSet(ThresholdSet {
                    kind: *kind,
                    min: *min,
                    max: *max,
                })])
            }
        }
    }

    fn apply(&mut self, event: &BuildingEvent) {
        match event {
            BuildingEvent::BuildingRegistered(e) => {
                self.id = Some(e.building_id);
                self.organization_id = e.organization_id;
                self.name = e.name.clone();
            }
            BuildingEvent::SensorRegistered(e) => {
                self.sensors.insert(
                    e.sensor_id,
                    SensorState {
                        kind: e.kind,
                        unit: e.unit.clone(),
                        active: true,
                    },
                );
            }
            BuildingEvent::SensorDecommissioned(e) => {
                if let Some(s) = self.sensors.get_mut(&e.sensor_id) {
                    s.active = false;
                }
                self.open_alerts.remove(&e.sensor_id);
            }
            BuildingEvent::ReadingsRecorded(_) => {}
            BuildingEvent::ThresholdSet(e) => {
                self.thresholds.insert(
                    e.kind,
                    Limits {
                        min: e.min,
                        max: e.max,
                    },
                );
            }
            BuildingEvent::AlertRaised(e) => {
                self.open_alerts.insert(e.sensor_id, e.alert_id);
            }
            BuildingEvent::AlertResolved(e) => {
                self.open_alerts.remove(&e.sensor_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const B: Uuid = Uuid::from_u128(1);
    const S: Uuid = Uuid::from_u128(2);
    const T: Uuid = Uuid::from_u128(3);
    const CMD: Uuid = Uuid::from_u128(99);

    fn registered() -> BuildingEvent {
        BuildingEvent::BuildingRegistered(BuildingRegistered {
            building_id: B,
            organization_id: None,
            name: "City Hall".into(),
            address: None,
            floor_area_m2: None,
            registered_at: at("2026-11-21T08:00:00Z"),
        })
    }

    fn sensor(id: Uuid, kind: SensorKind, unit: &str) -> BuildingEvent {
        BuildingEvent::SensorRegistered(SensorRegistered {
            sensor_id: id,
            kind,
            unit: unit.into(),
            name: None,
        })
    }

    fn threshold(kind: SensorKind, min: Option<f64>, max: Option<f64>) -> BuildingEvent {
        BuildingEvent::ThresholdSet(ThresholdSet { kind, min, max })
    }

    fn given(events: &[BuildingEvent]) -> Building {
        let mut state = Building::default();
        for e in events {
            state.evolve(e);
        }
        state
    }

    fn readings(values: &[(Uuid, f64)]) -> BuildingCommand {
        BuildingCommand::RecordReadings {
            command_id: CMD,
            received_at: at("2026-11-21T12:00:00Z"),
            readings: values
                .iter()
                .map(|(sensor_id, value)| ReadingInput {
                    sensor_id: *sensor_id,
                    value: *value,
                    measured_at: at("2026-11-21T11:00:00Z"),
                })
                .collect(),
        }
    }

    #[test]
    fn a_new_building_is_registered_with_a_trimmed_name() {
        let events = given(&[])
            .decide_in(
                None,
                &BuildingCommand::Register {
                    name: "  City Hall ".into(),
                    address: None,
                    floor_area_m2: None,
                    at: at("2026-11-21T08:00:00Z"),
                    building_id: B,
                },
            )
            .unwrap();
        assert_eq!(events, vec![registered()]);
    }

    #[test]
    fn a_building_cannot_be_registered_twice_or_with_an_empty_name() {
        let cmd = |name: &str| BuildingCommand::Register {
            name: name.into(),
            address: None,
            floor_area_m2: None,
            at: at("2026-11-21T08:00:00Z"),
            building_id: B,
        };
        assert_eq!(
            given(&[registered()]).decide_in(None, &cmd("Again")),
            Err(BuildingError::AlreadyRegistered)
        );
        assert!(matches!(
            given(&[]).decide_in(None, &cmd("   ")),
            Err(BuildingError::Invalid { field: "name", .. })
        ));
    }

    #[test]
    fn another_organizations_building_is_not_found() {
        let state = given(&[registered(), sensor(S, SensorKind::Gas, "m3")]);
        assert_eq!(
            state.decide(&ScopedCommand {
                organization_id: Some(Uuid::from_u128(77)),
                cmd: readings(&[(S, 1.0)]),
            }),
            Err(BuildingError::NotFound)
        );
    }

    #[test]
    fn commands_to_an_unregistered_building_are_not_found() {
        assert_eq!(
            given(&[]).decide_in(None, &readings(&[(S, 1.0)])),
            Err(BuildingError::NotFound)
        );
    }

    #[test]
    fn a_sensor_must_report_in_a_unit_of_its_kind() {
        let state = given(&[registered()]);
        let cmd = |unit: &str| BuildingCommand::RegisterSensor {
            sensor_id: S,
            kind: SensorKind::Electricity,
            unit: unit.into(),
            name: None,
        };
        assert!(matches!(
            state.decide_in(None, &cmd("L")),
            Err(BuildingError::Invalid { field: "unit", .. })
        ));
        assert_eq!(
            state.decide_in(None, &cmd("kWh")).unwrap(),
            vec![sensor(S, SensorKind::Electricity, "kWh")]
        );
    }

    #[test]
    fn readings_are_recorded_with_the_kind_and_unit_of_their_sensor() {
        let state = given(&[registered(), sensor(S, SensorKind::Gas, "m3")]);
        let events = state.decide_in(None, &readings(&[(S, 2.5)])).unwrap();
        assert_eq!(
            events,
            vec![BuildingEvent::ReadingsRecorded(ReadingsRecorded {
                readings: vec![Reading {
                    sensor_id: S,
                    kind: SensorKind::Gas,
                    unit: "m3".into(),
                    value: 2.5,
                    measured_at: at("2026-11-21T11:00:00Z"),
                }]
            })]
        );
    }

    #[test]
    fn negative_consumption_is_refused_but_a_negative_temperature_is_fine() {
        let state = given(&[
            registered(),
            sensor(S, SensorKind::Water, "L"),
            sensor(T, SensorKind::Temperature, "C"),
        ]);
        assert!(matches!(
            state.decide_in(None, &readings(&[(S, -1.0)])),
            Err(BuildingError::Invalid { field: "value", .. })
        ));
        assert!(state.decide_in(None, &readings(&[(T, -12.0)])).is_ok());
        assert!(matches!(
            state.decide_in(None, &readings(&[(T, f64::NAN)])),
            Err(BuildingError::Invalid { field: "value", .. })
        ));
    }

    #[test]
    fn readings_from_unknown_or_decommissioned_sensors_are_refused() {
        let state = given(&[
            registered(),
            sensor(S, SensorKind::Electricity, "kWh"),
            BuildingEvent::SensorDecommissioned(SensorDecommissioned {
                sensor_id: S,
                reason: None,
            }),
        ]);
        assert_eq!(
            state.decide_in(None, &readings(&[(S, 1.0)])),
            Err(BuildingError::SensorDecommissioned(S))
        );
        assert_eq!(
            state.decide_in(None, &readings(&[(T, 1.0)])),
            Err(BuildingError::UnknownSensor(T))
        );
    }

    #[test]
    fn more_than_a_thousand_readings_are_refused() {
        let state = given(&[registered(), sensor(S, SensorKind::Electricity, "kWh")]);
        let many: Vec<_> = (0..=MAX_READINGS).map(|_| (S, 1.0)).collect();
        assert!(matches!(
            state.decide_in(None, &readings(&many)),
            Err(BuildingError::Invalid {
                field: "readings",
                ..
            })
        ));
    }

    #[test]
    fn crossing_a_threshold_raises_one_alert_and_returning_resolves_it() {
        let state = given(&[
            registered(),
            sensor(S, SensorKind::Electricity, "kWh"),
            threshold(SensorKind::Electricity, None, Some(100.0)),
        ]);
        let events = state
            .decide_in(
                None,
                &readings(&[(S, 50.0), (S, 150.0), (S, 160.0), (S, 90.0)]),
            )
            .unwrap();
        let alert_id = Uuid::new_v5(&CMD, &1u64.to_be_bytes());
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(
            events[1],
            BuildingEvent::AlertRaised(AlertRaised {
                alert_id,
                sensor_id: S,
                kind: SensorKind::Electricity,
                bound: Bound::Max,
                limit: 100.0,
                value: 150.0,
                measured_at: at("2026-11-21T11:00:00Z"),
            })
        );
        assert_eq!(
            events[2],
            BuildingEvent::AlertResolved(AlertResolved {
                alert_id,
                sensor_id: S,
                value: 90.0,
                measured_at: at("2026-11-21T11:00:00Z"),
            })
        );
    }

    #[test]
    fn a_sensor_already_in_breach_raises_no_second_alert() {
        let state = given(&[
            registered(),
            sensor(T, SensorKind::Temperature, "C"),
            threshold(SensorKind::Temperature, Some(15.0), Some(28.0)),
            BuildingEvent::AlertRaised(AlertRaised {
                alert_id: Uuid::from_u128(7),
                sensor_id: T,
                kind: SensorKind::Temperature,
                bound: Bound::Min,
                limit: 15.0,
                value: 10.0,
                measured_at: at("2026-11-21T10:00:00Z"),
            }),
        ]);
        let events = state.decide_in(None, &readings(&[(T, 9.0)])).unwrap();
        assert_eq!(events.len(), 1, "only the readings: {events:?}");
    }

    #[test]
    fn setting_the_same_threshold_again_records_nothing() {
        let state = given(&[registered(), threshold(SensorKind::Gas, None, Some(10.0))]);
        let cmd = BuildingCommand::SetThreshold {
            kind: SensorKind::Gas,
            min: None,
            max: Some(10.0),
        };
        assert_eq!(state.decide_in(None, &cmd), Ok(vec![]));
        let bad = BuildingCommand::SetThreshold {
            kind: SensorKind::Gas,
            min: Some(5.0),
            max: Some(1.0),
        };
        assert!(state.decide_in(None, &bad).is_err());
    }
}
