//! `deploy/`: what this machine can check without a Docker engine or a cluster.
//!
//! - the compose file against the shape of the Compose specification (known top-level
//!   and service keys, every `depends_on` a service, every named volume declared, every
//!   bind-mounted file present, the three NATS nodes on their `nats-{1,2,3}.conf`, two
//!   engines, Prometheus and Grafana with what they load);
//! - the Kubernetes manifests against the shape of their kinds (apiVersion per kind,
//!   names, selectors matching pod labels, probes on `/healthz` and `/readyz` at a
//!   declared port, resources, a restrictive security context, referenced ConfigMaps);
//! - the engine settings (`deploy/parcours.yaml`, the ConfigMap's copy, every
//!   `PARCOURS_…` variable) against the real `parcours serve` command line;
//! - the Prometheus configuration with `promtool check config` and the Grafana
//!   dashboard's model (fixed uid, datasource variable, every query on it);
//! - the systemd units of the embedded install (`systemd-analyze verify`, with the
//!   test's `parcours` in place of `/usr/local/bin/parcours`), their command lines
//!   against the real commands.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a multi-document YAML file.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// `parcours serve --help`: the settings and their environment variables.
fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--help"])
        .output()
        .expect("parcours runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn env_names(help: &str) -> BTreeSet<String> {
    help.match_indices("[env: ")
        .filter_map(|(i, _)| {
            let rest = &help[i + 6..];
            rest.find(['=', ']']).map(|end| rest[..end].to_string())
        })
        .collect()
}

/// The config file is accepted by `parcours serve --config` (unknown keys are refused
/// before the command line is parsed).
fn check_config_file(path: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["serve", "--config"])
        .arg(path)
        .arg("--help")
        .output()
        .expect("parcours runs");
    assert!(
        out.status.success(),
        "{} is refused: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

const COMPOSE_TOP: &[&str] = &[
    "name", "services", "volumes", "networks", "secrets", "configs",
];
const COMPOSE_SERVICE: &[&str] = &[
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "depends_on",
    "restart",
    "healthcheck",
    "read_only",
    "security_opt",
    "cap_drop",
    "cap_add",
    "stop_grace_period",
    "user",
    "networks",
    "labels",
    "deploy",
    "secrets",
    "configs",
    "expose",
    "tmpfs",
    "ulimits",
    "working_dir",
    "logging",
];

#[test]
fn compose_file_is_well_formed_and_complete() {
    let dir = deploy();
    let c = yaml(&dir.join("compose.yaml"));
    for k in keys(&c) {
        assert!(
            COMPOSE_TOP.contains(&k.as_str()) || k.starts_with("x-"),
            "unknown top-level key `{k}`"
        );
    }
    let services = c["services"].as_object().expect("services");
    let volumes = keys(&c["volumes"]);
    for needed in [
        "nats-1",
        "nats-2",
        "nats-3",
        "postgres",
        "engine-1",
        "engine-2",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(needed), "no service `{needed}`");
    }
    let help = serve_help();
    let envs = env_names(&help);
    for (name, s) in services {
        for k in keys(s) {
            assert!(
                COMPOSE_SERVICE.contains(&k.as_str()),
                "{name}: unknown key `{k}`"
            );
        }
        assert!(
            s["image"].is_string() || s["build"].is_object(),
            "{name}: no image or build"
        );
        let deps: Vec<String> = match &s["depends_on"] {
            Value::Array(a) => a
                .iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect(),
            Value::Object(m) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for d in deps {
            assert!(services.contains_key(&d), "{name} depends on unknown `{d}`");
        }
        for p in s["ports"].as_array().into_iter().flatten() {
            let p = p.as_str().expect("port string");
            let parts: Vec<&str> = p.split(':').collect();
            assert!(
                parts.len() == 2 && parts.iter().all(|x| x.parse::<u16>().is_ok()),
                "{name}: port `{p}`"
            );
        }
        for v in s["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().expect("short volume syntax");
            let source = v.split(':').next().expect("source");
            if source.starts_with('.') {
                let path = dir.join(source);
                assert!(path.exists(), "{name}: `{source}` does not exist");
            } else {
                assert!(
                    volumes.contains(source),
                    "{name}: volume `{source}` not declared"
                );
            }
        }
        if let Some(env) = s["environment"].as_object() {
            for k in env.keys().filter(|k| k.starts_with("PARCOURS_")) {
                assert!(
                    envs.contains(k),
                    "{name}: `{k}` is not a setting of parcours serve"
                );
            }
        }
    }
    // The NATS cluster: each node on its own configuration file.
    for n in 1..=3 {
        let s = &services[&format!("nats-{n}")];
        let mounts: Vec<&str> = s["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            mounts.contains(&format!("./nats/nats-{n}.conf:/etc/nats/nats.conf:ro").as_str()),
            "nats-{n}: {mounts:?}"
        );
        assert_eq!(
            s["command"],
            serde_json::json!(["-c", "/etc/nats/nats.conf"])
        );
    }
    // Both engines: production mode on every NATS node, the PostgreSQL log, one key.
    for e in ["engine-1", "engine-2"] {
        let s = &services[e];
        let env = &s["environment"];
        let nats = env["PARCOURS_NATS"].as_str().expect("PARCOURS_NATS");
        for n in 1..=3 {
            assert!(
                nats.contains(&format!("nats://nats-{n}:4222")),
                "{e}: {nats}"
            );
        }
        assert!(
            env["PARCOURS_STORE"]
                .as_str()
                .is_some_and(|s| s.starts_with("postgres://"))
        );
        assert_eq!(env["PARCOURS_NATS_REPLICAS"], "3");
        assert!(s["healthcheck"]["test"].to_string().contains("/readyz"));
        assert_eq!(s["read_only"], true);
    }
    check_config_file(&dir.join("parcours.yaml"));
    // Prometheus scrapes both engines and loads the rules; Grafana gets the dashboard.
    let prom = std::fs::read_to_string(dir.join("prometheus/prometheus.yml")).expect("prom");
    assert!(prom.contains("engine-1:8080") && prom.contains("engine-2:8080"));
    let prov = yaml(&dir.join("grafana/provisioning/dashboards/parcours.yaml"));
    assert_eq!(
        prov["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    let ds = yaml(&dir.join("grafana/provisioning/datasources/prometheus.yaml"));
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
}

#[test]
fn prometheus_configuration_passes_promtool() {
    let Some(bin) = promtool() else { return };
    let out = Command::new(bin)
        .args(["check", "config"])
        .arg(deploy().join("prometheus/prometheus.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn promtool() -> Option<PathBuf> {
    on_path("promtool", "apt-get install prometheus")
}

/// A tool on `PATH`; missing, a failure under `CI=true` (`.ci/run` installs it), else a
/// note that its check did not run.
fn on_path(tool: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!("{tool} not found: {install}");
        assert!(!in_ci(), "{msg}");
        eprintln!("{msg}; the {tool} check did not run");
    }
    found
}

fn api_version_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "apps/v1",
        "Service" | "ConfigMap" | "Secret" | "ServiceAccount" => "v1",
        "PodDisruptionBudget" => "policy/v1",
        "Kustomization" => "kustomize.config.k8s.io/v1beta1",
        _ => return None,
    })
}

#[test]
fn kubernetes_manifests_are_well_formed_and_safe() {
    let dir = deploy().join("kubernetes");
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    assert_eq!(kustomization["kind"], "Kustomization");
    let mut docs = Vec::new();
    for r in kustomization["resources"].as_array().expect("resources") {
        let r = r.as_str().expect("resource path");
        docs.extend(yaml_docs(&dir.join(r)));
    }
    docs.extend(yaml_docs(&dir.join("secret.example.yaml")));
    let mut configmaps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for d in &docs {
        let kind = d["kind"].as_str().expect("kind");
        let expected = api_version_of(kind).unwrap_or_else(|| panic!("unexpected kind {kind}"));
        assert_eq!(d["apiVersion"], expected, "{kind}");
        let name = d["metadata"]["name"].as_str().expect("metadata.name");
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{kind} name `{name}`"
        );
        match kind {
            "ConfigMap" => {
                configmaps.insert(name.to_string());
            }
            "Secret" => {
                secrets.insert(name.to_string());
            }
            _ => {}
        }
    }
    let help = serve_help();
    let envs = env_names(&help);
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let spec = &deployment["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &pod_labels[k], v,
            "selector {k} does not match the pod labels"
        );
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(pod["terminationGracePeriodSeconds"].as_u64() > Some(20));
    let containers = pod["containers"].as_array().expect("containers");
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in pod["volumes"].as_array().into_iter().flatten() {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            assert!(
                configmaps.contains(cm),
                "ConfigMap `{cm}` is not in the manifests"
            );
        }
        if let Some(s) = v["secret"]["secretName"].as_str() {
            assert!(secrets.contains(s), "Secret `{s}` is not described");
        }
    }
    for c in containers {
        let ports: BTreeSet<&str> = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{probe}");
            let port = get["port"].as_str().expect("named port");
            assert!(ports.contains(port), "{probe}: port `{port}` not declared");
        }
        for r in ["requests", "limits"] {
            for k in ["cpu", "memory"] {
                assert!(c["resources"][r][k].is_string(), "resources.{r}.{k}");
            }
        }
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let v = m["name"].as_str().expect("mount name");
            assert!(volumes.contains(v), "mount of undeclared volume `{v}`");
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let n = e["name"].as_str().expect("env name");
            assert!(envs.contains(n), "`{n}` is not a setting of parcours serve");
            if let Some(s) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                assert!(secrets.contains(s), "Secret `{s}` is not described");
            }
        }
        assert_eq!(c["args"][0], "serve");
    }
    // The Service selects the pods and targets declared ports.
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Service");
    for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&pod_labels[k], v);
    }
    // The ConfigMap's engine settings are accepted by parcours serve.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let settings = cm["data"]["parcours.yaml"].as_str().expect("parcours.yaml");
    let tmp = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(tmp.path(), settings).expect("write");
    check_config_file(tmp.path());
}

#[test]
fn grafana_dashboard_is_a_provisionable_classic_dashboard() {
    let text =
        std::fs::read_to_string(deploy().join("grafana/dashboards/parcours.json")).expect("read");
    let d: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(d["uid"], "parcours-overview");
    assert!(
        d["schemaVersion"].as_u64().is_some(),
        "classic model: schemaVersion"
    );
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a datasource variable"
    );
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate panel id"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            assert!(t["expr"].as_str().is_some_and(|e| e.contains("parcours_")));
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}

/// The value of `key` in a unit file (its first line `key=…`).
fn unit_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line"))
        .to_string()
}

#[test]
fn systemd_units_verify_and_run_real_commands() {
    let dir = tempfile::tempdir().expect("dir");
    let bin = env!("CARGO_BIN_EXE_parcours");
    let names = [
        "parcours.service",
        "parcours-backup.service",
        "parcours-backup.timer",
    ];
    for name in names {
        let text = std::fs::read_to_string(deploy().join("systemd").join(name)).expect(name);
        std::fs::write(
            dir.path().join(name),
            text.replace("/usr/local/bin/parcours", bin),
        )
        .expect("copy");
    }
    if let Some(analyze) = on_path("systemd-analyze", "apt-get install systemd") {
        let out = Command::new(analyze)
            .arg("verify")
            .args(names.iter().map(|n| dir.path().join(n)))
            .output()
            .expect("systemd-analyze runs");
        assert!(
            out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The engine's command line is one `parcours serve` accepts.
    let unit = std::fs::read_to_string(deploy().join("systemd/parcours.service")).expect("unit");
    let exec = unit_value(&unit, "ExecStart");
    let mut args = exec.split_whitespace();
    assert_eq!(args.next(), Some("/usr/local/bin/parcours"));
    let args: Vec<&str> = args.collect();
    assert_eq!(args.first(), Some(&"serve"));
    let out = Command::new(bin)
        .args(&args)
        .arg("--help")
        .output()
        .expect("parcours runs");
    assert!(
        out.status.success(),
        "{exec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It stops within the unit's stop timeout.
    let grace: u64 = args
        .iter()
        .skip_while(|a| **a != "--shutdown-grace")
        .nth(1)
        .and_then(|g| g.parse().ok())
        .expect("--shutdown-grace");
    let stop: u64 = unit_value(&unit, "TimeoutStopSec")
        .parse()
        .expect("seconds");
    assert!(
        grace < stop,
        "--shutdown-grace {grace} within TimeoutStopSec {stop}"
    );

    // The backup's command, run by the shell as the unit does (no log there yet): a
    // refusal from `parcours backup` itself, not from its argument parser.
    let backup =
        std::fs::read_to_string(dir.path().join("parcours-backup.service")).expect("backup");
    let exec = unit_value(&backup, "ExecStart");
    let script = exec
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .expect("ExecStart=/bin/sh -c '…'")
        .replace("%%", "%")
        .replace("/var/lib/parcours", &dir.path().display().to_string());
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .expect("sh runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no log at"),
        "{script}: {err}"
    );
}
