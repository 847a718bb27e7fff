//! Real messages held to the NATS interface's AsyncAPI document
//! (`parcours_http::asyncapi`): what parcours published to `PARCOURS_OUT` and
//! `PARCOURS_DLQ`, read back from the streams, must match a message of the channel its
//! subject belongs to — headers (every header named, those always set present) and
//! payload (every field named; the schemas are the HTTP API's).

#[path = "../../../../engine/http/tests/contract/schemas.rs"]
mod schemas;

use std::sync::OnceLock;

use parcours_nats::Nats;
use schemas::{Schemas, escape};
use serde_json::{Map, Value};

/// The document, made strict.
pub fn document() -> &'static Schemas {
    static DOC: OnceLock<Schemas> = OnceLock::new();
    DOC.get_or_init(|| Schemas::new(parcours_http::asyncapi::document().clone()))
}

/// Every message of the streams parcours publishes to, checked; how many there were.
pub async fn check_published(nats: &Nats) -> usize {
    let mut checked = 0;
    for name in ["PARCOURS_OUT", "PARCOURS_DLQ"] {
        let Ok(mut stream) = nats.jetstream().get_stream(name).await else {
            continue;
        };
        let state = &stream.info().await.expect("stream info").state;
        if state.messages == 0 {
            continue;
        }
        let (first, last) = (state.first_sequence, state.last_sequence);
        for seq in first..=last {
            // A sequence deleted from the stream (limits) is not there to check.
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let headers: Vec<(String, String)> = m
                .headers
                .iter()
                .flat_map(|(k, vs)| {
                    vs.iter()
                        .map(move |v| (k.to_string(), v.as_str().to_owned()))
                })
                .collect();
            check_message(m.subject.as_str(), &headers, &m.payload);
            checked += 1;
        }
    }
    checked
}

/// Whether `subject` fits a channel address (`parcours.{tenant}.out.{kind}`): each
/// parameter one or more characters, dots only in one that ends the address (an event
/// type).
fn fits(address: &str, subject: &str) -> bool {
    match address.find('{') {
        None => address == subject,
        Some(open) => {
            let Some(rest) = subject.strip_prefix(&address[..open]) else {
                return false;
            };
            let close = address[open..]
                .find('}')
                .map_or(address.len(), |c| open + c);
            let after = &address[close + 1..];
            let last = after.is_empty();
            (1..=rest.len()).any(|n| {
                rest.is_char_boundary(n)
                    && (last || !rest[..n].contains('.'))
                    && fits(after, &rest[n..])
            })
        }
    }
}

/// The channel of a subject (the most specific address that fits), and a message of it
/// that the headers and payload match; else a panic saying what does not.
pub fn check_message(subject: &str, headers: &[(String, String)], payload: &[u8]) {
    let doc = document();
    let channels = doc.doc()["channels"].as_object().expect("channels");
    let (name, channel) = channels
        .iter()
        .filter(|(_, c)| c["address"].as_str().is_some_and(|a| fits(a, subject)))
        .max_by_key(|(_, c)| {
            c["address"]
                .as_str()
                .map_or(0, |a| a.replace(['{', '}'], "").len())
        })
        .unwrap_or_else(|| panic!("`{subject}`: no channel of the AsyncAPI document has it"));
    let header_values: Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let header_values = Value::Object(header_values);
    let body = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
    };
    let mut refusals = Vec::new();
    for (key, message) in channel["messages"].as_object().expect("messages") {
        let at = format!("#/channels/{}/messages/{}", escape(name), escape(key));
        let (message, at) = doc.resolve(message, at);
        let mut errors = Vec::new();
        for (part, value) in [("headers", &header_values), ("payload", &body)] {
            if message.get(part).is_some() {
                let (_, pointer) = doc.resolve(&message[part], format!("{at}/{part}"));
                errors.extend(
                    doc.errors(&pointer, value)
                        .into_iter()
                        .map(|e| format!("{part}{e}")),
                );
            }
        }
        if errors.is_empty() {
            return;
        }
        refusals.push(format!("as {at}:\n{}", errors.join("\n")));
    }
    panic!(
        "`{subject}` (channel {name}) matches none of its messages:\n{}\nheaders: {header_values}\npayload: {body}",
        refusals.join("\n")
    );
}

#[test]
fn addresses_fit_their_subjects() {
    assert!(fits(
        "parcours.{tenant}.out.{kind}",
        "parcours.cpts-a.out.task"
    ));
    assert!(fits(
        "parcours.{tenant}.in.p{partition}.{eventType}",
        "parcours.cpts-a.in.p04.encounter.discharged"
    ));
    assert!(!fits(
        "parcours.{tenant}.out.{kind}",
        "parcours.cpts-a.in.task"
    ));
    assert!(!fits("parcours.{tenant}.dlq", "parcours.a.b.dlq"));
    assert!(fits("parcours._unknown.dlq", "parcours._unknown.dlq"));
}
