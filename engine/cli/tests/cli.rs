//! The `parcours` binary, run as a user would, from the workspace root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root: commands run there so paths print as `pathways/...`.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parcours(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(args)
        .current_dir(workspace())
        .env("NO_COLOR", "1")
        .output()
        .expect("the parcours binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Both streams, for assertion messages.
fn both(o: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// `N passed, M failed` → (N, M).
fn summary(line: &str) -> Option<(usize, usize)> {
    let (passed, failed) = line.trim().split_once(", ")?;
    let passed = passed.strip_suffix(" passed")?.parse().ok()?;
    let failed = failed.strip_suffix(" failed")?.parse().ok()?;
    Some((passed, failed))
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

#[test]
fn check_accepts_the_shipped_pathways() {
    let o = parcours(&["check", "pathways/"]);
    assert!(o.status.success(), "{}", both(&o));
    // The summary and the `ok` lines go to stdout (pipeable); problems to stderr.
    assert!(
        stdout(&o).contains("0 error(s)"),
        "expected no error in the summary:\n{}",
        both(&o)
    );
    assert!(
        stdout(&o).contains("ok: pathways/heart-failure.yaml"),
        "{}",
        both(&o)
    );
}

#[test]
fn check_rejects_a_broken_file_with_its_location_and_code() {
    let o = parcours(&["check", "pathways/broken/PW0002-unknown-state.yaml"]);
    assert!(!o.status.success(), "{}", both(&o));
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let want =
        "pathways/broken/PW0002-unknown-state.yaml:14:19: error[PW0002]: unknown state `finished`";
    assert!(
        stderr(&o).contains(want),
        "expected `{want}` in:\n{}",
        both(&o)
    );
    // Not --short: the source snippet is shown too.
    assert!(
        stderr(&o).contains("goto: finished"),
        "expected a source snippet:\n{}",
        both(&o)
    );
}

#[test]
fn check_short_lists_every_problem_on_its_own_line() {
    let file = "pathways/broken/PW0002-many-problems-at-once.yaml";
    let o = parcours(&["check", "--short", file]);
    assert!(!o.status.success(), "{}", both(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")))
        .collect();
    let expected = [
        ("11:9", "PW0009"),
        ("14:11", "PW0002"),
        ("16:10", "PW0010"),
        ("19:15", "PW0016"),
        ("30:17", "PW0007"),
    ];
    assert_eq!(
        lines.len(),
        expected.len(),
        "expected one line per problem:\n{}",
        both(&o)
    );
    for (line, (at, code)) in lines.iter().zip(expected) {
        let prefix = format!("{file}:{at}: error[{code}]: ");
        assert!(
            line.starts_with(&prefix),
            "expected a line starting with `{prefix}`, got `{line}`"
        );
    }
    // --short has no snippets.
    assert!(
        !err.contains('│'),
        "--short printed snippets:\n{}",
        both(&o)
    );
    assert!(
        stdout(&o).contains("checked 1 file(s): 5 error(s), 0 warning(s)"),
        "{}",
        both(&o)
    );
}

#[test]
fn check_passes_a_file_with_only_warnings_unless_denied() {
    let file = "pathways/broken/PW0017-unused-task.yaml";
    let o = parcours(&["check", "--short", file]);
    assert!(o.status.success(), "{}", both(&o));
    assert!(
        stderr(&o).contains(&format!("{file}:13:5: warning[PW0017]: ")),
        "{}",
        both(&o)
    );
    let o = parcours(&["check", "--deny-warnings", file]);
    assert!(!o.status.success(), "{}", both(&o));
}

#[test]
fn graph_dot() {
    let o = parcours(&["graph", "--format", "dot", "pathways/heart-failure.yaml"]);
    assert!(o.status.success(), "{}", both(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("digraph \"heart-failure\" {"),
        "{}",
        both(&o)
    );
    assert!(out.trim_end().ends_with('}'), "{}", both(&o));
    assert!(
        out.contains("\"early_post_discharge\" -> \"titration\""),
        "{}",
        both(&o)
    );
}

#[test]
fn graph_mermaid() {
    let o = parcours(&[
        "graph",
        "--format",
        "mermaid",
        "pathways/heart-failure.yaml",
    ]);
    assert!(o.status.success(), "{}", both(&o));
    let out = stdout(&o);
    assert!(out.contains("stateDiagram-v2"), "{}", both(&o));
    assert!(out.contains("[*] --> referred"), "{}", both(&o));
}

#[test]
fn graph_refuses_a_broken_pathway() {
    let o = parcours(&["graph", "pathways/broken/PW0003-unreachable-state.yaml"]);
    assert!(!o.status.success(), "{}", both(&o));
    assert!(stdout(&o).is_empty(), "{}", both(&o));
    assert!(stderr(&o).contains("error[PW0003]"), "{}", both(&o));
}

#[test]
fn schema_prints_the_json_schema() {
    let o = parcours(&["schema"]);
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("`parcours schema` is not JSON ({e}):\n{}", both(&o)));
    assert_eq!(v["title"], "parcours pathway definition");
    assert!(v["properties"]["tracks"].is_object(), "{v}");
    assert!(
        v["required"]
            .as_array()
            .is_some_and(|r| r.contains(&"pathway".into()))
    );
}

#[test]
fn openapi_prints_the_api_document() {
    let o = parcours(&["openapi"]);
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("`parcours openapi` is not JSON ({e}):\n{}", both(&o)));
    assert_eq!(v["openapi"], "3.1.0");
    assert!(v["paths"]["/v1/events"]["post"].is_object(), "{v}");
    assert!(
        v["components"]["schemas"]["EventData.encounter.discharged"].is_object(),
        "the catalogue's events are in it"
    );
}

#[test]
fn asyncapi_prints_the_nats_document() {
    let o = parcours(&["asyncapi"]);
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("`parcours asyncapi` is not JSON ({e}):\n{}", both(&o)));
    assert_eq!(v["asyncapi"], "3.0.0");
    assert!(
        v["components"]["schemas"]["Effect"].is_object(),
        "the effect's schema, from the OpenAPI document"
    );
}

#[test]
fn test_runs_the_shipped_scenarios() {
    let o = parcours(&["test", "pathways"]);
    let out = stdout(&o);
    let last = last_line(&out);
    let Some((passed, failed)) = summary(last) else {
        panic!(
            "expected a last line `N passed, 0 failed`, got `{last}`:\n{}",
            both(&o)
        );
    };
    assert_eq!(failed, 0, "{}", both(&o));
    assert!(passed > 0, "{}", both(&o));
    assert!(o.status.success(), "{}", both(&o));
}

#[test]
fn test_given_a_file_asks_for_the_directory() {
    let o = parcours(&["test", "pathways/heart-failure.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stderr(&o).contains(
            "pathways/heart-failure.yaml: give the directory holding the pathways and their scenarios/, not a file"
        ),
        "{}",
        both(&o)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[test]
fn test_fails_when_the_pathway_no_longer_meets_its_scenario() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("pathways");
    copy_dir(&workspace().join("pathways"), &dir);

    // The heart-failure task `gp-visit` now falls due at 8 days instead of 7.
    let file = dir.join("heart-failure.yaml");
    let src = std::fs::read_to_string(&file).expect("read heart-failure.yaml");
    let task = src
        .find("\n  gp-visit:\n")
        .expect("heart-failure.yaml defines the task `gp-visit`");
    let due = task
        + src[task..]
            .find("due: 7d")
            .expect("the task `gp-visit` has `due: 7d`");
    // No other entry of `tasks:` (a key indented by two spaces) starts in between.
    let another_entry = src[task + 1..due]
        .lines()
        .skip(1)
        .any(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'));
    assert!(
        !another_entry,
        "the first `due: 7d` after `gp-visit:` belongs to another task"
    );
    let edited = format!("{}due: 8d{}", &src[..due], &src[due + "due: 7d".len()..]);
    std::fs::write(&file, edited).expect("write heart-failure.yaml");

    let dir_arg = dir.to_str().expect("UTF-8 temporary path");
    let o = parcours(&["test", dir_arg]);
    assert!(!o.status.success(), "{}", both(&o));
    let out = stdout(&o);
    let failing: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert!(
        failing.iter().any(|l| l.contains("01-happy-path.yaml")),
        "expected 01-happy-path.yaml to fail:\n{}",
        both(&o)
    );
    assert!(
        out.contains("gp-visit"),
        "expected `gp-visit` to be named:\n{}",
        both(&o)
    );
    assert!(
        out.contains("due +8d"),
        "expected the new due time in the failure:\n{}",
        both(&o)
    );
    let last = last_line(&out);
    let Some((_, failed)) = summary(last) else {
        panic!(
            "expected a last line `N passed, M failed`, got `{last}`:\n{}",
            both(&o)
        );
    };
    assert!(failed > 0, "{}", both(&o));
}

/// A copy of the shipped pathways (with their scenarios) and one more file saved in
/// Latin-1, whose first invalid byte (`à`, 0xE0) is at line 3, column 14.
fn pathways_with_a_latin1_file(tmp: &Path) -> (PathBuf, PathBuf) {
    let dir = tmp.join("pathways");
    copy_dir(&workspace().join("pathways"), &dir);
    std::fs::remove_dir_all(dir.join("broken")).expect("remove broken/");
    let latin1 = dir.join("latin1.yaml");
    let text = "pathway: latin1-probe\nversion: 1\ntitle: Suivi \u{e0} domicile\n";
    let bytes: Vec<u8> = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("Latin-1"))
        .collect();
    std::fs::write(&latin1, bytes).expect("write latin1.yaml");
    (dir, latin1)
}

const NOT_UTF8: &str = "latin1.yaml:3:14: error[PW0001]: the file is not UTF-8 text (byte 0xE0 at line 3, column 14); save it as UTF-8";

#[test]
fn check_reports_a_file_that_is_not_utf8_and_checks_the_others() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let (dir, _) = pathways_with_a_latin1_file(tmp.path());
    let dir_arg = dir.to_str().expect("UTF-8 temporary path");
    let o = parcours(&["check", dir_arg]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert!(stderr(&o).contains(NOT_UTF8), "{}", both(&o));
    let out = stdout(&o);
    assert!(
        out.contains("ok: ") && out.contains("heart-failure.yaml"),
        "{}",
        both(&o)
    );
    let shipped = parcours_lang::pathway_files(&workspace().join("pathways"))
        .expect("the shipped pathways")
        .len();
    assert_eq!(
        last_line(&out),
        format!("checked {} file(s): 1 error(s), 0 warning(s)", shipped + 1),
        "{}",
        both(&o)
    );
}

#[test]
fn test_reports_a_file_that_is_not_utf8_and_runs_the_other_scenarios() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let (dir, _) = pathways_with_a_latin1_file(tmp.path());
    let o = parcours(&["test", dir.to_str().expect("UTF-8 temporary path")]);
    assert!(!o.status.success(), "{}", both(&o));
    let out = stdout(&o);
    assert!(out.contains(NOT_UTF8), "{}", both(&o));
    let Some((passed, failed)) = summary(last_line(&out)) else {
        panic!("expected `N passed, M failed` last:\n{}", both(&o));
    };
    assert!(passed > 0 && failed == 1, "{}", both(&o));
}

#[test]
fn publish_publishes_nothing_when_a_file_is_not_utf8() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let (dir, _) = pathways_with_a_latin1_file(tmp.path());
    let log = tmp.path().join("log.db");
    let o = parcours(&[
        "publish",
        dir.to_str().expect("UTF-8 temporary path"),
        "--store",
        log.to_str().expect("UTF-8 temporary path"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = stderr(&o);
    assert!(err.contains(NOT_UTF8), "{}", both(&o));
    assert!(
        err.contains("nothing published: a file has errors"),
        "{}",
        both(&o)
    );
    assert!(!log.exists(), "the log was opened:\n{}", both(&o));
}

#[test]
fn demo_runs_the_engine_on_a_small_cohort() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("demo.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_parcours"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args([
            "demo",
            "--heart-failure",
            "12",
            "--diabetes",
            "8",
            "--days",
            "45",
            "--quiet",
            "--store",
        ])
        .arg(&db)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("heart-failure"), "{stdout}");
    assert!(stdout.contains("referred by the coordinator"), "{stdout}");
    assert!(stdout.contains("type2-diabetes"), "{stdout}");
    assert!(stdout.contains("tasks:"), "{stdout}");
    assert!(stdout.contains("replay check:"), "{stdout}");
    assert!(db.exists(), "the log is kept");
}

/// `--mllp-local-codes` (and `PARCOURS_MLLP_LOCAL_CODES`): a bad file stops `serve`
/// before it starts anything, naming the file, the line and what is wrong.
#[test]
fn serve_refuses_a_bad_local_codes_file_naming_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let codes = dir.path().join("codes.csv");
    std::fs::write(&codes, "system,code,loinc\nL,KAL,2823-3\nL,NA,2951-9\n").expect("write");
    let db = dir.path().join("log.db");
    let run = |flag: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_parcours"));
        c.args(["serve", "--http", "127.0.0.1:0", "--store"])
            .arg(&db)
            .current_dir(workspace())
            .env("NO_COLOR", "1");
        if flag {
            c.arg("--mllp-local-codes").arg(&codes);
        } else {
            c.env("PARCOURS_MLLP_LOCAL_CODES", &codes);
        }
        c.output().expect("the parcours binary runs")
    };
    for flag in [true, false] {
        let o = run(flag);
        assert_eq!(o.status.code(), Some(2), "{}", both(&o));
        let err = stderr(&o);
        assert!(err.contains("--mllp-local-codes"), "{}", both(&o));
        assert!(
            err.contains(&format!("{}:3: the LOINC code is not one", codes.display())),
            "{}",
            both(&o)
        );
        assert!(!db.exists(), "nothing was started");
    }
}

/// `replay`, `migrate` and `publish` read the log `PARCOURS_STORE` names, as `serve` does,
/// and none of them makes a log: run from another directory, or given a path that is no
/// log, they refuse and say how to name it, rather than work on a new empty log and
/// report that all is well.
#[test]
fn commands_on_a_log_follow_parcours_store_and_never_make_one() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let missing = tmp.path().join("missing.db");
    let migration = tmp.path().join("m.yaml");
    std::fs::write(
        &migration,
        "migration: m\ntenant: cpts-demo\npathway: heart-failure\nfrom: 2\nto: 3\nstates: {}\ninstances: all\n",
    )
    .expect("migration file");
    let hf = workspace().join("pathways/heart-failure.yaml");
    let commands: [&[&str]; 3] = [
        &["replay", "--pathways", "pathways"],
        &["migrate", migration.to_str().expect("utf-8")],
        &["publish", hf.to_str().expect("utf-8")],
    ];
    for args in commands {
        let o = Command::new(env!("CARGO_BIN_EXE_parcours"))
            .args(args)
            .current_dir(tmp.path())
            .env("PARCOURS_STORE", &missing)
            .env("NO_COLOR", "1")
            .output()
            .expect("the parcours binary runs");
        assert_ne!(o.status.code(), Some(0), "{args:?}: {}", both(&o));
        let err = stderr(&o);
        assert!(
            err.contains(missing.to_str().expect("utf-8")) && err.contains("no such log"),
            "{args:?}: {}",
            both(&o)
        );
        assert!(!missing.exists(), "{args:?} made the log");
        assert!(
            !tmp.path().join("parcours.db").exists(),
            "{args:?} made ./parcours.db"
        );
    }
}

/// `parcours events | head -1`: the reader leaves, the command ends quietly (the status of
/// a program SIGPIPE stops), without a panic's message.
#[test]
fn a_reader_that_leaves_ends_the_output_quietly() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .arg("events")
        .current_dir(workspace())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the parcours binary runs");
    let mut first = [0u8; 8];
    child
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("the first bytes");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("parcours ends");
    assert_eq!(o.status.code(), Some(141), "{}", both(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", both(&o));
}
