//! Diagnostics: every problem in a pathway file, with a stable code and a location.

use std::fmt;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};

use crate::span::{Span, line_col};

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The pathway still compiles, but something looks wrong.
    Warning,
    /// The pathway does not compile.
    Error,
}

impl Severity {
    /// `error` or `warning`, as reports print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// The stable diagnostic codes. Documented in `docs/pathway-language.md`.
pub mod codes {
    /// The file is not valid YAML or does not have the expected shape.
    pub const SYNTAX: &str = "PW0001";
    /// A name refers to nothing (state, task, alert, handoff, timer, variable, role...).
    pub const UNKNOWN_REFERENCE: &str = "PW0002";
    /// A state cannot be reached from its track's initial state.
    pub const UNREACHABLE_STATE: &str = "PW0003";
    /// A non-terminal state has no way out.
    pub const DEAD_END: &str = "PW0004";
    /// A state waits only on events, with no timeout, due task or escalation.
    pub const WAIT_WITHOUT_TIMEOUT: &str = "PW0005";
    /// Two transitions of a state can fire on the same trigger and one shadows the other.
    pub const AMBIGUOUS_TRANSITION: &str = "PW0006";
    /// An event type that is not in the catalogue.
    pub const UNKNOWN_EVENT: &str = "PW0007";
    /// A field the event does not have.
    pub const UNKNOWN_FIELD: &str = "PW0008";
    /// A guard or value does not type-check.
    pub const TYPE_ERROR: &str = "PW0009";
    /// A duration that cannot be read.
    pub const INVALID_DURATION: &str = "PW0010";
    /// Eventless transitions form a cycle.
    pub const EVENTLESS_CYCLE: &str = "PW0011";
    /// The same id is defined twice.
    pub const DUPLICATE_ID: &str = "PW0012";
    /// A guard is not valid CEL.
    pub const GUARD_SYNTAX: &str = "PW0013";
    /// A transition or an action is malformed (no trigger, two verbs, options that do not apply).
    pub const MALFORMED: &str = "PW0014";
    /// A message template could print patient-identifying free text.
    pub const IDENTITY_IN_TEMPLATE: &str = "PW0015";
    /// A value is out of its allowed range or of the wrong kind.
    pub const INVALID_VALUE: &str = "PW0016";
    /// A definition is never used.
    pub const UNUSED: &str = "PW0017";
    /// An id that people and other systems write out (a task, alert, handoff, role or
    /// timer) has a space or another character than ASCII letters, digits, `_` and `-`.
    pub const ID_SHAPE: &str = "PW0018";
    /// A value that compiles but cannot do what it says: a series code that is no LOINC
    /// code (no result ever carries it), a reminder longer than its task's time to the
    /// due (it falls before the task exists). A warning: a version already published with
    /// one must still compile.
    pub const INEFFECTIVE: &str = "PW0019";
}

/// One labelled place in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What to say there.
    pub text: String,
}

/// One problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable code (`PW0003`).
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// One-line message, lower-case, no trailing period.
    pub message: String,
    /// Primary label first.
    pub labels: Vec<Label>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at one place.
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: vec![Label {
                span,
                text: String::new(),
            }],
            help: None,
        }
    }

    /// A warning at one place.
    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, span, message)
        }
    }

    /// Add help text.
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Set the primary label's text.
    pub fn with_label(mut self, text: impl Into<String>) -> Diagnostic {
        if let Some(l) = self.labels.first_mut() {
            l.text = text.into();
        }
        self
    }

    /// Add a secondary label.
    pub fn also(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    /// The primary span.
    pub fn span(&self) -> Span {
        self.labels.first().map(|l| l.span).unwrap_or_default()
    }
}

/// Every diagnostic of one file, with the source to render them against.
#[derive(Clone, Debug)]
pub struct Report {
    /// File name as given.
    pub file: String,
    /// File contents.
    pub source: String,
    /// Diagnostics, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// Number of errors and warnings.
    pub fn counts(&self) -> (usize, usize) {
        let errors = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        (errors, self.diagnostics.len() - errors)
    }

    /// One line per diagnostic: `file:line:col: error[PW0003]: message`.
    pub fn short(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            let (line, col) = line_col(&self.source, d.span().offset);
            let sev = d.severity.as_str();
            out.push_str(&format!(
                "{}:{line}:{col}: {sev}[{}]: {}\n",
                self.file, d.code, d.message
            ));
        }
        out
    }

    /// The diagnostics with source snippets (no colours: stable for snapshots and logs).
    pub fn render(&self) -> String {
        self.render_with(GraphicalTheme::unicode_nocolor())
    }

    /// The diagnostics with source snippets in a given theme.
    pub fn render_with(&self, theme: GraphicalTheme) -> String {
        let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
        let mut out = String::new();
        for d in &self.diagnostics {
            let (line, col) = line_col(&self.source, d.span().offset);
            let sev = d.severity.as_str();
            out.push_str(&format!(
                "{}:{line}:{col}: {sev}[{}]: {}\n",
                self.file, d.code, d.message
            ));
            let m = Rendered {
                d,
                src: CharColumns(NamedSource::new(&self.file, self.source.clone())),
            };
            let _ = handler.render_report(&mut out, &m);
            out.push('\n');
        }
        out
    }
}

struct Rendered<'a> {
    d: &'a Diagnostic,
    src: CharColumns,
}

/// The source as miette reads it, but with the column of its `[file:line:col]` header in
/// characters, as [`line_col`] and the one-line form count it (miette counts bytes: a
/// line with an `é` before the place had the two disagree).
struct CharColumns(NamedSource<String>);

impl miette::SourceCode for CharColumns {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner = self
            .0
            .read_span(span, context_lines_before, context_lines_after)?;
        if context_lines_before > 0 {
            // miette gives no column with context lines before.
            return Ok(inner);
        }
        let (_, column) = line_col(self.0.inner(), span.offset());
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.0.name().to_string(),
            inner.data(),
            *inner.span(),
            inner.line(),
            column - 1,
            inner.line_count(),
        )))
    }
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.d
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.d.labels.iter().map(|l| {
            LabeledSpan::new_with_span(
                (!l.text.is_empty()).then(|| l.text.clone()),
                miette::SourceSpan::from(l.span),
            )
        })))
    }
}
