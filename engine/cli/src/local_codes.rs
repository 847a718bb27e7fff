//! `--mllp-local-codes FILE`: a lab's local observation codes and the LOINC code each
//! stands for, so that an ORU^R01 OBX coded only locally (`KAL^Kaliémie^L`) reaches the
//! pathway guards that name LOINC (`2823-3`).
//!
//! Two formats, by the file's extension:
//!
//! - CSV (any name but `.yaml`/`.yml`; what a lab's code table exports to): one mapping
//!   per line, `system,code,loinc` (`;` also separates, as French spreadsheets write
//!   it); fields may be quoted; blank lines and lines starting with `#` are skipped, and
//!   so is a first line `system,code,loinc`.
//! - YAML: a map of `system|code` to LOINC (`"L|KAL": 2823-3`).
//!
//! `system` is OBX-3.3 as the lab sends it (`L`, `99LAB` …), `local` for codes sent
//! without one; `code` is OBX-3.1. Each LOINC code is checked (`NNNNN-N` and its check
//! digit); a bad line, or a code mapped twice to different LOINC codes, stops the start
//! with `file:line` and what is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The mappings read from `--mllp-local-codes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LocalCodes {
    /// Where they were read from.
    pub(crate) path: PathBuf,
    /// `system|code` → LOINC, as [`parcours_hl7v2::IntakeConfig::local_codes`] takes them.
    pub(crate) codes: BTreeMap<String, String>,
}

/// The clap value parser of `--mllp-local-codes`: reads and checks the file.
pub(crate) fn parse_file(s: &str) -> Result<LocalCodes, String> {
    let path = PathBuf::from(s);
    let bytes = std::fs::read(&path).map_err(|e| format!("{s}: cannot be read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        format!("{s}:{line}: not UTF-8 text (save the file as UTF-8)")
    })?;
    let codes = if is_yaml(&path) {
        parse_yaml(&text)
    } else {
        parse_csv(&text)
    }
    .map_err(|(line, why)| match line {
        Some(line) => format!("{s}:{line}: {why}"),
        None => format!("{s}: {why}"),
    })?;
    Ok(LocalCodes { path, codes })
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// A line number (when known) and what is wrong there.
type LineError = (Option<usize>, String);

/// The mappings of a CSV text.
pub(crate) fn parse_csv(text: &str) -> Result<BTreeMap<String, String>, LineError> {
    let mut codes = BTreeMap::new();
    let mut lines_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sep = if line.contains(';') { ';' } else { ',' };
        let fields: Vec<&str> = line
            .split(sep)
            .map(|f| f.trim().trim_matches('"').trim())
            .collect();
        let is_header = first
            && fields
                .first()
                .is_some_and(|f| f.eq_ignore_ascii_case("system"));
        first = false;
        if is_header {
            continue;
        }
        let [system, code, loinc] = fields[..] else {
            return Err((
                Some(n),
                format!(
                    "expected 3 fields (system{sep}code{sep}loinc), found {}",
                    fields.len()
                ),
            ));
        };
        add(&mut codes, &mut lines_of, n, system, code, loinc)?;
    }
    Ok(codes)
}

/// The mappings of a YAML text: `system|code: loinc`.
pub(crate) fn parse_yaml(text: &str) -> Result<BTreeMap<String, String>, LineError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let map: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(text).map_err(|e| {
        (
            None,
            format!("not a YAML map of `system|code: loinc` entries: {e}"),
        )
    })?;
    let mut codes = BTreeMap::new();
    let mut lines_of: BTreeMap<String, usize> = BTreeMap::new();
    for (key, value) in &map {
        let n = line_of(text, key).unwrap_or(0);
        let at = (n > 0).then_some(n);
        let Some((system, code)) = key.split_once('|') else {
            return Err((
                at,
                "a key is not `system|code` (OBX-3.3, `|`, OBX-3.1; `local|code` for codes sent without a system)".into(),
            ));
        };
        let loinc = match value {
            serde_json::Value::String(s) => s.clone(),
            _ => {
                return Err((
                    at,
                    "the LOINC code is not a text (write it as `2823-3`)".into(),
                ));
            }
        };
        add(&mut codes, &mut lines_of, n, system, code, &loinc).map_err(|(_, why)| (at, why))?;
    }
    Ok(codes)
}

/// The first line where `key` is a map key (plain or quoted).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            ["", "\"", "'"].iter().any(|q| {
                l.strip_prefix(q)
                    .and_then(|r| r.strip_prefix(key))
                    .and_then(|r| r.strip_prefix(q))
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
        })
        .map(|i| i + 1)
}

fn add(
    codes: &mut BTreeMap<String, String>,
    lines_of: &mut BTreeMap<String, usize>,
    n: usize,
    system: &str,
    code: &str,
    loinc: &str,
) -> Result<(), LineError> {
    let (system, code, loinc) = (system.trim(), code.trim(), loinc.trim());
    if system.is_empty() {
        return Err((
            Some(n),
            "the system is empty (OBX-3.3 as the lab sends it; `local` for codes sent without one)"
                .into(),
        ));
    }
    if code.is_empty() {
        return Err((Some(n), "the local code is empty (OBX-3.1)".into()));
    }
    if system.contains('|') || code.contains('|') {
        return Err((
            Some(n),
            "a system or code holds `|`, which separates them".into(),
        ));
    }
    if !parcours_core::loinc::is_loinc(loinc) {
        return Err((
            Some(n),
            "the LOINC code is not one: digits, `-`, and a check digit that matches (e.g. 2823-3)"
                .into(),
        ));
    }
    let key = format!("{system}|{code}");
    match codes.get(&key) {
        Some(existing) if existing != loinc => {
            let before = lines_of.get(&key).copied().unwrap_or(0);
            Err((
                Some(n),
                format!("this code is already mapped to another LOINC code at line {before}"),
            ))
        }
        Some(_) => Ok(()),
        None => {
            codes.insert(key.clone(), loinc.to_owned());
            lines_of.insert(key, n);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header_comments_quotes_and_semicolons() {
        let text = "\u{feff}system,code,loinc\n# potassium\nL,KAL,2823-3\n\n\"99LAB\";\"CREA\";\"2160-0\"\nlocal, GLY , 2345-7\nL,KAL,2823-3\n";
        let codes = parse_csv(text).expect("valid");
        assert_eq!(codes.len(), 3);
        assert_eq!(codes["L|KAL"], "2823-3");
        assert_eq!(codes["99LAB|CREA"], "2160-0");
        assert_eq!(codes["local|GLY"], "2345-7");
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = |t: &str| parse_csv(t).expect_err("refused");
        assert_eq!(err("L,KAL,2823-3\nL,NA\n").0, Some(2));
        assert!(err("L,KAL,2823-3\nL,NA\n").1.contains("expected 3 fields"));
        let (line, why) = err("# x\nL,KAL,2823-4\n");
        assert_eq!(line, Some(2));
        assert!(why.contains("check digit"), "{why}");
        assert_eq!(err("L,,2823-3\n").0, Some(1));
        assert_eq!(err(",KAL,2823-3\n").0, Some(1));
        let (line, why) = err("L,KAL,2823-3\nL,K,4548-4\nL,KAL,4548-4\n");
        assert_eq!(line, Some(3));
        assert!(why.contains("line 1"), "{why}");
    }

    #[test]
    fn yaml_maps_and_their_errors() {
        let codes =
            parse_yaml("# lab codes\nL|KAL: 2823-3\n\"local|GLY\": 2345-7\n").expect("valid");
        assert_eq!(codes["L|KAL"], "2823-3");
        assert_eq!(codes["local|GLY"], "2345-7");
        assert!(parse_yaml("").expect("empty").is_empty());
        let (line, why) = parse_yaml("L|KAL: 2823-3\nL|NA: 2951-1\n").expect_err("bad check digit");
        assert_eq!(line, Some(2), "{why}");
        let (line, why) = parse_yaml("L|KAL: 2823-3\nKAL: 2823-3\n").expect_err("no system");
        assert_eq!(line, Some(2));
        assert!(why.contains("system|code"), "{why}");
        let (line, _) = parse_yaml("L|KAL: 2823\n").expect_err("not loinc");
        assert_eq!(line, Some(1));
        assert!(parse_yaml("- a\n- b\n").is_err());
    }

    #[test]
    fn files_by_extension_and_unreadable_files() {
        let dir = tempfile::tempdir().expect("dir");
        let csv = dir.path().join("codes.csv");
        std::fs::write(&csv, "L,KAL,2823-3\n").expect("write");
        let yaml = dir.path().join("codes.yaml");
        std::fs::write(&yaml, "L|KAL: 2823-3\n").expect("write");
        for p in [&csv, &yaml] {
            let got = parse_file(p.to_str().expect("utf-8")).expect("read");
            assert_eq!(got.codes["L|KAL"], "2823-3");
            assert_eq!(&got.path, p);
        }
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "L,KAL,2823-3\nL,NA,29\n").expect("write");
        let e = parse_file(bad.to_str().expect("utf-8")).expect_err("bad");
        assert!(e.contains("bad.csv:2: the LOINC code"), "{e}");
        let latin1 = dir.path().join("latin1.csv");
        std::fs::write(&latin1, b"L,KAL,2823-3\nL,K\xe9,2823-3\n").expect("write");
        let e = parse_file(latin1.to_str().expect("utf-8")).expect_err("latin-1");
        assert!(e.contains("latin1.csv:2: not UTF-8"), "{e}");
        let e =
            parse_file(dir.path().join("none.csv").to_str().expect("utf-8")).expect_err("missing");
        assert!(e.contains("none.csv: cannot be read"), "{e}");
    }
}
