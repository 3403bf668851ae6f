//! Every event type and schema version has a JSON sample in `events/samples/`; each sample
//! must decode into its typed event and encode back to the same JSON.

use std::path::Path;

use universal_events::{building::EVENT_TYPES, BuildingEvent, EventFamily};

fn sample(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(format!("{name}.v1.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("missing sample {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_building_event_sample_round_trips() {
    for event_type in EVENT_TYPES {
        let data = sample(event_type);
        let event = BuildingEvent::decode(event_type, 1, data.clone())
            .unwrap_or_else(|e| panic!("{event_type}: {e}"));
        assert_eq!(event.event_type(), event_type);
        assert_eq!(event.to_data(), data, "{event_type} did not round-trip");
        let borrowed = BuildingEvent::decode_ref(event_type, 1, &data).unwrap();
        assert_eq!(
            borrowed, event,
            "{event_type}: decode_ref agrees with decode"
        );
    }
}

#[test]
fn an_unknown_type_or_version_is_a_decode_error_not_a_panic() {
    let data = sample("SensorRegistered");
    assert!(BuildingEvent::decode("SensorExploded", 1, data.clone()).is_err());
    assert!(BuildingEvent::decode("SensorRegistered", 9, data).is_err());
    assert!(BuildingEvent::decode("SensorRegistered", 1, serde_json::json!({"x": 1})).is_err());
}
