//! Mistakes a coordinator makes (found by exploring the language): each one reported as a
//! diagnostic saying what is wrong, at the place it is, never a crash.

use parcours_core::expr::{Env, EvalError};
use parcours_lang::guard::{MAX_NESTING, MAX_OPERATORS};
use parcours_lang::{Report, compile_source};

/// A pathway enrolling on a discharge when `guard` holds (written as a YAML single-quoted
/// scalar on line 6, from column 9).
fn enrolling_when(guard: &str) -> String {
    assert!(
        !guard.contains('\''),
        "write the test guard with double quotes"
    );
    format!(
        "pathway: probe
version: 1
title: Probe
enrolment:
  on: encounter.discharged
  when: '{guard}'
tracks:
  main:
    initial: watching
    states:
      watching:
        transitions:
          - after: 30d
            goto: done
      done:
        terminal: true
"
    )
}

/// The file column (1-based, in characters) of byte `offset` of the guard of
/// [`enrolling_when`].
fn column_of(guard: &str, offset: usize) -> usize {
    "  when: '".chars().count() + guard[..offset].chars().count() + 1
}

/// The one PW0013 error a guard gets, as `line:col: message`.
fn guard_syntax_error(guard: &str) -> String {
    let src = enrolling_when(guard);
    let report = match compile_source("probe.yaml", &src) {
        Ok(_) => panic!("`{guard}` compiled"),
        Err(report) => report,
    };
    let short = report.short();
    let lines: Vec<&str> = short.lines().collect();
    assert_eq!(lines.len(), 1, "{short}");
    assert!(lines[0].contains("error[PW0013]"), "{short}");
    lines[0].trim_start_matches("probe.yaml:").to_string()
}

// Nesting and length limits ------------------------------------------------------------

/// The stack of a tokio worker or a `spawn_blocking` thread: where the HTTP API checks a
/// posted pathway and an engine compiles a version another process published.
const WORKER_STACK: usize = 2 << 20;

/// What the caller has already used of that stack when it compiles: measured at 108–150
/// KiB in a debug build (`parcours serve`: `POST /v1/pathways/check`, a version published
/// by `parcours publish` loaded by the running engine); four times that here. The
/// costliest guard at the limits then leaves 120 KiB of the 2 MiB (it needs 1.26 MiB on a
/// thread of its own).
const CALLER_RESERVE: usize = 640 << 10;

/// Run `f` on a [`WORKER_STACK`] thread whose caller already took [`CALLER_RESERVE`].
fn on_a_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let caller = [0u8; CALLER_RESERVE];
            std::hint::black_box(&caller);
            let out = f();
            std::hint::black_box(&caller);
            out
        })
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// `n` terms joined by `op`.
fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

/// Guards at both limits, the costliest shapes: the deepest brackets (a list literal
/// costs the parser most), the longest chains (a method chain costs the checker most),
/// conditionals in conditionals. Each is true.
fn guards_at_the_limits() -> Vec<String> {
    let n = MAX_NESTING;
    let m = MAX_OPERATORS;
    let open = |b: &str| b.repeat(n);
    vec![
        // n list levels around a chain: m operators in all (`+`, `[0]` and `==`).
        format!(
            "{}{}{}{} == {}",
            open("["),
            chain("1", " + ", m - n),
            open("]"),
            "[0]".repeat(n),
            m - n
        ),
        format!("{}{}{} == {m}", open("("), chain("1", " + ", m), open(")")),
        format!("\"A\"{} == \"a\"", ".lower()".repeat(m - 1)),
        format!("{}1{}{} == 1", open("["), open("]"), "[0]".repeat(n)),
        format!("{}true", "false ? false : ".repeat(n)),
        format!("{}1{} > 0", "double(".repeat(n), ")".repeat(n)),
    ]
}

/// Compiles a pathway enrolling when `guard` holds and evaluates the guard (no event, the
/// clock at the epoch); panics with the report if it does not compile.
fn enrolment_guard(guard: &str) -> Result<bool, EvalError> {
    let src = enrolling_when(guard);
    match compile_source("probe.yaml", &src) {
        Ok((pathway, _)) => evaluate_enrolment(&pathway),
        Err(report) => panic!("`{guard}`:\n{}", report.short()),
    }
}

/// The enrolment guard of `pathway` evaluated with no event, the clock at the epoch.
fn evaluate_enrolment(pathway: &parcours_core::model::CompiledPathway) -> Result<bool, EvalError> {
    let expr = &pathway.enrolment.guard.as_ref().expect("a guard").expr;
    let now = jiff::Timestamp::UNIX_EPOCH;
    let env = Env {
        event: None,
        now,
        params: &[],
        vars: &[],
        series: &[],
        series_names: &[],
        cycle_start: now,
        enrolled_at: now,
        cycle: 1,
        episode: None,
        window_memo: Default::default(),
    };
    expr.eval_bool(&env)
}

#[test]
fn guards_at_the_limits_compile_and_run_on_a_worker_stack() {
    on_a_worker_stack(|| {
        for guard in guards_at_the_limits() {
            assert_eq!(enrolment_guard(&guard), Ok(true), "`{guard}`");
        }
    });
}

/// Lists compared with `==` and `!=` type-checked but failed when evaluated ("values of
/// different types compared"): every event reaching such a guard was refused.
#[test]
fn lists_compare_by_their_elements() {
    for (guard, holds) in [
        ("[[1]] != []", true),
        ("[[1]] == []", false),
        ("[] == []", true),
        ("[1, 2] == [1, 2]", true),
        ("[1, 2] == [2, 1]", false),
        ("[1, 2] == [1, 2, 3]", false),
        ("[1] == [1.0]", true),
        ("[\"a\", \"b\"] != [\"a\", \"b\"]", false),
        ("[[1, 2], [3]] == [[1, 2], [3]]", true),
        ("[1] in [[2], [1]]", true),
    ] {
        assert_eq!(enrolment_guard(guard), Ok(holds), "`{guard}`");
    }
}

#[test]
fn one_level_of_nesting_too_many_is_refused_where_it_starts() {
    let n = MAX_NESTING;
    let nested = |open: &str, inner: &str, close: &str, k: usize| {
        format!("{}{inner}{} != 0", open.repeat(k), close.repeat(k))
    };
    let cases = [
        nested("(", "1", ")", n + 1),
        nested("[", "1", "]", n + 1),
        nested("{1: ", "1", "}", n + 1),
        nested("double(", "1", ")", n + 1),
        format!("{}true", "false ? false : ".repeat(n + 1)),
        // Ternaries inside brackets add up.
        format!("{}false ? true : false{}", "(".repeat(n), ")".repeat(n)),
        // The explorer's files: 12 (killed the server), 51 (`parcours check`), 20 000.
        nested("(", "true", ")", 12).replace(" != 0", ""),
        nested("(", "true", ")", 51).replace(" != 0", ""),
        nested("[", "1", "]", 60),
        nested("(", "true", ")", 20_000).replace(" != 0", ""),
    ];
    for guard in cases {
        let got = on_a_worker_stack({
            let guard = guard.clone();
            move || guard_syntax_error(&guard)
        });
        // The first opener (or `?`) past the limit.
        let mut depth = 0;
        let at = guard
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' | '[' | '{' | '?' => depth += 1,
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
                depth > n
            })
            .map(|(i, _)| i)
            .expect("a level past the limit");
        let want = format!(
            "6:{}: error[PW0013]: expression nested too deeply: at most {n} levels of brackets and conditionals; split it or simplify it",
            column_of(&guard, at)
        );
        assert_eq!(got, want, "`{}`", &guard[..guard.len().min(80)]);
    }
}

#[test]
fn broken_guards_at_the_limits_get_the_parser_s_diagnostic() {
    let n = MAX_NESTING;
    let open = |b: &str| b.repeat(n);
    let cases = [
        format!("{}1 + + 2{}", open("("), open(")")),
        format!("{}1 => 2{}", open("("), open(")")),
        format!("{}1,,{} == 1", open("["), open("]")),
        format!("{}1", open("(")),
        format!("{}1", open("[")),
        format!("1{}", open(")")),
        format!("{}{}", open("("), chain("1", " + ", MAX_OPERATORS)),
        format!(
            "{}x.{}",
            open("double("),
            chain("y", ".", MAX_OPERATORS - 1)
        ),
    ];
    for guard in cases {
        let got = on_a_worker_stack({
            let guard = guard.clone();
            move || guard_syntax_error(&guard)
        });
        assert!(!got.contains("too"), "`{guard}`: {got}");
    }
}

#[test]
fn brackets_in_strings_and_comments_do_not_count() {
    let deep = "(".repeat(40);
    for guard in [
        format!("event.class == \"{deep}\""),
        format!("event.class == \"\"\"{deep}\"\"\""),
        format!("event.class == r\"{deep}\\\""),
        format!("event.class == \"\\\"{deep}\""),
        format!("event.class != \"\" // {deep}\n"),
    ] {
        let src = enrolling_when(&guard);
        if let Err(report) = compile_source("probe.yaml", &src) {
            panic!("`{guard}`:\n{}", report.short());
        }
    }
}

#[test]
fn one_operator_too_many_is_refused_where_it_is() {
    let m = MAX_OPERATORS;
    // (the text before the operator past the limit, the rest)
    let cases = [
        (chain("1", " + ", m + 1) + " ", "+ 1 == 1".to_string()),
        (
            format!("\"A\"{} ", ".lower()".repeat(m)),
            "== \"a\"".to_string(),
        ),
        // `&&` and `||` do not count, nor do `.` and signs in numbers.
        (chain("1 > 0", " && ", m) + " && 1 ", "> 0".to_string()),
        (chain("1.5e-3", " + ", m + 1) + " ", "+ .5 > 0".to_string()),
        // The explorer's chains: ten thousand terms.
        (
            chain("1", " + ", m + 1) + " ",
            format!("+ {} > 0", chain("1", " + ", 10_000)),
        ),
    ];
    for (before, after) in cases {
        let guard = format!("{before}{after}");
        let got = on_a_worker_stack({
            let guard = guard.clone();
            move || guard_syntax_error(&guard)
        });
        let want = format!(
            "6:{}: error[PW0013]: expression too long: at most {m} operators; split it or simplify it",
            column_of(&guard, before.len())
        );
        assert_eq!(got, want, "`{}`", &guard[..guard.len().min(80)]);
    }
}

#[test]
fn long_and_and_or_chains_compile() {
    // The parser balances `&&` and `||`: a thousand alternatives are no deeper than ten.
    let guard = chain("event.class == \"inpatient\"", " || ", 1_000);
    // Each alternative has two operators (`.` and `==`): too long.
    assert!(guard_syntax_error(&guard).contains("expression too long"));
    let guard = chain("true", " || ", 10_000);
    on_a_worker_stack(move || {
        let src = enrolling_when(&guard);
        if let Err(report) = compile_source("probe.yaml", &src) {
            panic!("{}", report.short());
        }
    });
}

// Where a guard's syntax error is ------------------------------------------------------

/// The `file:line:col` of the one-line form and of the snippet's `[file:line:col]` header,
/// of the first diagnostic.
fn both_places(report: &Report) -> (String, String) {
    let short = report.short();
    let one_line = short.split(": ").next().unwrap_or_default().to_string();
    let rendered = report.render();
    let header = rendered
        .split("─[")
        .nth(1)
        .and_then(|h| h.split(']').next())
        .unwrap_or_default()
        .to_string();
    (one_line, header)
}

#[test]
fn a_syntax_error_in_a_guard_is_at_its_character() {
    // (guard, the text the error is at)
    let cases = [
        ("event.class == \"home\" && event.x => 5", "=> 5"),
        // A character CEL cannot read, after other non-ASCII characters on the line.
        ("event.class == \"é\" && event.class == § \"x\"", "§ \"x\""),
        ("event.class == \"éé\" && params.élevée > 1", "élevée"),
    ];
    for (guard, at) in cases {
        let src = enrolling_when(guard);
        let Err(report) = compile_source("probe.yaml", &src) else {
            panic!("`{guard}` compiled");
        };
        let offset = guard.find(at).expect("the place");
        let want = format!("probe.yaml:6:{}", column_of(guard, offset));
        let (one_line, header) = both_places(&report);
        assert_eq!(one_line, want, "`{guard}`\n{}", report.render());
        assert_eq!(header, want, "`{guard}`\n{}", report.render());
    }
}

#[test]
fn the_snippet_header_counts_characters_as_the_one_line_form_does() {
    // A type error (placed by the checker, not the parser) after an accent.
    let guard = "event.class == \"médecin\" && event.class == 3";
    let Err(report) = compile_source("probe.yaml", &enrolling_when(guard)) else {
        panic!("compiled");
    };
    let (one_line, header) = both_places(&report);
    assert_eq!(one_line, header, "{}", report.render());
}

// Files ----------------------------------------------------------------------------------

/// A fresh directory of this test binary's temporary space.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the directory");
    dir
}

#[test]
fn a_file_that_is_not_utf8_is_reported_and_the_others_still_load() {
    let dir = fresh_dir("not-utf8");
    let good = enrolling_when("true");
    std::fs::write(dir.join("a-good.yaml"), &good).expect("write");
    // Saved in Latin-1: `é` is the one byte 0xE9.
    let latin1 = good
        .replace("pathway: probe", "pathway: probe-latin1")
        .replace("title: Probe", "title: Probe é")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("Latin-1"))
        .collect::<Vec<u8>>();
    std::fs::write(dir.join("b-latin1.yaml"), latin1).expect("write");
    std::fs::write(
        dir.join("c-good.yaml"),
        good.replace("version: 1", "version: 2"),
    )
    .expect("write");

    let loaded = parcours_lang::load_all(&dir).expect("the directory loads");
    let names: Vec<_> = loaded
        .iter()
        .map(|l| {
            (
                l.path.file_name().unwrap().to_string_lossy().to_string(),
                l.pathway.is_some(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("a-good.yaml".to_string(), true),
            ("b-latin1.yaml".to_string(), false),
            ("c-good.yaml".to_string(), true)
        ]
    );
    let report = &loaded[1].report;
    let file = dir.join("b-latin1.yaml").display().to_string();
    assert_eq!(
        report.short(),
        format!(
            "{file}:3:14: error[PW0001]: the file is not UTF-8 text (byte 0xE9 at line 3, column 14); save it as UTF-8\n"
        )
    );
    let (one_line, header) = both_places(report);
    assert_eq!(one_line, header);
    assert!(
        report.render().contains("title: Probe �"),
        "{}",
        report.render()
    );
}

// State names ----------------------------------------------------------------------------

/// A pathway whose second state is named `name` (its key on line 13, column 7).
fn with_state(name: &str) -> String {
    format!(
        "pathway: probe
version: 1
title: Probe
enrolment:
  on: encounter.discharged
tracks:
  main:
    initial: watching
    states:
      watching:
        transitions:
          - {{ after: 7d, goto: {name} }}
      {name}:
        transitions:
          - after: 30d
            goto: done
      done:
        terminal: true
"
    )
}

#[test]
fn an_invalid_state_name_is_reported_at_its_key_with_the_rule_and_a_fix() {
    for (name, fixed) in [
        ("follow-up", "follow_up"),
        ("suivi_étape", "suivi_etape"),
        ("Suivi à domicile", "Suivi_a_domicile"),
    ] {
        let Err(report) = compile_source("probe.yaml", &with_state(name)) else {
            panic!("`{name}` is accepted");
        };
        assert_eq!(
            report.short(),
            format!(
                "probe.yaml:13:7: error[PW0016]: invalid state name `{name}`: use ASCII letters (a-z, A-Z), digits and `_` only\n"
            )
        );
        let help = report.diagnostics[0].help.as_deref().unwrap_or_default();
        assert!(help.starts_with(&format!("write `{fixed}`")), "{help}");
    }
    // What the rule accepts.
    for name in ["follow_up", "Follow_Up", "step2"] {
        if let Err(report) = compile_source("probe.yaml", &with_state(name)) {
            panic!("`{name}`:\n{}", report.short());
        }
    }
}

#[test]
fn an_operator_of_another_language_is_named_with_what_cel_writes_at_its_place() {
    for (guard, slip, instead) in [
        (
            "event.class == \"inpatient\" and event.destination == \"home\"",
            "and",
            "&&",
        ),
        (
            "event.class == \"inpatient\" OR event.class == \"day\"",
            "OR",
            "||",
        ),
        ("not event.diagnoses.exists(d, d == \"I50\")", "not", "!"),
        ("event.destination = \"home\"", "=", "=="),
        ("event.age => 75", "=>", ">="),
        ("event.class <> \"day\"", "<>", "!="),
    ] {
        let at = guard.find(slip).expect("the slip is in the guard");
        assert_eq!(
            guard_syntax_error(guard),
            format!(
                "6:{}: error[PW0013]: invalid expression: `{slip}` is not CEL; write `{instead}`",
                column_of(guard, at)
            ),
        );
    }
}

/// A guard built from literals of every type and the language's operators and functions.
fn any_guard() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just("1".to_string()),
        Just("0".to_string()),
        Just("-3".to_string()),
        Just("2.5".to_string()),
        Just("\"a\"".to_string()),
        Just("\"\"".to_string()),
        Just("\"12\"".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
        Just("[]".to_string()),
        Just("[1, 2]".to_string()),
        Just("[\"a\"]".to_string()),
        Just("[[1]]".to_string()),
        Just("[2.5, 1]".to_string()),
        Just("{\"a\": 1}".to_string()),
        Just("duration(\"3d\")".to_string()),
        Just("timestamp(\"2026-01-01T00:00:00Z\")".to_string()),
        Just("now".to_string()),
        Just("instance.cycle".to_string()),
        Just("instance.cycle_start".to_string()),
    ];
    leaf.prop_recursive(3, 24, 3, |inner| {
        const UNARY: &[&str] = &["!", "-"];
        const FUNCS: &[&str] = &[
            "size",
            "string",
            "double",
            "int",
            "lower",
            "days_since",
            "has",
        ];
        const BINARY: &[&str] = &[
            "==", "!=", "<", "<=", ">", ">=", "&&", "||", "+", "-", "*", "/", "%", "in",
        ];
        const METHODS: &[&str] = &["startsWith", "endsWith", "contains"];
        const MACROS: &[&str] = &["exists", "all", "exists_one", "map", "filter"];
        prop_oneof![
            (proptest::sample::select(UNARY), inner.clone())
                .prop_map(|(op, x)| format!("{op}({x})")),
            (proptest::sample::select(FUNCS), inner.clone()).prop_map(|(f, x)| format!("{f}({x})")),
            (
                inner.clone(),
                proptest::sample::select(BINARY),
                inner.clone()
            )
                .prop_map(|(x, op, y)| format!("({x}) {op} ({y})")),
            (
                inner.clone(),
                proptest::sample::select(METHODS),
                inner.clone()
            )
                .prop_map(|(x, m, y)| format!("({x}).{m}({y})")),
            (
                inner.clone(),
                proptest::sample::select(MACROS),
                inner.clone()
            )
                .prop_map(|(x, m, y)| format!("({x}).{m}(v, ({y}) == v)")),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x})[{y}]")),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(c, x, y)| format!("({c}) ? ({x}) : ({y})")),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

    /// What the checker accepts, the evaluator runs: a guard that compiles never fails
    /// with a type mismatch (an event reaching it would be refused by its pathway). Value
    /// errors remain possible — a division by zero, an index out of range, text that is
    /// not a number.
    #[test]
    fn a_guard_that_compiles_never_meets_a_type_mismatch(
        body in any_guard(),
        cmp in proptest::sample::select(&["", " == true", " != []"][..]),
    ) {
        let guard = format!("{body}{cmp}");
        let src = enrolling_when(&guard);
        if let Ok((pathway, _)) = compile_source("probe.yaml", &src) {
            match evaluate_enrolment(&pathway) {
                Err(EvalError::Type(why)) if !matches!(why, "not a number" | "not an int") => {
                    proptest::prop_assert!(false, "`{guard}` compiled, then: type mismatch: {why}");
                }
                _ => {}
            }
        }
    }
}

// What the YAML parser's own words hide ------------------------------------------------

/// The one diagnostic of a file that does not compile, as its `--short` line and help.
fn only_error(src: &str) -> (String, String) {
    let report = match compile_source("probe.yaml", src) {
        Ok(_) => panic!("compiled:\n{src}"),
        Err(report) => report,
    };
    assert_eq!(report.diagnostics.len(), 1, "{}", report.short());
    let help = report.diagnostics[0].help.clone().unwrap_or_default();
    (report.short().trim().to_string(), help)
}

#[test]
fn an_empty_file_is_said_to_be_empty() {
    for src in ["", "\n\n", "# a comment only\n"] {
        let (line, _) = only_error(src);
        assert_eq!(line, "probe.yaml:1:1: error[PW0001]: the file is empty");
    }
}

/// The parser notices a tab a line early (after a plain scalar) and calls it "a tab"
/// while scanning; the report points at the tab itself.
#[test]
fn a_tab_in_an_indentation_is_pointed_at() {
    let src = enrolling_when("true").replace("    initial: watching", "\tinitial: watching");
    let (line, help) = only_error(&src);
    assert_eq!(
        line,
        "probe.yaml:9:1: error[PW0001]: a tab in the indentation: YAML indents with spaces only"
    );
    assert!(help.contains("spaces"), "{help}");
}

/// A non-breaking space pasted from a word processor after `initial:` is named in the help,
/// with its line and column.
#[test]
fn a_non_breaking_space_is_named() {
    let src = enrolling_when("true").replace("    initial: watching", "    initial:\u{a0}watching");
    let Err(report) = compile_source("probe.yaml", &src) else {
        panic!("compiled:\n{src}");
    };
    let help = report
        .diagnostics
        .iter()
        .find_map(|d| d.help.clone())
        .unwrap_or_default();
    assert!(
        help.contains("line 9 column 13 has a non-breaking space"),
        "{}\n{help}",
        report.short()
    );
}

/// A required key left out: said of the mapping that lacks it (the task, the track, the
/// pathway), at that mapping's key.
#[test]
fn a_missing_key_is_said_of_what_lacks_it() {
    let src = enrolling_when("true").replace("    initial: watching\n", "");
    let (line, help) = only_error(&src);
    assert_eq!(
        line,
        "probe.yaml:8:3: error[PW0001]: `main` has no `initial`, which it needs"
    );
    assert!(help.contains("required keys"), "{help}");
    let src = enrolling_when("true").replace("title: Probe\n", "");
    let (line, _) = only_error(&src);
    assert_eq!(
        line,
        "probe.yaml:1:1: error[PW0001]: the pathway has no `title`, which it needs"
    );
}
