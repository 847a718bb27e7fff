//! The deliberately broken pathways in `pathways/broken/`.
//!
//! Each file is named `PWxxxx-what-is-wrong.yaml` and starts with a comment saying what
//! is wrong. For every file this test checks that:
//!
//! - the code of its name is reported, and only that code — unless the header has an
//!   `# expect: PWxxxx PWyyyy ...` line listing every code the file must produce;
//! - a file named after an error code fails to compile; a file named after a warning
//!   code compiles, with that warning and no error;
//! - the rendered report (source snippets, `file:line:col`) matches its snapshot in
//!   `tests/snapshots/broken__<file stem>.snap`.
//!
//! A last test checks that every code of `parcours_lang::diag::codes` has a file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use parcours_lang::diag::codes;
use parcours_lang::{Report, Severity, compile_source};

/// Codes whose diagnostics are warnings: a file showing one must still compile.
const WARNING_CODES: &[&str] = &[
    codes::WAIT_WITHOUT_TIMEOUT,
    codes::UNUSED,
    codes::ID_SHAPE,
    codes::INEFFECTIVE,
];

/// Codes no pathway file can produce today, and why. Remove an entry (and add a file)
/// once the compiler can report it.
const NOT_PRODUCIBLE: &[(&str, &str)] = &[];

/// The workspace root, so that file names in reports are stable (`pathways/broken/...`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One broken file: its path relative to the workspace root and its contents.
struct Broken {
    rel: String,
    stem: String,
    src: String,
}

fn broken_files() -> Vec<Broken> {
    let dir = workspace().join("pathways/broken");
    let mut out: Vec<Broken> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .to_string();
            let stem = p
                .file_stem()
                .expect("file stem")
                .to_string_lossy()
                .to_string();
            let src = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            Broken {
                rel: format!("pathways/broken/{name}"),
                stem,
                src,
            }
        })
        .collect();
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    assert!(!out.is_empty(), "no broken pathway in {}", dir.display());
    out
}

fn is_code(s: &str) -> bool {
    s.len() == 6 && s.starts_with("PW") && s[2..].bytes().all(|b| b.is_ascii_digit())
}

/// The code a file is named after (`PW0003-unreachable-state` → `PW0003`).
fn code_of(stem: &str) -> &str {
    let code = stem.split('-').next().unwrap_or("");
    assert!(
        is_code(code),
        "`{stem}.yaml` must be named `PWxxxx-short-description.yaml`"
    );
    code
}

/// The codes a file must produce: its name's code, plus an `# expect:` header line.
fn expected_codes(b: &Broken) -> BTreeSet<String> {
    let mut out = BTreeSet::from([code_of(&b.stem).to_string()]);
    for line in b.src.lines().take_while(|l| l.starts_with('#')) {
        if let Some(list) = line.trim_start_matches('#').trim().strip_prefix("expect:") {
            for code in list.split_whitespace() {
                assert!(
                    is_code(code),
                    "{}: `{code}` in `# expect:` is not a code",
                    b.rel
                );
                out.insert(code.to_string());
            }
        }
    }
    out
}

fn compile(b: &Broken) -> (bool, Report) {
    match compile_source(&b.rel, &b.src) {
        Ok((_, report)) => (true, report),
        Err(report) => (false, report),
    }
}

/// Check one file; the problems found, if any.
fn check_file(b: &Broken) -> Vec<String> {
    let mut problems = Vec::new();
    if !b.src.starts_with('#') {
        problems.push("does not start with a comment saying what is wrong".to_string());
    }
    let lines = b.src.lines().count();
    if !(10..=40).contains(&lines) {
        problems.push(format!(
            "has {lines} lines; keep broken files to 10–40 lines"
        ));
    }
    let code = code_of(&b.stem);
    let expected = expected_codes(b);
    let (compiled, report) = compile(b);
    let found: BTreeSet<String> = report
        .diagnostics
        .iter()
        .map(|d| d.code.to_string())
        .collect();
    for want in &expected {
        if !found.contains(want) {
            problems.push(format!("expected {want}, it was not reported"));
        }
    }
    for got in found.difference(&expected) {
        problems.push(format!(
            "reported {got}, which the file does not announce (name it or list it in `# expect:`)"
        ));
    }
    if WARNING_CODES.contains(&code) {
        if !compiled || report.has_errors() {
            problems.push(format!("{code} is a warning: the file must still compile"));
        }
        let warned = report
            .diagnostics
            .iter()
            .any(|d| d.code == code && d.severity == Severity::Warning);
        if !warned {
            problems.push(format!("expected a {code} warning"));
        }
    } else {
        if compiled {
            problems.push(format!("{code} is an error: the file must not compile"));
        }
        let errored = report
            .diagnostics
            .iter()
            .any(|d| d.code == code && d.severity == Severity::Error);
        if !errored {
            problems.push(format!("expected a {code} error"));
        }
    }
    if !problems.is_empty() {
        problems.push(format!("its report:\n{}", report.short()));
    }
    problems
}

#[test]
fn every_broken_file_reports_the_code_it_is_named_after() {
    let mut failures = Vec::new();
    for b in broken_files() {
        let problems = check_file(&b);
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", b.rel, problems.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn broken_file_reports_match_snapshots() {
    for b in broken_files() {
        let (_, report) = compile(&b);
        let rendered = report.render();
        insta::with_settings!({
            description => format!("parcours check {}", b.rel),
            omit_expression => true,
        }, {
            insta::assert_snapshot!(b.stem.as_str(), rendered);
        });
    }
}

/// The codes declared in `diag.rs` (`pub const NAME: &str = "PWxxxx";`).
fn declared_codes() -> Vec<&'static str> {
    let src = include_str!("../src/diag.rs");
    let codes: Vec<&str> = src
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|c| is_code(c))
        .collect();
    assert!(
        codes.len() >= 17,
        "expected the codes PW0001..PW0017 in diag.rs, found {codes:?}"
    );
    codes
}

#[test]
fn every_diagnostic_code_has_a_broken_file() {
    let files = broken_files();
    let named: BTreeSet<&str> = files.iter().map(|b| code_of(&b.stem)).collect();
    let mut missing = Vec::new();
    for code in declared_codes() {
        let excused = NOT_PRODUCIBLE.iter().find(|(c, _)| *c == code);
        match (named.contains(code), excused) {
            (true, None) | (false, Some(_)) => {}
            (false, None) => missing.push(format!(
                "{code}: add pathways/broken/{code}-<what-is-wrong>.yaml"
            )),
            (true, Some(_)) => missing.push(format!(
                "{code} now has a broken file: remove it from NOT_PRODUCIBLE in this test"
            )),
        }
    }
    assert!(missing.is_empty(), "\n{}", missing.join("\n"));
}
