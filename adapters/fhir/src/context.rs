//! What the inbound mapping needs to know about one configured FHIR source.

use jiff::tz::TimeZone;
use parcours_identity::Pseudonymizer;

/// The default cap on a request body: 16 MiB (a Synthea patient with decades of history
/// is under 1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// One configured FHIR source (a hospital's FHIR server, a lab, a care-team system) in a
/// tenant: who sends, how patients are named there, and how to pseudonymise them.
///
/// ```
/// use parcours_fhir::Context;
/// use parcours_identity::Pseudonymizer;
///
/// let key = Pseudonymizer::from_key(&[7u8; 32]).expect("32-byte key");
/// let ctx = Context::new("cpts-a", "chu-nord", "https://fhir.chu-nord.example/fhir", key)
///     .prefer_identifier_system("urn:oid:1.2.250.1.71.4.2.7.1234");
/// assert_eq!(ctx.source(), "fhir/chu-nord");
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) tenant: String,
    pub(crate) source_name: String,
    pub(crate) source: String,
    pub(crate) base_url: String,
    pub(crate) pseudonymizer: Pseudonymizer,
    pub(crate) allow_test_ins: bool,
    pub(crate) preferred_systems: Vec<String>,
    pub(crate) time_zone: TimeZone,
    pub(crate) max_body_bytes: usize,
}

impl Context {
    /// A source named `source_name` (events get `source = fhir/<source_name>`) in
    /// `tenant`, whose server lives at `base_url` (a plain reference `Patient/123` becomes
    /// the local identifier `<base_url>/Patient|123`).
    ///
    /// Defaults: test INS refused, no preferred identifier system, dates without a time
    /// zone read in Europe/Paris, bodies up to [`DEFAULT_MAX_BODY_BYTES`].
    pub fn new(
        tenant: impl Into<String>,
        source_name: impl Into<String>,
        base_url: impl Into<String>,
        pseudonymizer: Pseudonymizer,
    ) -> Context {
        let source_name = source_name.into();
        Context {
            tenant: tenant.into(),
            source: format!("fhir/{source_name}"),
            source_name,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            pseudonymizer,
            allow_test_ins: false,
            preferred_systems: Vec::new(),
            time_zone: parcours_core::calendar::paris(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Accept test and demonstration INS (OIDs `1.2.250.1.213.1.4.10` and `.11`): for
    /// test platforms only.
    pub fn allow_test_ins(mut self, allow: bool) -> Context {
        self.allow_test_ins = allow;
        self
    }

    /// Prefer local identifiers of this system (the source's IPP assigning authority),
    /// in the order the calls are made, over other local identifiers of a Patient.
    pub fn prefer_identifier_system(mut self, system: impl Into<String>) -> Context {
        self.preferred_systems
            .push(crate::inbound::identity::normalise_system(&system.into()));
        self
    }

    /// The zone in which dates and date-times without an offset are read.
    pub fn time_zone(mut self, zone: TimeZone) -> Context {
        self.time_zone = zone;
        self
    }

    /// The largest body accepted (larger ones get 413).
    pub fn max_body_bytes(mut self, bytes: usize) -> Context {
        self.max_body_bytes = bytes;
        self
    }

    /// The tenant (CPTS).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The CloudEvents `source` of the events made here: `fhir/<source name>`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The source's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}
