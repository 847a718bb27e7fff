//! ORU^R01: one observation.recorded per OBX.

use parcours_core::events::{EventData, data};

use super::tables::{StatusMapping, abnormal_flag, is_loinc_system, observation_status};
use super::{Ctx, Disposition, identity};
use crate::error::MapError;
use crate::message::{Field, Seg};

pub(crate) fn map(cx: &mut Ctx<'_>) -> Result<Disposition, MapError> {
    let mut subject: Option<String> = None;
    let mut obr: Option<Seg<'_>> = None;
    // The identity link of the PID being read, and where its events start: inserted
    // before them once they are known (none if it gave none).
    let mut link = None;
    let mut start = 0;
    for seg in cx.msg.segments() {
        match seg.name() {
            "PID" => {
                cx.link(start, link.take(), None);
                subject = Some(cx.subject(&identity::patient(seg, cx.identity)?));
                link = identity::link(seg, cx.identity)?;
                start = cx.events.len();
                obr = None;
            }
            "OBR" => obr = Some(seg),
            "OBX" => {
                let subject = subject
                    .clone()
                    .ok_or(MapError::MissingSegment { segment: "PID" })?;
                observation(cx, subject, obr, seg)?;
            }
            _ => {}
        }
    }
    cx.link(start, link, None);
    Ok(Disposition::Events)
}

fn observation(
    cx: &mut Ctx<'_>,
    subject: String,
    obr: Option<Seg<'_>>,
    obx: Seg<'_>,
) -> Result<(), MapError> {
    let status_field = obx.field(11);
    let status_code = status_field.value().ok_or_else(|| MapError::MissingField {
        location: status_field.location(),
        what: "result status",
    })?;
    let status = match observation_status(&status_code) {
        Some(StatusMapping::Status(s)) => s,
        Some(StatusMapping::Skip) => return Ok(()),
        None => {
            return Err(MapError::UnknownCode {
                location: status_field.location(),
                what: "result status",
                expected: "F, C, A, P, R, I, S, U, X, N, W, D or O",
            });
        }
    };
    let code = observation_code(cx, obx.field(3))?;
    let value = read_value(obx)?;
    let unit = {
        let f = obx.field(6);
        f.comp(1).value().or_else(|| f.comp(2).value())
    };
    let (reference_low, reference_high) = obx
        .field(7)
        .rep(1)
        .value()
        .map_or((None, None), |r| parse_range(&r));
    let abnormal = obx
        .field(8)
        .reps()
        .find_map(|r| r.comp(1).value().and_then(|f| abnormal_flag(&f)))
        .map(str::to_owned);
    let occurred_at =
        match cx.first_ts(&[Some(obx.field(14).comp(1)), obr.map(|o| o.field(7).comp(1))])? {
            Some(t) => t,
            None => cx.message_time()?,
        };
    let base = obr
        .and_then(|o| {
            o.field(3)
                .comp(1)
                .value()
                .or_else(|| o.field(2).comp(1).value())
        })
        .or_else(|| cx.msg.msh().field(10).value())
        .unwrap_or_default();
    let mut observation_id = format!(
        "{base}/{}",
        obx.field(3).comp(1).value().unwrap_or_default()
    );
    if let Some(sub) = obx.field(4).value() {
        observation_id.push('/');
        observation_id.push_str(&sub);
    }
    let data = data::ObservationRecorded {
        observation_id,
        code,
        value: value.number,
        comparator: value.comparator,
        // Free text (a comment, a report) may name the patient: not kept in the log.
        value_text: value
            .text
            .filter(|t| parcours_core::events::is_result_text(t)),
        unit,
        status: status.into(),
        reference_low,
        reference_high,
        abnormal_flag: abnormal,
    };
    cx.push(subject, occurred_at, EventData::ObservationRecorded(data));
    Ok(())
}

/// OBX-3: the LOINC code (OBX-3.1 when OBX-3.3 is LOINC, else OBX-3.4 when OBX-3.6 is);
/// otherwise the local code as `system|code`, translated through
/// [`IntakeConfig::local_codes`](crate::IntakeConfig::local_codes) when listed there.
fn observation_code(cx: &Ctx<'_>, f: Field<'_>) -> Result<String, MapError> {
    let (c1, s1) = (f.comp(1).value(), f.comp(3).value().unwrap_or_default());
    let (c2, s2) = (f.comp(4).value(), f.comp(6).value().unwrap_or_default());
    if let (Some(c), true) = (&c1, is_loinc_system(&s1)) {
        return Ok(c.clone());
    }
    if let (Some(c), true) = (&c2, is_loinc_system(&s2)) {
        return Ok(c.clone());
    }
    let (code, system) = match (c1, c2) {
        (Some(c), _) => (c, s1),
        (None, Some(c)) => (c, s2),
        (None, None) => {
            return Err(MapError::MissingField {
                location: f.location(),
                what: "observation code",
            });
        }
    };
    let system = if system.is_empty() {
        "local".to_owned()
    } else {
        system
    };
    let key = format!("{system}|{code}");
    Ok(cx.cfg.local_codes.get(&key).cloned().unwrap_or(key))
}

#[derive(Default)]
struct Value {
    number: Option<f64>,
    comparator: Option<String>,
    text: Option<String>,
}

/// OBX-5 read according to OBX-2.
fn read_value(obx: Seg<'_>) -> Result<Value, MapError> {
    let vt = obx
        .field(2)
        .value()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let f = obx.field(5);
    let first = f.rep(1);
    let invalid = |what: &'static str, reason: &'static str| MapError::InvalidValue {
        location: first.location(),
        what,
        reason,
    };
    Ok(match vt.as_str() {
        "NM" => match first.value() {
            None => Value::default(),
            Some(t) => {
                let (comparator, number) = parse_quantity(&t)
                    .ok_or_else(|| invalid("numeric value (NM)", "not a number"))?;
                Value {
                    number: Some(number),
                    comparator,
                    ..Value::default()
                }
            }
        },
        "SN" => {
            let comp = first.comp(1).value();
            let num1 = first.comp(2).value();
            let sep = first.comp(3).value();
            let num2 = first.comp(4).value();
            if sep.is_some() || num2.is_some() {
                // A range (10-20) or a ratio (1:128): kept as text.
                let text = format!(
                    "{}{}{}{}",
                    comp.unwrap_or_default(),
                    num1.unwrap_or_default(),
                    sep.unwrap_or_default(),
                    num2.unwrap_or_default()
                );
                Value {
                    text: Some(text),
                    ..Value::default()
                }
            } else if let Some(n) = num1 {
                let number = parse_number(&n)
                    .ok_or_else(|| invalid("structured numeric value (SN)", "not a number"))?;
                let comparator = match comp.as_deref() {
                    None | Some("=") => None,
                    Some(c @ ("<" | ">" | "<=" | ">=")) => Some(c.to_owned()),
                    Some(_) => {
                        return Err(invalid(
                            "structured numeric value (SN)",
                            "comparator is not <, >, <=, >= or =",
                        ));
                    }
                };
                Value {
                    number: Some(number),
                    comparator,
                    ..Value::default()
                }
            } else {
                Value::default()
            }
        }
        "CE" | "CWE" | "CNE" | "CF" => Value {
            text: first.comp(1).value().or_else(|| first.comp(2).value()),
            ..Value::default()
        },
        "ST" | "TX" | "FT" | "" => {
            let parts: Vec<String> = f.reps().filter_map(|r| r.value()).collect();
            Value {
                text: (!parts.is_empty()).then(|| parts.join("\n")),
                ..Value::default()
            }
        }
        "DT" | "TM" | "DTM" | "TS" | "ID" | "IS" => Value {
            text: first.comp(1).value(),
            ..Value::default()
        },
        // Encapsulated data, references, addresses …: no value parcours can use.
        _ => Value::default(),
    })
}

/// A plain decimal: optional sign, digits, optional fraction; a decimal comma is read as
/// a point when there is no point (French systems).
fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    let s = if !s.contains('.') && s.matches(',').count() == 1 {
        s.replace(',', ".")
    } else {
        s.to_owned()
    };
    let body = s.strip_prefix(['+', '-']).unwrap_or(&s);
    let mut parts = body.splitn(2, '.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let ok = match frac {
        None => digits(int),
        Some(f) => (digits(int) || int.is_empty()) && digits(f),
    };
    if !ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// An NM value, tolerating a leading comparator (`<5`, `>=60`) that some labs put there.
fn parse_quantity(s: &str) -> Option<(Option<String>, f64)> {
    let s = s.trim();
    for c in ["<=", ">=", "<", ">"] {
        if let Some(rest) = s.strip_prefix(c) {
            return parse_number(rest).map(|n| (Some(c.to_owned()), n));
        }
    }
    parse_number(s).map(|n| (None, n))
}

/// OBX-7: `3.5-5.0` → (3.5, 5.0); `<5` → (None, 5); `>60` → (60, None); anything else
/// (free text) → (None, None).
fn parse_range(s: &str) -> (Option<f64>, Option<f64>) {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    for c in ["<=", "<"] {
        if let Some(rest) = s.strip_prefix(c) {
            return (None, parse_number(rest));
        }
    }
    for c in [">=", ">"] {
        if let Some(rest) = s.strip_prefix(c) {
            return (parse_number(rest), None);
        }
    }
    let bytes = s.as_bytes();
    for i in 1..bytes.len() {
        if matches!(bytes[i], b'-' | b'_')
            && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.')
        {
            let (lo, hi) = (&s[..i], &s[i + 1..]);
            if let (Some(lo), Some(hi)) = (parse_number(lo), parse_number(hi)) {
                return (Some(lo), Some(hi));
            }
        }
    }
    // Written out: `4.3 to 6.2` (US lab guides), `3,5 à 5,0` (French labs), `3.5–5.0`.
    for sep in ["to", "TO", "To", "à", "À", "–", ".."] {
        if let Some((lo, hi)) = s.split_once(sep)
            && let (Some(lo), Some(hi)) = (parse_number(lo), parse_number(hi))
        {
            return (Some(lo), Some(hi));
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_quantities_and_ranges() {
        assert_eq!(parse_number("4.5"), Some(4.5));
        assert_eq!(parse_number("4,5"), Some(4.5));
        assert_eq!(parse_number("-.5"), Some(-0.5));
        assert_eq!(parse_number("1e5"), None);
        assert_eq!(parse_number("NaN"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_quantity("<5"), Some((Some("<".into()), 5.0)));
        assert_eq!(parse_quantity(">=60"), Some((Some(">=".into()), 60.0)));
        assert_eq!(parse_range("3.5-5.0"), (Some(3.5), Some(5.0)));
        assert_eq!(parse_range("70_105"), (Some(70.0), Some(105.0)));
        assert_eq!(parse_range("-2--1"), (Some(-2.0), Some(-1.0)));
        assert_eq!(parse_range("<5"), (None, Some(5.0)));
        assert_eq!(parse_range("> 60"), (Some(60.0), None));
        assert_eq!(parse_range("see note"), (None, None));
        assert_eq!(parse_range("4.3 to 6.2"), (Some(4.3), Some(6.2)));
        assert_eq!(parse_range("3,5 à 5,0"), (Some(3.5), Some(5.0)));
        assert_eq!(parse_range("3.5 – 5"), (Some(3.5), Some(5.0)));
        assert_eq!(parse_range("up to 5"), (None, None));
        assert_eq!(parse_range("to"), (None, None));
    }
}
