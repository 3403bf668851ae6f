//! A checker for the subset of JSON Schema the agent registry uses: `type` (`object`,
//! `array`, `string`, `integer`, `number`, `boolean`), `properties`, `required`,
//! `additionalProperties: false`, `items`, `minItems`/`maxItems`, `minLength`/`maxLength`,
//! `minimum`/`maximum` and `enum`.
//!
//! Written here rather than taken from a crate: no JSON Schema validator is available to this
//! build (the `jsonschema` crate is not in the registry cache it builds from), and the subset
//! is small. [`check_schema`] refuses a schema that uses anything else, so a registry entry
//! can never rely on a keyword that would be silently ignored.

use serde_json::Value;

const KEYWORDS: [&str; 14] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "enum",
    "description",
    "default",
];

/// Refuses a schema that uses a keyword or type outside the subset (`Err` names where).
pub fn check_schema(schema: &Value, at: &str) -> Result<(), String> {
    let obj = schema
        .as_object()
        .ok_or_else(|| format!("{at}: a schema must be an object"))?;
    for key in obj.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!("{at}: unsupported keyword `{key}`"));
        }
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
        other => return Err(format!("{at}: unsupported type {other:?}")),
    }
    if let Some(extra) = obj.get("additionalProperties") {
        if extra != &Value::Bool(false) {
            return Err(format!("{at}: additionalProperties may only be false"));
        }
    }
    if let Some(props) = obj.get("properties") {
        let props = props
            .as_object()
            .ok_or_else(|| format!("{at}: properties must be an object"))?;
        for (name, sub) in props {
            check_schema(sub, &format!("{at}.{name}"))?;
        }
    }
    if let Some(items) = obj.get("items") {
        check_schema(items, &format!("{at}[]"))?;
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks `value` against `schema`; `Err` says where (`path`, e.g. `task_data.objectives[2]`)
/// and what is wrong, in words a caller (or a model) can act on. Stops at the first error.
pub fn validate(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let fail = |message: String| Err(format!("{path}: {message}"));
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let fits = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !fits {
        return fail(format!(
            "must be {ty_article} {ty}, not {}",
            type_name(value),
            ty_article = article(ty)
        ));
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return fail(format!("must be one of {}", names.join(", ")));
        }
    }
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    let count = |key: &str| schema.get(key).and_then(Value::as_u64);
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = count("minLength") {
                if len < min {
                    return fail(format!("must be at least {min} characters long"));
                }
            }
            if let Some(max) = count("maxLength") {
                if len > max {
                    return fail(format!("must be at most {max} characters long"));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = number("minimum") {
                if x.is_nan() || x < min {
                    return fail(format!("must be at least {min}"));
                }
            }
            if let Some(max) = number("maximum") {
                if x.is_nan() || x > max {
                    return fail(format!("must be at most {max}"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = count("minItems") {
                if (items.len() as u64) < min {
                    return fail(format!("must hold at least {min} items"));
                }
            }
            if let Some(max) = count("maxItems") {
                if items.len() as u64 > max {
                    return fail(format!("must hold at most {max} items"));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item_schema, item, &format!("{path}[{i}]"))?;
                }
            }
        }
        Value::Object(fields) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        return Err(format!("{path}.{name}: is required"));
                    }
                }
            }
            let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
            for (name, field) in fields {
                match props.and_then(|p| p.get(name)) {
                    Some(sub) => validate(sub, field, &format!("{path}.{name}"))?,
                    None if closed => {
                        let known: Vec<&str> = props
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        return Err(format!(
                            "{path}.{name}: is not a known field (known: {})",
                            known.join(", ")
                        ));
                    }
                    None => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn article(ty: &str) -> &'static str {
    match ty.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lesson() -> Value {
        json!({
            "type": "object",
            "required": ["title", "sections"],
            "additionalProperties": false,
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 20},
                "grade": {"type": "integer", "minimum": 0, "maximum": 12},
                "level": {"type": "string", "enum": ["easy", "hard"]},
                "sections": {
                    "type": "array", "minItems": 1, "maxItems": 2,
                    "items": {"type": "object", "required": ["heading"],
                              "properties": {"heading": {"type": "string"}}}
                }
            }
        })
    }

    #[test]
    fn a_valid_value_passes_and_each_kind_of_error_names_its_path() {
        let s = lesson();
        let ok = json!({"title": "Fractions", "grade": 5, "sections": [{"heading": "Halves"}]});
        assert_eq!(validate(&s, &ok, "output"), Ok(()));
        let cases = [
            (
                json!({"sections": [{"heading": "x"}]}),
                "output.title: is required",
            ),
            (
                json!({"title": 3, "sections": [{"heading": "h"}]}),
                "output.title: must be a string, not an integer",
            ),
            (
                json!({"title": "", "sections": [{"heading": "h"}]}),
                "output.title: must be at least 1 characters long",
            ),
            (
                json!({"title": "t", "sections": []}),
                "output.sections: must hold at least 1 items",
            ),
            (
                json!({"title": "t", "grade": 13, "sections": [{"heading": "h"}]}),
                "output.grade: must be at most 12",
            ),
            (
                json!({"title": "t", "grade": 2.5, "sections": [{"heading": "h"}]}),
                "output.grade: must be an integer, not a number",
            ),
            (
                json!({"title": "t", "level": "mid", "sections": [{"heading": "h"}]}),
                "output.level: must be one of \"easy\", \"hard\"",
            ),
            (
                json!({"title": "t", "sections": [{}]}),
                "output.sections[0].heading: is required",
            ),
            (
                json!({"title": "t", "sections": [{"heading": "h"}], "x": 1}),
                "output.x: is not a known field (known: grade, level, sections, title)",
            ),
            (json!([1]), "output: must be an object, not an array"),
        ];
        for (value, error) in cases {
            assert_eq!(
                validate(&s, &value, "output"),
                Err(error.to_owned()),
                "{value}"
            );
        }
    }

    #[test]
    fn a_schema_outside_the_subset_is_refused() {
        assert_eq!(check_schema(&lesson(), "s"), Ok(()));
        let pattern = json!({"type": "string", "pattern": "^a"});
        assert_eq!(
            check_schema(&pattern, "s"),
            Err("s: unsupported keyword `pattern`".into())
        );
        let open = json!({"type": "object", "additionalProperties": {"type": "string"}});
        assert!(check_schema(&open, "s").is_err());
        let nested = json!({"type": "array", "items": {"type": "null"}});
        assert_eq!(
            check_schema(&nested, "s"),
            Err("s[]: unsupported type Some(\"null\")".into())
        );
    }
}
