//! Keeps the documentation true to the code, without a server: every setting of
//! `src/config.rs` is on the operations page, the README stays short, and every relative
//! link in the README and `docs/` points at a file that exists.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The longest the README may grow; the detail belongs in `docs/`.
const README_MAX_LINES: usize = 300;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `env = "NAME"` of the source, in order of first appearance, without repeats.
fn env_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("env") {
        rest = &rest[at + 3..];
        // A whole word `env` followed by `=`: not `hide_env_values`, `env!` or `env(`.
        let start = source.len() - rest.len() - 3;
        let whole_word = source[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let Some(tail) = rest.trim_start().strip_prefix('=').filter(|_| whole_word) else {
            continue;
        };
        let Some(tail) = tail.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = tail.find('"') {
            let name = &tail[..end];
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// The targets of Markdown links `[text](target)` that are relative paths (no scheme, no
/// bare anchor), without their `#anchor`. Code spans and fenced blocks are skipped.
fn relative_links(markdown: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code spans, so that `a[i](x)` in code is not read as a link.
        let mut text = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                text.push_str(part);
            }
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            rest = &rest[end..];
            let path = target.split('#').next().unwrap_or("");
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            links.push(path.to_owned());
        }
    }
    links
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_setting_of_the_config_is_on_the_operations_page() {
    let config = read(&root().join("src/config.rs"));
    let operations = read(&root().join("docs/operations.md"));
    let names = env_names(&config);
    assert!(
        names.len() > 10,
        "found only {} settings in src/config.rs: {names:?}",
        names.len()
    );
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !operations.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "settings of src/config.rs missing from docs/operations.md (write each as `NAME` in \
         its table): {missing:?}"
    );
}

#[test]
fn the_readme_is_at_most_three_hundred_lines() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move detail into docs/"
    );
}

#[test]
fn every_relative_link_in_the_readme_and_docs_points_at_a_file_that_exists() {
    let mut broken = BTreeSet::new();
    for file in markdown_files() {
        let dir = file.parent().expect("a file has a folder");
        for link in relative_links(&read(&file)) {
            if !dir.join(&link).exists() {
                let name = file
                    .strip_prefix(root())
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                broken.insert(format!("{name}: {link}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to files that do not exist: {broken:#?}"
    );
}

#[test]
fn the_setting_reader_finds_names_split_over_lines_and_skips_look_alikes() {
    let source = r#"
        #[arg(long, env = "HOST", default_value = "x")]
        #[arg(
            long,
            env = "DATABASE_URL",
        )]
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        let v = env!("CARGO_PKG_VERSION");
        let e = env(&[("NAME", "x")]);
    "#;
    assert_eq!(env_names(source), ["HOST", "DATABASE_URL", "JWT_SECRET"]);
}

#[test]
fn the_link_reader_keeps_relative_paths_only() {
    let text = "See [ops](docs/operations.md#settings), [web](https://x.org/a.md), \
                [here](#top) and `[not](a-link.md)`.\n```\n[no](fenced.md)\n```\n";
    assert_eq!(relative_links(text), ["docs/operations.md"]);
}
