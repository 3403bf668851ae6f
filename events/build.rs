//! Embeds `samples/` into the crate (`universal_events::samples::SAMPLES`), so that the
//! catalogue a server serves carries every sample without the source tree beside it.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("events/samples exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut out = String::from("&[\n");
    for name in names {
        let stem = name.trim_end_matches(".json");
        let Some((event_type, version)) = stem.rsplit_once(".v") else {
            continue;
        };
        let path = dir.join(&name);
        writeln!(
            out,
            "    ({event_type:?}, {version}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push(']');
    let target = Path::new(&std::env::var("OUT_DIR").unwrap()).join("samples.rs");
    std::fs::write(target, out).unwrap();
}
