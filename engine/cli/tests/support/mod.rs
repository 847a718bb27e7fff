//! What the `parcours serve` process tests share: starting and stopping the real
//! binary, HTTP on a plain socket, a synthetic cohort, the effects feed.
#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

#[path = "../../../http/tests/contract/mod.rs"]
pub mod contract;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The API key of the test configuration (`test_auth_file`): every tenant, coordinator
/// and integration. Its SHA-256 is in the file; the key itself only here.
pub const TEST_KEY: &str = "pck_5e7f0c1a9b3d4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f";
const TEST_KEY_SHA256: &str = "c8cb8aa98c7240dd2f546fe7f7e4a9d0a6f11d22d0c7ab54f165a1ce7f3ba3bd";

/// The shipped heart-failure pathway's text as version `version`, whatever version the
/// file states: tests of publishing and migrating start from their own version 1.
pub fn heart_failure_as(version: u32) -> String {
    let text = std::fs::read_to_string(workspace().join("pathways/heart-failure.yaml"))
        .expect("the shipped pathway");
    let stated = text
        .lines()
        .find(|l| l.starts_with("version: "))
        .expect("the shipped file states its version");
    text.replacen(
        &format!("\n{stated}\n"),
        &format!("\nversion: {version}\n"),
        1,
    )
}

/// A pathways folder `dir/name` with the shipped pathways, heart failure as version
/// `version`.
pub fn pathways_with_heart_failure_as(dir: &Path, name: &str, version: u32) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    for f in ["type2-diabetes.yaml", "copd-exacerbation.yaml"] {
        std::fs::copy(workspace().join("pathways").join(f), folder.join(f)).expect("copy");
    }
    std::fs::write(folder.join("heart-failure.yaml"), heart_failure_as(version)).expect("write");
    folder
}

/// An `--auth` file holding `TEST_KEY` (for a PostgreSQL log, which has no local key).
pub fn test_auth_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        // In cargo's scratch directory for integration tests (target/tmp), not the
        // machine's /tmp, which kept one per test process. The same text for every
        // process: written aside, then renamed over (a reader never sees half a file).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("parcours-test-auth.yaml");
        let aside = dir.join(format!("parcours-test-auth.yaml.{}", std::process::id()));
        let yaml = format!(
            "api_keys:\n  - id: test\n    principal: tests\n    sha256: {TEST_KEY_SHA256}\n    tenants: [\"*\"]\n    roles: [coordinator, integration]\n"
        );
        std::fs::write(&aside, yaml).expect("auth file");
        std::fs::rename(&aside, &path).expect("auth file in place");
        path
    })
    .clone()
}

fn keys() -> &'static Mutex<HashMap<String, String>> {
    static KEYS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    KEYS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Calls to `addr` carry this API key (`http`, `get_text`).
pub fn register_key(addr: &str, key: &str) {
    keys()
        .lock()
        .expect("keys")
        .insert(addr.to_string(), key.to_string());
}

/// Calls to `addr` carry the key `parcours serve` generated next to the SQLite log `db`
/// (relative paths: to the workspace, where the servers run).
pub fn register_local_key(addr: &str, db: &Path) {
    let path = workspace().join(format!("{}.api-key", db.display()));
    let key = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    register_key(addr, key.trim());
}

fn auth_header(addr: &str) -> String {
    keys()
        .lock()
        .expect("keys")
        .get(addr)
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default()
}

/// `serve`'s output read up to its line "serving on http://ADDR": ADDR, and the MLLP
/// address printed before it, if any. `None` if the output ends first (the start failed).
pub fn announced(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> Option<(String, Option<String>)> {
    let mut mllp = None;
    for line in lines.map_while(Result::ok) {
        if let Some(a) = line.strip_prefix("parcours: MLLP on ") {
            mllp = Some(a.trim().to_string());
        }
        if let Some(a) = line.split("serving on http://").nth(1) {
            return Some((a.trim().to_string(), mllp));
        }
    }
    None
}

/// A `parcours serve` that has bound its HTTP port and is starting: its probes answer
/// there (`addr`) while it waits for its services.
pub struct Booting {
    /// The process, and the address its probes answer on (where it will serve).
    pub server: Server,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    /// The key to register once it serves.
    key: Key,
}

/// The API key a test's calls carry.
enum Key {
    /// `TEST_KEY` (`--auth test_auth_file()` was added).
    Test,
    /// The key generated next to this SQLite log.
    Local(PathBuf),
    /// The test's own `--auth`.
    Own,
}

impl Booting {
    /// `parcours serve` as [`Server::start_args`] runs it, up to its line
    /// "starting; probes on http://…".
    pub fn start_args(args: &[std::ffi::OsString]) -> Booting {
        let store = args
            .iter()
            .position(|a| a == "--store")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.to_string_lossy().into_owned());
        let has_auth = args.iter().any(|a| a == "--auth");
        let postgres = store.as_deref().is_some_and(|s| s.starts_with("postgres"));
        let mut extra: Vec<std::ffi::OsString> = Vec::new();
        if postgres && !has_auth {
            extra.push("--auth".into());
            extra.push(test_auth_file().into());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_parcours"))
            .args(["serve", "--http", "127.0.0.1:0"])
            .args(["--shutdown-grace", "30"])
            .args(args)
            .args(&extra)
            .current_dir(workspace())
            // Warnings and errors reach the test's output; PARCOURS_TEST_ENGINE_LOG sets
            // another filter to look into a run (`info,parcours_nats=debug`).
            .env(
                "RUST_LOG",
                std::env::var("PARCOURS_TEST_ENGINE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("parcours serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .and_then(Result::ok)
                .expect("parcours serve prints its probes' address");
            if let Some(a) = line.split("probes on http://").nth(1) {
                break a.split('/').next().expect("host:port").to_string();
            }
        };
        let key = if !extra.is_empty() {
            Key::Test
        } else if !has_auth {
            Key::Local(PathBuf::from(store.as_deref().unwrap_or("parcours.db")))
        } else {
            Key::Own
        };
        Booting {
            server: Server { child, addr },
            lines,
            key,
        }
    }

    /// Once it serves (its line "serving on http://…"): the running server, its key
    /// registered.
    pub fn serving(mut self) -> Server {
        let (addr, _) = announced(&mut self.lines).expect("parcours serve prints its address");
        assert_eq!(
            addr, self.server.addr,
            "it serves where its probes answered"
        );
        // Keep draining stdout so the server never blocks on it.
        let lines = self.lines;
        std::thread::spawn(move || for _ in lines {});
        match &self.key {
            Key::Test => register_key(&addr, TEST_KEY),
            Key::Local(db) => register_local_key(&addr, db),
            Key::Own => {}
        }
        self.server
    }
}

/// A running `parcours serve` and the address it listens on.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(db: &Path) -> Server {
        Server::start_with(db, Path::new("pathways"))
    }

    pub fn start_with(db: &Path, pathways: &Path) -> Server {
        let args: Vec<std::ffi::OsString> = vec![
            "--store".into(),
            db.into(),
            "--pathways".into(),
            pathways.into(),
        ];
        Server::start_args(&args)
    }

    /// `parcours serve --http 127.0.0.1:0 --shutdown-grace 30` and `args`.
    /// With a PostgreSQL log and no `--auth`, `--auth test_auth_file()` is added; the
    /// server's key (that one, or the local key of a SQLite log) is registered for its
    /// address.
    pub fn start_args(args: &[std::ffi::OsString]) -> Server {
        Booting::start_args(args).serving()
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        self.child.wait().expect("exits")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET whose body is text (`/metrics`).
pub fn get_text(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{}Connection: close\r\n\r\n",
        auth_header(addr)
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// One HTTP/1.1 request to `parcours serve` on its own connection: (status, JSON body).
/// Every answer is held to the API's OpenAPI document (`contract::verify`, as the HTTP
/// crate's tests hold theirs): the real process answers as documented, its start-up
/// gate and production answers too.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Value)> {
    let (status, headers, payload) = exchange(addr, method, path, body)?;
    contract::verify(
        &contract::Exchange {
            method,
            target: path,
            sent_type: Some("application/json"),
            sent: body.unwrap_or("").as_bytes(),
        },
        status,
        &headers,
        &payload,
    );
    Ok((
        status,
        serde_json::from_slice(&payload).unwrap_or(Value::Null),
    ))
}

/// A GET of another server's JSON (NATS's monitoring port): (status, JSON body), not
/// held to parcours' document.
pub fn monitoring(addr: &str, path: &str) -> std::io::Result<(u16, Value)> {
    let (status, _, payload) = exchange(addr, "GET", path, None)?;
    Ok((
        status,
        serde_json::from_slice(&payload).unwrap_or(Value::Null),
    ))
}

/// An answer: status, headers (names in lower case), body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request on its own connection, its answer read to the end.
fn exchange(addr: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        auth_header(addr),
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

/// An HTTP/1.1 answer read to its end: status, headers (names in lower case), body
/// (chunks joined).
fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let bad =
        |what: &str| std::io::Error::other(format!("{what} in {:?}", String::from_utf8_lossy(raw)));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return Ok((status, headers, rest.to_vec()));
    }
    let mut body = Vec::new();
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("a chunk without its size"))?;
        let size_text = String::from_utf8_lossy(&rest[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("a chunk size that is not hexadecimal"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, headers, body));
        }
        let chunk = rest.get(..size).ok_or_else(|| bad("a chunk cut short"))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

pub fn now_minus_days(days: i64) -> jiff::Timestamp {
    #[allow(clippy::disallowed_methods)]
    let now = jiff::Timestamp::now();
    now - jiff::SignedDuration::from_hours(24 * days)
}

/// 10 000 events for 2 000 patients: a discharge, a consent, three weights each.
pub fn cohort() -> Vec<Value> {
    let base = now_minus_days(2);
    let mut out = Vec::new();
    for p in 0..2000 {
        let subject = format!("p-{p:05}");
        let at = |mins: i64| (base + jiff::SignedDuration::from_mins(p + mins)).to_string();
        out.push(json!({"id": format!("adt-{p}"), "tenant": "cpts-load", "source": "test", "subject": subject,
            "occurredat": at(0), "type": "encounter.discharged",
            "data": {"encounter_id": format!("V{p}"), "destination": "home", "diagnoses": ["I50.1"]}}));
        out.push(json!({"id": format!("consent-{p}"), "tenant": "cpts-load", "source": "test", "subject": subject,
            "occurredat": at(60), "type": "consent.given", "data": {}}));
        for d in 0..3 {
            out.push(json!({"id": format!("w-{p}-{d}"), "tenant": "cpts-load", "source": "test", "subject": subject,
                "occurredat": at(120 + 60 * d), "type": "observation.recorded",
                "data": {"code": "29463-7", "value": 80.0 + d as f64, "unit": "kg"}}));
        }
    }
    out
}

/// Post `events` in batches of 20 from 4 connections in parallel until every batch is
/// acknowledged or the server goes away. Returns the acknowledged event ids.
pub fn post_all(addr: &str, events: &[Value], stop_after: Option<usize>) -> BTreeSet<String> {
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let batches: Vec<Vec<Value>> = events.chunks(20).map(<[Value]>::to_vec).collect();
    let next = Arc::new(Mutex::new(0usize));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let (acked, next, batches) = (acked.clone(), next.clone(), &batches);
            scope.spawn(move || {
                loop {
                    let i = {
                        let mut n = next.lock().expect("lock");
                        *n += 1;
                        *n - 1
                    };
                    let Some(batch) = batches.get(i) else { return };
                    if stop_after.is_some_and(|s| acked.lock().expect("lock").len() >= s) {
                        return;
                    }
                    let body = Value::Array(batch.clone()).to_string();
                    match http(addr, "POST", "/v1/events", Some(&body)) {
                        Ok((200 | 202, v)) => {
                            let results = v["results"].as_array().cloned().unwrap_or_default();
                            assert_eq!(results.len(), batch.len(), "{v}");
                            let mut a = acked.lock().expect("lock");
                            for r in results {
                                if let Some(id) = r["id"].as_str() {
                                    a.insert(id.to_string());
                                }
                            }
                        }
                        Ok((status, v)) => panic!("unexpected answer {status}: {v}"),
                        Err(_) => return, // the server is gone: not acknowledged
                    }
                }
            });
        }
    });
    Arc::try_unwrap(acked)
        .map(|m| m.into_inner().expect("lock"))
        .unwrap_or_default()
}

/// Every effect in the feed: (log position, effect id) — one decision record at a
/// position can hold several effects.
pub fn effects(addr: &str) -> BTreeSet<(u64, String)> {
    let mut out = BTreeSet::new();
    let mut after = 0u64;
    loop {
        let (status, v) = http(
            addr,
            "GET",
            &format!("/v1/effects?after={after}&limit=1000"),
            None,
        )
        .expect("effects");
        assert_eq!(status, 200, "{v}");
        let page = v["effects"].as_array().cloned().unwrap_or_default();
        for e in &page {
            out.insert((
                e["position"].as_u64().expect("position"),
                e["id"].as_str().expect("id").to_string(),
            ));
        }
        let next = v["next"].as_u64().unwrap_or(after);
        if page.is_empty() || next == after {
            return out;
        }
        after = next;
    }
}

/// `parcours ARGS…` run from the workspace: whether it succeeded, and its stdout then
/// stderr.
pub fn run_parcours<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("parcours runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The inbound events of a SQLite log, each with how many times it is stored (timers'
/// firings left out), and the log's last position.
pub fn inbound_ids(db: &Path) -> (BTreeMap<String, usize>, u64) {
    use parcours_store::EventStore;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = parcours_store_sqlite::SqliteStore::open(db)
            .await
            .expect("open");
        let mut inbound: BTreeMap<String, usize> = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = store.read_all(after, 10_000).await.expect("read");
            let Some(l) = page.last() else { break };
            after = l.position;
            for r in page.iter().filter(|r| r.stream.starts_with("inbound/")) {
                if !r.record.id.starts_with("timer-fired:") {
                    *inbound.entry(r.record.id.clone()).or_default() += 1;
                }
            }
        }
        store.close().await;
        (inbound, after)
    })
}

pub fn replay(db: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_parcours"))
        .args(["replay", "--pathways", "pathways", "--store"])
        .arg(db)
        .current_dir(workspace())
        .output()
        .expect("parcours replay runs")
}

/// Poll `check` until it holds, or fail after `limit` naming what was awaited.
#[allow(clippy::disallowed_methods)] // a test waiting for a process: wall time is the point
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The PostgreSQL the tests create their databases on (`PARCOURS_TEST_PG`).
pub fn admin_url() -> String {
    std::env::var("PARCOURS_TEST_PG")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

/// One statement through `psql`; its unaligned output. Fails the test when psql does.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-Atqc", sql])
        .output()
        .expect("psql runs (PostgreSQL client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}\nIs PostgreSQL up? pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Make a PostgreSQL log what a release before the retirement records left: its
/// merges' records in the retired keys' identity streams deleted (the log's append-only
/// trigger set aside meanwhile), and the mark of their backfill.
pub fn drop_retirement_records(url: &str) {
    psql(
        url,
        "ALTER TABLE records DISABLE TRIGGER records_append_only; \
         DELETE FROM records WHERE stream LIKE 'identity/%' \
         AND record_type = 'identity.merged'; \
         DELETE FROM streams s WHERE s.stream LIKE 'identity/%' \
         AND NOT EXISTS (SELECT 1 FROM records r WHERE r.stream = s.stream); \
         ALTER TABLE records ENABLE TRIGGER records_append_only; \
         DELETE FROM checkpoints WHERE name = 'identity-retirements-v1'",
    );
}

/// A PostgreSQL cluster of the test's own (initdb in a temporary directory, a free
/// port), so that it can be restarted, and its files and WAL read, without other tests
/// in the way. The server runs as the `postgres` system user when the test runs as root
/// (PostgreSQL refuses root).
pub struct PrivatePg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (apt install postgresql)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("pg_ctl").exists())
            .expect("pg_ctl under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("tempdir");
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let pg = PrivatePg {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        pg.run(&[
            "initdb",
            "-A",
            "trust",
            "-U",
            "root",
            "--no-sync",
            "-D",
            &pg.data(),
        ]);
        pg.ctl("start");
        pg
    }

    pub fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }

    pub fn run(&self, args: &[&str]) {
        let program = self.bin.join(args[0]);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(&args[1..])
            .current_dir(self.dir.path())
            .output()
            .expect("PostgreSQL tool runs");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(&[
            "pg_ctl",
            action,
            "-w",
            "-m",
            "fast",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-o",
            &options,
        ]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = cmd.args(["stop", "-m", "immediate", "-D", &data]).output();
    }
}

/// A database of its own, dropped at the end.
pub struct Db {
    pub name: String,
    pub url: String,
}

impl Db {
    pub fn create(tag: &str) -> Db {
        Db::create_on(&admin_url(), tag)
    }

    pub fn create_on(admin: &str, tag: &str) -> Db {
        let name = format!("parcours_t_{tag}_{}", std::process::id());
        psql(
            admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql(admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Db {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub fn count(&self, sql: &str) -> u64 {
        psql(&self.url, sql).parse().expect("a count")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let admin = self
            .url
            .rsplit_once('/')
            .map_or(String::new(), |(b, _)| format!("{b}/postgres"));
        let _ = Command::new("psql")
            .args([
                &admin,
                "-Atqc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// The `nats-server` to run: `NATS_SERVER_BIN` (its first path), Debian's, or the PATH's.
pub fn nats_binary() -> PathBuf {
    if let Some(list) = std::env::var_os("NATS_SERVER_BIN")
        && let Some(first) = std::env::split_paths(&list).next()
    {
        return first;
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .find(|c| c.exists())
        })
        .expect("a nats-server binary (apt install nats-server, or NATS_SERVER_BIN)")
}

/// A port nothing listens on now, for a server a test starts later, perhaps much later
/// (a NATS node restarted mid-test). Taken below the kernel's ephemeral range: a port
/// the kernel handed out for `bind(…:0)` goes back to that range, where the source port
/// of any new outgoing connection (an engine reconnecting) may take it before the server
/// binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}")
}

/// A JetStream server of the test's own, restartable on the same port and store;
/// killed on drop.
pub struct NatsServer {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// A server of [`nats_binary`].
    pub fn start() -> NatsServer {
        NatsServer::start_with(&nats_binary())
    }

    /// A server of the binary `bin`.
    pub fn start_with(bin: &Path) -> NatsServer {
        NatsServer::start_at(bin, free_port())
    }

    /// A server of the binary `bin` on `port`.
    pub fn start_at(bin: &Path, port: u16) -> NatsServer {
        let mut s = NatsServer {
            bin: bin.to_path_buf(),
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        s.run();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store(&self) -> &Path {
        self.dir.path()
    }

    fn run(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait_for("NATS accepts connections", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Kill the server, keeping its store directory (to be read afterwards).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean stop: JetStream flushes), then start again.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        self.run();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send one HL7 v2 message over MLLP on a new connection; the ACK it gets, unframed.
pub fn mllp_send(addr: &str, msg: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    s.write_all(&frame).expect("send");
    let mut ack = Vec::new();
    let mut buf = [0u8; 4096];
    while !ack.ends_with(&[0x1c, 0x0d]) {
        let n = s.read(&mut buf).expect("read ack");
        assert!(n > 0, "connection closed before the ACK");
        ack.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&ack[1..ack.len() - 2]).into_owned()
}

/// Every occurrence of `from` in `text` replaced by `to`.
pub fn replace_all(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// A PAM-FR sample of `adapters/hl7v2/tests/data/pamfr/` with CR segment ends, each
/// `(from, to)` edit applied in turn.
pub fn pamfr(name: &str, edits: &[(&str, String)]) -> Vec<u8> {
    let raw = std::fs::read(
        workspace()
            .join("adapters/hl7v2/tests/data/pamfr")
            .join(name),
    )
    .expect("sample");
    let mut text: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'\n' { b'\r' } else { *b })
        .collect();
    for (from, to) in edits {
        text = replace_all(&text, from, to);
    }
    text
}
