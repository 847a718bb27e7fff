//! `parcours serve --config FILE`: a YAML file of the same settings as the flags.
//!
//! Keys are the flags' names without the dashes in front (`shutdown-grace: 20`);
//! lists are YAML lists (`nats: [nats://a:4222, nats://b:4222]`). Precedence, highest
//! first: a flag on the command line, its `PARCOURS_…` environment variable, the file,
//! the built-in default. The file's values become the flags' defaults before the
//! command line is parsed, so clap applies that order and reports bad values with the
//! flag's name. An unknown key or a value of the wrong shape is an error naming the
//! file, line and key. `deploy/parcours.yaml` is an annotated example.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Command;

/// The `--config` path given on the command line or in `PARCOURS_CONFIG`, if any (read
/// before clap parses, since the file supplies defaults).
pub(crate) fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("PARCOURS_CONFIG").map(PathBuf::from)
}

/// The `serve` command with the file's values as its flags' defaults.
pub(crate) fn apply(command: Command, path: &Path) -> anyhow::Result<Command> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    let values: BTreeMap<String, serde_json::Value> = if text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    let serve = command
        .find_subcommand("serve")
        .context("the serve command")?
        .clone();
    let known: Vec<String> = serve
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != "config")
        .map(|a| a.get_id().to_string())
        .collect();
    let mut defaults: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in &values {
        let id = key.replace('-', "_");
        let at = || line_of(&text, key).map_or(String::new(), |l| format!(":{l}"));
        if !known.contains(&id) {
            anyhow::bail!(
                "{}{}: unknown setting `{key}` (settings are the flags of `parcours serve --help`, without the leading dashes)",
                path.display(),
                at()
            );
        }
        let text_value = match value {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Number(n) => vec![n.to_string()],
            serde_json::Value::Bool(b) => vec![b.to_string()],
            serde_json::Value::Array(items) => {
                let mut parts = Vec::new();
                for i in items {
                    match i {
                        serde_json::Value::String(s) => parts.push(s.clone()),
                        serde_json::Value::Number(n) => parts.push(n.to_string()),
                        _ => anyhow::bail!(
                            "{}{}: `{key}` lists only strings or numbers",
                            path.display(),
                            at()
                        ),
                    }
                }
                parts
            }
            serde_json::Value::Null => continue,
            serde_json::Value::Object(_) => anyhow::bail!(
                "{}{}: `{key}` takes a value or a list, not a map",
                path.display(),
                at()
            ),
        };
        defaults.push((id, text_value));
    }
    Ok(command.mut_subcommand("serve", |mut sc| {
        for (id, values) in defaults {
            // Defaults live as long as the command: parsed once at start-up.
            let values: Vec<&'static str> = values
                .into_iter()
                .map(|v| &*Box::leak(v.into_boxed_str()))
                .collect();
            sc = sc.mut_arg(id, |a| a.default_values(values));
        }
        sc
    }))
}

/// The 1-based line of a top-level key.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn the_file_gives_defaults_and_the_command_line_wins() {
        let f =
            write("http: 127.0.0.1:9999\nnats: [nats://a:4222, nats://b:4222]\npartitions: 8\n");
        let cmd = apply(crate::Cli::command(), f.path()).expect("config");
        let m = cmd
            .clone()
            .try_get_matches_from(["parcours", "serve", "--partitions", "4"])
            .expect("parse");
        let serve = m.subcommand_matches("serve").expect("serve");
        assert_eq!(
            serve
                .get_one::<std::net::SocketAddr>("http")
                .map(ToString::to_string),
            Some("127.0.0.1:9999".into())
        );
        assert_eq!(serve.get_one::<u16>("partitions"), Some(&4));
        let nats: Vec<&String> = serve.get_many::<String>("nats").expect("nats").collect();
        assert_eq!(nats, ["nats://a:4222", "nats://b:4222"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_say_where() {
        let f = write("http: 127.0.0.1:9999\n\nstroe: x.db\n");
        let e = apply(crate::Cli::command(), f.path()).expect_err("unknown");
        let msg = e.to_string();
        assert!(msg.contains(":3: unknown setting `stroe`"), "{msg}");
        let f = write("partitions: many\n");
        let cmd = apply(crate::Cli::command(), f.path()).expect("applied");
        let e = cmd
            .try_get_matches_from(["parcours", "serve"])
            .expect_err("bad value");
        assert!(e.to_string().contains("--partitions"), "{e}");
    }

    #[test]
    fn the_shipped_example_is_a_valid_configuration() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/parcours.yaml");
        let cmd = apply(crate::Cli::command(), &path).expect("deploy/parcours.yaml applies");
        let m = cmd
            .try_get_matches_from(["parcours", "serve"])
            .expect("every value parses");
        let serve = m.subcommand_matches("serve").expect("serve");
        assert_eq!(serve.get_one::<u16>("partitions"), Some(&16));
    }

    #[test]
    fn the_mllp_limits_come_from_the_file_and_the_command_line() {
        use clap::FromArgMatches as _;
        let f = write("mllp-frame-timeout: 5\nmllp-max-connections-per-peer: 4\n");
        let cmd = apply(crate::Cli::command(), f.path()).expect("config");
        let m = cmd
            .try_get_matches_from(["parcours", "serve", "--mllp-idle-timeout", "60"])
            .expect("parse");
        let serve = m.subcommand_matches("serve").expect("serve");
        let args = crate::serve::MllpArgs::from_arg_matches(serve).expect("mllp args");
        let c = args.server_config(Vec::new()).expect("server config");
        assert_eq!(c.frame_timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(c.max_connections_per_peer, 4);
        assert_eq!(c.max_connections, 64);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        let zero = crate::serve::MllpArgs {
            mllp_frame_timeout: 0,
            ..args
        };
        let e = zero.server_config(Vec::new()).expect_err("zero");
        assert!(e.to_string().contains("--mllp-frame-timeout"), "{e}");
    }

    #[test]
    fn the_mllp_intake_settings_come_from_the_file() {
        use clap::FromArgMatches as _;
        let key = parcours_identity::Pseudonymizer::from_key(&[7u8; 32]).expect("key");
        let intake = |text: &str| {
            let f = write(text);
            let cmd = apply(crate::Cli::command(), f.path()).expect("config");
            let m = cmd
                .try_get_matches_from(["parcours", "serve"])
                .map_err(|e| e.to_string())?;
            let serve = m.subcommand_matches("serve").expect("serve");
            let args = crate::serve::MllpArgs::from_arg_matches(serve).expect("mllp args");
            Ok::<_, String>(args.intake_config("cpts-a", key.clone()))
        };
        let defaults = intake("").expect("defaults");
        assert_eq!(defaults.default_charset, parcours_hl7v2::Charset::Utf8);
        assert_eq!(defaults.processing_ids, ["P"]);
        let set =
            intake("mllp-default-charset: 8859/1\nmllp-processing-ids: [P, t]\n").expect("set");
        assert_eq!(set.default_charset, parcours_hl7v2::Charset::Latin1);
        assert_eq!(set.processing_ids, ["P", "T"]);
        let e = intake("mllp-default-charset: EBCDIC\n").expect_err("unknown charset");
        assert!(e.contains("--mllp-default-charset"), "{e}");
        let e = intake("mllp-processing-ids: [P, X]\n").expect_err("unknown id");
        assert!(e.contains("--mllp-processing-ids"), "{e}");
        assert!(defaults.assigning_authorities.is_empty());
        let set =
            intake("mllp-assigning-authority: [CHU-NORD=1.2.250.1.211.10.200.2, 1.2.3=LABO]\n")
                .expect("authorities");
        assert_eq!(
            set.assigning_authorities,
            [
                ("1.2.3".to_owned(), "LABO".to_owned()),
                ("CHU-NORD".to_owned(), "1.2.250.1.211.10.200.2".to_owned())
            ]
            .into_iter()
            .collect()
        );
        let e = intake("mllp-assigning-authority: [CHU-NORD]\n").expect_err("no authority");
        assert!(e.contains("--mllp-assigning-authority"), "{e}");
        let e = intake("mllp-assigning-authority: [\"CHU=1.2^3\"]\n").expect_err("a delimiter");
        assert!(e.contains("FACILITY=AUTHORITY"), "{e}");
        assert!(defaults.local_codes.is_empty());
        // Local lab codes: a file named in the configuration, read and checked.
        let dir = tempfile::tempdir().expect("dir");
        let codes = dir.path().join("codes.csv");
        std::fs::write(&codes, "system,code,loinc\nL,KAL,2823-3\n").expect("write");
        let set = intake(&format!("mllp-local-codes: {}\n", codes.display())).expect("codes");
        assert_eq!(
            set.local_codes.get("L|KAL").map(String::as_str),
            Some("2823-3")
        );
        std::fs::write(&codes, "system,code,loinc\nL,KAL,2823-3\nL,NA,2951-9\n").expect("write");
        let e = intake(&format!("mllp-local-codes: {}\n", codes.display())).expect_err("bad");
        assert!(e.contains("--mllp-local-codes"), "{e}");
        assert!(e.contains("codes.csv:3: the LOINC code"), "{e}");
    }

    #[test]
    fn the_command_line_finds_the_file() {
        let args: Vec<OsString> = ["parcours", "serve", "--config", "p.yaml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("p.yaml")));
        let args: Vec<OsString> = ["parcours", "serve", "--config=q.yaml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("q.yaml")));
    }
}
