//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use parcours_core::events::Event;
use parcours_hl7v2::mllp::{DeadLetter, DeadLetterError, DeadLetters, Sink, SinkError};
use parcours_hl7v2::{Intake, IntakeConfig};
use parcours_identity::{PatientIdentifier, Pseudonymizer};

pub const TENANT: &str = "cpts-nord";

pub fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::from_key(&[7u8; 32]).expect("a 32-byte key")
}

pub fn subject(id: &PatientIdentifier) -> String {
    pseudonymizer().subject(TENANT, id)
}

/// The test configuration: production, training and debug messages accepted (the
/// third-party samples are marked D or T).
pub fn config() -> IntakeConfig {
    let mut c = IntakeConfig::new(TENANT, pseudonymizer());
    c.processing_ids = vec!["P".into(), "D".into(), "T".into()];
    c
}

pub fn intake() -> Intake {
    Intake::new(config())
}

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn data(rel: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every sample file (relative paths), sorted.
pub fn sample_files() -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["samples", "samples/malformed", "pamfr"] {
        let dir = data_dir().join(sub);
        for entry in std::fs::read_dir(&dir).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                out.push(format!("{sub}/{name}"));
            }
        }
    }
    out.sort();
    out
}

/// Run `f` on another thread and fail if it takes longer than `limit` (a hang guard).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?} (hang or panic)"))
}

/// Events with their ids blanked, to compare with expected events.
pub fn without_ids(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| Event {
            id: String::new(),
            ..e.clone()
        })
        .collect()
}

/// What the in-memory sink answers.
pub const SINK_OK: u8 = 0;
pub const SINK_REJECT: u8 = 1;
pub const SINK_UNAVAILABLE: u8 = 2;

/// A sink that records what it commits.
#[derive(Debug, Default)]
pub struct MemorySink {
    pub mode: AtomicU8,
    pub batches: Mutex<Vec<Vec<Event>>>,
}

impl MemorySink {
    pub fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub fn batches(&self) -> Vec<Vec<Event>> {
        self.batches.lock().expect("lock").clone()
    }
}

impl Sink for MemorySink {
    async fn submit(&self, events: Vec<Event>) -> Result<Vec<String>, SinkError> {
        match self.mode.load(Ordering::SeqCst) {
            SINK_REJECT => Err(SinkError::Rejected {
                reason: "unknown encounter".into(),
            }),
            SINK_UNAVAILABLE => Err(SinkError::Unavailable {
                reason: "database down".into(),
            }),
            _ => {
                self.batches.lock().expect("lock").push(events);
                Ok(Vec::new())
            }
        }
    }
}

/// Dead letters kept in memory.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    pub letters: Mutex<Vec<DeadLetter>>,
}

impl MemoryDeadLetters {
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().expect("lock").clone()
    }
}

impl DeadLetters for MemoryDeadLetters {
    async fn keep(&self, letter: DeadLetter) -> Result<(), DeadLetterError> {
        self.letters.lock().expect("lock").push(letter);
        Ok(())
    }
}
