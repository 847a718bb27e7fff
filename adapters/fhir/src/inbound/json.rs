//! JSON at the boundary: a strict parse (no duplicate keys, no XML, bounded size), typed
//! deserialisation that reports the FHIRPath of a bad element, and a canonical content
//! hash for event ids.

use std::fmt::Write as _;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::outcome::{HttpStatus, Issue, IssueType, Refusal};

/// Parse a request body into JSON, refusing what is not one FHIR JSON document.
pub(crate) fn parse_body(body: &[u8], max_bytes: usize) -> Result<Value, Refusal> {
    if body.len() > max_bytes {
        return Err(Refusal::new(
            HttpStatus::PayloadTooLarge,
            Issue::error(
                IssueType::TooLong,
                format!("the body is larger than the {max_bytes}-byte limit of this endpoint"),
            ),
        ));
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(Refusal::bad_request(
                IssueType::Structure,
                "the body is empty: send one fhir json resource",
            ));
        }
        Some(b'<') => {
            return Err(Refusal::unsupported_media_type(
                "the body is xml: parcours accepts fhir json only (application/fhir+json)",
            ));
        }
        Some(_) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed =
        <Strict as serde::Deserialize>::deserialize(&mut de).and_then(|v| de.end().map(|()| v.0));
    parsed.map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "the json has a duplicate key",
            serde_json::error::Category::Eof => "the json ends too early",
            _ => "the body is not valid json",
        };
        Refusal::bad_request(
            IssueType::Structure,
            format!("{what} (line {}, column {})", e.line(), e.column()),
        )
    })
}

/// A JSON value whose objects have no duplicate keys (FHIR JSON forbids them, and two
/// parsers reading different values of one key is how data gets misrouted).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any json value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom("duplicate key"));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Deserialise `value` into `T`; on failure, refuse with 400 and the FHIRPath of the bad
/// element (`prefix` is the path of `value` itself, such as `Bundle.entry[2].resource`).
///
/// The serde message is never echoed: it can quote the value, which may be patient data.
pub(crate) fn typed<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, Refusal> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let mut at = prefix.to_owned();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    let _ = write!(at, "[{index}]");
                }
                serde_path_to_error::Segment::Map { key } => {
                    at.push('.');
                    at.push_str(&safe_segment(key));
                }
                serde_path_to_error::Segment::Enum { variant } => {
                    at.push('.');
                    at.push_str(&safe_segment(variant));
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = e.inner().to_string();
        let what = if message.starts_with("invalid type") {
            "this element has the wrong json type for its fhir data type"
        } else if message.starts_with("invalid value") {
            "this element's value is out of range for its fhir data type"
        } else if message.starts_with("invalid length") {
            "this element has the wrong number of items"
        } else {
            "this element cannot be read as its fhir data type"
        };
        Refusal::bad_request(IssueType::Structure, what).at(at)
    })
}

/// An element name from the input, reduced to characters that can appear in FHIRPath.
fn safe_segment(key: &str) -> String {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok { key.to_owned() } else { "?".to_owned() }
}

/// A stable digest of a resource's content: keys sorted, `meta` left out (servers bump
/// `lastUpdated` without changing anything), as a name-based UUID.
pub(crate) fn content_hash(resource: &Value) -> uuid::Uuid {
    let mut out = Vec::with_capacity(1024);
    if let Value::Object(map) = resource {
        let mut keys: Vec<&String> = map.keys().filter(|k| k.as_str() != "meta").collect();
        keys.sort();
        out.push(b'{');
        for key in keys {
            write_canonical(&Value::String(key.clone()), &mut out);
            out.push(b':');
            if let Some(v) = map.get(key) {
                write_canonical(v, &mut out);
            }
            out.push(b',');
        }
        out.push(b'}');
    } else {
        write_canonical(resource, &mut out);
    }
    uuid::Uuid::new_v5(&CONTENT_NAMESPACE, &out)
}

/// Namespace of content digests.
const CONTENT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5d0e_7c1b_4a0f_4a43_9d43_2f5d_3b1e_9c01);

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => {
            out.push(b'"');
            for c in s.chars() {
                match c {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    c if (c as u32) < 0x20 => {
                        out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                    }
                    c => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            out.push(b'"');
        }
        Value::Array(items) => {
            out.push(b'[');
            for item in items {
                write_canonical(item, out);
                out.push(b',');
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for key in keys {
                write_canonical(&Value::String(key.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
                out.push(b',');
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused() {
        let err = parse_body(
            br#"{"resourceType":"Observation","status":"final","status":"x"}"#,
            1 << 20,
        )
        .expect_err("duplicate");
        assert_eq!(err.status, HttpStatus::BadRequest);
        assert!(err.issues[0].diagnostics.contains("duplicate key"), "{err}");
    }

    #[test]
    fn bom_is_skipped_and_xml_is_415() {
        assert!(parse_body(b"\xEF\xBB\xBF{\"a\":1}", 1 << 20).is_ok());
        let err =
            parse_body(b"  <Patient xmlns=\"http://hl7.org/fhir\"/>", 1 << 20).expect_err("xml");
        assert_eq!(err.status, HttpStatus::UnsupportedMediaType);
        let err = parse_body(b"{\"a\":1}", 3).expect_err("too large");
        assert_eq!(err.status, HttpStatus::PayloadTooLarge);
        let err = parse_body(b"   ", 10).expect_err("empty");
        assert_eq!(err.status, HttpStatus::BadRequest);
    }

    #[test]
    fn syntax_errors_do_not_echo_the_input() {
        let err = parse_body(br#"{"name": "Jean Dupont" "#, 1 << 20).expect_err("eof");
        assert!(!err.to_string().contains("Dupont"), "{err}");
        let err = parse_body(br#"{"name": Dupont}"#, 1 << 20).expect_err("syntax");
        assert!(!err.to_string().contains("Dupont"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        assert!(parse_body(deep.as_bytes(), 1 << 20).is_err());
    }

    #[test]
    fn content_hash_ignores_key_order_and_meta() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"x":[1,2],"y":"é"},"meta":{"v":1}}"#)
            .expect("json");
        let b: Value = serde_json::from_str(r#"{"b":{"y":"é","x":[1,2]},"a":1,"meta":{"v":2}}"#)
            .expect("json");
        let c: Value = serde_json::from_str(r#"{"b":{"y":"e","x":[1,2]},"a":1}"#).expect("json");
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }
}
