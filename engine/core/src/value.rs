//! Types and values of the guard language and of instance variables.

use std::borrow::Cow;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::calendar::ClinicalDuration;
use crate::stamp::Stamp;

/// The static type of a guard expression, an event field or a variable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// `true` / `false`.
    Bool,
    /// A signed 64-bit integer.
    Int,
    /// A 64-bit float (lab values, weights).
    Double,
    /// Text.
    String,
    /// An instant in time (UTC inside, Europe/Paris when calendar arithmetic applies).
    Timestamp,
    /// A clinical duration such as `3d` or `3mo`.
    Duration,
    /// A list of values of one type.
    List(Box<Type>),
    /// The empty list literal, or `null`: compatible with any list.
    Null,
    /// A value not usable in guards (for example a free-form map).
    Opaque,
}

impl Type {
    /// Whether values of this type are numbers (`int` or `double`).
    pub fn is_numeric(&self) -> bool {
        matches!(self, Type::Int | Type::Double)
    }

    /// Whether a value of type `other` may be used where `self` is expected.
    pub fn accepts(&self, other: &Type) -> bool {
        match (self, other) {
            (a, b) if a == b => true,
            (Type::Double, Type::Int) => true,
            (Type::List(_), Type::Null) => true,
            (Type::List(a), Type::List(b)) => a.accepts(b),
            _ => false,
        }
    }

    /// The name used in diagnostics and the language documentation.
    pub fn name(&self) -> String {
        match self {
            Type::Bool => "bool".into(),
            Type::Int => "int".into(),
            Type::Double => "number".into(),
            Type::String => "string".into(),
            Type::Timestamp => "timestamp".into(),
            Type::Duration => "duration".into(),
            Type::List(t) => format!("list<{}>", t.name()),
            Type::Null => "null".into(),
            Type::Opaque => "opaque".into(),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Type {
    /// The name with its article, for messages: "an int", "a number".
    pub fn with_article(&self) -> String {
        with_article(&self.name())
    }
}

/// A type's name with its article, for messages: "an int", "a number".
pub fn with_article(name: &str) -> String {
    if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {name}")
    } else {
        format!("a {name}")
    }
}

/// The declared type of a parameter or variable (a scalar type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalarType {
    /// `true` / `false`.
    Bool,
    /// Whole numbers.
    Int,
    /// Decimal numbers.
    Number,
    /// Text.
    String,
    /// An instant.
    Timestamp,
    /// A clinical duration (`3mo`).
    Duration,
}

impl ScalarType {
    /// The guard-language type of values of this declared type.
    pub fn ty(self) -> Type {
        match self {
            ScalarType::Bool => Type::Bool,
            ScalarType::Int => Type::Int,
            ScalarType::Number => Type::Double,
            ScalarType::String => Type::String,
            ScalarType::Timestamp => Type::Timestamp,
            ScalarType::Duration => Type::Duration,
        }
    }
}

/// An owned scalar: a parameter or variable value, a literal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// Text, behind one thin pointer: a `String` inline made every scalar (every
    /// variable and parameter of a cached instance) 24 bytes instead of 16. The encodings
    /// are those of the `String` itself.
    Str(Box<String>),
    /// An instant, as a [`Stamp`] (12 bytes aligned on 4, where a `Timestamp` is 16
    /// aligned on 8); the encodings are those of the `Timestamp`.
    Timestamp(Stamp),
    /// A clinical duration, boxed: a [`ClinicalDuration`] is 32 bytes, and inline it
    /// made every scalar 40 bytes. The encodings are those of the duration itself.
    Duration(Box<ClinicalDuration>),
}

impl Scalar {
    /// The guard-language type of this value.
    pub fn ty(&self) -> Type {
        match self {
            Scalar::Bool(_) => Type::Bool,
            Scalar::Int(_) => Type::Int,
            Scalar::Double(_) => Type::Double,
            Scalar::Str(_) => Type::String,
            Scalar::Timestamp(_) => Type::Timestamp,
            Scalar::Duration(_) => Type::Duration,
        }
    }

    /// Borrow as an evaluation value.
    pub fn as_value(&self) -> Value<'_> {
        match self {
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Int(i) => Value::Int(*i),
            Scalar::Double(d) => Value::Double(*d),
            Scalar::Str(s) => Value::Str(Cow::Borrowed(s)),
            Scalar::Timestamp(t) => Value::Timestamp(t.get()),
            Scalar::Duration(d) => Value::Duration(**d),
        }
    }

    /// Convert a JSON value (from an event or a scenario) to a scalar of the declared type.
    pub fn from_json(ty: ScalarType, v: &serde_json::Value) -> Result<Scalar, String> {
        use serde_json::Value as J;
        // The reasons say what was expected and what kind of value came, never the value
        // (a parameter sent for a patient is patient data).
        match (ty, v) {
            (ScalarType::Bool, J::Bool(b)) => Ok(Scalar::Bool(*b)),
            (ScalarType::Int, J::Number(n)) => n.as_i64().map(Scalar::Int).ok_or_else(|| {
                "expected an int value, got a number with a fraction or out of range".to_string()
            }),
            (ScalarType::Number, J::Number(n)) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Scalar::Double)
                .ok_or_else(|| "number out of range".to_string()),
            (ScalarType::String, J::String(s)) => Ok(Scalar::Str(Box::new(s.clone()))),
            (ScalarType::Timestamp, J::String(s)) => s
                .parse::<Timestamp>()
                .map(|t| Scalar::Timestamp(t.into()))
                .map_err(|_| {
                    "invalid timestamp: expected RFC 3339 with an offset (2026-03-02T09:00:00Z)"
                        .to_string()
                }),
            (ScalarType::Duration, J::String(s)) => s
                .parse::<ClinicalDuration>()
                .map(|d| Scalar::Duration(Box::new(d)))
                .map_err(|_| {
                    "invalid duration: expected a number and a unit (`7d`, `3mo`)".to_string()
                }),
            (ty, v) => {
                let kind = match v {
                    J::Null => "null",
                    J::Bool(_) => "a boolean",
                    J::Number(_) => "a number",
                    J::String(_) => "a string",
                    J::Array(_) => "an array",
                    J::Object(_) => "an object",
                };
                Err(format!(
                    "expected {} value, got {kind}",
                    ty.ty().with_article()
                ))
            }
        }
    }
}

/// A value during guard evaluation; borrows from the event and the instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// `null`, also an absent optional field when read through `has`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// Text.
    Str(Cow<'a, str>),
    /// An instant.
    Timestamp(Timestamp),
    /// A clinical duration.
    Duration(ClinicalDuration),
    /// A list of strings borrowed from an event (diagnoses).
    StrList(&'a [String]),
    /// A list built by an expression.
    List(Vec<Value<'a>>),
}

impl<'a> Value<'a> {
    /// The number inside, whatever its numeric kind.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    /// Number of elements, for lists.
    pub fn list_len(&self) -> Option<usize> {
        match self {
            Value::StrList(l) => Some(l.len()),
            Value::List(l) => Some(l.len()),
            _ => None,
        }
    }

    /// The `i`-th element, for lists.
    pub fn list_get(&self, i: usize) -> Option<Value<'a>> {
        match self {
            Value::StrList(l) => l.get(i).map(|s| Value::Str(Cow::Borrowed(s.as_str()))),
            Value::List(l) => l.get(i).cloned(),
            _ => None,
        }
    }

    /// Detach from borrowed data.
    pub fn into_scalar(self) -> Option<Scalar> {
        match self {
            Value::Bool(b) => Some(Scalar::Bool(b)),
            Value::Int(i) => Some(Scalar::Int(i)),
            Value::Double(d) => Some(Scalar::Double(d)),
            Value::Str(s) => Some(Scalar::Str(Box::new(s.into_owned()))),
            Value::Timestamp(t) => Some(Scalar::Timestamp(t.into())),
            Value::Duration(d) => Some(Scalar::Duration(Box::new(d))),
            Value::Null | Value::StrList(_) | Value::List(_) => None,
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Double(d) => {
                // Templates print measured values: keep at most two decimals.
                let r = (d * 100.0).round() / 100.0;
                write!(f, "{r}")
            }
            Value::Str(s) => f.write_str(s),
            Value::Timestamp(t) => write!(f, "{t}"),
            Value::Duration(d) => write!(f, "{d}"),
            Value::StrList(l) => write!(f, "[{}]", l.join(", ")),
            Value::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boxed_duration_encodes_as_the_duration() {
        let d: ClinicalDuration = "6mo1d".parse().expect("duration");
        let s = Scalar::Duration(Box::new(d));
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Inline {
            Duration(ClinicalDuration),
        }
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(
            json,
            serde_json::to_string(&Inline::Duration(d)).expect("json")
        );
        assert_eq!(serde_json::from_str::<Scalar>(&json).expect("back"), s);
        assert_eq!(s.as_value(), Value::Duration(d));
        assert_eq!(s.as_value().into_scalar(), Some(s));
        assert_eq!(size_of::<Scalar>(), 16);
    }

    /// The scalar as it was before text and instants were kept in 16 bytes: its
    /// encodings and `Debug` are the reference.
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Inline {
        Str(String),
        Timestamp(Timestamp),
    }

    #[test]
    fn text_and_instants_encode_and_print_as_before() {
        let t: Timestamp = "2026-03-02T09:00:00.123456789Z".parse().expect("instant");
        let far: Timestamp = "-009999-01-02T01:59:59Z".parse().expect("instant");
        let cases = [
            (
                Scalar::Str(Box::new("é\n\"x\"".into())),
                Inline::Str("é\n\"x\"".into()),
            ),
            (Scalar::Str(Box::default()), Inline::Str(String::new())),
            (Scalar::Timestamp(t.into()), Inline::Timestamp(t)),
            (Scalar::Timestamp(far.into()), Inline::Timestamp(far)),
            (
                Scalar::Timestamp(Timestamp::MAX.into()),
                Inline::Timestamp(Timestamp::MAX),
            ),
        ];
        for (s, inline) in cases {
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, serde_json::to_string(&inline).expect("json"));
            assert_eq!(serde_json::from_str::<Scalar>(&json).expect("back"), s);
            assert_eq!(format!("{s:?}"), format!("{inline:?}"));
            assert_eq!(format!("{s:#?}"), format!("{inline:#?}"));
            assert_eq!(s.as_value().into_scalar().as_ref(), Some(&s));
            assert_eq!(s.clone(), s);
        }
        assert_eq!(Scalar::Timestamp(t.into()).as_value(), Value::Timestamp(t));
        assert_ne!(
            Scalar::Timestamp(t.into()),
            Scalar::Timestamp((t + jiff::SignedDuration::from_nanos(1)).into())
        );
        assert_eq!(
            Scalar::Str(Box::new("a".into())).as_value(),
            Value::Str(Cow::Borrowed("a"))
        );
        // A variable (`Option<Scalar>`) is 16 bytes too: the tag has room for `None`.
        assert_eq!(size_of::<Option<Scalar>>(), 16);
    }
}
