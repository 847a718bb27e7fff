//! parcours-lang: the pathway definition language.
//!
//! A pathway is a YAML file ([`raw`]); [`compile::compile_source`] checks it — every
//! problem at once, each with a stable code and `file:line:col` ([`diag`]) — and compiles
//! it into the core's [`parcours_core::CompiledPathway`]. Guards are CEL, type-checked
//! against the event catalogue ([`guard`]). [`render`] draws the graph; [`schema`] gives
//! the JSON Schema editors use for completion.

pub mod compile;
pub mod diag;
pub mod guard;
pub mod raw;
pub mod render;
pub mod span;

use std::path::{Path, PathBuf};

pub use compile::{compile_source, not_utf8};
pub use diag::{Diagnostic, Report, Severity};
use parcours_core::CompiledPathway;

/// The JSON Schema of pathway files.
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawPathway);
    serde_json::to_value(schema).unwrap_or_default()
}

/// The result of loading one file.
#[derive(Debug)]
pub struct Loaded {
    /// The file.
    pub path: PathBuf,
    /// The compiled pathway, if it compiled.
    pub pathway: Option<CompiledPathway>,
    /// Its diagnostics (warnings only when it compiled).
    pub report: Report,
}

/// Whether a path is a pathway definition (not a scenario or other YAML).
pub fn is_pathway_file(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str());
    matches!(ext, Some("yaml" | "yml")) && path.components().all(|c| c.as_os_str() != "scenarios")
}

/// Load and compile one file. A file that is not UTF-8 text is loaded with one
/// diagnostic saying where its first invalid byte is (an I/O error is for a file that
/// cannot be read).
pub fn load_file(path: &Path) -> std::io::Result<Loaded> {
    let name = path.display().to_string();
    let src = match String::from_utf8(std::fs::read(path)?) {
        Ok(src) => src,
        Err(e) => {
            return Ok(Loaded {
                path: path.to_path_buf(),
                pathway: None,
                report: compile::not_utf8(&name, e.as_bytes(), e.utf8_error()),
            });
        }
    };
    Ok(match compile_source(&name, &src) {
        Ok((p, report)) => Loaded {
            path: path.to_path_buf(),
            pathway: Some(p),
            report,
        },
        Err(report) => Loaded {
            path: path.to_path_buf(),
            pathway: None,
            report,
        },
    })
}

/// Pathway files under `path` (a file, or a directory searched one level deep, skipping
/// `scenarios/` and `broken/` folders), sorted.
pub fn pathway_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        if p.is_file() && is_pathway_file(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Load every pathway under `path`; also reports duplicate (id, version) pairs.
pub fn load_all(path: &Path) -> std::io::Result<Vec<Loaded>> {
    let mut loaded: Vec<Loaded> = Vec::new();
    for f in pathway_files(path)? {
        let mut l = load_file(&f)?;
        if let Some(p) = &l.pathway
            && let Some(prev) = loaded.iter().find(|o| {
                o.pathway
                    .as_ref()
                    .is_some_and(|q| q.id == p.id && q.version == p.version)
            })
        {
            let d = Diagnostic::error(
                diag::codes::DUPLICATE_ID,
                span::Span::new(0, 1),
                format!(
                    "pathway `{}` version {} is also defined in {}",
                    p.id,
                    p.version,
                    prev.path.display()
                ),
            )
            .with_help("raise `version:` when you change a published pathway");
            l.report.diagnostics.push(d);
            l.pathway = None;
        }
        loaded.push(l);
    }
    Ok(loaded)
}
