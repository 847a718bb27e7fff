//! Guards: CEL parsed by the `cel` crate, type-checked here into the core's [`Expr`].
//!
//! What a guard may read: `event.<field>` (typed by the trigger's event type),
//! `event.occurred_at`, `params.<name>`, `vars.<name>`, `series.<name>.<fn>(...)`,
//! `instance.cycle_start`, `instance.enrolled_at`, `instance.cycle`, `instance.episode`,
//! and comprehension
//! variables (`exists`, `all`, `exists_one`, `map`, `filter`).

use cel::common::ast::{Expr as CelExpr, IdedExpr, LiteralValue, operators as op};
use parcours_core::calendar::ClinicalDuration;
use parcours_core::events::EventType;
use parcours_core::expr::{ArithOp, Builtin, CmpOp, Comprehension, Expr};
use parcours_core::units;
use parcours_core::value::{Scalar, Type};

use crate::diag::{Diagnostic, codes};
use crate::span::Span;

mod limits;
mod slips;

pub use limits::{MAX_NESTING, MAX_OPERATORS};

/// Event fields that are free text and could carry identity: never printed in templates.
const FREE_TEXT_FIELDS: &[&str] = &["value_text"];

/// What names a guard can see.
#[derive(Clone, Debug)]
pub struct Scope<'a> {
    /// The triggering event's type; `None` for timers and eventless transitions.
    pub event: Option<EventType>,
    /// Declared parameters and their types.
    pub params: &'a [(String, Type)],
    /// Declared variables and their types.
    pub vars: &'a [(String, Type)],
    /// Declared series.
    pub series: &'a [String],
    /// Whether this is a message template (free text fields are refused).
    pub template: bool,
}

/// A checked expression (with the warnings it deserves), or the diagnostics explaining
/// why it is not one.
pub type Checked = Result<(Expr, Type, Vec<Diagnostic>), Vec<Diagnostic>>;

struct Checker<'a> {
    scope: &'a Scope<'a>,
    info: cel::common::ast::SourceInfo,
    text: &'a str,
    /// Where each byte of the expression text is in the file (one more entry for its end),
    /// when it can be traced there: verbatim, quoted, or a multi-line (folded, literal or
    /// plain) scalar whose line breaks and indentation YAML rewrote.
    map: Option<Vec<usize>>,
    /// The whole scalar, as a fallback location.
    whole: Span,
    locals: Vec<(String, Type, u16)>,
    next_slot: u16,
    diags: Vec<Diagnostic>,
    /// What compiles but looks wrong (a result's code compared with no LOINC code).
    warnings: Vec<Diagnostic>,
}

/// Check `text` (written at `span` of `file_src`) in `scope`; `expected` is the type the
/// context needs (`bool` for guards).
pub fn check(
    text: &str,
    span: Span,
    file_src: &str,
    scope: &Scope<'_>,
    expected: Option<&Type>,
) -> Checked {
    let map = locate(text, span, file_src);
    let at = |offset: usize| match &map {
        Some(m) => Span::new(m[offset.min(text.len())], 1),
        None => span,
    };
    // The parser and everything after it recurse per level: refuse what would overflow
    // the stack first (see `limits`).
    match limits::excess(text) {
        Some(limits::Excess::Nesting(offset)) => {
            return Err(vec![
                Diagnostic::error(
                    codes::GUARD_SYNTAX,
                    at(offset),
                    format!(
                        "expression nested too deeply: at most {MAX_NESTING} levels of brackets and conditionals; split it or simplify it"
                    ),
                )
                .with_label(format!("level {}", MAX_NESTING + 1))
                .with_help(
                    "brackets and conditionals inside one another count: `f((a + b) * 2)` has two levels, `a ? b : c ? d : e` two as well",
                ),
            ]);
        }
        Some(limits::Excess::Operators(offset)) => {
            return Err(vec![
                Diagnostic::error(
                    codes::GUARD_SYNTAX,
                    at(offset),
                    format!(
                        "expression too long: at most {MAX_OPERATORS} operators; split it or simplify it"
                    ),
                )
                .with_label(format!("operator {}", MAX_OPERATORS + 1))
                .with_help(
                    "`+ - * / % == != < <= > >= in`, `.` and `x[i]` count, `&&`, `||` and `!` do not; `event.code in [\"a\", \"b\"]` is shorter than `event.code == \"a\" || event.code == \"b\"`",
                ),
            ]);
        }
        None => {}
    }
    let parsed = cel::parser::Parser::new().parse_with_source_info(text);
    let (ast, info) = match parsed {
        Ok(x) => x,
        Err(errs) => {
            if let Some(slip) = slips::first(text) {
                // As written (`OR` is `or`'s slip too).
                let written = &text[slip.at..slip.at + slip.written.len()];
                let instead = slip.instead;
                let place = match &map {
                    Some(_) => Span::new(at(slip.at).offset, written.len()),
                    None => span,
                };
                return Err(vec![
                    Diagnostic::error(
                        codes::GUARD_SYNTAX,
                        place,
                        format!("invalid expression: `{written}` is not CEL; write `{instead}`"),
                    )
                    .with_label(format!("write `{instead}`"))
                    .with_help(
                        "guards are CEL: `&&` (and), `||` (or), `!` (not), `==` (equals), `!=` (differs), `>=`, `<=`",
                    ),
                ]);
            }
            let diags = errs
                .errors
                .iter()
                .take(1)
                .map(|e| {
                    // pos is (line, column) in the expression, both 1-based (the crate adds
                    // 1 to ANTLR's column), the column in characters.
                    let offset = expr_offset(text, e.pos.0, e.pos.1);
                    Diagnostic::error(
                        codes::GUARD_SYNTAX,
                        at(offset),
                        format!("invalid expression: {}", e.msg),
                    )
                    .with_help("guards are CEL: `event.value > params.limit && has(event.unit)`")
                })
                .collect();
            return Err(diags);
        }
    };
    let mut c = Checker {
        scope,
        info,
        text,
        map,
        whole: span,
        locals: Vec::new(),
        next_slot: 0,
        diags: Vec::new(),
        warnings: Vec::new(),
    };
    let out = c.expr(&ast);
    if let (Some((_, ty)), Some(want)) = (&out, expected)
        && !want.accepts(ty)
    {
        let at = c.span_of(ast.id);
        c.diags.push(
            Diagnostic::error(
                codes::TYPE_ERROR,
                at,
                format!("expected {}, found {}", article(want), article(ty)),
            )
            .with_label(format!("this is {}", article(ty))),
        );
    }
    match out {
        Some((expr, ty)) if c.diags.is_empty() => Ok((expr, ty, c.warnings)),
        _ => Err(c.diags),
    }
}

/// A type in the words of a coordinator: "a number", "text", "a date-time".
fn plain(t: &Type) -> String {
    match t {
        Type::Int | Type::Double => "a number".into(),
        Type::String => "text".into(),
        Type::Bool => "a bool (true or false)".into(),
        Type::Timestamp => "a timestamp".into(),
        Type::Duration => "a duration".into(),
        Type::List(_) | Type::Null => "a list".into(),
        Type::Opaque => "a value guards cannot read".into(),
    }
}

/// "an int", "a number".
fn article(t: &Type) -> String {
    t.with_article()
}

/// Where each byte of `text` (the scalar's value) is in `src`, the scalar being written at
/// `span`: verbatim or quoted (one to one), or multi-line (a `>-`/`|` block or a plain
/// scalar over several lines), where only whitespace differs — the value's other
/// characters are found in order in the file. `None` if they are not (escapes in a quoted
/// string): diagnostics then point at the whole scalar.
fn locate(text: &str, span: Span, src: &str) -> Option<Vec<usize>> {
    let at = src.get(span.offset..)?;
    let identity = |base: usize| Some((0..=text.len()).map(|i| base + i).collect());
    if at.starts_with(text) {
        return identity(span.offset);
    }
    let mut chars = at.chars();
    let mut start = span.offset;
    match chars.next() {
        Some(q @ ('"' | '\'')) if chars.as_str().starts_with(text) => {
            return identity(span.offset + q.len_utf8());
        }
        Some('"' | '\'') => start += 1,
        // A block scalar: its content starts on the line after the indicator.
        Some('>' | '|') => start += at.find('\n')? + 1,
        _ => {}
    }
    let mut map = Vec::with_capacity(text.len() + 1);
    let mut j = start;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            // Folded line breaks and indentation: point at where the file is now.
            map.extend(std::iter::repeat_n(j, c.len_utf8()));
            continue;
        }
        // Skip the file's whitespace (line breaks, indentation) up to the same character.
        let rest = src.get(j..)?;
        let skip = rest.find(|x: char| !x.is_whitespace())?;
        j += skip;
        if !src[j..].starts_with(c) {
            return None;
        }
        map.extend((0..c.len_utf8()).map(|k| j + k));
        j += c.len_utf8();
        debug_assert_eq!(map.len(), i + c.len_utf8());
    }
    map.push(j);
    Some(map)
}

/// The byte offset in `text` of a 1-based line and column (in characters).
fn expr_offset(text: &str, line: isize, col: isize) -> usize {
    let mut off = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as isize + 1 == line {
            let c = usize::try_from(col - 1).unwrap_or(0);
            return off + l.chars().take(c).map(char::len_utf8).sum::<usize>();
        }
        off += l.len();
    }
    0
}

type Out = Option<(Expr, Type)>;

impl Checker<'_> {
    /// The file span of the expression bytes `s..e`.
    fn src_span(&self, s: usize, e: usize) -> Span {
        let Some(map) = &self.map else {
            return self.whole;
        };
        let s = s.min(self.text.len());
        let e = e.clamp(s, self.text.len());
        let start = map[s];
        let end = if e > s { map[e - 1] + 1 } else { start + 1 };
        Span::new(start, end.saturating_sub(start).max(1))
    }

    /// The expression bytes of node `id`, if known.
    fn text_range(&self, id: u64) -> Option<(usize, usize)> {
        let (start, stop) = self.info.offset_for(id)?;
        let to_byte = |c: u32| {
            self.text
                .char_indices()
                .nth(c as usize)
                .map_or(self.text.len(), |(b, _)| b)
        };
        let (s, e) = (to_byte(start), to_byte(stop.max(start)));
        Some((s, e))
    }

    fn span_of(&self, id: u64) -> Span {
        match (self.map.is_some(), self.text_range(id)) {
            (true, Some((s, e))) => self.src_span(s, e),
            _ => self.whole,
        }
    }

    fn err(&mut self, code: &'static str, id: u64, msg: impl Into<String>) -> Out {
        let at = self.span_of(id);
        self.diags.push(Diagnostic::error(code, at, msg));
        None
    }

    fn err_help(
        &mut self,
        code: &'static str,
        id: u64,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) -> Out {
        let at = self.span_of(id);
        self.diags
            .push(Diagnostic::error(code, at, msg).with_help(help));
        None
    }

    fn expr(&mut self, e: &IdedExpr) -> Out {
        match &e.expr {
            CelExpr::Literal(l) => self.literal(e.id, l),
            CelExpr::Ident(name) => self.ident(e.id, name),
            CelExpr::Select(s) => self.select(e.id, &s.operand, &s.field, s.test),
            CelExpr::List(l) => {
                let mut items = Vec::new();
                let mut elem: Option<Type> = None;
                for item in &l.elements {
                    let (x, t) = self.expr(item)?;
                    match &elem {
                        None => elem = Some(t),
                        Some(prev) if prev.accepts(&t) => {}
                        Some(prev) if t.accepts(prev) => elem = Some(t),
                        Some(prev) => {
                            let prev = prev.clone();
                            return self.err(
                                codes::TYPE_ERROR,
                                item.id,
                                format!("list elements must share a type: {prev} then {t}"),
                            );
                        }
                    }
                    items.push(x);
                }
                let ty = match elem {
                    Some(t) => Type::List(Box::new(t)),
                    None => Type::Null,
                };
                Some((Expr::List(items), ty))
            }
            CelExpr::Call(call) => {
                self.call(e.id, &call.func_name, call.target.as_deref(), &call.args)
            }
            CelExpr::Comprehension(c) => self.comprehension(e.id, c),
            CelExpr::Map(_) | CelExpr::Struct(_) => self.err(
                codes::TYPE_ERROR,
                e.id,
                "maps and messages are not supported in guards",
            ),
            CelExpr::Unspecified => self.err(codes::GUARD_SYNTAX, e.id, "empty expression"),
        }
    }

    fn literal(&mut self, id: u64, l: &LiteralValue) -> Out {
        Some(match l {
            LiteralValue::Boolean(b) => (Expr::Lit(Scalar::Bool(*b.inner())), Type::Bool),
            LiteralValue::Int(i) => (Expr::Lit(Scalar::Int(*i.inner())), Type::Int),
            LiteralValue::UInt(u) => match i64::try_from(*u.inner()) {
                Ok(i) => (Expr::Lit(Scalar::Int(i)), Type::Int),
                Err(_) => return self.err(codes::TYPE_ERROR, id, "integer too large"),
            },
            LiteralValue::Double(d) => (Expr::Lit(Scalar::Double(*d.inner())), Type::Double),
            LiteralValue::String(s) => (
                Expr::Lit(Scalar::Str(Box::new(s.inner().to_string()))),
                Type::String,
            ),
            LiteralValue::Null => (Expr::List(Vec::new()), Type::Null),
            LiteralValue::Bytes(_) => {
                return self.err(codes::TYPE_ERROR, id, "bytes are not supported in guards");
            }
        })
    }

    fn ident(&mut self, id: u64, name: &str) -> Out {
        if let Some((_, ty, slot)) = self.locals.iter().rev().find(|(n, _, _)| n == name) {
            return Some((Expr::Local(*slot), ty.clone()));
        }
        match name {
            "event" | "params" | "vars" | "series" | "instance" => self.err_help(
                codes::TYPE_ERROR,
                id,
                format!("`{name}` is a namespace, not a value"),
                format!("read one of its fields: `{name}.<name>`"),
            ),
            _ => self.err_help(
                codes::UNKNOWN_REFERENCE,
                id,
                format!("unknown name `{name}`"),
                "guards read `event.<field>`, `params.<name>`, `vars.<name>`, `series.<name>`, `instance.<field>`",
            ),
        }
    }

    fn namespace(e: &IdedExpr) -> Option<&str> {
        match &e.expr {
            CelExpr::Ident(n) => Some(n.as_str()),
            _ => None,
        }
    }

    /// The span from the start of `from` to the end of `to` (a whole `event.field`).
    fn span_between(&self, from: u64, to: u64, extra: usize) -> Span {
        let a = self.span_of(from);
        let b = self.span_of(to);
        if self.map.is_none() || b.offset < a.offset {
            return b;
        }
        Span::new(a.offset, b.offset + b.len - a.offset + extra)
    }

    fn select(&mut self, id: u64, operand: &IdedExpr, field: &str, test: bool) -> Out {
        let n_before = self.diags.len();
        let out = self.select_inner(id, operand, field, test);
        // Point select errors at the whole `ns.field`, not just the dot.
        if self.diags.len() > n_before && !test {
            let whole = self.span_between(operand.id, id, field.len());
            let dot = self.span_of(id);
            for d in &mut self.diags[n_before..] {
                if let Some(l) = d.labels.first_mut()
                    && l.span == dot
                {
                    l.span = whole;
                }
            }
        }
        out
    }

    fn select_inner(&mut self, id: u64, operand: &IdedExpr, field: &str, test: bool) -> Out {
        let ns = Self::namespace(operand).filter(|n| !self.locals.iter().any(|(l, _, _)| l == n));
        let (expr, ty, optional) = match ns {
            Some("event") => {
                if self.scope.template {
                    if FREE_TEXT_FIELDS.contains(&field) {
                        return self.err_help(
                            codes::IDENTITY_IN_TEMPLATE,
                            id,
                            format!("`event.{field}` is free text and may identify the patient"),
                            "messages may print numbers, codes and durations only",
                        );
                    }
                    return self.err_help(
                        codes::UNKNOWN_FIELD,
                        id,
                        format!("messages cannot read `event.{field}`: an alert may be raised by several rules"),
                        "store the value in a variable with `set` first, then print `{{ vars.<name> }}`",
                    );
                }
                if field == "occurred_at" {
                    (Expr::EventTime, Type::Timestamp, false)
                } else {
                    let Some(ev) = self.scope.event else {
                        return self.err_help(
                            codes::UNKNOWN_FIELD,
                            id,
                            format!("`event.{field}` is not available here: this rule is not triggered by an event"),
                            "timers and eventless rules can read params, vars, series and instance, and event.occurred_at",
                        );
                    };
                    let Some(i) = ev.field_index(field) else {
                        let known: Vec<&str> = ev.fields().iter().map(|f| f.name).collect();
                        return self.err_help(
                            codes::UNKNOWN_FIELD,
                            id,
                            format!("`{ev}` has no field `{field}`"),
                            format!("its fields are: occurred_at, {}", known.join(", ")),
                        );
                    };
                    let def = &ev.fields()[usize::from(i)];
                    if def.ty == Type::Opaque {
                        return self.err(
                            codes::TYPE_ERROR,
                            id,
                            format!("`event.{field}` cannot be read in a guard"),
                        );
                    }
                    if self.scope.template && FREE_TEXT_FIELDS.contains(&field) {
                        return self.err_help(
                            codes::IDENTITY_IN_TEMPLATE,
                            id,
                            format!("`event.{field}` is free text and may identify the patient"),
                            "messages may print numbers, codes and durations only",
                        );
                    }
                    (Expr::EventField(i), def.ty.clone(), def.optional)
                }
            }
            Some("params") => match self.scope.params.iter().position(|(n, _)| n == field) {
                Some(i) => (Expr::Param(i as u16), self.scope.params[i].1.clone(), false),
                None => {
                    return self.err(
                        codes::UNKNOWN_REFERENCE,
                        id,
                        format!("unknown parameter `{field}`"),
                    );
                }
            },
            Some("vars") => match self.scope.vars.iter().position(|(n, _)| n == field) {
                Some(i) => (Expr::Var(i as u16), self.scope.vars[i].1.clone(), true),
                None => {
                    return self.err(
                        codes::UNKNOWN_REFERENCE,
                        id,
                        format!("unknown variable `{field}`"),
                    );
                }
            },
            Some("series") => {
                return self.err_help(
                    codes::TYPE_ERROR,
                    id,
                    format!("series `{field}` is read through a function"),
                    "use series.<name>.last(), previous(), count(), count_over(d), min_over(d), max_over(d), first_over(d) or rise_over(d)",
                );
            }
            Some("instance") => match field {
                "cycle_start" => (Expr::CycleStart, Type::Timestamp, false),
                "enrolled_at" => (Expr::EnrolledAt, Type::Timestamp, false),
                "cycle" => (Expr::Cycle, Type::Int, false),
                "episode" => (Expr::Episode, Type::String, false),
                _ => {
                    return self.err_help(
                        codes::UNKNOWN_FIELD,
                        id,
                        format!("`instance` has no field `{field}`"),
                        "instance fields: cycle_start, enrolled_at, cycle, episode",
                    );
                }
            },
            _ => {
                return self.err(codes::TYPE_ERROR, id, format!("`.{field}` cannot be read here: only event, params, vars, series and instance have fields"));
            }
        };
        if test {
            if !optional {
                // has() on a field that is always present is true; keep it simple and honest.
                return Some((Expr::Lit(Scalar::Bool(true)), Type::Bool));
            }
            return Some((Expr::Has(Box::new(expr)), Type::Bool));
        }
        Some((expr, ty))
    }

    /// A result's `event.code` compared with literal codes (`==`, `!=`, `in [...]`): one
    /// that is no LOINC code never equals a result's code (results carry LOINC codes;
    /// a lab's own are mapped, or kept as `system|code`), so the rule never fires — a
    /// warning (PW0019), as for a series' codes.
    fn codes_compared(&mut self, a: &IdedExpr, b: &IdedExpr) {
        if self.scope.event != Some(EventType::ObservationRecorded) {
            return;
        }
        let is_code = |e: &IdedExpr| {
            matches!(&e.expr, CelExpr::Select(s)
                if s.field == "code" && Self::namespace(&s.operand) == Some("event"))
        };
        let other = if is_code(a) {
            b
        } else if is_code(b) {
            a
        } else {
            return;
        };
        let literals: Vec<&IdedExpr> = match &other.expr {
            CelExpr::Literal(LiteralValue::String(_)) => vec![other],
            CelExpr::List(l) => l.elements.iter().collect(),
            _ => return,
        };
        for lit in literals {
            if let CelExpr::Literal(LiteralValue::String(code)) = &lit.expr
                && !code.inner().contains('|')
                && let Some(why) = parcours_core::loinc::what_is_wrong(code.inner())
            {
                let at = self.span_of(lit.id);
                self.warnings.push(
                    Diagnostic::warning(
                        codes::INEFFECTIVE,
                        at,
                        format!(
                            "`{}` is not a LOINC code: no result's `event.code` will ever equal it",
                            code.inner()
                        ),
                    )
                    .with_help(why),
                );
            }
        }
    }

    fn series_target(&mut self, target: Option<&IdedExpr>) -> Option<u16> {
        let t = target?;
        if let CelExpr::Select(s) = &t.expr
            && Self::namespace(&s.operand) == Some("series")
        {
            return match self.scope.series.iter().position(|n| n == &s.field) {
                Some(i) => Some(i as u16),
                None => {
                    self.err(
                        codes::UNKNOWN_REFERENCE,
                        t.id,
                        format!("unknown series `{}`", s.field),
                    );
                    None
                }
            };
        }
        None
    }

    /// The expression bytes covering every node of `e` (a call with its closing
    /// parenthesis, a list with its closing bracket).
    fn tree_range(&self, e: &IdedExpr) -> Option<(usize, usize)> {
        let mut r = self.text_range(e.id)?;
        let grow = |r: &mut (usize, usize), o: Option<(usize, usize)>| {
            if let Some((s, end)) = o {
                r.0 = r.0.min(s);
                r.1 = r.1.max(end);
            }
        };
        match &e.expr {
            CelExpr::Call(c) => {
                if let Some(t) = &c.target {
                    grow(&mut r, self.tree_range(t));
                }
                for a in &c.args {
                    grow(&mut r, self.tree_range(a));
                }
                if !c.func_name.starts_with('_') {
                    r.1 = self.close_over(r.1, ')');
                    // A global function (`days_since(x)`): reach back over its name.
                    if c.target.is_none()
                        && let Some(before) = self.text.get(..r.0)
                        && let Some(head) = before.trim_end().strip_suffix(c.func_name.as_str())
                    {
                        r.0 = head.len();
                    }
                }
            }
            CelExpr::Select(sel) => {
                // The node's own range is the dot: reach to the end of the field name.
                let dot = r.0;
                grow(&mut r, Some((dot, dot + 1 + sel.field.len())));
                grow(&mut r, self.tree_range(&sel.operand));
            }
            CelExpr::List(l) => {
                for a in &l.elements {
                    grow(&mut r, self.tree_range(a));
                }
                r.1 = self.close_over(r.1, ']');
            }
            CelExpr::Literal(l) if !matches!(l, LiteralValue::String(_)) => {
                // Numbers, bools, null: the whole token.
                let token = self.text.get(r.0..).map_or(0, |t| {
                    t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                        .unwrap_or(t.len())
                });
                r.1 = r.1.max(r.0 + token);
            }
            CelExpr::Ident(name) => r.1 = r.1.max(r.0 + name.len()),
            CelExpr::Literal(LiteralValue::String(_)) => {
                // The parser's range stops before the closing quote: reach it.
                if let Some(q @ ('"' | '\'')) = self.text.get(r.0..).and_then(|t| t.chars().next())
                {
                    let body = &self.text[r.0 + 1..];
                    let mut escaped = false;
                    for (i, c) in body.char_indices() {
                        if escaped {
                            escaped = false;
                        } else if c == '\\' {
                            escaped = true;
                        } else if c == q {
                            r.1 = r.1.max(r.0 + 1 + i + 1);
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
        r.1 = r.1.min(self.text.len());
        Some(r)
    }

    /// `end`, moved past `close` if that is the next character (after whitespace).
    fn close_over(&self, end: usize, close: char) -> usize {
        let Some(rest) = self.text.get(end..) else {
            return end;
        };
        let trimmed = rest.trim_start();
        if trimmed.starts_with(close) {
            end + (rest.len() - trimmed.len()) + close.len_utf8()
        } else {
            end
        }
    }

    /// A comparison that does not type-check: say what each side is and how to fix it,
    /// pointing at the comparison itself.
    fn compare_error(
        &mut self,
        a: &IdedExpr,
        b: &IdedExpr,
        ta: &Type,
        tb: &Type,
        comparable: bool,
    ) -> Out {
        let left = self.snippet(a).unwrap_or_else(|| "the left side".into());
        let right = self.snippet(b).unwrap_or_else(|| "the right side".into());
        let (sa, sb) = (self.tree_span(a), self.tree_span(b));
        let at = if self.map.is_some() {
            let start = sa.offset.min(sb.offset);
            let end = (sa.offset + sa.len).max(sb.offset + sb.len);
            Span::new(start, end - start)
        } else {
            self.whole
        };
        let whole_text = match (self.tree_range(a), self.tree_range(b)) {
            (Some(x), Some(y)) => self
                .text
                .get(x.0.min(y.0)..x.1.max(y.1))
                .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" ")),
            _ => None,
        };
        // A quoted literal that would fit without its quotes (`"90"` against a number).
        let unquoted = |e: &IdedExpr, other: &Type| -> Option<String> {
            let CelExpr::Literal(LiteralValue::String(s)) = &e.expr else {
                return None;
            };
            let inner = s.inner().trim();
            let fits = match other {
                t if t.is_numeric() => inner.parse::<f64>().is_ok_and(f64::is_finite),
                Type::Bool => inner == "true" || inner == "false",
                _ => false,
            };
            fits.then(|| inner.to_string())
        };
        let is_text_literal =
            |e: &IdedExpr| matches!(&e.expr, CelExpr::Literal(LiteralValue::String(_)));
        let sides = format!("`{left}` is {} and `{right}` is {}", plain(ta), plain(tb));
        let (message, help) = if !comparable {
            let fix = unquoted(b, ta)
                .map(|f| (f, &right))
                .or_else(|| unquoted(a, tb).map(|f| (f, &left)));
            if let Some((bare, quoted)) = fix {
                let help = whole_text
                    .map(|w| format!("write `{}`", w.replacen(quoted.as_str(), &bare, 1)))
                    .unwrap_or_else(|| format!("write `{bare}` without quotes"));
                (format!("{sides}: remove the quotes"), help)
            } else if (ta == &Type::Timestamp && is_text_literal(b))
                || (tb == &Type::Timestamp && is_text_literal(a))
            {
                (
                    format!("{sides}: they cannot be compared"),
                    "write the instant as timestamp(\"2026-01-01T00:00:00Z\")".to_string(),
                )
            } else if (ta == &Type::Duration && is_text_literal(b))
                || (tb == &Type::Duration && is_text_literal(a))
            {
                (
                    format!("{sides}: they cannot be compared"),
                    "write the duration as duration(\"3d\")".to_string(),
                )
            } else if let Some((number, quoted)) = [(a, ta, tb), (b, tb, ta)]
                .into_iter()
                .find(|(e, t, other)| {
                    t.is_numeric()
                        && **other == Type::String
                        && matches!(
                            &e.expr,
                            CelExpr::Literal(
                                LiteralValue::Int(_)
                                    | LiteralValue::UInt(_)
                                    | LiteralValue::Double(_)
                            )
                        )
                })
                .and_then(|(e, _, _)| {
                    let n = self.snippet(e)?;
                    Some((n.clone(), format!("\"{n}\"")))
                })
            {
                let help = whole_text
                    .map(|w| {
                        format!(
                            "to compare text, quote it: `{}`",
                            w.replacen(&number, &quoted, 1)
                        )
                    })
                    .unwrap_or_else(|| format!("to compare text, quote it: {quoted}"));
                (format!("{sides}: they cannot be compared"), help)
            } else if (ta.is_numeric() && tb == &Type::String)
                || (tb.is_numeric() && ta == &Type::String)
            {
                (
                    format!("{sides}: they cannot be compared"),
                    "compare a number with a number: declare the parameter or variable `type: number`, or read text as a number with double(...)".to_string(),
                )
            } else {
                (
                    format!("{sides}: they cannot be compared"),
                    "compare values of the same type".to_string(),
                )
            }
        } else {
            (
                format!(
                    "`{left}` is {}: it can only be compared with == or !=",
                    plain(ta)
                ),
                "use == or != here".to_string(),
            )
        };
        self.diags.push(
            Diagnostic::error(codes::TYPE_ERROR, at, message)
                .with_label(format!("{} compared with {}", plain(ta), plain(tb)))
                .with_help(help),
        );
        None
    }

    /// The file span covering every node of `e`.
    fn tree_span(&self, e: &IdedExpr) -> Span {
        match (self.map.is_some(), self.tree_range(e)) {
            (true, Some((s, end))) => self.src_span(s, end),
            _ => self.whole,
        }
    }

    /// The expression text of `e`, on one line (for messages).
    fn snippet(&self, e: &IdedExpr) -> Option<String> {
        let (s, end) = self.tree_range(e)?;
        let t = self.text.get(s..end)?;
        Some(t.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    fn call(&mut self, id: u64, name: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Out {
        let n_before = self.diags.len();
        let out = self.call_inner(id, name, target, args);
        if self.diags.len() > n_before && self.map.is_some() {
            // Underline the whole call or operation, not its operator or parenthesis.
            let at = self.span_of(id);
            let mut whole = at;
            for e in target.into_iter().chain(args.iter()) {
                let t = self.tree_span(e);
                let end = (whole.offset + whole.len).max(t.offset + t.len);
                whole.offset = whole.offset.min(t.offset);
                whole.len = end - whole.offset;
            }
            if name != op::LOGICAL_AND && name != op::LOGICAL_OR {
                for d in &mut self.diags[n_before..] {
                    if let Some(l) = d.labels.first_mut()
                        && l.span == at
                    {
                        l.span = whole;
                    }
                }
            }
        }
        out
    }

    fn call_inner(
        &mut self,
        id: u64,
        name: &str,
        target: Option<&IdedExpr>,
        args: &[IdedExpr],
    ) -> Out {
        let bin =
            |c: &mut Self, a: &IdedExpr, b: &IdedExpr| -> Option<((Expr, Type), (Expr, Type))> {
                let x = c.expr(a);
                let y = c.expr(b);
                Some((x?, y?))
            };
        match (name, args) {
            (op::LOGICAL_AND | op::LOGICAL_OR, [a, b]) => {
                let ((x, tx), (y, ty)) = bin(self, a, b)?;
                if tx != Type::Bool || ty != Type::Bool {
                    let bad_expr = if tx != Type::Bool { a } else { b };
                    let span = self.tree_span(bad_expr);
                    let op_name = if name == op::LOGICAL_AND { "&&" } else { "||" };
                    let found = if tx != Type::Bool { &tx } else { &ty };
                    self.diags.push(Diagnostic::error(
                        codes::TYPE_ERROR,
                        span,
                        format!(
                            "`{op_name}` needs bools on both sides, found {}",
                            article(found)
                        ),
                    ));
                    return None;
                }
                let e = if name == op::LOGICAL_AND {
                    Expr::And(Box::new(x), Box::new(y))
                } else {
                    Expr::Or(Box::new(x), Box::new(y))
                };
                Some((e, Type::Bool))
            }
            (op::LOGICAL_NOT, [a]) => {
                let (x, t) = self.expr(a)?;
                if t != Type::Bool {
                    return self.err(
                        codes::TYPE_ERROR,
                        a.id,
                        format!("`!` needs a bool, found {}", article(&t)),
                    );
                }
                Some((Expr::Not(Box::new(x)), Type::Bool))
            }
            (op::NOT_STRICTLY_FALSE, [a]) => self.expr(a),
            (op::NEGATE, [a]) => {
                let (x, t) = self.expr(a)?;
                if !t.is_numeric() {
                    return self.err(
                        codes::TYPE_ERROR,
                        a.id,
                        format!("`-` needs a number, found {}", article(&t)),
                    );
                }
                Some((Expr::Neg(Box::new(x)), t))
            }
            (
                op::EQUALS
                | op::NOT_EQUALS
                | op::LESS
                | op::LESS_EQUALS
                | op::GREATER
                | op::GREATER_EQUALS,
                [a, b],
            ) => {
                let ((x, tx), (y, ty)) = bin(self, a, b)?;
                self.codes_compared(a, b);
                let cmp = match name {
                    op::EQUALS => CmpOp::Eq,
                    op::NOT_EQUALS => CmpOp::Ne,
                    op::LESS => CmpOp::Lt,
                    op::LESS_EQUALS => CmpOp::Le,
                    op::GREATER => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                let comparable =
                    tx.accepts(&ty) || ty.accepts(&tx) || (tx.is_numeric() && ty.is_numeric());
                let ordered = !matches!(tx, Type::List(_) | Type::Null | Type::Bool)
                    || matches!(cmp, CmpOp::Eq | CmpOp::Ne);
                if !comparable || !ordered {
                    return self.compare_error(a, b, &tx, &ty, comparable);
                }
                Some((Expr::Cmp(cmp, Box::new(x), Box::new(y)), Type::Bool))
            }
            (op::ADD | op::SUBSTRACT | op::MULTIPLY | op::DIVIDE | op::MODULO, [a, b]) => {
                let ((x, tx), (y, ty)) = bin(self, a, b)?;
                let aop = match name {
                    op::ADD => ArithOp::Add,
                    op::SUBSTRACT => ArithOp::Sub,
                    op::MULTIPLY => ArithOp::Mul,
                    op::DIVIDE => ArithOp::Div,
                    _ => ArithOp::Rem,
                };
                let out = match (&tx, &ty, aop) {
                    (Type::Int, Type::Int, _) => Type::Int,
                    (a, b, _) if a.is_numeric() && b.is_numeric() => Type::Double,
                    (Type::Timestamp, Type::Duration, ArithOp::Add | ArithOp::Sub) => {
                        Type::Timestamp
                    }
                    (Type::String, Type::String, ArithOp::Add) => Type::String,
                    (Type::List(a), Type::List(b), ArithOp::Add) if a == b => tx.clone(),
                    (Type::List(_), Type::Null, ArithOp::Add) => tx.clone(),
                    (Type::Null, Type::List(_), ArithOp::Add) => ty.clone(),
                    _ => {
                        return self.err(
                            codes::TYPE_ERROR,
                            id,
                            format!(
                                "cannot apply this operator to {} and {}",
                                article(&tx),
                                article(&ty)
                            ),
                        );
                    }
                };
                Some((Expr::Arith(aop, Box::new(x), Box::new(y)), out))
            }
            (op::CONDITIONAL, [c, a, b]) => {
                let cond = self.expr(c);
                let x = self.expr(a);
                let y = self.expr(b);
                let ((c2, tc), (x, tx), (y, ty)) = (cond?, x?, y?);
                if tc != Type::Bool {
                    return self.err(
                        codes::TYPE_ERROR,
                        c.id,
                        format!("a condition must be a bool, found {}", article(&tc)),
                    );
                }
                let out = if tx.accepts(&ty) {
                    tx
                } else if ty.accepts(&tx) {
                    ty
                } else {
                    return self.err(
                        codes::TYPE_ERROR,
                        id,
                        format!("both branches must have one type: {tx} and {ty}"),
                    );
                };
                Some((Expr::Cond(Box::new(c2), Box::new(x), Box::new(y)), out))
            }
            (op::IN, [a, b]) => {
                let ((x, tx), (y, ty)) = bin(self, a, b)?;
                self.codes_compared(a, b);
                match &ty {
                    Type::List(elem)
                        if elem.accepts(&tx)
                            || tx.accepts(elem)
                            || (elem.is_numeric() && tx.is_numeric()) => {}
                    Type::Null => {}
                    _ => {
                        return self.err(
                            codes::TYPE_ERROR,
                            id,
                            format!("`in` needs a list of {tx}, found {}", article(&ty)),
                        );
                    }
                }
                Some((Expr::In(Box::new(x), Box::new(y)), Type::Bool))
            }
            (op::INDEX, [l, i]) => {
                let ((x, tl), (y, ti)) = bin(self, l, i)?;
                let Type::List(elem) = tl else {
                    return self.err(
                        codes::TYPE_ERROR,
                        l.id,
                        format!("only lists can be indexed, found {}", article(&tl)),
                    );
                };
                if ti != Type::Int {
                    return self.err(codes::TYPE_ERROR, i.id, "a list index must be an int");
                }
                Some((Expr::Index(Box::new(x), Box::new(y)), *elem))
            }
            _ => self.function(id, name, target, args),
        }
    }

    fn function(
        &mut self,
        id: u64,
        name: &str,
        target: Option<&IdedExpr>,
        args: &[IdedExpr],
    ) -> Out {
        // Series functions: series.<name>.<fn>(window?)
        let series_fn = match name {
            "last" => Some((Builtin::SeriesLast, false, Type::Double)),
            "previous" => Some((Builtin::SeriesPrevious, false, Type::Double)),
            "count" => Some((Builtin::SeriesCount, false, Type::Int)),
            "count_over" => Some((Builtin::SeriesCount, true, Type::Int)),
            "min_over" => Some((Builtin::SeriesMin, true, Type::Double)),
            "max_over" => Some((Builtin::SeriesMax, true, Type::Double)),
            "first_over" => Some((Builtin::SeriesFirst, true, Type::Double)),
            "rise_over" => Some((Builtin::SeriesRise, true, Type::Double)),
            _ => None,
        };
        if let Some((b, windowed, out)) = series_fn {
            let Some(s) = self.series_target(target) else {
                if self.diags.is_empty() {
                    return self.err(
                        codes::TYPE_ERROR,
                        id,
                        format!("`{name}()` applies to a series: series.<name>.{name}(...)"),
                    );
                }
                return None;
            };
            let mut call_args = vec![Expr::Series(s)];
            match (windowed, args) {
                (false, []) => {}
                (true, [w]) => {
                    let (x, t) = self.expr(w)?;
                    if t != Type::Duration {
                        return self.err_help(
                            codes::TYPE_ERROR,
                            w.id,
                            format!("`{name}` needs a duration, found {}", article(&t)),
                            "write duration(\"3d\")",
                        );
                    }
                    call_args.push(x);
                }
                _ => {
                    let n = usize::from(windowed);
                    return self.err(
                        codes::TYPE_ERROR,
                        id,
                        format!("`{name}` takes {n} argument(s)"),
                    );
                }
            }
            return Some((Expr::Call(b, call_args), out));
        }

        // Literal constructors checked now.
        if name == "duration" && target.is_none() {
            let [arg] = args else {
                return self.err(
                    codes::TYPE_ERROR,
                    id,
                    "duration() takes one string, like duration(\"3d\")",
                );
            };
            let CelExpr::Literal(LiteralValue::String(s)) = &arg.expr else {
                return self.err(
                    codes::TYPE_ERROR,
                    arg.id,
                    "duration() takes a string literal, like duration(\"3d\")",
                );
            };
            return match s.inner().parse::<ClinicalDuration>() {
                Ok(d) => Some((Expr::Lit(Scalar::Duration(Box::new(d))), Type::Duration)),
                Err(e) => self.err(codes::INVALID_DURATION, arg.id, e.to_string()),
            };
        }
        if name == "timestamp" && target.is_none() {
            let [arg] = args else {
                return self.err(codes::TYPE_ERROR, id, "timestamp() takes one string");
            };
            let CelExpr::Literal(LiteralValue::String(s)) = &arg.expr else {
                return self.err(
                    codes::TYPE_ERROR,
                    arg.id,
                    "timestamp() takes a string literal",
                );
            };
            return match s.inner().parse::<jiff_ts::Timestamp>() {
                Ok(t) => Some((Expr::Lit(Scalar::Timestamp(t.into())), Type::Timestamp)),
                Err(e) => self.err(
                    codes::INVALID_VALUE,
                    arg.id,
                    format!("invalid timestamp: {e}"),
                ),
            };
        }
        if name == "value_in" {
            let is_event =
                target.is_some_and(|t| matches!(&t.expr, CelExpr::Ident(n) if n == "event"));
            if !is_event || self.scope.event != Some(EventType::ObservationRecorded) {
                return self.err_help(
                    codes::TYPE_ERROR,
                    id,
                    "value_in() reads the value of an observation.recorded event",
                    "write event.value_in(\"kg\") in a rule triggered by observation.recorded",
                );
            }
            let [arg] = args else {
                return self.err(codes::TYPE_ERROR, id, "value_in() takes one unit");
            };
            let CelExpr::Literal(LiteralValue::String(u)) = &arg.expr else {
                return self.err(
                    codes::TYPE_ERROR,
                    arg.id,
                    "value_in() takes a unit literal, like value_in(\"kg\")",
                );
            };
            if !units::is_known_unit(u.inner()) {
                return self.err_help(
                    codes::INVALID_VALUE,
                    arg.id,
                    format!("unknown unit `{}`", u.inner()),
                    units::known_units_help(),
                );
            }
            return Some((
                Expr::Call(
                    Builtin::ValueIn,
                    vec![Expr::Lit(Scalar::Str(Box::new(u.inner().to_string())))],
                ),
                Type::Double,
            ));
        }

        // Ordinary functions, receiver-style or global.
        let mut all: Vec<&IdedExpr> = Vec::new();
        if let Some(t) = target {
            all.push(t);
        }
        all.extend(args.iter());
        let mut checked = Vec::new();
        for a in &all {
            checked.push(self.expr(a));
        }
        let checked: Vec<(Expr, Type)> = checked.into_iter().collect::<Option<_>>()?;
        let tys: Vec<&Type> = checked.iter().map(|(_, t)| t).collect();
        let (b, out) = match (name, tys.as_slice()) {
            ("startsWith", [Type::String, Type::String]) => (Builtin::StartsWith, Type::Bool),
            ("endsWith", [Type::String, Type::String]) => (Builtin::EndsWith, Type::Bool),
            ("contains", [Type::String, Type::String]) => (Builtin::Contains, Type::Bool),
            ("size", [Type::String | Type::List(_)]) => (Builtin::Size, Type::Int),
            ("lower" | "lowerAscii", [Type::String]) => (Builtin::Lower, Type::String),
            ("double", [t]) if t.is_numeric() || **t == Type::String => {
                (Builtin::ToDouble, Type::Double)
            }
            ("int", [t]) if t.is_numeric() || **t == Type::String => (Builtin::ToInt, Type::Int),
            ("string", [_]) => (Builtin::ToString, Type::String),
            ("days_since", [Type::Timestamp]) => (Builtin::DaysSince, Type::Double),
            (
                "startsWith" | "endsWith" | "contains" | "size" | "lower" | "lowerAscii" | "double"
                | "int" | "string" | "days_since",
                _,
            ) => {
                let found: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
                return self.err(
                    codes::TYPE_ERROR,
                    id,
                    format!("`{name}` does not take ({})", found.join(", ")),
                );
            }
            _ => {
                return self.err_help(
                    codes::UNKNOWN_REFERENCE,
                    id,
                    format!("unknown function `{name}`"),
                    "functions: startsWith, endsWith, contains, size, lower, double, int, string, duration, timestamp, days_since, value_in, exists, all, exists_one, map, filter, and series functions",
                );
            }
        };
        Some((
            Expr::Call(b, checked.into_iter().map(|(e, _)| e).collect()),
            out,
        ))
    }

    fn comprehension(&mut self, id: u64, c: &cel::common::ast::ComprehensionExpr) -> Out {
        if c.iter_var2.is_some() {
            return self.err(
                codes::TYPE_ERROR,
                id,
                "two-variable comprehensions are not supported",
            );
        }
        let (range, tr) = self.expr(&c.iter_range)?;
        let elem = match tr {
            Type::List(e) => *e,
            Type::Null => Type::Null,
            other => {
                return self.err(
                    codes::TYPE_ERROR,
                    c.iter_range.id,
                    format!("only lists can be iterated, found {}", article(&other)),
                );
            }
        };
        let (init, ta) = self.expr(&c.accu_init)?;
        let iter = self.next_slot;
        let accu = self.next_slot + 1;
        self.next_slot += 2;
        self.locals.push((c.iter_var.clone(), elem, iter));
        self.locals.push((c.accu_var.clone(), ta.clone(), accu));
        let cond = self.expr(&c.loop_cond);
        let step = self.expr(&c.loop_step);
        // The accumulator's type may be refined by the step (an empty list becoming list<T>).
        if let Some((_, ts)) = &step
            && ta == Type::Null
            && let Some(l) = self.locals.iter_mut().rev().find(|(_, _, s)| *s == accu)
        {
            l.1 = ts.clone();
        }
        let result = self.expr(&c.result);
        self.locals.pop();
        self.locals.pop();
        let ((cond, _), (step, _), (result, tres)) = (cond?, step?, result?);
        Some((
            Expr::Comprehension(Box::new(Comprehension {
                range,
                iter,
                accu,
                init,
                cond,
                step,
                result,
            })),
            tres,
        ))
    }
}

use jiff as jiff_ts;
