//! Reading JSON input without quoting it back.
//!
//! serde_json's messages quote the value they refused (`invalid type: string "DUPONT
//! Jean 1950-03-12", expected a sequence`), and what parcours reads is patient data. The
//! refusal of an input reaches logs, dead-letter reasons (stored in clear) and the
//! answer to the sender, so every front reads JSON through here: a [`JsonError`] names
//! where (the JSON path, and the line and column when the input is text), what kind of
//! value was found and what was expected — never the value.
//!
//! Canonical events: [`Event::from_json_slice`] and [`Event::from_json_value`] (the
//! usual serde decoding, and on failure a second look that finds the path, which
//! serde cannot follow through the event's flattened `type`/`data`).

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::events::{Event, EventType};
use crate::value::Type;

/// Why a JSON input could not be read, in words that quote none of its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// Where: `data.diagnoses`, `items[2].code` (keys that are not plain names show as
    /// `?`); empty for the whole input.
    pub path: String,
    /// What is wrong: `a string where a sequence is expected`.
    pub what: String,
    /// Line and column (1-based) in the text, when the input was text.
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "`{}`: ", self.path)?;
        }
        f.write_str(&self.what)?;
        if let Some((line, column)) = self.position {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for JsonError {}

impl JsonError {
    fn of(e: &serde_json::Error, path: String) -> JsonError {
        JsonError {
            what: describe(e),
            path,
            position: position(e),
        }
    }
}

fn position(e: &serde_json::Error) -> Option<(usize, usize)> {
    (e.line() > 0).then(|| (e.line(), e.column()))
}

/// Read a `T` from JSON text.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| JsonError::of(e.inner(), render_path(e.path())))?;
    de.end().map_err(|e| JsonError::of(&e, String::new()))?;
    Ok(value)
}

/// Read a `T` from a JSON value.
pub fn from_value<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T, JsonError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| JsonError::of(e.inner(), render_path(e.path())))
}

impl Event {
    /// A canonical event from CloudEvents JSON text (the envelope with `type` and
    /// `data`); a refusal quotes no value from it.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Event, JsonError> {
        match serde_json::from_slice::<Event>(bytes) {
            Ok(event) => Ok(event),
            Err(e) => {
                let mut found = match serde_json::from_slice::<Value>(bytes) {
                    Ok(value) if e.is_data() => {
                        diagnose(&value).unwrap_or_else(|| JsonError::of(&e, String::new()))
                    }
                    _ => JsonError::of(&e, String::new()),
                };
                found.position = position(&e);
                Err(found)
            }
        }
    }

    /// A canonical event from a JSON value; a refusal quotes no value from it.
    pub fn from_json_value(value: &Value) -> Result<Event, JsonError> {
        Event::deserialize(value)
            .map_err(|e| diagnose(value).unwrap_or_else(|| JsonError::of(&e, String::new())))
    }
}

/// The envelope as [`Event`] reads it, with `data` kept as JSON.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Envelope {
    id: String,
    tenant: String,
    #[serde(default)]
    source: String,
    subject: String,
    occurredat: jiff::Timestamp,
    #[serde(default)]
    time: Option<jiff::Timestamp>,
    #[serde(rename = "type")]
    ty: EventType,
    data: Value,
}

/// Where and why a value is not a canonical event, found by reading it again in two
/// steps (envelope, then `data` as its type's struct) so the path is known. `None`
/// when both steps succeed (what failed is not found here).
fn diagnose(value: &Value) -> Option<JsonError> {
    if !value.is_object() {
        return Some(JsonError {
            path: String::new(),
            what: "a canonical event is a JSON object".into(),
            position: None,
        });
    }
    let envelope: Envelope = match serde_path_to_error::deserialize(value) {
        Ok(e) => e,
        Err(e) => {
            let path = render_path(e.path());
            let what = match path.as_str() {
                "type" if e.inner().is_data() && custom(e.inner()) => {
                    "not an event type of the catalogue (`parcours events` lists them)".into()
                }
                "occurredat" | "time" if custom(e.inner()) => TIMESTAMP.into(),
                _ => describe(e.inner()),
            };
            return Some(JsonError {
                path,
                what,
                position: None,
            });
        }
    };
    let e = crate::events::EventData::check_json(envelope.ty, &envelope.data).err()?;
    let field = e.path().iter().next().and_then(|s| match s {
        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
        _ => None,
    });
    let timestamp = field.as_deref().is_some_and(|name| {
        envelope
            .ty
            .fields()
            .iter()
            .any(|f| f.name == name && f.ty == Type::Timestamp)
    });
    let what = if timestamp && custom(e.inner()) {
        TIMESTAMP.into()
    } else {
        describe(e.inner())
    };
    let inner = render_path(e.path());
    Some(JsonError {
        path: if inner.is_empty() {
            "data".into()
        } else {
            format!("data.{inner}")
        },
        what,
        position: None,
    })
}

const TIMESTAMP: &str = "not an RFC 3339 timestamp (such as 2026-03-02T09:00:00Z)";

/// Whether a data error is a type's own message (which may quote the value), not one
/// of serde's standard ones.
fn custom(e: &serde_json::Error) -> bool {
    let m = bare(e);
    ![
        "invalid type: ",
        "invalid value: ",
        "invalid length ",
        "unknown variant `",
        "unknown field `",
        "missing field `",
        "duplicate field `",
    ]
    .iter()
    .any(|p| m.starts_with(p))
}

/// The message without serde_json's ` at line L column C`.
fn bare(e: &serde_json::Error) -> String {
    let m = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match m.strip_suffix(&suffix) {
        Some(s) if e.line() > 0 => s.to_owned(),
        _ => m,
    }
}

/// serde_json's message in words that quote nothing from the input.
fn describe(e: &serde_json::Error) -> String {
    if !e.is_data() {
        // Syntax, end of input, IO: serde_json's fixed texts ("expected `,` or `}`").
        return match e.classify() {
            serde_json::error::Category::Eof => "the JSON ends too early".into(),
            _ => format!("not valid JSON: {}", bare(e)),
        };
    }
    let m = bare(e);
    let expected = |rest: &str| {
        rest.rfind(", expected ")
            .map(|i| rest[i + ", expected ".len()..].to_owned())
    };
    if let Some(rest) = m.strip_prefix("invalid type: ") {
        let found = kind(rest);
        return match expected(rest) {
            Some(x) => format!("{found} where {x} is expected"),
            None => format!("{found} of the wrong type"),
        };
    }
    if let Some(rest) = m.strip_prefix("invalid value: ") {
        return match expected(rest) {
            Some(x) => format!("{} out of range where {x} is expected", kind(rest)),
            None => "a value out of range".into(),
        };
    }
    if m.starts_with("invalid length ") || m.starts_with("missing field `") {
        // A count, or one of parcours' own field names.
        return m;
    }
    if let Some(rest) = m.strip_prefix("duplicate field `") {
        return format!("duplicate field `{}`", name_in(rest));
    }
    if let Some(rest) = m.strip_prefix("unknown variant `") {
        return match expected(rest) {
            Some(x) => format!("not one of the known values (expected {x})"),
            None => "not one of the known values".into(),
        };
    }
    if let Some(rest) = m.strip_prefix("unknown field `") {
        // The path names the field (`?` unless it is a plain name).
        return match expected(rest) {
            Some(x) => format!("unknown field (expected {x})"),
            None => "unknown field (this object has no fields)".into(),
        };
    }
    "a value that cannot be read as its type".into()
}

/// The name between backticks at the start of `rest` (serde's `` `name`, … ``), when
/// it is a plain name; `?` otherwise.
fn name_in(rest: &str) -> String {
    safe_segment(&rest[..rest.rfind('`').unwrap_or(rest.len())])
}

/// The kind of value serde's `Unexpected` names, without the value itself.
fn kind(unexpected: &str) -> &'static str {
    let word = unexpected.split([' ', ',']).next().unwrap_or_default();
    match word {
        "string" | "char" => "a string",
        "integer" => "an integer",
        "floating" => "a number",
        "boolean" => "a boolean",
        "null" | "unit" => "null",
        "map" => "an object",
        "sequence" => "an array",
        _ => "a value",
    }
}

/// A key from the input in a path: kept when it is a plain name (letters, digits, `_`,
/// `-`, at most 64), `?` otherwise.
fn safe_segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain { key.to_owned() } else { "?".into() }
}

fn render_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
            }
            serde_path_to_error::Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&safe_segment(key));
            }
            serde_path_to_error::Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&safe_segment(variant));
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "DUPONT Jean 1950-03-12";

    fn event(change: impl FnOnce(&mut Value)) -> Value {
        let mut v = serde_json::json!({
            "id": "e1", "tenant": "cpts-a", "source": "his", "subject": "p-1",
            "occurredat": "2026-03-02T09:00:00Z", "type": "encounter.discharged",
            "data": {"encounter_id": "V1", "destination": "home", "diagnoses": ["I50.1"]}
        });
        change(&mut v);
        v
    }

    /// The refusal of the value, read as a value and as text.
    fn refusals(v: &Value) -> (JsonError, JsonError) {
        let text = serde_json::to_vec_pretty(v).expect("json");
        (
            Event::from_json_value(v).expect_err("refused"),
            Event::from_json_slice(&text).expect_err("refused"),
        )
    }

    #[test]
    fn type_errors_name_the_path_and_the_expected_type_not_the_value() {
        let v = event(|v| v["data"]["diagnoses"] = NAME.into());
        let (from_value, from_text) = refusals(&v);
        assert_eq!(
            from_value.to_string(),
            "`data.diagnoses`: a string where a sequence is expected"
        );
        assert_eq!(from_text.path, "data.diagnoses");
        assert!(from_text.position.is_some(), "{from_text}");
        assert!(
            from_text
                .to_string()
                .starts_with("`data.diagnoses`: a string where a sequence is expected (line "),
            "{from_text}"
        );
    }

    #[test]
    fn no_refusal_quotes_the_value() {
        let cases: Vec<Value> = vec![
            event(|v| v["data"]["diagnoses"] = NAME.into()),
            event(|v| v["data"]["diagnoses"] = serde_json::json!(["I50", {"n": NAME}])),
            event(|v| v["data"]["admitted_at"] = NAME.into()),
            event(|v| v["data"]["encounter_id"] = serde_json::json!([NAME])),
            event(|v| v["data"][NAME] = 1.into()),
            event(|v| v["occurredat"] = NAME.into()),
            event(|v| v["time"] = NAME.into()),
            event(|v| v["type"] = NAME.into()),
            event(|v| v["id"] = serde_json::json!({ "x": NAME })),
            event(|v| v["tenant"] = 12.5.into()),
            event(|v| v["data"] = NAME.into()),
            event(|v| v["type"] = "observation.recorded".into()),
            serde_json::json!(NAME),
        ];
        for v in &cases {
            let (a, b) = refusals(v);
            for e in [a, b] {
                let shown = format!("{e} {e:?}");
                assert!(
                    !shown.contains("DUPONT") && !shown.contains("Jean"),
                    "{shown}"
                );
            }
        }
        let (e, _) = refusals(&cases[2]);
        assert_eq!(
            e.to_string(),
            "`data.admitted_at`: not an RFC 3339 timestamp (such as 2026-03-02T09:00:00Z)"
        );
        let (e, _) = refusals(&cases[4]);
        assert!(
            e.to_string()
                .starts_with("`data.?`: unknown field (expected one of `encounter_id`"),
            "{e}"
        );
        let (e, _) = refusals(&cases[7]);
        assert_eq!(
            e.to_string(),
            "`type`: not an event type of the catalogue (`parcours events` lists them)"
        );
    }

    #[test]
    fn text_errors_give_line_and_column() {
        let e =
            Event::from_json_slice(format!("{{\"id\": \"{NAME}\" ").as_bytes()).expect_err("eof");
        assert_eq!(e.to_string(), "the JSON ends too early (line 1, column 32)");
        let e =
            Event::from_json_slice(format!("{{\"id\": {NAME}}}").as_bytes()).expect_err("syntax");
        assert!(!e.to_string().contains("DUPONT"), "{e}");
        assert!(e.to_string().starts_with("not valid JSON: "), "{e}");
        let e = from_slice::<Vec<u32>>(b"[1, 2, \"DUPONT\"]").expect_err("type");
        assert_eq!(
            e.to_string(),
            "`[2]`: a string where u32 is expected (line 1, column 15)"
        );
    }

    #[test]
    fn good_events_read_as_serde_reads_them() {
        let v = event(|_| {});
        let a = Event::from_json_value(&v).expect("event");
        let b = Event::from_json_slice(&serde_json::to_vec(&v).expect("json")).expect("event");
        let c: Event = serde_json::from_value(v).expect("event");
        assert_eq!(a, c);
        assert_eq!(b, c);
    }
}
