//! raw → validated → compiled.
//!
//! Every check runs and every problem is collected before giving up, each with a stable
//! code and a location; only a pathway with no error becomes a [`CompiledPathway`].

use std::collections::{BTreeMap, BTreeSet};

use parcours_core::calendar::ClinicalDuration;
use parcours_core::events::EventType;
use parcours_core::expr::Expr;
use parcours_core::model::{
    Action, AlertDef, AlertDefId, Anchor, CloseRule, CompiledPathway, DEFAULT_CONSENT_WINDOW,
    Enrolment, EscalationStep, Guard, HandoffDef, HandoffDefId, PathwayParts, Priority, Repeat,
    SeriesDecl, Severity as AlertSeverity, State, StateId, TaskDef, TaskDefId, TaskOutcome,
    TemplatePart, TimerDefId, Track, TrackId, Transition, TransitionId, Trigger, VarDecl,
};
use parcours_core::units;
use parcours_core::value::{Scalar, ScalarType, Type};

use crate::diag::{Diagnostic, Report, codes};
use crate::guard::{self, Scope};
use crate::raw::{RawAction, RawPathway, RawTransition};
use crate::span::{Sp, Span, line_col, offset_of};

/// Roles every pathway may use without declaring them.
pub const BUILTIN_ROLES: &[&str] = &[
    "gp",
    "nurse",
    "cardiologist",
    "pharmacist",
    "coordinator",
    "coordinator_lead",
    "telemonitoring",
    "hospital",
    "patient",
    "ophthalmologist",
    "orthoptist",
    "podiatrist",
    "nephrologist",
    "endocrinologist",
    "dietitian",
    "dentist",
];

/// Compile one pathway file. `Ok` carries the pathway and a report of warnings; `Err` a
/// report with at least one error.
pub fn compile_source(file: &str, src: &str) -> Result<(CompiledPathway, Report), Report> {
    let report = |diagnostics: Vec<Diagnostic>| {
        let mut diagnostics = diagnostics;
        diagnostics.sort_by_key(|d| (d.span().offset, d.code));
        Report {
            file: file.to_string(),
            source: src.to_string(),
            diagnostics,
        }
    };
    let raw: RawPathway = match serde_saphyr::from_str(src) {
        Ok(r) => r,
        Err(e) => return Err(report(vec![syntax_error(src, &e)])),
    };
    let mut c = Compiler {
        file,
        src,
        diags: Vec::new(),
    };
    let compiled = c.pathway(&raw);
    let diags = c.diags;
    let has_error = diags
        .iter()
        .any(|d| d.severity == crate::diag::Severity::Error);
    match compiled {
        Some(p) if !has_error => Ok((p, report(diags))),
        _ => Err(report(diags)),
    }
}

/// The report of a file that is not UTF-8 text (`bytes`, `e` where it stops being UTF-8):
/// one error at its first invalid byte, rendered against the text with that byte and the
/// next invalid ones replaced by `�`.
pub fn not_utf8(file: &str, bytes: &[u8], e: std::str::Utf8Error) -> Report {
    let source = String::from_utf8_lossy(bytes).into_owned();
    // The text up to the byte is valid, the same in `source`.
    let at = e.valid_up_to();
    let (line, col) = line_col(&source, at);
    let byte = bytes.get(at).copied().unwrap_or_default();
    let len = source[at..].chars().next().map_or(1, char::len_utf8);
    let d = Diagnostic::error(
        codes::SYNTAX,
        Span::new(at, len),
        format!(
            "the file is not UTF-8 text (byte 0x{byte:02X} at line {line}, column {col}); save it as UTF-8"
        ),
    )
    .with_label("not UTF-8")
    .with_help(
        "choose UTF-8 when saving it in your editor, or convert it (`iconv -f ISO-8859-1 -t UTF-8 old.yaml > new.yaml` for a Latin-1 file)",
    );
    Report {
        file: file.to_string(),
        source,
        diagnostics: vec![d],
    }
}

fn syntax_error(src: &str, e: &serde_saphyr::Error) -> Diagnostic {
    // What the YAML parser's words would hide: an empty file, a tab in an indentation
    // (YAML indents with spaces; the parser often notices it a line early, and a snippet
    // shows the tab as spaces), a non-breaking space pasted from a word processor.
    if src
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Diagnostic::error(codes::SYNTAX, Span::new(0, 0), "the file is empty")
            .with_help("a pathway file starts with `pathway:`, `version:` and `title:`; see docs/pathway-language.md");
    }
    let text = e.to_string();
    if text.to_lowercase().contains("tab") {
        let from = e.location().map_or(1, |l| l.line() as usize);
        if let Some(at) = indenting_tab(src, from) {
            return Diagnostic::error(
                codes::SYNTAX,
                Span::new(at, 1),
                "a tab in the indentation: YAML indents with spaces only",
            )
            .with_help("replace the tab with spaces (most editors have an \"indent using spaces\" setting)");
        }
    }
    let span = e
        .location()
        .map(|l| {
            let off = l
                .span()
                .byte_offset()
                .map(|o| o as usize)
                .unwrap_or_else(|| offset_of(src, l.line() as usize, l.column() as usize));
            Span::new(off, 1)
        })
        .unwrap_or_default();
    // The crate renders its own snippet; keep the first line, the message.
    let mut msg = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid pathway file")
        .trim_start_matches("error: ")
        .to_string();
    // The location is already in the diagnostic; drop the library's "line N column M: ".
    if msg.starts_with("line ")
        && let Some(i) = msg.find(": ")
    {
        msg = msg[i + 2..].to_string();
    }
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
        .map(str::to_owned)
    {
        // The parser points at a key of the mapping that lacks the field: name that
        // mapping (its key, found by indentation), and point at it.
        let (whose, at) = match enclosing_key(src, span.offset) {
            Some((key, at)) => (format!("`{key}`"), at),
            // The top level: at its first key.
            None => {
                let mut at = 0;
                for line in src.split_inclusive('\n') {
                    let body = line.trim();
                    if !body.is_empty() && !body.starts_with('#') && !body.starts_with("---") {
                        break;
                    }
                    at += line.len();
                }
                ("the pathway".to_owned(), at.min(src.len()))
            }
        };
        return Diagnostic::error(
            codes::SYNTAX,
            Span::new(at, 1),
            format!("{whose} has no `{field}`, which it needs"),
        )
        .with_help("docs/pathway-language.md lists each part's required keys; the JSON Schema (`parcours schema`) too");
    }
    if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        msg = format!("key `{key}` is defined twice in this mapping");
    } else if msg == "invalid u32" {
        msg = "expected a whole number (0 or more)".to_string();
    }
    let line = src[..span.offset.min(src.len())].matches('\n').count() + 1;
    let help = match non_breaking_space(src, line) {
        Some((l, col)) => format!(
            "line {l} column {col} has a non-breaking space (often pasted from a word processor) where YAML needs a plain space: retype it"
        ),
        None => "see docs/pathway-language.md and the JSON Schema (`parcours schema`)".into(),
    };
    Diagnostic::error(codes::SYNTAX, span, msg).with_help(help)
}

/// The key of the mapping that holds the line at `offset` (the nearest line above it
/// indented less, a `key:`), with its offset; `None` at the top level.
fn enclosing_key(src: &str, offset: usize) -> Option<(String, usize)> {
    let indent = |l: &str| l.len() - l.trim_start_matches([' ', '-']).len();
    let line_start = src[..offset.min(src.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let here = indent(src[line_start..].lines().next().unwrap_or(""));
    if here == 0 {
        return None;
    }
    let mut end = line_start;
    while end > 0 {
        let start = src[..end - 1].rfind('\n').map_or(0, |i| i + 1);
        let line = &src[start..end - 1];
        let body = line.trim_start_matches([' ', '-']);
        if !body.is_empty() && !body.starts_with('#') && indent(line) < here {
            let key = body.split(':').next().unwrap_or(body).trim();
            return Some((key.to_owned(), start + indent(line)));
        }
        end = start;
    }
    None
}

/// The offset of the first tab in the leading whitespace of a line, from line `from` on
/// (1-based), else of any line.
fn indenting_tab(src: &str, from: usize) -> Option<usize> {
    let mut tabs = Vec::new();
    let mut off = 0;
    for (i, line) in src.split_inclusive('\n').enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        if let Some(t) = line[..indent].find('\t') {
            tabs.push((i + 1, off + t));
        }
        off += line.len();
    }
    tabs.iter()
        .find(|(n, _)| *n >= from)
        .or(tabs.first())
        .map(|(_, at)| *at)
}

/// A non-breaking space (U+00A0) outside a comment on line `line` or the one before, as
/// (line, column), 1-based.
fn non_breaking_space(src: &str, line: usize) -> Option<(usize, usize)> {
    src.lines()
        .enumerate()
        .skip(line.saturating_sub(2))
        .take(2)
        .find_map(|(i, l)| {
            let code = l.split(" #").next().unwrap_or(l);
            code.chars()
                .position(|c| c == '\u{a0}')
                .map(|col| (i + 1, col + 1))
        })
}

struct Compiler<'a> {
    file: &'a str,
    src: &'a str,
    diags: Vec<Diagnostic>,
}

/// Names resolved so far, shared by every check.
struct Names {
    roles: BTreeSet<String>,
    params: Vec<(String, Type)>,
    vars: Vec<(String, Type)>,
    series: Vec<String>,
    timers: Vec<String>,
    tasks: Vec<String>,
    alerts: Vec<String>,
    handoffs: Vec<String>,
}

impl Compiler<'_> {
    fn error(&mut self, code: &'static str, span: Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(code, span, msg));
    }

    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn location(&self, span: Span) -> String {
        let (l, c) = line_col(self.src, span.offset);
        format!("{}:{l}:{c}", self.file)
    }

    fn duration(&mut self, s: &Sp<String>) -> Option<ClinicalDuration> {
        match s.value.parse::<ClinicalDuration>() {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(
                    Diagnostic::error(
                        codes::INVALID_DURATION,
                        s.span,
                        format!("invalid duration `{}`: {e}", s.value),
                    )
                    .with_help("durations: 30min, 12h, 7d, 2w, 3mo, 1y, 5wd (working days), or combined, largest unit first: 6mo1d, 1d12h, 1h30min"),
                );
                None
            }
        }
    }

    fn role(&mut self, names: &Names, r: &Sp<String>) {
        if !names.roles.contains(&r.value) {
            let known: Vec<&str> = names.roles.iter().map(String::as_str).collect();
            self.push(
                Diagnostic::error(
                    codes::UNKNOWN_REFERENCE,
                    r.span,
                    format!("unknown role `{}`", r.value),
                )
                .with_help(format!(
                    "known roles: {}; declare others under `roles:`",
                    known.join(", ")
                )),
            );
        }
    }

    /// Warns when an id people and other systems write out (in worklist queries, access
    /// files, answers, exports) is not ASCII letters, digits, `_` and `-`. A warning, not
    /// an error: a version already published with such an id must still compile.
    fn id_shape(&mut self, what: &str, id: &str, span: Span) {
        if valid_id(id) {
            return;
        }
        let mut d = Diagnostic::warning(
            codes::ID_SHAPE,
            span,
            format!(
                "{what} `{id}` is hard to write elsewhere: use ASCII letters, digits, `_` and `-` only"
            ),
        );
        if let Some(fixed) = id_suggestion(id) {
            d = d.with_help(format!(
                "write `{fixed}`, and the same wherever it is named"
            ));
        }
        self.push(d);
    }

    fn event_type(&mut self, s: &Sp<String>) -> Option<EventType> {
        match s.value.parse::<EventType>() {
            Ok(t) => Some(t),
            Err(_) => {
                let close = EventType::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .filter(|t| {
                        let prefix = s.value.split('.').next().unwrap_or("");
                        t.starts_with(prefix)
                    })
                    .collect::<Vec<_>>();
                let help = if close.is_empty() {
                    "see the event catalogue: `parcours events`".to_string()
                } else {
                    format!("did you mean one of: {}", close.join(", "))
                };
                self.push(
                    Diagnostic::error(
                        codes::UNKNOWN_EVENT,
                        s.span,
                        format!("unknown event type `{}`", s.value),
                    )
                    .with_help(help),
                );
                None
            }
        }
    }

    fn anchor(&mut self, names: &Names, s: Option<&Sp<String>>) -> Option<Anchor> {
        let Some(s) = s else {
            return Some(Anchor::StateEntry);
        };
        match s.value.as_str() {
            "state_entry" => Some(Anchor::StateEntry),
            "cycle_start" => Some(Anchor::CycleStart),
            "enrolment" => Some(Anchor::Enrolment),
            other => {
                if let Some(v) = other.strip_prefix("vars.") {
                    match names.vars.iter().position(|(n, _)| n == v) {
                        Some(i) if names.vars[i].1 == Type::Timestamp => {
                            return Some(Anchor::Var(i as u16));
                        }
                        Some(i) => {
                            let t = names.vars[i].1.clone();
                            self.error(
                                codes::TYPE_ERROR,
                                s.span,
                                format!(
                                    "`{other}` is {}, an anchor must be a timestamp",
                                    t.with_article()
                                ),
                            );
                            return None;
                        }
                        None => {
                            self.error(
                                codes::UNKNOWN_REFERENCE,
                                s.span,
                                format!("unknown variable `{v}`"),
                            );
                            return None;
                        }
                    }
                }
                self.push(
                    Diagnostic::error(
                        codes::INVALID_VALUE,
                        s.span,
                        format!("unknown anchor `{other}`"),
                    )
                    .with_help(
                        "anchors: state_entry, cycle_start, enrolment, vars.<timestamp variable>",
                    ),
                );
                None
            }
        }
    }

    fn guard(
        &mut self,
        names: &Names,
        when: Option<&Sp<String>>,
        event: Option<EventType>,
    ) -> Result<Option<Guard>, ()> {
        let Some(w) = when else { return Ok(None) };
        let scope = Scope {
            event,
            params: &names.params,
            vars: &names.vars,
            series: &names.series,
            template: false,
        };
        match guard::check(&w.value, w.span, self.src, &scope, Some(&Type::Bool)) {
            Ok((expr, _, warnings)) => {
                self.diags.extend(warnings);
                Ok(Some(Guard {
                    expr,
                    source: w.value.trim().to_string(),
                }))
            }
            Err(d) => {
                self.diags.extend(d);
                Err(())
            }
        }
    }

    fn value_expr(
        &mut self,
        names: &Names,
        to: &Sp<String>,
        event: Option<EventType>,
        want: &Type,
    ) -> Option<Expr> {
        let scope = Scope {
            event,
            params: &names.params,
            vars: &names.vars,
            series: &names.series,
            template: false,
        };
        match guard::check(&to.value, to.span, self.src, &scope, Some(want)) {
            Ok((e, _, warnings)) => {
                self.diags.extend(warnings);
                Some(e)
            }
            Err(d) => {
                self.diags.extend(d);
                None
            }
        }
    }

    fn template(&mut self, names: &Names, msg: &Sp<String>) -> Option<Vec<TemplatePart>> {
        let mut parts = Vec::new();
        let mut rest = msg.value.as_str();
        let mut consumed = 0usize;
        let base = guard_base(self.src, msg);
        let mut ok = true;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                self.error(
                    codes::MALFORMED,
                    msg.span,
                    "`{{` without a closing `}}` in the message",
                );
                return None;
            };
            let inner = &after[..end];
            let lead = inner.len() - inner.trim_start().len();
            let inner_span = match base {
                Some(b) => Span::new(b + consumed + start + 2 + lead, inner.trim().len().max(1)),
                None => msg.span,
            };
            let scope = Scope {
                event: None,
                params: &names.params,
                vars: &names.vars,
                series: &names.series,
                template: true,
            };
            match guard::check(inner.trim(), inner_span, self.src, &scope, None) {
                Ok((e, _, warnings)) => {
                    self.diags.extend(warnings);
                    parts.push(TemplatePart::Expr(e));
                }
                Err(d) => {
                    self.diags.extend(d);
                    ok = false;
                }
            }
            consumed += start + 2 + end + 2;
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        ok.then_some(parts)
    }

    #[allow(clippy::too_many_lines)]
    fn pathway(&mut self, raw: &RawPathway) -> Option<CompiledPathway> {
        // Header.
        let id_ok = !raw.pathway.value.is_empty()
            && raw
                .pathway
                .value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !id_ok {
            self.push(
                Diagnostic::error(
                    codes::INVALID_VALUE,
                    raw.pathway.span,
                    format!("invalid pathway id `{}`", raw.pathway.value),
                )
                .with_help("use lower-case letters, digits and dashes: `heart-failure`"),
            );
        }
        if raw.version.value == 0 {
            self.error(
                codes::INVALID_VALUE,
                raw.version.span,
                "version must be 1 or more",
            );
        }

        // Roles.
        let mut roles: BTreeSet<String> = BUILTIN_ROLES.iter().map(|r| r.to_string()).collect();
        for r in &raw.roles {
            self.id_shape("role", &r.value, r.span);
            if !roles.insert(r.value.clone()) {
                self.error(
                    codes::DUPLICATE_ID,
                    r.span,
                    format!("role `{}` is already known", r.value),
                );
            }
        }

        // Parameters and variables.
        let mut params = Vec::new();
        let mut vars = Vec::new();
        for (is_param, table) in [(true, &raw.parameters), (false, &raw.variables)] {
            for (name, v) in table {
                let ty = match v.ty.value.as_str() {
                    "bool" => Some(ScalarType::Bool),
                    "int" => Some(ScalarType::Int),
                    "number" => Some(ScalarType::Number),
                    "string" => Some(ScalarType::String),
                    "timestamp" => Some(ScalarType::Timestamp),
                    "duration" => Some(ScalarType::Duration),
                    other => {
                        self.push(
                            Diagnostic::error(
                                codes::INVALID_VALUE,
                                v.ty.span,
                                format!("unknown type `{other}`"),
                            )
                            .with_help("types: bool, int, number, string, timestamp, duration"),
                        );
                        None
                    }
                };
                let default = match (&v.default, ty) {
                    (Some(d), Some(ty)) => match Scalar::from_json(ty, &d.value) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            // `default: "90"` for a number: the quotes make it text.
                            let unquoted = d.value.as_str().and_then(|t| {
                                let v: serde_json::Value = serde_json::from_str(t.trim()).ok()?;
                                Scalar::from_json(ty, &v).ok().map(|_| t.trim().to_string())
                            });
                            let mut diag = Diagnostic::error(
                                codes::INVALID_VALUE,
                                d.span,
                                format!("default of `{name}`: {e}"),
                            );
                            if let Some(bare) = unquoted {
                                diag = diag.with_help(format!(
                                    "`{name}` is {}: write it without quotes, `default: {bare}`",
                                    parcours_core::value::with_article(&v.ty.value)
                                ));
                            }
                            self.push(diag);
                            None
                        }
                    },
                    (None, Some(_)) if is_param => {
                        self.error(
                            codes::INVALID_VALUE,
                            v.span,
                            format!("parameter `{name}` needs a default"),
                        );
                        None
                    }
                    _ => None,
                };
                let decl = VarDecl {
                    name: name.clone(),
                    ty: ty.unwrap_or(ScalarType::Bool),
                    default,
                    description: v.description.clone().unwrap_or_default(),
                };
                if is_param {
                    params.push(decl);
                } else {
                    vars.push(decl);
                }
            }
        }
        for v in &vars {
            if params.iter().any(|p| p.name == v.name) {
                let span = raw
                    .variables
                    .get(&v.name)
                    .map(|s| s.span)
                    .unwrap_or_default();
                self.error(
                    codes::DUPLICATE_ID,
                    span,
                    format!("`{}` is both a parameter and a variable", v.name),
                );
            }
        }

        // Series.
        let mut series = Vec::new();
        for (name, s) in &raw.series {
            if s.codes.is_empty() {
                self.error(
                    codes::INVALID_VALUE,
                    s.span,
                    format!("series `{name}` needs at least one LOINC code"),
                );
            }
            // A code that is no LOINC code (a typo, a wrong check digit) never matches a
            // result: the series stays empty and the rules reading it never fire. A
            // warning, not an error: a version already published with one must still
            // compile.
            for code in &s.codes {
                if let Some(why) = parcours_core::loinc::what_is_wrong(&code.value) {
                    self.push(
                        Diagnostic::warning(
                            codes::INEFFECTIVE,
                            code.span,
                            format!(
                                "series `{name}`: `{}` is not a LOINC code, so no result will ever feed the series through it",
                                code.value
                            ),
                        )
                        .with_help(why),
                    );
                }
            }
            if !units::is_known_unit(&s.unit.value) {
                self.push(
                    Diagnostic::error(
                        codes::INVALID_VALUE,
                        s.unit.span,
                        format!("unknown unit `{}`", s.unit.value),
                    )
                    .with_help(units::known_units_help()),
                );
            }
            let keep = match &s.keep {
                Some(k) => self.duration(k),
                None => "90d".parse().ok(),
            };
            let assume_unitless = match s.unitless.as_ref().map(|u| (u.value.as_str(), u.span)) {
                None | Some(("ignore", _)) => false,
                Some(("assume", _)) => true,
                Some((other, span)) => {
                    self.push(
                        Diagnostic::error(
                            codes::INVALID_VALUE,
                            span,
                            format!("unknown `unitless` value `{other}`"),
                        )
                        .with_help("unitless: ignore (default: a result without a unit is not added) or assume (taken as the series' unit)"),
                    );
                    false
                }
            };
            series.push(SeriesDecl {
                name: name.clone().into(),
                codes: s.codes.iter().map(|c| c.value.clone()).collect(),
                unit: s.unit.value.clone(),
                keep: keep.unwrap_or(ClinicalDuration::new(
                    90,
                    parcours_core::calendar::DurationUnit::Days,
                )),
                assume_unitless,
            });
        }

        // Named timers.
        let mut timers: Vec<String> = Vec::new();
        for t in &raw.timers {
            self.id_shape("timer", &t.value, t.span);
            if timers.contains(&t.value) {
                self.error(
                    codes::DUPLICATE_ID,
                    t.span,
                    format!("timer `{}` is declared twice", t.value),
                );
            }
            timers.push(t.value.clone());
        }

        let names = Names {
            roles,
            params: params.iter().map(|p| (p.name.clone(), p.ty.ty())).collect(),
            vars: vars.iter().map(|v| (v.name.clone(), v.ty.ty())).collect(),
            series: series.iter().map(|s| s.name.to_string()).collect(),
            timers: timers.clone(),
            tasks: raw.tasks.keys().cloned().collect(),
            alerts: raw.alerts.keys().cloned().collect(),
            handoffs: raw.handoffs.keys().cloned().collect(),
        };

        // Tasks, alerts, handoffs.
        let mut tasks = Vec::new();
        for (code, t) in &raw.tasks {
            self.id_shape("task", code, key_span(self.src, t.span, code));
            self.role(&names, &t.role);
            let due = self.duration(&t.due);
            let due_from = self.anchor(&names, t.from.as_ref());
            let priority = self.priority(t.priority.as_ref(), Priority::Routine);
            let reminders: Vec<ClinicalDuration> = t
                .reminders
                .iter()
                .filter_map(|r| {
                    let reminder = self.duration(r)?;
                    // A reminder is sent that long before the due time: one longer than the
                    // time to the due would fall before the task exists, and goes out as soon
                    // as it is requested (as long as it: at once, on purpose — type 2
                    // diabetes' recurring tasks remind the patient as they fall due).
                    if let Some(due) = &due
                        && reminder.nominal_seconds() > due.nominal_seconds()
                    {
                        self.push(
                            Diagnostic::warning(
                                codes::INEFFECTIVE,
                                r.span,
                                format!(
                                    "task `{code}`: a reminder {reminder} before a due time {due} after its start would come before the task exists: it is sent as soon as the task is requested"
                                ),
                            )
                            .with_help("a reminder is how long before the due time it is sent: make it no longer than `due` (as long as `due`: at once)"),
                        );
                    }
                    Some(reminder)
                })
                .collect();
            let mut escalation = Vec::new();
            for step in &t.escalation {
                self.role(&names, &step.role);
                let after_due = self.duration(&step.after_due);
                let p = self.priority(step.priority.as_ref(), Priority::Urgent);
                if let Some(after_due) = after_due {
                    escalation.push(EscalationStep {
                        after_due,
                        role: step.role.value.clone().into(),
                        priority: p,
                    });
                }
            }
            for w in escalation.windows(2) {
                if w[1].after_due.nominal_seconds() < w[0].after_due.nominal_seconds() {
                    self.error(
                        codes::INVALID_VALUE,
                        t.span,
                        format!("task `{code}`: escalation steps must be in increasing order"),
                    );
                }
            }
            if t.title.value.trim().is_empty() {
                self.error(codes::INVALID_VALUE, t.title.span, "a task needs a title");
            }
            // An instance keeps what was done in its cycle for the first 64 tasks (a `u64`).
            if t.once_per_cycle && tasks.len() >= 64 {
                self.error(
                    codes::INVALID_VALUE,
                    key_span(self.src, t.span, code),
                    format!(
                        "task `{code}`: only the first 64 tasks of a pathway can be \
                         `once_per_cycle` (this is task {}): declare it earlier",
                        tasks.len() + 1
                    ),
                );
            }
            tasks.push(TaskDef {
                code: code.clone().into(),
                role: t.role.value.clone().into(),
                title: t.title.value.clone().into(),
                due: due.unwrap_or(ClinicalDuration::new(
                    0,
                    parcours_core::calendar::DurationUnit::Days,
                )),
                due_from: due_from.unwrap_or(Anchor::StateEntry),
                priority,
                reminders,
                escalation,
                once_per_cycle: t.once_per_cycle,
            });
        }
        let mut alerts = Vec::new();
        for (code, a) in &raw.alerts {
            self.id_shape("alert", code, key_span(self.src, a.span, code));
            self.role(&names, &a.role);
            if let Some(e) = &a.escalate_to {
                self.role(&names, e);
            }
            let severity = match a.severity.value.as_str() {
                "low" => AlertSeverity::Low,
                "medium" => AlertSeverity::Medium,
                "high" => AlertSeverity::High,
                "critical" => AlertSeverity::Critical,
                other => {
                    self.push(
                        Diagnostic::error(
                            codes::INVALID_VALUE,
                            a.severity.span,
                            format!("unknown severity `{other}`"),
                        )
                        .with_help("severities: low, medium, high, critical"),
                    );
                    AlertSeverity::Medium
                }
            };
            let ack = a.acknowledge_within.as_ref().and_then(|d| self.duration(d));
            let message = self.template(&names, &a.message).unwrap_or_default();
            alerts.push(AlertDef {
                code: code.clone(),
                severity,
                role: a.role.value.clone(),
                message,
                acknowledge_within: ack,
                escalate_to: a.escalate_to.as_ref().map(|e| e.value.clone()),
            });
        }
        let mut handoffs = Vec::new();
        for (code, h) in &raw.handoffs {
            self.id_shape("handoff", code, key_span(self.src, h.span, code));
            for r in [&h.from, &h.to, &h.escalate_to] {
                self.role(&names, r);
            }
            let within = self.duration(&h.accept_within);
            handoffs.push(HandoffDef {
                code: code.clone(),
                from: h.from.value.clone(),
                to: h.to.value.clone(),
                title: h.title.value.clone(),
                accept_within: within.unwrap_or(ClinicalDuration::new(
                    1,
                    parcours_core::calendar::DurationUnit::Days,
                )),
                escalate_to: h.escalate_to.value.clone(),
            });
        }

        // Enrolment and closing.
        let enrol_on = self.event_type(&raw.enrolment.on);
        let enrol_guard = match enrol_on {
            Some(t) => self
                .guard(&names, raw.enrolment.when.as_ref(), Some(t))
                .ok()
                .flatten(),
            None => None,
        };
        let episode_key = match (enrol_on, &raw.enrolment.episode_key) {
            (Some(t), Some(k)) => self.value_expr(&names, k, Some(t), &Type::String),
            _ => None,
        };
        let on_repeat = match raw
            .enrolment
            .on_repeat
            .as_ref()
            .map(|s| (s.value.as_str(), s.span))
        {
            None | Some(("ignore", _)) => Repeat::Ignore,
            Some(("restart", _)) => Repeat::Restart,
            Some((other, span)) => {
                self.push(
                    Diagnostic::error(
                        codes::INVALID_VALUE,
                        span,
                        format!("unknown on_repeat `{other}`"),
                    )
                    .with_help("on_repeat: restart (new cycle) or ignore"),
                );
                Repeat::Ignore
            }
        };
        let consent_window = match &raw.enrolment.consent_window {
            Some(w) => self.duration(w).unwrap_or(DEFAULT_CONSENT_WINDOW),
            None => DEFAULT_CONSENT_WINDOW,
        };
        let mut close_rules = Vec::new();
        for (i, c) in raw.close.iter().enumerate() {
            let Some(on) = self.event_type(&c.on) else {
                continue;
            };
            let g = self.guard(&names, c.when.as_ref(), Some(on)).ok().flatten();
            if c.reason.value.trim().is_empty() {
                self.error(
                    codes::INVALID_VALUE,
                    c.reason.span,
                    "a closing rule needs a reason",
                );
            }
            close_rules.push(CloseRule {
                rule: format!("close[{i}]/{}", c.reason.value).into(),
                on,
                guard: g,
                reason: c.reason.value.clone(),
            });
        }

        // Tracks and states: first the names, so transitions can refer forward.
        let mut states: Vec<State> = Vec::new();
        let mut state_spans: Vec<Span> = Vec::new();
        let mut state_index: BTreeMap<String, StateId> = BTreeMap::new();
        for (ti, (tname, track)) in raw.tracks.value.iter().enumerate() {
            for (sname, st) in &track.states {
                if let Some(prev) = state_index.get(sname) {
                    let prev_span = state_spans[prev.index()];
                    self.push(
                        Diagnostic::error(
                            codes::DUPLICATE_ID,
                            st.span,
                            format!("state `{sname}` is defined twice"),
                        )
                        .also(prev_span, "first defined here")
                        .with_help("state names are unique across all tracks"),
                    );
                    continue;
                }
                let name_span = key_span(self.src, st.span, sname);
                if !valid_name(sname) {
                    let mut d = Diagnostic::error(
                        codes::INVALID_VALUE,
                        name_span,
                        format!(
                            "invalid state name `{sname}`: use ASCII letters (a-z, A-Z), digits and `_` only"
                        ),
                    );
                    if let Some(fixed) = name_suggestion(sname) {
                        d = d.with_help(format!(
                            "write `{fixed}` (and the same in every `goto:` and `initial:` that names it)"
                        ));
                    }
                    self.push(d);
                }
                state_index.insert(sname.clone(), StateId(states.len() as u16));
                state_spans.push(name_span);
                states.push(State {
                    name: sname.clone().into(),
                    track: TrackId(ti as u16),
                    terminal: st.terminal,
                    description: st.description.clone().unwrap_or_default(),
                    on_enter: Vec::new(),
                    on_exit: Vec::new(),
                    transitions: Vec::new(),
                });
            }
            if track.states.is_empty() {
                self.error(
                    codes::MALFORMED,
                    track.span,
                    format!("track `{tname}` has no states"),
                );
            }
        }
        if raw.tracks.value.is_empty() {
            self.error(
                codes::MALFORMED,
                raw.tracks.span,
                "a pathway needs at least one track",
            );
        }

        let mut tracks = Vec::new();
        let mut transitions: Vec<Transition> = Vec::new();
        let mut rule_ids: BTreeMap<String, Span> = BTreeMap::new();
        let mut transition_spans: Vec<Span> = Vec::new();
        let mut incomplete: BTreeSet<usize> = BTreeSet::new();
        for (ti, (tname, track)) in raw.tracks.value.iter().enumerate() {
            let track_id = TrackId(ti as u16);
            let before = transitions.len();
            let expected = track.any.len()
                + track
                    .states
                    .values()
                    .map(|s| s.transitions.len())
                    .sum::<usize>();
            let initial = match state_index.get(&track.initial.value) {
                Some(s) if states[s.index()].track == track_id => *s,
                Some(_) => {
                    self.error(
                        codes::UNKNOWN_REFERENCE,
                        track.initial.span,
                        format!(
                            "initial state `{}` belongs to another track",
                            track.initial.value
                        ),
                    );
                    StateId(0)
                }
                None => {
                    let names: Vec<&str> = track.states.keys().map(String::as_str).collect();
                    self.push(
                        Diagnostic::error(
                            codes::UNKNOWN_REFERENCE,
                            track.initial.span,
                            format!("unknown initial state `{}`", track.initial.value),
                        )
                        .with_help(format!("states of this track: {}", names.join(", "))),
                    );
                    StateId(0)
                }
            };
            let mut any = Vec::new();
            for (i, t) in track.any.iter().enumerate() {
                let rule = match &t.id {
                    Some(id) => format!("{tname}/{}", id.value),
                    None => format!("{tname}/any[{i}]"),
                };
                if let Some(tr) = self.transition(
                    &names,
                    &state_index,
                    &states,
                    track_id,
                    None,
                    t,
                    rule,
                    &mut rule_ids,
                ) {
                    if matches!(tr.trigger, Trigger::After { .. } | Trigger::Every { .. }) {
                        self.push(
                            Diagnostic::error(codes::MALFORMED, t.span, "`after` and `every` cannot be used in `any` transitions")
                                .with_help("timers belong to a state: put the transition in each state that needs it"),
                        );
                    }
                    any.push(TransitionId(transitions.len() as u16));
                    transitions.push(tr);
                    transition_spans.push(t.span);
                }
            }
            for (sname, st) in &track.states {
                let Some(&sid) = state_index.get(sname) else {
                    continue;
                };
                if states[sid.index()].track != track_id {
                    continue;
                }
                let on_enter = self.actions(&names, &st.on_enter, None);
                let on_exit = self.actions(&names, &st.on_exit, None);
                let mut own = Vec::new();
                for (i, t) in st.transitions.iter().enumerate() {
                    let rule = match &t.id {
                        Some(id) => format!("{sname}/{}", id.value),
                        None => format!("{sname}/on[{i}]"),
                    };
                    if let Some(tr) = self.transition(
                        &names,
                        &state_index,
                        &states,
                        track_id,
                        Some(sid),
                        t,
                        rule,
                        &mut rule_ids,
                    ) {
                        own.push(TransitionId(transitions.len() as u16));
                        transitions.push(tr);
                        transition_spans.push(t.span);
                    }
                }
                if st.terminal && !own.is_empty() {
                    self.push(
                        Diagnostic::error(codes::MALFORMED, st.span, format!("terminal state `{sname}` has outgoing transitions"))
                            .with_help("a terminal state ends its track; remove `terminal: true` or its transitions"),
                    );
                }
                let s = &mut states[sid.index()];
                s.on_enter = on_enter;
                s.on_exit = on_exit;
                s.transitions = own;
            }
            if transitions.len() - before != expected {
                incomplete.insert(ti);
            }
            tracks.push(Track {
                name: tname.clone().into(),
                initial,
                any,
            });
        }

        let parts = PathwayParts {
            id: raw.pathway.value.clone(),
            version: raw.version.value,
            title: raw.title.value.clone(),
            source: self.file.to_string(),
            enrolment: Enrolment {
                on: enrol_on.unwrap_or(EventType::EncounterDischarged),
                guard: enrol_guard,
                on_repeat,
                episode_key,
                consent_window,
            },
            close_rules,
            params,
            vars,
            series,
            tracks,
            states,
            transitions,
            tasks,
            alerts,
            handoffs,
            timers,
        };
        if parts.states.is_empty() || parts.tracks.is_empty() {
            return None;
        }
        // Graph checks run even when other errors were found (all diagnostics at once),
        // except where a dropped transition would make them lie.
        let p = CompiledPathway::from_parts(parts);
        self.graph_checks(raw, &p, &state_spans, &transition_spans, &incomplete);
        let failed = self
            .diags
            .iter()
            .any(|d| d.severity == crate::diag::Severity::Error);
        (!failed).then_some(p)
    }

    fn priority(&mut self, p: Option<&Sp<String>>, default: Priority) -> Priority {
        match p.map(|s| (s.value.as_str(), s.span)) {
            None => default,
            Some(("routine", _)) => Priority::Routine,
            Some(("urgent", _)) => Priority::Urgent,
            Some(("asap", _)) => Priority::Asap,
            Some(("stat", _)) => Priority::Stat,
            Some((other, span)) => {
                self.push(
                    Diagnostic::error(
                        codes::INVALID_VALUE,
                        span,
                        format!("unknown priority `{other}`"),
                    )
                    .with_help("priorities (FHIR Task.priority): routine, urgent, asap, stat"),
                );
                default
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        names: &Names,
        state_index: &BTreeMap<String, StateId>,
        states: &[State],
        track: TrackId,
        from: Option<StateId>,
        t: &Sp<RawTransition>,
        rule: String,
        rule_ids: &mut BTreeMap<String, Span>,
    ) -> Option<Transition> {
        if let Some(id) = &t.id {
            if let Some(prev) = rule_ids.get(&rule) {
                let prev = *prev;
                self.push(
                    Diagnostic::error(
                        codes::DUPLICATE_ID,
                        id.span,
                        format!("transition id `{}` is used twice in this state", id.value),
                    )
                    .also(prev, "first used here"),
                );
            } else {
                rule_ids.insert(rule.clone(), id.span);
            }
        }
        let triggers = [t.on.is_some(), t.after.is_some(), t.every.is_some()];
        let n = triggers.iter().filter(|x| **x).count();
        if n > 1 {
            self.push(
                Diagnostic::error(
                    codes::MALFORMED,
                    t.span,
                    "a transition has one trigger: `on`, `after` or `every`",
                )
                .with_help("split it into two transitions"),
            );
            return None;
        }
        let mut ok = true;
        let mut event_type = None;
        let trigger = if let Some(on) = &t.on {
            let ty = self.event_type(on)?;
            event_type = Some(ty);
            let filter = self.filter(names, ty, t, &mut ok);
            Trigger::Event {
                on: ty,
                filter,
                any_status: t.any_status,
            }
        } else if let Some(after) = &t.after {
            let d = self.duration(after);
            let a = self.anchor(names, t.from.as_ref());
            Trigger::After {
                after: d?,
                from: a?,
            }
        } else if let Some(every) = &t.every {
            let d = self.duration(every)?;
            if d.is_zero() {
                self.error(
                    codes::INVALID_DURATION,
                    every.span,
                    "`every` must be longer than zero",
                );
                return None;
            }
            let a = self.anchor(names, t.from.as_ref())?;
            Trigger::Every {
                every: d,
                from: a,
                times: t.times.as_ref().map(|x| x.value),
            }
        } else {
            if t.when.is_none() {
                self.push(
                    Diagnostic::error(codes::MALFORMED, t.span, "a transition needs a trigger (`on`, `after`, `every`) or a `when` condition")
                        .with_help("an eventless transition (`when` only) is taken as soon as its condition holds"),
                );
                return None;
            }
            Trigger::Always
        };
        if t.on.is_none() {
            for (k, v) in [
                ("task", &t.task),
                ("handoff", &t.handoff),
                ("alert", &t.alert),
                ("timer", &t.timer),
            ] {
                if let Some(v) = v {
                    self.error(
                        codes::MALFORMED,
                        v.span,
                        format!("`{k}:` narrows an event; it needs `on:`"),
                    );
                    ok = false;
                }
            }
        }
        if t.times.is_some() && t.every.is_none() {
            if let Some(x) = &t.times {
                self.error(codes::MALFORMED, x.span, "`times` goes with `every`");
            }
            ok = false;
        }
        if t.from.is_some() && t.after.is_none() && t.every.is_none() {
            if let Some(x) = &t.from {
                self.error(
                    codes::MALFORMED,
                    x.span,
                    "`from` goes with `after` or `every`",
                );
            }
            ok = false;
        }
        let guard = self.guard(names, t.when.as_ref(), event_type).ok();
        let target = match &t.goto {
            None => None,
            Some(g) => match state_index.get(&g.value) {
                Some(s) if states[s.index()].track == track => Some(*s),
                Some(_) => {
                    self.push(
                        Diagnostic::error(
                            codes::UNKNOWN_REFERENCE,
                            g.span,
                            format!("state `{}` is in another track", g.value),
                        )
                        .with_help(
                            "a transition moves within its own track; tracks run in parallel",
                        ),
                    );
                    ok = false;
                    None
                }
                None => {
                    let in_track: Vec<&str> = states
                        .iter()
                        .filter(|s| s.track == track)
                        .map(|s| &*s.name)
                        .collect();
                    self.push(
                        Diagnostic::error(
                            codes::UNKNOWN_REFERENCE,
                            g.span,
                            format!("unknown state `{}`", g.value),
                        )
                        .with_help(format!("states of this track: {}", in_track.join(", "))),
                    );
                    ok = false;
                    None
                }
            },
        };
        if trigger == Trigger::Always && target.is_none() {
            self.push(
                Diagnostic::error(
                    codes::MALFORMED,
                    t.span,
                    "an eventless transition needs `goto`",
                )
                .with_help("without a target it would run its actions after every event"),
            );
            ok = false;
        }
        if trigger == Trigger::Always && target.is_some() && target == from {
            self.error(
                codes::EVENTLESS_CYCLE,
                t.span,
                "an eventless transition to its own state would loop forever",
            );
            ok = false;
        }
        let actions = self.actions(names, &t.actions, event_type);
        let guard = guard?;
        if !ok {
            return None;
        }
        Some(Transition {
            rule: rule.into(),
            location: self.location(t.span),
            track,
            from,
            trigger,
            guard,
            target,
            actions,
        })
    }

    fn filter(
        &mut self,
        names: &Names,
        ty: EventType,
        t: &RawTransition,
        ok: &mut bool,
    ) -> Option<String> {
        use EventType as E;
        let expects: Option<(&str, &[String])> = match ty {
            E::TaskCompleted | E::TaskNotNeeded | E::TaskCouldNotBeDone | E::TaskOverdue => {
                Some(("task", &names.tasks))
            }
            E::HandoffAccepted | E::HandoffDeclined => Some(("handoff", &names.handoffs)),
            E::AlertAcknowledged => Some(("alert", &names.alerts)),
            E::TimerFired => Some(("timer", &names.timers)),
            _ => None,
        };
        let given = [
            ("task", &t.task),
            ("handoff", &t.handoff),
            ("alert", &t.alert),
            ("timer", &t.timer),
        ];
        let mut out = None;
        for (k, v) in given {
            let Some(v) = v else { continue };
            match expects {
                Some((want, known)) if want == k => {
                    if known.contains(&v.value) {
                        out = Some(v.value.clone());
                    } else {
                        self.push(
                            Diagnostic::error(
                                codes::UNKNOWN_REFERENCE,
                                v.span,
                                format!("unknown {k} `{}`", v.value),
                            )
                            .with_help(format!("defined {k}s: {}", known.join(", "))),
                        );
                        *ok = false;
                    }
                }
                _ => {
                    self.error(
                        codes::MALFORMED,
                        v.span,
                        format!("`{k}:` does not apply to `{ty}` events"),
                    );
                    *ok = false;
                }
            }
        }
        if ty == E::TimerFired && out.is_none() && t.timer.is_none() {
            self.push(
                Diagnostic::error(
                    codes::MALFORMED,
                    t.on.as_ref().map(|o| o.span).unwrap_or_default(),
                    "`on: timer.fired` needs `timer:` naming a declared timer",
                )
                .with_help("for delays from state entry, use `after:` instead"),
            );
            *ok = false;
        }
        out
    }

    fn lookup(&mut self, kind: &str, known: &[String], s: &Sp<String>) -> Option<u16> {
        match known.iter().position(|k| k == &s.value) {
            Some(i) => Some(i as u16),
            None => {
                let help = if known.is_empty() {
                    format!("define it under `{kind}s:`")
                } else {
                    format!("defined {kind}s: {}", known.join(", "))
                };
                self.push(
                    Diagnostic::error(
                        codes::UNKNOWN_REFERENCE,
                        s.span,
                        format!("unknown {kind} `{}`", s.value),
                    )
                    .with_help(help),
                );
                None
            }
        }
    }

    fn actions(
        &mut self,
        names: &Names,
        raw: &[Sp<RawAction>],
        event: Option<EventType>,
    ) -> Vec<Action> {
        raw.iter()
            .filter_map(|a| self.action(names, a, event))
            .collect()
    }

    fn action(
        &mut self,
        names: &Names,
        a: &Sp<RawAction>,
        event: Option<EventType>,
    ) -> Option<Action> {
        let verbs: Vec<&str> = [
            ("task", a.task.is_some()),
            ("complete_task", a.complete_task.is_some()),
            ("cancel_task", a.cancel_task.is_some()),
            ("alert", a.alert.is_some()),
            ("handoff", a.handoff.is_some()),
            ("set", a.set.is_some()),
            ("set_param", a.set_param.is_some()),
            ("schedule", a.schedule.is_some()),
            ("cancel_timer", a.cancel_timer.is_some()),
            ("close", a.close.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(v, _)| v)
        .collect();
        if verbs.len() != 1 {
            let msg = if verbs.is_empty() {
                "an action needs a verb".to_string()
            } else {
                format!("an action has one verb, found {}", verbs.join(" and "))
            };
            self.push(
                Diagnostic::error(codes::MALFORMED, a.span, msg)
                    .with_help("verbs: task, complete_task, cancel_task, alert, handoff, set, set_param, schedule, cancel_timer, close"),
            );
            return None;
        }
        let verb = verbs[0];
        let allowed: &[&str] = match verb {
            "task" => &["after", "from"],
            "cancel_task" => &["outcome"],
            "set" | "set_param" => &["to"],
            "schedule" => &["after", "from"],
            _ => &[],
        };
        for (opt, present, span) in [
            (
                "outcome",
                a.outcome.is_some(),
                a.outcome.as_ref().map(|s| s.span),
            ),
            ("to", a.to.is_some(), a.to.as_ref().map(|s| s.span)),
            ("after", a.after.is_some(), a.after.as_ref().map(|s| s.span)),
            ("from", a.from.is_some(), a.from.as_ref().map(|s| s.span)),
        ] {
            if present && !allowed.contains(&opt) {
                self.error(
                    codes::MALFORMED,
                    span.unwrap_or(a.span),
                    format!("`{opt}` does not apply to `{verb}`"),
                );
                return None;
            }
        }
        match verb {
            "task" => {
                let name = a.task.as_ref()?;
                let id = self.lookup("task", &names.tasks, name)?;
                let due = match &a.after {
                    Some(d) => {
                        let d = self.duration(d)?;
                        let from = self.anchor(names, a.from.as_ref())?;
                        Some((d, from))
                    }
                    None => {
                        if let Some(f) = &a.from {
                            self.error(
                                codes::MALFORMED,
                                f.span,
                                "`from` on a task goes with `after`",
                            );
                            return None;
                        }
                        None
                    }
                };
                Some(Action::RequestTask {
                    task: TaskDefId(id),
                    due,
                })
            }
            "complete_task" => {
                let id = self.lookup("task", &names.tasks, a.complete_task.as_ref()?)?;
                Some(Action::CompleteTask(TaskDefId(id)))
            }
            "cancel_task" => {
                let name = a.cancel_task.as_ref()?;
                let task = if name.value == "*" {
                    None
                } else {
                    Some(TaskDefId(self.lookup("task", &names.tasks, name)?))
                };
                let outcome = match a.outcome.as_ref().map(|o| (o.value.as_str(), o.span)) {
                    None | Some(("not_needed", _)) => TaskOutcome::NotNeeded,
                    Some(("could_not_be_done", _)) => TaskOutcome::CouldNotBeDone,
                    Some((other, span)) => {
                        self.error(
                            codes::INVALID_VALUE,
                            span,
                            format!(
                                "unknown outcome `{other}`: use not_needed or could_not_be_done"
                            ),
                        );
                        return None;
                    }
                };
                Some(Action::CancelTasks { task, outcome })
            }
            "alert" => {
                let id = self.lookup("alert", &names.alerts, a.alert.as_ref()?)?;
                Some(Action::RaiseAlert(AlertDefId(id)))
            }
            "handoff" => {
                let id = self.lookup("handoff", &names.handoffs, a.handoff.as_ref()?)?;
                Some(Action::RequestHandoff(HandoffDefId(id)))
            }
            "set" | "set_param" => {
                let (target, table, kind) = if verb == "set" {
                    (a.set.as_ref()?, &names.vars, "variable")
                } else {
                    (a.set_param.as_ref()?, &names.params, "parameter")
                };
                let Some(to) = &a.to else {
                    self.error(
                        codes::MALFORMED,
                        a.span,
                        format!("`{verb}` needs `to:` with the value"),
                    );
                    return None;
                };
                let known: Vec<String> = table.iter().map(|(n, _)| n.clone()).collect();
                let i = self.lookup(kind, &known, target)?;
                let want = table[usize::from(i)].1.clone();
                let value = self.value_expr(names, to, event, &want)?;
                Some(if verb == "set" {
                    Action::SetVar { var: i, value }
                } else {
                    Action::SetParam { param: i, value }
                })
            }
            "schedule" => {
                let id = self.lookup("timer", &names.timers, a.schedule.as_ref()?)?;
                let Some(after) = &a.after else {
                    self.error(
                        codes::MALFORMED,
                        a.span,
                        "`schedule` needs `after:` with the delay",
                    );
                    return None;
                };
                let after = self.duration(after)?;
                let from = self.anchor(names, a.from.as_ref())?;
                let from = if a.from.is_none() { Anchor::Now } else { from };
                Some(Action::ScheduleTimer {
                    timer: TimerDefId(id),
                    after,
                    from,
                })
            }
            "cancel_timer" => {
                let id = self.lookup("timer", &names.timers, a.cancel_timer.as_ref()?)?;
                Some(Action::CancelTimer(TimerDefId(id)))
            }
            "close" => {
                let r = a.close.as_ref()?;
                if r.value.trim().is_empty() {
                    self.error(codes::INVALID_VALUE, r.span, "`close` needs a reason");
                    return None;
                }
                Some(Action::Close {
                    reason: r.value.clone(),
                })
            }
            _ => None,
        }
    }

    fn graph_checks(
        &mut self,
        raw: &RawPathway,
        p: &CompiledPathway,
        state_spans: &[Span],
        transition_spans: &[Span],
        incomplete: &BTreeSet<usize>,
    ) {
        // Unreachable states.
        for (ti, _) in p.tracks.iter().enumerate() {
            if incomplete.contains(&ti) {
                continue;
            }
            let reachable = p.reachable_states(TrackId(ti as u16));
            for (si, s) in p.states.iter().enumerate() {
                if s.track.index() == ti && !reachable.contains(&&*s.name) {
                    self.push(
                        Diagnostic::error(
                            codes::UNREACHABLE_STATE,
                            state_spans[si],
                            format!("state `{}` can never be reached", s.name),
                        )
                        .with_help(format!(
                            "no transition leads to it from `{}`",
                            p.state(p.tracks[ti].initial).name
                        )),
                    );
                }
            }
        }
        // Dead ends and waits without timeout.
        for (si, s) in p.states.iter().enumerate() {
            if s.terminal || incomplete.contains(&s.track.index()) {
                continue;
            }
            let track = &p.tracks[s.track.index()];
            let outgoing: Vec<&Transition> = s
                .transitions
                .iter()
                .chain(track.any.iter())
                .map(|t| p.transition(*t))
                .collect();
            let closes = s.on_enter.iter().any(|a| matches!(a, Action::Close { .. }))
                || outgoing
                    .iter()
                    .any(|t| t.actions.iter().any(|a| matches!(a, Action::Close { .. })));
            if outgoing.is_empty() && !closes {
                self.push(
                    Diagnostic::error(
                        codes::DEAD_END,
                        state_spans[si],
                        format!("state `{}` is a dead end: nothing leads out of it", s.name),
                    )
                    .with_help("add a transition out of it, or mark it `terminal: true`"),
                );
                continue;
            }
            // A state that moves on only when an event comes must notice when it does not.
            // Track-wide (`any`) transitions are interruptions, not what the state waits for.
            let waits = s.transitions.iter().map(|t| p.transition(*t)).any(|t| {
                t.target.is_some_and(|x| x.index() != si)
                    && matches!(t.trigger, Trigger::Event { .. })
            });
            let timed = outgoing.iter().any(|t| {
                matches!(
                    t.trigger,
                    Trigger::After { .. } | Trigger::Every { .. } | Trigger::Always
                )
            }) || s.on_enter.iter().any(|a| {
                matches!(
                    a,
                    Action::RequestTask { .. }
                        | Action::RequestHandoff(_)
                        | Action::ScheduleTimer { .. }
                )
            });
            if waits && !timed {
                self.push(
                    Diagnostic::warning(
                        codes::WAIT_WITHOUT_TIMEOUT,
                        state_spans[si],
                        format!("state `{}` waits for events with no timeout, task or escalation", s.name),
                    )
                    .with_help("add an `after:` transition, or request a task with a due time on entry, so a missing event is noticed"),
                );
            }
        }
        // Ambiguous transitions.
        for s in &p.states {
            let own: Vec<TransitionId> = s.transitions.clone();
            self.ambiguity(p, &own, transition_spans);
        }
        for t in &p.tracks {
            self.ambiguity(p, &t.any, transition_spans);
        }
        // Eventless cycles.
        if let Some(cycle) = p.eventless_cycle() {
            let first = p
                .state_id(cycle[0])
                .map(|s| state_spans[s.index()])
                .unwrap_or_default();
            self.push(
                Diagnostic::error(
                    codes::EVENTLESS_CYCLE,
                    first,
                    format!("eventless transitions loop between {}", cycle.join(", ")),
                )
                .with_help("at least one transition of the loop must wait for an event or a timer"),
            );
        }
        // Unused definitions: only worth saying when everything else compiled (a dropped
        // transition would make its task look unused).
        if self
            .diags
            .iter()
            .any(|d| d.severity == crate::diag::Severity::Error)
        {
            return;
        }
        let mut used_tasks = BTreeSet::new();
        let mut used_alerts = BTreeSet::new();
        let mut used_handoffs = BTreeSet::new();
        let all_actions = p
            .states
            .iter()
            .flat_map(|s| s.on_enter.iter().chain(s.on_exit.iter()))
            .chain(p.transitions.iter().flat_map(|t| t.actions.iter()));
        for a in all_actions {
            match a {
                Action::RequestTask { task, .. } => {
                    used_tasks.insert(task.index());
                }
                Action::RaiseAlert(x) => {
                    used_alerts.insert(x.index());
                }
                Action::RequestHandoff(x) => {
                    used_handoffs.insert(x.index());
                }
                _ => {}
            }
        }
        for (i, (code, t)) in raw.tasks.iter().enumerate() {
            if !used_tasks.contains(&i) {
                self.push(Diagnostic::warning(
                    codes::UNUSED,
                    t.span,
                    format!("task `{code}` is never requested"),
                ));
            }
        }
        for (i, (code, a)) in raw.alerts.iter().enumerate() {
            if !used_alerts.contains(&i) {
                self.push(Diagnostic::warning(
                    codes::UNUSED,
                    a.span,
                    format!("alert `{code}` is never raised"),
                ));
            }
        }
        for (i, (code, h)) in raw.handoffs.iter().enumerate() {
            if !used_handoffs.contains(&i) {
                self.push(Diagnostic::warning(
                    codes::UNUSED,
                    h.span,
                    format!("handoff `{code}` is never requested"),
                ));
            }
        }
    }

    fn ambiguity(&mut self, p: &CompiledPathway, list: &[TransitionId], spans: &[Span]) {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                let (ta, tb) = (p.transition(*a), p.transition(*b));
                let same = match (&ta.trigger, &tb.trigger) {
                    (
                        Trigger::Event {
                            on: x, filter: fx, ..
                        },
                        Trigger::Event {
                            on: y, filter: fy, ..
                        },
                    ) => x == y && (fx == fy || fx.is_none()),
                    (Trigger::Always, Trigger::Always) => true,
                    _ => false,
                };
                if !same {
                    continue;
                }
                let shadowed = match (&ta.guard, &tb.guard) {
                    (None, _) => true,
                    (Some(x), Some(y)) => x.source == y.source,
                    _ => false,
                };
                if shadowed {
                    let trig = parcours_core::model::trigger_label(tb);
                    let trig = trig.split(" if ").next().unwrap_or("").to_string();
                    let trig = if trig.is_empty() {
                        "eventless".to_string()
                    } else {
                        trig
                    };
                    let why = if ta.guard.is_none() {
                        "this earlier transition has the same trigger and no `when`: it always wins"
                    } else {
                        "this earlier transition has the same trigger and the same `when`: it always wins"
                    };
                    self.push(
                        Diagnostic::error(
                            codes::AMBIGUOUS_TRANSITION,
                            spans[b.index()],
                            format!("this `{trig}` transition (rule `{}`) can never be taken", tb.rule),
                        )
                        .also(spans[a.index()], why)
                            .with_help("give the earlier transition a `when` that excludes this case, or merge the two"),
                    );
                }
            }
        }
    }
}

/// The span of `key` in `key: value`, found before the value's own span.
fn key_span(src: &str, value: Span, key: &str) -> Span {
    let before = src.get(..value.offset).unwrap_or("");
    for pat in [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ] {
        if let Some(i) = before.rfind(&pat) {
            let quoted = usize::from(pat.starts_with(['"', '\'']));
            return Span::new(i + quoted, key.len());
        }
    }
    value
}

/// A state name: ASCII letters (either case), digits and `_`.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A valid name close to `s`: accents dropped (`é` → `e`, `œ` → `oe`), dashes, spaces and
/// dots written `_`; `None` if something else would remain.
fn name_suggestion(s: &str) -> Option<String> {
    transliterate(s, '_').filter(|out| valid_name(out))
}

/// An id others write out (task, alert, handoff, role, timer): ASCII letters, digits, `_`
/// and `-`.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A valid id close to `s`: accents dropped, spaces and dots written `-`, runs of them
/// one; `None` if something else would remain.
fn id_suggestion(s: &str) -> Option<String> {
    let out = transliterate(s.trim(), '-')?;
    let mut joined = String::with_capacity(out.len());
    for c in out.chars() {
        if !(c == '-' && joined.ends_with('-')) {
            joined.push(c);
        }
    }
    Some(joined).filter(|out| valid_id(out))
}

/// `s` with accents dropped (`é` → `e`, `œ` → `oe`) and dashes, spaces and dots written
/// `sep`; `None` if another character than ASCII letters, digits and `_` would remain.
fn transliterate(s: &str, sep: char) -> Option<String> {
    let mut out = String::new();
    for c in s.chars() {
        let ascii = match c {
            c if c.is_ascii_alphanumeric() || c == '_' => {
                out.push(c);
                continue;
            }
            '-' | ' ' | '.' => {
                out.push(sep);
                continue;
            }
            'à' | 'â' | 'ä' | 'á' => "a",
            'é' | 'è' | 'ê' | 'ë' => "e",
            'î' | 'ï' | 'í' => "i",
            'ô' | 'ö' | 'ó' => "o",
            'ù' | 'û' | 'ü' | 'ú' => "u",
            'ÿ' => "y",
            'ç' => "c",
            'ñ' => "n",
            'œ' => "oe",
            'æ' => "ae",
            'À' | 'Â' | 'Ä' | 'Á' => "A",
            'É' | 'È' | 'Ê' | 'Ë' => "E",
            'Î' | 'Ï' | 'Í' => "I",
            'Ô' | 'Ö' | 'Ó' => "O",
            'Ù' | 'Û' | 'Ü' | 'Ú' => "U",
            'Ç' => "C",
            'Œ' => "OE",
            _ => return None,
        };
        out.push_str(ascii);
    }
    Some(out)
}

fn guard_base(src: &str, s: &Sp<String>) -> Option<usize> {
    let at = src.get(s.span.offset..)?;
    if at.starts_with(s.value.as_str()) {
        return Some(s.span.offset);
    }
    let mut chars = at.chars();
    match chars.next() {
        Some(q @ ('"' | '\'')) if chars.as_str().starts_with(s.value.as_str()) => {
            Some(s.span.offset + q.len_utf8())
        }
        _ => None,
    }
}
