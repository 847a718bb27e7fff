//! Every scenario of the shipped pathways passes under `cargo test` too.

use std::path::Path;

#[test]
fn shipped_scenarios_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pathways");
    let summary = parcours_scenario::run_dir(&dir);
    assert!(summary.errors.is_empty(), "{:#?}", summary.errors);
    let failed: Vec<String> = summary
        .outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| {
            format!(
                "{} — {}\n  {}",
                o.file.display(),
                o.name,
                o.failures.join("\n  ")
            )
        })
        .collect();
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
    // At least ten per shipped pathway (the floor), so a lost folder is noticed.
    for pathway in ["heart-failure", "type2-diabetes", "copd-exacerbation"] {
        let n = summary
            .outcomes
            .iter()
            .filter(|o| o.file.components().any(|c| c.as_os_str() == pathway))
            .count();
        assert!(n >= 10, "{pathway} has {n} scenarios");
    }
}
