//! Every event type and schema version has a JSON sample in `events/samples/`
//! (`<Type>.v<N>.json`). A sample of the current version must decode and encode back to the
//! same JSON; a sample of an older version must upcast and decode.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use universal_events::building::EVENT_TYPES;
use universal_events::conversation::CONVERSATION_EVENT_TYPES;
use universal_events::document::{DocumentEvent, DOCUMENT_EVENT_TYPES};
use universal_events::file::{FileEvent, FILE_EVENT_TYPES};
use universal_events::flag::{FlagEvent, FLAG_EVENT_TYPES};
use universal_events::identity::{ORGANIZATION_EVENT_TYPES, USER_EVENT_TYPES};
use universal_events::import::{ImportEvent, IMPORT_EVENT_TYPES};
use universal_events::messaging::{InboxEvent, MessagingEvent, MESSAGING_EVENT_TYPES};
use universal_events::project::PROJECT_EVENT_TYPES;
use universal_events::swarm::{ANALYSIS_EVENT_TYPES, SWARM_TASK_EVENT_TYPES};
use universal_events::team::TEAM_EVENT_TYPES;
use universal_events::{
    BuildingEvent, ConversationEvent, EmailEvent, EventFamily, OrganizationEvent, ProjectEvent,
    SwarmTaskEvent, TeamEvent, UserEvent,
};

fn samples() -> Vec<(String, i32, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let stem = name.strip_suffix(".json").expect("samples are .json files");
        let (event_type, version) = stem.rsplit_once(".v").expect("<Type>.v<N>.json");
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((
            event_type.to_owned(),
            version.parse().unwrap(),
            serde_json::from_str(&text).unwrap(),
        ));
    }
    out
}

fn check<F: EventFamily + PartialEq + std::fmt::Debug>(t: &str, version: i32, data: &Value) {
    let event =
        F::decode(t, version, data.clone()).unwrap_or_else(|e| panic!("{t} v{version}: {e}"));
    assert_eq!(event.event_type(), t);
    let borrowed = F::decode_ref(t, version, data).unwrap();
    assert_eq!(
        borrowed, event,
        "{t} v{version}: decode_ref agrees with decode"
    );
    if version == F::schema_version(t) {
        assert_eq!(&event.to_data(), data, "{t} v{version} did not round-trip");
        let text: Value = serde_json::from_str(&event.to_data_text()).unwrap();
        assert_eq!(
            &text, data,
            "{t} v{version}: the payload text is the payload"
        );
    } else {
        let current = event.to_data();
        let again = F::decode(t, F::schema_version(t), current).unwrap();
        assert_eq!(again, event, "{t}: the upcast event survives re-encoding");
    }
}

#[test]
fn every_event_sample_decodes_and_current_versions_round_trip() {
    let mut covered = BTreeSet::new();
    for (t, version, data) in samples() {
        if EVENT_TYPES.contains(&t.as_str()) {
            check::<BuildingEvent>(&t, version, &data);
        } else if USER_EVENT_TYPES.contains(&t.as_str()) {
            check::<UserEvent>(&t, version, &data);
        } else if ORGANIZATION_EVENT_TYPES.contains(&t.as_str()) {
            check::<OrganizationEvent>(&t, version, &data);
        } else if CONVERSATION_EVENT_TYPES.contains(&t.as_str()) {
            check::<ConversationEvent>(&t, version, &data);
        } else if MESSAGING_EVENT_TYPES.contains(&t.as_str()) {
            check::<MessagingEvent>(&t, version, &data);
        } else if t == "NotificationsRead" {
            check::<InboxEvent>(&t, version, &data);
        } else if TEAM_EVENT_TYPES.contains(&t.as_str()) {
            check::<TeamEvent>(&t, version, &data);
        } else if PROJECT_EVENT_TYPES.contains(&t.as_str()) {
            check::<ProjectEvent>(&t, version, &data);
        } else if SWARM_TASK_EVENT_TYPES.contains(&t.as_str()) {
            check::<SwarmTaskEvent>(&t, version, &data);
        } else if ANALYSIS_EVENT_TYPES.contains(&t.as_str()) {
            check::<SwarmTaskEvent>(&t, version, &data);
        } else if FLAG_EVENT_TYPES.contains(&t.as_str()) {
            check::<FlagEvent>(&t, version, &data);
        } else if IMPORT_EVENT_TYPES.contains(&t.as_str()) {
            check::<ImportEvent>(&t, version, &data);
        } else if DOCUMENT_EVENT_TYPES.contains(&t.as_str()) {
            check::<DocumentEvent>(&t, version, &data);
        } else if FILE_EVENT_TYPES.contains(&t.as_str()) {
            check::<FileEvent>(&t, version, &data);
        } else if t == "EmailClaimed" {
            check::<EmailEvent>(&t, version, &data);
        } else {
            panic!("sample of unknown type {t}");
        }
        covered.insert((t, version));
    }
    let current = EVENT_TYPES
        .iter()
        .map(|t| (*t, BuildingEvent::schema_version(t)))
        .chain(USER_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(ORGANIZATION_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(CONVERSATION_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(
            MESSAGING_EVENT_TYPES
                .iter()
                .map(|t| (*t, MessagingEvent::schema_version(t))),
        )
        .chain(TEAM_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(PROJECT_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(SWARM_TASK_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(ANALYSIS_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(FLAG_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(IMPORT_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(DOCUMENT_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain(FILE_EVENT_TYPES.iter().map(|t| (*t, 1)))
        .chain([("EmailClaimed", 1), ("NotificationsRead", 1)]);
    for (t, v) in current {
        assert!(
            covered.contains(&(t.to_owned(), v)),
            "no sample for {t} v{v}"
        );
    }
}

#[test]
fn a_version_one_building_upcasts_to_no_organization() {
    let v1 = serde_json::json!({
        "building_id": "0193a1b2-0000-7000-8000-000000000001", "name": "Old", "address": null,
        "floor_area_m2": null, "registered_at": "2020-01-01T00:00:00Z"
    });
    match BuildingEvent::decode("BuildingRegistered", 1, v1).unwrap() {
        BuildingEvent::BuildingRegistered(b) => assert_eq!(b.organization_id, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_type_or_version_is_a_decode_error_not_a_panic() {
    let data = serde_json::json!({"sensor_id": "x"});
    assert!(BuildingEvent::decode("SensorExploded", 1, data.clone()).is_err());
    assert!(BuildingEvent::decode("SensorRegistered", 9, data.clone()).is_err());
    assert!(BuildingEvent::decode("SensorRegistered", 1, serde_json::json!({"x": 1})).is_err());
    assert!(UserEvent::decode_ref("UserExploded", 1, &data).is_err());
}
