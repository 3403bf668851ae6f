//! The catalogue is complete: every event type of every family has a JSON Schema for each
//! of its versions, and a sample in `events/samples/` for each version, that the schema
//! accepts the shape of (every required property of the schema is in the sample).

use std::path::Path;

use universal_events::catalog::catalogue;

#[test]
fn every_event_type_has_a_schema_and_a_sample_for_every_version() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let entries = catalogue();
    assert!(entries.len() > 50, "the catalogue lists every type");
    for entry in &entries {
        assert_eq!(
            entry.versions.last().map(|v| v.version),
            Some(entry.current_version),
            "{}: the last version is the current one",
            entry.event_type
        );
        for v in &entry.versions {
            let schema = v
                .schema
                .as_object()
                .unwrap_or_else(|| panic!("{} v{} has no schema", entry.event_type, v.version));
            assert_eq!(schema["title"], entry.event_type);
            let file = samples.join(format!("{}.v{}.json", entry.event_type, v.version));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|_| panic!("{} v{} has no sample", entry.event_type, v.version));
            let sample: serde_json::Value = serde_json::from_str(&text).unwrap();
            if let Some(required) = schema.get("required").and_then(|r| r.as_array()) {
                for field in required {
                    let field = field.as_str().unwrap();
                    assert!(
                        sample.get(field).is_some(),
                        "{} v{}: the sample lacks the required `{field}`",
                        entry.event_type,
                        v.version
                    );
                }
            }
        }
    }
    let mut names: Vec<_> = entries.iter().map(|e| e.event_type).collect();
    names.dedup();
    assert_eq!(names.len(), entries.len(), "each type is listed once");
}

#[test]
fn every_sample_belongs_to_a_catalogued_type_and_version() {
    let entries = catalogue();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    for file in std::fs::read_dir(dir).unwrap() {
        let name = file.unwrap().file_name().into_string().unwrap();
        let stem = name.strip_suffix(".json").unwrap();
        let (t, v) = stem.rsplit_once(".v").unwrap();
        let v: i32 = v.parse().unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e.event_type == t && e.versions.iter().any(|x| x.version == v)),
            "the sample {name} is of no catalogued type and version"
        );
    }
}
