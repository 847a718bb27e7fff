//! Typed guard expressions: the checked form of the CEL guards written in pathway files.
//!
//! The compiler (`parcours-lang`) parses CEL, type-checks it against the event catalogue
//! and the pathway's declarations, and produces an [`Expr`]; this module evaluates it.
//! Evaluation is pure: time is the triggering event's clinical time.

use std::borrow::Cow;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::calendar::{self, ClinicalDuration};
use crate::events::EventData;
use crate::state::Series;
use crate::units;
use crate::value::{Scalar, Value};

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// An arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// A built-in function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Builtin {
    /// `s.startsWith(p)`
    StartsWith,
    /// `s.endsWith(p)`
    EndsWith,
    /// `s.contains(p)`
    Contains,
    /// `size(x)`, `x.size()`
    Size,
    /// `lower(s)`, `s.lower()`
    Lower,
    /// `double(x)`
    ToDouble,
    /// `int(x)`
    ToInt,
    /// `string(x)`
    ToString,
    /// `event.value_in("kg")`: the observation value converted to a unit.
    ValueIn,
    /// `days_since(t)`: days from `t` to the event time, as a double.
    DaysSince,
    /// `series.s.last()`
    SeriesLast,
    /// `series.s.previous()`
    SeriesPrevious,
    /// `series.s.count()` / `series.s.count_over(d)`
    SeriesCount,
    /// `series.s.min_over(d)`
    SeriesMin,
    /// `series.s.max_over(d)`
    SeriesMax,
    /// `series.s.first_over(d)`
    SeriesFirst,
    /// `series.s.rise_over(d)`: latest value minus the lowest within the window.
    SeriesRise,
}

/// A checked guard expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// A literal.
    Lit(Scalar),
    /// A list literal.
    List(Vec<Expr>),
    /// Field `n` of the triggering event (its type is fixed by the transition's trigger).
    EventField(u16),
    /// The event's clinical time.
    EventTime,
    /// Parameter `n`.
    Param(u16),
    /// Variable `n`.
    Var(u16),
    /// Series `n` (only as the receiver of a series builtin).
    Series(u16),
    /// A comprehension variable, by slot.
    Local(u16),
    /// The instance's cycle start (the enrolling or restarting event's time).
    CycleStart,
    /// The instance's enrolment time.
    EnrolledAt,
    /// The instance's cycle number (1 for the first).
    Cycle,
    /// The episode key of the stay the current cycle follows, as it stood when the event
    /// arrived (`""` when none: a referral, or a cycle whose discharge was cancelled).
    Episode,
    /// `has(x)`: the optional field or variable is present.
    Has(Box<Expr>),
    /// `!x`
    Not(Box<Expr>),
    /// `-x`
    Neg(Box<Expr>),
    /// `a && b` (errors absorbed by a false side, as in CEL)
    And(Box<Expr>, Box<Expr>),
    /// `a || b` (errors absorbed by a true side, as in CEL)
    Or(Box<Expr>, Box<Expr>),
    /// A comparison.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// Arithmetic.
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    /// `a in list`
    In(Box<Expr>, Box<Expr>),
    /// `c ? a : b`
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `list[i]`
    Index(Box<Expr>, Box<Expr>),
    /// A builtin call; for receiver-style calls the receiver is the first argument.
    Call(Builtin, Vec<Expr>),
    /// A CEL comprehension (what `exists`, `all`, `exists_one`, `map`, `filter` expand to).
    Comprehension(Box<Comprehension>),
}

/// The parts of a comprehension, as in the CEL specification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comprehension {
    /// The list iterated over.
    pub range: Expr,
    /// Slot of the iteration variable.
    pub iter: u16,
    /// Slot of the accumulator.
    pub accu: u16,
    /// Initial accumulator.
    pub init: Expr,
    /// Loop continues while true.
    pub cond: Expr,
    /// Next accumulator.
    pub step: Expr,
    /// Result from the final accumulator.
    pub result: Expr,
}

/// Why a guard could not be evaluated (a runtime guard error: the guard counts as false).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// An optional field or unset variable was read without `has()`.
    #[error("{0} is absent (test it with has() first)")]
    Absent(&'static str),
    /// A value had the wrong shape at run time.
    #[error("type mismatch: {0}")]
    Type(&'static str),
    /// Division by zero.
    #[error("division by zero")]
    DivByZero,
    /// A list index out of range.
    #[error("index {0} out of range")]
    Index(i64),
    /// A series has no sample where one was needed.
    #[error("series `{0}` has no sample in the window")]
    EmptySeries(String),
    /// A unit conversion failed.
    #[error("{0}")]
    Unit(String),
    /// `value_in` was asked to convert a result that has no unit.
    #[error(
        "result `{code}` has no unit: value_in(\"{target}\") cannot convert it (parcours never guesses a unit)"
    )]
    NoUnit {
        /// The observation code.
        code: String,
        /// The unit asked for.
        target: String,
    },
    /// Integer overflow.
    #[error("integer overflow")]
    Overflow,
}

/// What a guard may read.
#[derive(Debug)]
pub struct Env<'a> {
    /// The triggering event's payload, when there is one.
    pub event: Option<&'a EventData>,
    /// The event's clinical time (also "now" for windows).
    pub now: Timestamp,
    /// Parameter values (defaults merged with per-patient overrides).
    pub params: &'a [Scalar],
    /// Variable values (unset ones are `None`).
    pub vars: &'a [Option<Scalar>],
    /// Series samples.
    pub series: &'a [Series],
    /// Series names, for error messages.
    pub series_names: &'a [String],
    /// Cycle start.
    pub cycle_start: Timestamp,
    /// Enrolment time.
    pub enrolled_at: Timestamp,
    /// Cycle number.
    pub cycle: u32,
    /// The episode key the current cycle follows, as it stood when the event arrived.
    pub episode: Option<&'a str>,
    /// The last window start computed (guards often ask twice for the same window).
    pub window_memo: std::cell::Cell<Option<(ClinicalDuration, Timestamp)>>,
}

impl Env<'_> {
    /// `now - d`, in clinical time, memoised for the last `d`.
    pub fn window_start(&self, d: ClinicalDuration) -> Timestamp {
        if let Some((memo_d, t)) = self.window_memo.get()
            && memo_d == d
        {
            return t;
        }
        let t = calendar::sub(self.now, d);
        self.window_memo.set(Some((d, t)));
        t
    }
}

type R<'a> = Result<Value<'a>, EvalError>;

impl Expr {
    /// Evaluate to a boolean (guards).
    pub fn eval_bool(&self, env: &Env<'_>) -> Result<bool, EvalError> {
        let mut locals = Vec::new();
        match self.eval(env, &mut locals)? {
            Value::Bool(b) => Ok(b),
            _ => Err(EvalError::Type("a guard must be a bool")),
        }
    }

    /// Evaluate to a value.
    pub fn eval_value<'a>(&'a self, env: &Env<'a>) -> R<'a> {
        let mut locals = Vec::new();
        self.eval(env, &mut locals)
    }

    fn eval<'a>(&'a self, env: &Env<'a>, locals: &mut Vec<Value<'a>>) -> R<'a> {
        Ok(match self {
            Expr::Lit(s) => scalar_value(s),
            Expr::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(i.eval(env, locals)?);
                }
                Value::List(out)
            }
            Expr::EventField(i) => match env.event {
                Some(ev) => match ev.field(*i) {
                    Value::Null => return Err(EvalError::Absent("event field")),
                    v => v,
                },
                None => return Err(EvalError::Absent("event")),
            },
            Expr::EventTime => Value::Timestamp(env.now),
            Expr::Param(i) => env
                .params
                .get(*i as usize)
                .map(scalar_value)
                .ok_or(EvalError::Absent("parameter"))?,
            Expr::Var(i) => match env.vars.get(*i as usize) {
                Some(Some(s)) => scalar_value(s),
                _ => return Err(EvalError::Absent("variable")),
            },
            Expr::Series(_) => {
                return Err(EvalError::Type("a series is read through its functions"));
            }
            Expr::Local(i) => locals
                .get(*i as usize)
                .cloned()
                .ok_or(EvalError::Absent("local"))?,
            Expr::CycleStart => Value::Timestamp(env.cycle_start),
            Expr::EnrolledAt => Value::Timestamp(env.enrolled_at),
            Expr::Cycle => Value::Int(i64::from(env.cycle)),
            Expr::Episode => Value::Str(Cow::Borrowed(env.episode.unwrap_or(""))),
            Expr::Has(inner) => Value::Bool(match inner.as_ref() {
                Expr::EventField(i) => env.event.is_some_and(|e| e.field(*i) != Value::Null),
                Expr::Var(i) => matches!(env.vars.get(*i as usize), Some(Some(_))),
                other => other.eval(env, locals).is_ok(),
            }),
            Expr::Not(a) => Value::Bool(!as_bool(a.eval(env, locals)?)?),
            Expr::Neg(a) => match a.eval(env, locals)? {
                Value::Int(i) => Value::Int(i.checked_neg().ok_or(EvalError::Overflow)?),
                Value::Double(d) => Value::Double(-d),
                _ => return Err(EvalError::Type("negation needs a number")),
            },
            Expr::And(a, b) => {
                // CEL semantics: false wins over an error on either side.
                match a.eval(env, locals).and_then(as_bool) {
                    Ok(false) => Value::Bool(false),
                    Ok(true) => Value::Bool(as_bool(b.eval(env, locals)?)?),
                    Err(e) => match b.eval(env, locals).and_then(as_bool) {
                        Ok(false) => Value::Bool(false),
                        _ => return Err(e),
                    },
                }
            }
            Expr::Or(a, b) => match a.eval(env, locals).and_then(as_bool) {
                Ok(true) => Value::Bool(true),
                Ok(false) => Value::Bool(as_bool(b.eval(env, locals)?)?),
                Err(e) => match b.eval(env, locals).and_then(as_bool) {
                    Ok(true) => Value::Bool(true),
                    _ => return Err(e),
                },
            },
            Expr::Cmp(op, a, b) => {
                let (a, b) = (a.eval(env, locals)?, b.eval(env, locals)?);
                Value::Bool(compare(*op, &a, &b)?)
            }
            Expr::Arith(op, a, b) => {
                let (a, b) = (a.eval(env, locals)?, b.eval(env, locals)?);
                arith(*op, a, b)?
            }
            Expr::In(a, list) => {
                let a = a.eval(env, locals)?;
                // A literal list is scanned in place, without building it.
                if let Expr::List(items) = list.as_ref() {
                    let mut found = false;
                    for item in items {
                        let equal = match (item, &a) {
                            (Expr::Lit(Scalar::Str(s)), Value::Str(x)) => s.as_str() == x.as_ref(),
                            _ => compare(CmpOp::Eq, &a, &item.eval(env, locals)?)?,
                        };
                        if equal {
                            found = true;
                            break;
                        }
                    }
                    return Ok(Value::Bool(found));
                }
                let list = list.eval(env, locals)?;
                let n = list
                    .list_len()
                    .ok_or(EvalError::Type("`in` needs a list"))?;
                let mut found = false;
                for i in 0..n {
                    if let Some(v) = list.list_get(i)
                        && compare(CmpOp::Eq, &a, &v)?
                    {
                        found = true;
                        break;
                    }
                }
                Value::Bool(found)
            }
            Expr::Cond(c, a, b) => {
                if as_bool(c.eval(env, locals)?)? {
                    a.eval(env, locals)?
                } else {
                    b.eval(env, locals)?
                }
            }
            Expr::Index(l, i) => {
                let l = l.eval(env, locals)?;
                let i = match i.eval(env, locals)? {
                    Value::Int(i) => i,
                    _ => return Err(EvalError::Type("an index must be an int")),
                };
                usize::try_from(i)
                    .ok()
                    .and_then(|u| l.list_get(u))
                    .ok_or(EvalError::Index(i))?
            }
            Expr::Call(f, args) => call(*f, args, env, locals)?,
            Expr::Comprehension(c) => {
                let range = c.range.eval(env, locals)?;
                let n = range
                    .list_len()
                    .ok_or(EvalError::Type("a comprehension needs a list"))?;
                let need = usize::from(c.iter.max(c.accu)) + 1;
                if locals.len() < need {
                    locals.resize(need, Value::Null);
                }
                let init = c.init.eval(env, locals)?;
                locals[usize::from(c.accu)] = init;
                for i in 0..n {
                    if !as_bool(c.cond.eval(env, locals)?)? {
                        break;
                    }
                    locals[usize::from(c.iter)] = range.list_get(i).unwrap_or(Value::Null);
                    let next = c.step.eval(env, locals)?;
                    locals[usize::from(c.accu)] = next;
                }
                c.result.eval(env, locals)?
            }
        })
    }
}

fn scalar_value(s: &Scalar) -> Value<'_> {
    s.as_value()
}

fn as_bool(v: Value<'_>) -> Result<bool, EvalError> {
    match v {
        Value::Bool(b) => Ok(b),
        _ => Err(EvalError::Type("expected a bool")),
    }
}

fn compare(op: CmpOp, a: &Value<'_>, b: &Value<'_>) -> Result<bool, EvalError> {
    use std::cmp::Ordering;
    // Lists are equal when they have the same length and equal elements in order (as in
    // CEL); the checker allows only `==` and `!=` on them.
    if let (Some(n), Some(m)) = (a.list_len(), b.list_len()) {
        let mut equal = n == m;
        for i in 0..n {
            if !equal {
                break;
            }
            equal = match (a.list_get(i), b.list_get(i)) {
                (Some(x), Some(y)) => compare(CmpOp::Eq, &x, &y)?,
                _ => false,
            };
        }
        return match op {
            CmpOp::Eq => Ok(equal),
            CmpOp::Ne => Ok(!equal),
            _ => Err(EvalError::Type("lists are not ordered")),
        };
    }
    let ord: Option<Ordering> = match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (x, y) if x.as_f64().is_some() && y.as_f64().is_some() => {
            let (x, y) = (
                x.as_f64().unwrap_or_default(),
                y.as_f64().unwrap_or_default(),
            );
            x.partial_cmp(&y)
        }
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Timestamp(x), Value::Timestamp(y)) => Some(x.cmp(y)),
        (Value::Duration(x), Value::Duration(y)) => {
            Some(x.nominal_seconds().cmp(&y.nominal_seconds()))
        }
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Null, _) | (_, Value::Null) => {
            return match op {
                CmpOp::Eq => Ok(false),
                CmpOp::Ne => Ok(true),
                _ => Err(EvalError::Type("null is not ordered")),
            };
        }
        _ => return Err(EvalError::Type("values of different types compared")),
    };
    let Some(ord) = ord else {
        // NaN: only != holds.
        return Ok(op == CmpOp::Ne);
    };
    Ok(match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
    })
}

fn arith<'a>(op: ArithOp, a: Value<'a>, b: Value<'a>) -> R<'a> {
    match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => {
            let (x, y) = (*x, *y);
            let r = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Div if y == 0 => return Err(EvalError::DivByZero),
                ArithOp::Div => x.checked_div(y),
                ArithOp::Rem if y == 0 => return Err(EvalError::DivByZero),
                ArithOp::Rem => x.checked_rem(y),
            };
            r.map(Value::Int).ok_or(EvalError::Overflow)
        }
        (Value::Timestamp(t), Value::Duration(d)) => match op {
            ArithOp::Add => Ok(Value::Timestamp(calendar::add(*t, *d))),
            ArithOp::Sub => Ok(Value::Timestamp(calendar::sub(*t, *d))),
            _ => Err(EvalError::Type(
                "only + and - apply to a timestamp and a duration",
            )),
        },
        (x, y) if op == ArithOp::Add && x.list_len().is_some() && y.list_len().is_some() => {
            let mut out = Vec::new();
            for v in [x, y] {
                for i in 0..v.list_len().unwrap_or(0) {
                    out.extend(v.list_get(i));
                }
            }
            Ok(Value::List(out))
        }
        (Value::Str(x), Value::Str(y)) if op == ArithOp::Add => {
            Ok(Value::Str(Cow::Owned(format!("{x}{y}"))))
        }
        _ => {
            let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
                return Err(EvalError::Type("arithmetic needs numbers"));
            };
            let r = match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div if y == 0.0 => return Err(EvalError::DivByZero),
                ArithOp::Div => x / y,
                ArithOp::Rem if y == 0.0 => return Err(EvalError::DivByZero),
                ArithOp::Rem => x % y,
            };
            Ok(Value::Double(r))
        }
    }
}

fn string_arg<'a>(v: &'a Value<'_>) -> Result<&'a str, EvalError> {
    match v {
        Value::Str(s) => Ok(s),
        _ => Err(EvalError::Type("expected a string")),
    }
}

fn duration_arg(v: &Value<'_>) -> Result<ClinicalDuration, EvalError> {
    match v {
        Value::Duration(d) => Ok(*d),
        _ => Err(EvalError::Type("expected a duration")),
    }
}

/// A builtin call: its arguments evaluated here, then applied by [`series_call`] or
/// [`apply`]. Those two are not on the stack while the arguments are evaluated: a chain of
/// calls (`"A".lower().lower()…`) recurses through `eval` and this small frame only (each
/// level took 20 KiB of a debug build's stack when they were one function).
fn call<'a>(f: Builtin, args: &'a [Expr], env: &Env<'a>, locals: &mut Vec<Value<'a>>) -> R<'a> {
    use Builtin as B;
    // Series functions read the instance, not evaluated arguments.
    if matches!(
        f,
        B::SeriesLast
            | B::SeriesPrevious
            | B::SeriesCount
            | B::SeriesMin
            | B::SeriesMax
            | B::SeriesFirst
            | B::SeriesRise
    ) {
        // A missing series is reported before the window is evaluated.
        let known =
            matches!(args.first(), Some(Expr::Series(i)) if env.series.len() > usize::from(*i));
        let window = match args.get(1) {
            Some(e) if known => Some(duration_arg(&e.eval(env, locals)?)?),
            _ => None,
        };
        return series_call(f, args, window, env);
    }
    // Builtins take at most two arguments: evaluate them without allocating.
    let a0 = match args.first() {
        Some(e) => Some(e.eval(env, locals)?),
        None => None,
    };
    let a1 = match args.get(1) {
        Some(e) => Some(e.eval(env, locals)?),
        None => None,
    };
    apply(f, a0, a1, env)
}

/// A series function over its window (`None`: the whole series).
#[inline(never)]
fn series_call<'a>(
    f: Builtin,
    args: &'a [Expr],
    window: Option<ClinicalDuration>,
    env: &Env<'a>,
) -> R<'a> {
    use Builtin as B;
    let Some(Expr::Series(i)) = args.first() else {
        return Err(EvalError::Type("series function without a series"));
    };
    let series = env
        .series
        .get(usize::from(*i))
        .ok_or(EvalError::Absent("series"))?;
    let name = || {
        env.series_names
            .get(usize::from(*i))
            .cloned()
            .unwrap_or_default()
    };
    let since = window.map(|d| env.window_start(d));
    let mut in_window = series.values_between(since, env.now);
    match f {
        B::SeriesLast => series
            .values_between(None, env.now)
            .next_back()
            .map(Value::Double)
            .ok_or_else(|| EvalError::EmptySeries(name())),
        B::SeriesPrevious => series
            .values_between(None, env.now)
            .rev()
            .nth(1)
            .map(Value::Double)
            .ok_or_else(|| EvalError::EmptySeries(name())),
        B::SeriesCount => Ok(Value::Int(in_window.count() as i64)),
        B::SeriesMin => in_window
            .reduce(f64::min)
            .map(Value::Double)
            .ok_or_else(|| EvalError::EmptySeries(name())),
        B::SeriesMax => in_window
            .reduce(f64::max)
            .map(Value::Double)
            .ok_or_else(|| EvalError::EmptySeries(name())),
        B::SeriesFirst => in_window
            .next()
            .map(Value::Double)
            .ok_or_else(|| EvalError::EmptySeries(name())),
        B::SeriesRise => {
            let mut last = None;
            let mut min = f64::INFINITY;
            for v in in_window {
                min = min.min(v);
                last = Some(v);
            }
            last.map(|l| Value::Double(l - min))
                .ok_or_else(|| EvalError::EmptySeries(name()))
        }
        _ => Err(EvalError::Type("not a series function")),
    }
}

/// A builtin applied to its evaluated arguments.
#[inline(never)]
fn apply<'a>(f: Builtin, a0: Option<Value<'a>>, a1: Option<Value<'a>>, env: &Env<'a>) -> R<'a> {
    use Builtin as B;
    let arg = |i: usize| {
        match i {
            0 => a0.as_ref(),
            1 => a1.as_ref(),
            _ => None,
        }
        .ok_or(EvalError::Type("missing argument"))
    };
    Ok(match f {
        B::StartsWith => Value::Bool(string_arg(arg(0)?)?.starts_with(string_arg(arg(1)?)?)),
        B::EndsWith => Value::Bool(string_arg(arg(0)?)?.ends_with(string_arg(arg(1)?)?)),
        B::Contains => Value::Bool(string_arg(arg(0)?)?.contains(string_arg(arg(1)?)?)),
        B::Size => match arg(0)? {
            Value::Str(s) => Value::Int(s.chars().count() as i64),
            v => Value::Int(
                v.list_len()
                    .ok_or(EvalError::Type("size() needs a string or a list"))?
                    as i64,
            ),
        },
        B::Lower => Value::Str(Cow::Owned(string_arg(arg(0)?)?.to_lowercase())),
        B::ToDouble => match arg(0)? {
            Value::Str(s) => Value::Double(
                s.trim()
                    .parse()
                    .map_err(|_| EvalError::Type("not a number"))?,
            ),
            v => Value::Double(
                v.as_f64()
                    .ok_or(EvalError::Type("double() needs a number or a string"))?,
            ),
        },
        B::ToInt => match arg(0)? {
            Value::Int(i) => Value::Int(*i),
            Value::Double(d) if d.is_finite() && d.abs() < 9.0e18 => Value::Int(d.trunc() as i64),
            Value::Str(s) => Value::Int(
                s.trim()
                    .parse()
                    .map_err(|_| EvalError::Type("not an int"))?,
            ),
            _ => return Err(EvalError::Type("int() needs a number or a string")),
        },
        B::ToString => Value::Str(Cow::Owned(arg(0)?.to_string())),
        B::ValueIn => {
            // The receiver is the event (observation.recorded); read value, unit and code.
            let target = string_arg(arg(0)?)?;
            let Some(crate::events::EventData::ObservationRecorded(o)) = env.event else {
                return Err(EvalError::Type(
                    "value_in() applies to observation.recorded",
                ));
            };
            let value = o.value.ok_or(EvalError::Absent("event.value"))?;
            let unit = match o.unit.as_deref().map(str::trim) {
                Some(u) if !u.is_empty() => u,
                _ => {
                    return Err(EvalError::NoUnit {
                        code: o.code.clone(),
                        target: target.to_string(),
                    });
                }
            };
            Value::Double(
                units::convert(value, unit, target, Some(&o.code))
                    .map_err(|e| EvalError::Unit(e.to_string()))?,
            )
        }
        B::DaysSince => match arg(0)? {
            Value::Timestamp(t) => {
                let secs = env.now.as_second() - t.as_second();
                Value::Double(secs as f64 / 86_400.0)
            }
            _ => return Err(EvalError::Type("days_since() needs a timestamp")),
        },
        _ => return Err(EvalError::Type("not a value function")),
    })
}
