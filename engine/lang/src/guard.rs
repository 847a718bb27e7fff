//! Guards: CEL parsed by the `cel` crate, type-checked here into the core's [`Expr`].
//!
//! What a guard may read: `event.<field>` (typed by the trigger's event type),
//! `event.occurred_at`, `params.<name>`, `vars.<name>`, `series.<name>.<fn>(...)`,
//! `instance.cycle_start`, `instance.enrolled_at`, `instance.cycle`, and comprehension
//! variables (`exists`, `all`, `exists_one`, `map`, `filter`).

use cel::common::ast::{Expr as CelExpr, IdedExpr, LiteralValue, operators as op};
use parcours_core::calendar::ClinicalDuration;
use parcours_core::events::EventType;
use parcours_core::expr::{ArithOp, Builtin, CmpOp, Comprehension, Expr};
use parcours_core::units;
use parcours_core::value::{Scalar, Type};

use crate::diag::{Diagnostic, codes};
use crate::span::Span;

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

/// A checked expression or the diagnostics explaining why it is not one.
pub type Checked = Result<(Expr, Type), Vec<Diagnostic>>;

struct Checker<'a> {
    scope: &'a Scope<'a>,
    info: cel::common::ast::SourceInfo,
    text: &'a str,
    /// Where the expression text starts in the file, if it maps one to one.
    base: Option<usize>,
    /// The whole scalar, as a fallback location.
    whole: Span,
    locals: Vec<(String, Type, u16)>,
    next_slot: u16,
    diags: Vec<Diagnostic>,
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
    let base = locate(text, span, file_src);
    let parsed = cel::parser::Parser::new().parse_with_source_info(text);
    let (ast, info) = match parsed {
        Ok(x) => x,
        Err(errs) => {
            let diags = errs
                .errors
                .iter()
                .take(1)
                .map(|e| {
                    // pos is (line, column) in the expression, 1-based line, 0-based column.
                    let offset = expr_offset(text, e.pos.0, e.pos.1);
                    let at = match base {
                        Some(b) => Span::new(b + offset, 1),
                        None => span,
                    };
                    Diagnostic::error(
                        codes::GUARD_SYNTAX,
                        at,
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
        base,
        whole: span,
        locals: Vec::new(),
        next_slot: 0,
        diags: Vec::new(),
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
        Some(x) if c.diags.is_empty() => Ok(x),
        _ => Err(c.diags),
    }
}

/// "an int", "a number".
fn article(t: &Type) -> String {
    let name = t.name();
    if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {name}")
    } else {
        format!("a {name}")
    }
}

fn locate(text: &str, span: Span, src: &str) -> Option<usize> {
    let at = src.get(span.offset..)?;
    if at.starts_with(text) {
        return Some(span.offset);
    }
    let mut chars = at.chars();
    match chars.next() {
        Some(q @ ('"' | '\'')) if chars.as_str().starts_with(text) => {
            Some(span.offset + q.len_utf8())
        }
        _ => None,
    }
}

fn expr_offset(text: &str, line: isize, col: isize) -> usize {
    let mut off = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as isize + 1 == line {
            let c = usize::try_from(col).unwrap_or(0);
            return off + l.chars().take(c).map(char::len_utf8).sum::<usize>();
        }
        off += l.len();
    }
    0
}

type Out = Option<(Expr, Type)>;

impl Checker<'_> {
    fn span_of(&self, id: u64) -> Span {
        let Some(base) = self.base else {
            return self.whole;
        };
        match self.info.offset_for(id) {
            Some((start, stop)) => {
                let to_byte = |c: u32| {
                    self.text
                        .char_indices()
                        .nth(c as usize)
                        .map_or(self.text.len(), |(b, _)| b)
                };
                let (s, e) = (to_byte(start), to_byte(stop.max(start)));
                Span::new(base + s, (e - s).max(1))
            }
            None => self.whole,
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
            LiteralValue::String(s) => {
                (Expr::Lit(Scalar::Str(s.inner().to_string())), Type::String)
            }
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
        if self.base.is_none() || b.offset < a.offset {
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
                _ => {
                    return self.err_help(
                        codes::UNKNOWN_FIELD,
                        id,
                        format!("`instance` has no field `{field}`"),
                        "instance fields: cycle_start, enrolled_at, cycle",
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

    /// The span covering every node of `e`.
    fn tree_span(&self, e: &IdedExpr) -> Span {
        let mut span = self.span_of(e.id);
        let mut grow = |other: Span| {
            let end = (span.offset + span.len).max(other.offset + other.len);
            span.offset = span.offset.min(other.offset);
            span.len = end - span.offset;
        };
        match &e.expr {
            CelExpr::Call(c) => {
                if let Some(t) = &c.target {
                    grow(self.tree_span(t));
                }
                for a in &c.args {
                    grow(self.tree_span(a));
                }
            }
            CelExpr::Select(sel) => {
                // The node's own span is the dot: reach to the end of the field name.
                let dot = self.span_of(e.id);
                grow(Span::new(dot.offset, 1 + sel.field.len()));
                grow(self.tree_span(&sel.operand));
            }
            CelExpr::List(l) => {
                for a in &l.elements {
                    grow(self.tree_span(a));
                }
            }
            _ => {}
        }
        span
    }

    fn call(&mut self, id: u64, name: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Out {
        let n_before = self.diags.len();
        let out = self.call_inner(id, name, target, args);
        if self.diags.len() > n_before && self.base.is_some() {
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
                    return self.err(
                        codes::TYPE_ERROR,
                        id,
                        format!("cannot compare {} with {}", article(&tx), article(&ty)),
                    );
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
                Ok(d) => Some((Expr::Lit(Scalar::Duration(d)), Type::Duration)),
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
                Ok(t) => Some((Expr::Lit(Scalar::Timestamp(t)), Type::Timestamp)),
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
                return self.err(
                    codes::INVALID_VALUE,
                    arg.id,
                    format!("unknown unit `{}`", u.inner()),
                );
            }
            return Some((
                Expr::Call(
                    Builtin::ValueIn,
                    vec![Expr::Lit(Scalar::Str(u.inner().to_string()))],
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
