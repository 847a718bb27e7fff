//! Who is calling, and what they may do.
//!
//! Every route but `/healthz`, `/readyz` and `/metrics` needs a principal: an OAuth2 /
//! OIDC bearer token (a JWT signed by a configured issuer: [`jwt`]) or a static API key
//! (hashed at rest, several per principal so they rotate: [`keys`]). A principal holds
//! tenants (the CPTS whose data it may touch) and roles:
//!
//! | role | may |
//! |---|---|
//! | `coordinator` | read instances, histories, tasks, the effects feed, dead letters (their content too), the audit trail; answer tasks; record on `/v1/events` what the care team knows ([`COORDINATOR_EVENTS`]: consent, opt-out, transfer, death, parameters, visits and procedures done, a diagnosis made outside hospital, answers); read and check pathways; check and run migrations of its tenants' instances; erase a patient; publish a pathway version when of every tenant (`tenants: ["*"]`: a version enrols every tenant's new patients) |
//! | `care-team:<role>` | read and answer the tasks of that role (`care-team:gp`, `care-team:nurse` …); read and check pathways; look up the subject keys of patients it knows by an identifier (`/v1/subjects`) |
//! | `integration` | post events (`/v1/events`, FHIR resources and bundles, FHIR Task updates); look up subject keys |
//! | `ops` | the health probes and metrics, which need no credentials; the dead letters of its tenants without their content (where, when and why input was refused: no patient data) |
//!
//! Which permission each route needs is in [`crate::routes::ROUTES`], the table the
//! router is built from. Tenants are enforced by the route guard (a `tenant` in the path
//! or the query must be the caller's; a caller of one tenant gets it filled in) and by
//! [`Caller`] in the handlers of routes addressed by id (an instance, a task of another
//! tenant answers exactly like one that does not exist).

pub mod jwks;
pub mod jwt;
pub mod keys;
mod limit;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Deserialize;

use crate::error::ApiError;

pub use limit::RateLimit;

/// A role a principal holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// CPTS coordinator.
    Coordinator,
    /// A care-team member (or a care-team system) for the tasks of one task role.
    CareTeam(String),
    /// A system that sends events (hospital, lab, care-team software).
    Integration,
    /// Operations: probes and metrics; dead letters without their content.
    Ops,
}

impl Role {
    /// From its written form: `coordinator`, `care-team:<role>`, `integration`, `ops`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "coordinator" => Some(Role::Coordinator),
            "integration" => Some(Role::Integration),
            "ops" => Some(Role::Ops),
            _ => {
                let r = s.strip_prefix("care-team:")?;
                let ok = !r.is_empty()
                    && r.len() <= 64
                    && r.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                ok.then(|| Role::CareTeam(r.to_string()))
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Coordinator => f.write_str("coordinator"),
            Role::CareTeam(r) => write!(f, "care-team:{r}"),
            Role::Integration => f.write_str("integration"),
            Role::Ops => f.write_str("ops"),
        }
    }
}

/// How a configuration (`tenants: ["*"]`) or a query (`GET /v1/audit?tenant=*`: the
/// deployment's own entries) names every tenant.
pub const EVERY_TENANT: &str = "*";

/// The tenants of a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tenants {
    /// Every tenant: only the key `parcours serve` generates for its own embedded log
    /// (one machine, one operator), or an API key configured with `tenants: ["*"]`.
    All,
    /// These.
    Some(BTreeSet<String>),
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Who, for the audit trail: `key:<principal>/<key id>` or `jwt:<issuer>#<sub>`.
    pub id: String,
    /// Whose data it may touch.
    pub tenants: Tenants,
    /// What it may do.
    pub roles: BTreeSet<Role>,
}

impl Principal {
    /// Whether it may touch this tenant's data.
    pub fn has_tenant(&self, tenant: &str) -> bool {
        match &self.tenants {
            Tenants::All => true,
            Tenants::Some(t) => t.contains(tenant),
        }
    }

    /// Its tenant, when it has exactly one.
    pub fn only_tenant(&self) -> Option<&str> {
        match &self.tenants {
            Tenants::Some(t) if t.len() == 1 => t.iter().next().map(String::as_str),
            _ => None,
        }
    }

    /// Whether it holds a role.
    pub fn is(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }

    /// The task roles it works for as a care-team member.
    pub fn care_roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().filter_map(|r| match r {
            Role::CareTeam(x) => Some(x.as_str()),
            _ => None,
        })
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Nothing: health probes and metrics (no patient data).
    Public,
    /// Post events (FHIR POSTs and Task updates): integration.
    Ingest,
    /// Post events to `/v1/events`: integration (any event), coordinator (what the care
    /// team records, [`COORDINATOR_EVENTS`]; the handler checks each event's type).
    Record,
    /// Read instances, histories, a patient's instances: coordinator.
    ReadInstances,
    /// Read tasks, alerts, handoffs: coordinator, or care-team for its roles.
    ReadTasks,
    /// Answer tasks, handoffs, alerts: coordinator, or care-team for its roles.
    AnswerTasks,
    /// The effects feed: coordinator.
    ReadFeeds,
    /// Dead letters without their content (source, time, reason, size: no patient
    /// data): coordinator, ops.
    ReadDeadLetters,
    /// A dead letter's content, the bytes as received (patient identifiers in clear):
    /// coordinator.
    ReadDeadLetterContent,
    /// Pathway versions and graphs (no patient data): coordinator, care-team.
    ReadPathways,
    /// The audit trail: coordinator.
    ReadAudit,
    /// Erase a patient: coordinator.
    Erase,
    /// Publish a pathway version (it enrols the new patients of every tenant): a
    /// coordinator of every tenant ([`Permission::deployment_wide`]).
    PublishPathways,
    /// Move a tenant's running instances to another pathway version: coordinator.
    Migrate,
    /// The subject keys of patients the caller knows by an identifier
    /// (`POST /v1/subjects`): coordinator, care-team, integration — whoever must name a
    /// patient it knows to parcours.
    FindPatients,
}

impl Permission {
    /// Every permission, for tests.
    pub const ALL: [Permission; 15] = [
        Permission::Public,
        Permission::Ingest,
        Permission::Record,
        Permission::ReadInstances,
        Permission::ReadTasks,
        Permission::AnswerTasks,
        Permission::ReadFeeds,
        Permission::ReadDeadLetters,
        Permission::ReadDeadLetterContent,
        Permission::ReadPathways,
        Permission::ReadAudit,
        Permission::Erase,
        Permission::PublishPathways,
        Permission::Migrate,
        Permission::FindPatients,
    ];

    /// Whether a role grants it (tenants are checked apart).
    pub fn granted_by(self, role: &Role) -> bool {
        use Permission::*;
        matches!(
            (self, role),
            (Public, _)
                | (Ingest, Role::Integration)
                | (Record, Role::Integration | Role::Coordinator)
                | (
                    ReadInstances
                        | ReadFeeds
                        | ReadDeadLetterContent
                        | ReadAudit
                        | Erase
                        | PublishPathways
                        | Migrate,
                    Role::Coordinator
                )
                | (ReadDeadLetters, Role::Coordinator | Role::Ops)
                | (
                    ReadTasks | AnswerTasks | ReadPathways,
                    Role::Coordinator | Role::CareTeam(_)
                )
                | (
                    FindPatients,
                    Role::Coordinator | Role::CareTeam(_) | Role::Integration
                )
        )
    }

    /// Whether it acts on every tenant of the deployment at once, and so needs a
    /// principal of every tenant (`tenants: ["*"]`) besides the role: pathway
    /// definitions are shared by the tenants of a deployment.
    pub fn deployment_wide(self) -> bool {
        self == Permission::PublishPathways
    }

    /// Whether a principal holds it.
    pub fn allows(self, p: &Principal) -> bool {
        self == Permission::Public || p.roles.iter().any(|r| self.granted_by(r))
    }
}

/// The event types a coordinator may post (`/v1/events`) without the integration role:
/// what the care team knows and records — the patient's consent or opt-out (PRADO's
/// coordinator collects it), a referral to a pathway (an inclusion by the care team), a
/// transfer or death learnt by phone, per-patient
/// parameters, a visit or procedure done, a diagnosis made outside hospital (a GP's
/// referral), and answers. What hospitals and labs send (stays, results, identities)
/// stays with integrations.
pub const COORDINATOR_EVENTS: &[&str] = &[
    "consent.given",
    "consent.withdrawn",
    "patient.referred",
    "patient.transferred",
    "patient.deceased",
    "parameters.updated",
    "encounter.completed",
    "procedure.performed",
    "diagnosis.recorded",
    "task.completed",
    "task.not_needed",
    "task.could_not_be_done",
    "handoff.accepted",
    "handoff.declined",
    "alert.acknowledged",
];

/// What the route guard learnt, for the audit entry written after the handler.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    pub(crate) tenant: Option<String>,
    pub(crate) target: Option<String>,
}

/// The authenticated caller of a guarded route, for handlers: the principal and the
/// tenant checks of routes addressed by id.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The principal.
    pub principal: Arc<Principal>,
    pub(crate) scope: Arc<Mutex<Scope>>,
}

impl Caller {
    fn note_tenant(&self, tenant: &str) {
        if let Ok(mut s) = self.scope.lock() {
            s.tenant = Some(tenant.to_string());
        }
    }

    /// Note the audit target (an instance, a task, a subject key).
    pub fn target(&self, target: &str) {
        if let Ok(mut s) = self.scope.lock() {
            s.target = Some(target.to_string());
        }
    }

    /// Whether something of this tenant is the caller's; a handler answers "not
    /// found" when not, exactly as for something that does not exist.
    pub fn owns(&self, tenant: &str) -> bool {
        let ok = self.principal.has_tenant(tenant);
        if ok {
            self.note_tenant(tenant);
        }
        ok
    }

    /// Whether the caller may see or answer this work item: its tenant, and coordinator
    /// or care-team for the role it waits on or the role its escalation told.
    pub fn may_work_on(&self, item: &parcours_store::WorkItem) -> bool {
        self.owns(&item.tenant)
            && (self.principal.is(&Role::Coordinator)
                || self
                    .principal
                    .care_roles()
                    .any(|r| r == item.role || item.escalated_to.as_deref() == Some(r)))
    }

    /// The task role a worklist is limited to: a coordinator sees every role (or the one
    /// asked for); a care-team member only theirs (the one asked for must be theirs;
    /// none asked and one held: that one).
    pub fn work_role(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        if self.principal.is(&Role::Coordinator) {
            return Ok(asked.filter(|r| !r.is_empty()));
        }
        let mine: Vec<&str> = self.principal.care_roles().collect();
        match asked.filter(|r| !r.is_empty()) {
            Some(r) if mine.contains(&r.as_str()) => Ok(Some(r)),
            Some(r) => Err(ApiError::forbidden(format!(
                "your roles do not include care-team:{r}"
            ))),
            None if mine.len() == 1 => Ok(Some(mine[0].to_string())),
            None => Err(ApiError::bad_request(
                "missing_role",
                "give `?role=<task role>`: one of your care-team roles",
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a handler asked for a caller on an unguarded route"))
    }
}

/// How callers authenticate: the `--auth` file.
///
/// ```yaml
/// api_keys:
///   - id: chu-nord-2026-12          # names the key in the audit trail; rotate by adding one
///     principal: chu-nord
///     sha256: 3f1c…                 # hex SHA-256 of the key (`parcours auth-key` prints both)
///     tenants: [cpts-demo]
///     roles: [integration]
///     revoked: false                # true (or removing the entry) revokes it
/// issuers:
///   - issuer: https://idp.example/realms/cpts
///     audiences: [parcours]
///     jwks_file: /etc/parcours/idp-jwks.json   # or keys: [{kid, alg, pem_file}]
///     algorithms: [RS256, ES256]
///     tenants_claim: parcours_tenants
///     roles_claim: parcours_roles
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static API keys for systems.
    #[serde(default)]
    pub api_keys: Vec<keys::ApiKeyConfig>,
    /// Token issuers.
    #[serde(default)]
    pub issuers: Vec<jwt::IssuerConfig>,
}

impl AuthConfig {
    /// Read the YAML file.
    pub fn from_file(path: &std::path::Path) -> Result<AuthConfig, AuthError> {
        let bytes = std::fs::read(path)
            .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
        AuthConfig::from_bytes(&bytes, path)
    }

    /// The YAML of the file at `path`, already read (relative key files are relative to
    /// `path`).
    pub fn from_bytes(bytes: &[u8], path: &std::path::Path) -> Result<AuthConfig, AuthError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| AuthError::Config(format!("{}: not UTF-8: {e}", path.display())))?;
        let config: AuthConfig = serde_saphyr::from_str(text)
            .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
        // Relative key files are relative to the configuration file.
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        Ok(config.relative_to(base))
    }

    /// The files it names (issuers' saved JWKS, PEM keys, CAs), as resolved: what a
    /// change of, besides the file itself, calls for reading it again.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.issuers.iter().flat_map(|i| i.files()).collect()
    }

    /// The embedded mode's one key (`parcours serve` on a SQLite log generates it next to
    /// the log): every tenant of that log, coordinator, integration and ops.
    pub fn local(key: &keys::Secret) -> AuthConfig {
        AuthConfig {
            api_keys: vec![keys::ApiKeyConfig {
                id: "local".into(),
                principal: "local".into(),
                sha256: keys::sha256_hex(key.expose()),
                tenants: vec!["*".into()],
                roles: vec!["coordinator".into(), "integration".into(), "ops".into()],
                revoked: false,
            }],
            issuers: Vec::new(),
        }
    }

    fn relative_to(mut self, base: &std::path::Path) -> AuthConfig {
        for i in &mut self.issuers {
            i.resolve_paths(base);
        }
        self
    }
}

/// Why authentication could not be set up, or a caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The configuration is wrong.
    #[error("auth configuration: {0}")]
    Config(String),
    /// The credentials are missing or wrong (the message says which check failed; it
    /// never repeats the credential).
    #[error("{0}")]
    Refused(String),
}

/// Checks credentials.
#[derive(Debug)]
pub struct Authenticator {
    keys: keys::ApiKeys,
    issuers: Vec<jwt::Issuer>,
}

impl Authenticator {
    /// From the configuration; at least one key or issuer (there are no default
    /// credentials).
    pub fn new(config: AuthConfig) -> Result<Authenticator, AuthError> {
        let keys = keys::ApiKeys::new(config.api_keys)?;
        let issuers = config
            .issuers
            .into_iter()
            .map(jwt::Issuer::new)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() && issuers.is_empty() {
            return Err(AuthError::Config(
                "no API key and no token issuer: nobody could call the API".into(),
            ));
        }
        Ok(Authenticator { keys, issuers })
    }

    /// The principal of a request's credentials: `Authorization: Bearer <JWT or API
    /// key>` or `X-API-Key: <key>`.
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Principal, AuthError> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| {
                let v = v
                    .to_str()
                    .map_err(|_| refused("malformed Authorization header"))?;
                let (scheme, token) = v
                    .split_once(' ')
                    .ok_or_else(|| refused("malformed Authorization header"))?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(refused("use `Authorization: Bearer <token or API key>`"));
                }
                Ok(token.trim())
            })
            .transpose()?;
        let api_key = headers
            .get("x-api-key")
            .map(|v| {
                v.to_str()
                    .map_err(|_| refused("malformed X-API-Key header"))
            })
            .transpose()?;
        match (bearer, api_key) {
            (Some(_), Some(_)) => Err(refused("give one credential, not two")),
            (None, None) => Err(refused("credentials required")),
            (None, Some(k)) => self.keys.check(k),
            (Some(t), None) if t.split('.').count() == 3 => self.check_jwt(t).await,
            (Some(k), None) => self.keys.check(k),
        }
    }

    async fn check_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let iss = jwt::unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.name() == iss)
            .ok_or_else(|| refused("token from an unknown issuer"))?;
        issuer.verify(token).await
    }

    /// What it holds, for a log line: "2 API keys, 1 token issuer".
    pub fn summary(&self) -> String {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}",
            plural(self.keys.len(), "API key"),
            plural(self.issuers.len(), "token issuer")
        )
    }

    fn remotes(&self) -> impl Iterator<Item = &Arc<jwks::RemoteKeys>> {
        self.issuers.iter().filter_map(jwt::Issuer::remote)
    }

    /// Fetch the keys of the issuers with a `jwks_uri` that are due (never fetched, or
    /// their refresh interval or retry delay passed), all at once: a provider that does
    /// not answer (up to the fetch's 10 s) delays no other's. Returns how many issuers'
    /// last fetch failed.
    pub async fn refresh_keys(&self) -> usize {
        futures::future::join_all(self.remotes().map(|r| r.refresh_if_due())).await;
        self.remotes().filter(|r| r.failing()).count()
    }

    /// Keep the keys another configuration fetched from the same addresses until this
    /// one's own fetches succeed (an `--auth` file read again).
    fn adopt_keys(&self, old: &Authenticator) {
        for new in self.remotes() {
            if let Some(o) = old.remotes().find(|o| o.uri() == new.uri()) {
                new.adopt(o);
            }
        }
    }
}

/// The authenticator in force, shared by the routes; replaced when the `--auth` file
/// changes, without a restart.
#[derive(Clone, Debug)]
pub struct SharedAuthenticator(parcours_runtime::Shared<Authenticator>);

impl SharedAuthenticator {
    /// Share one.
    pub fn new(authenticator: Authenticator) -> SharedAuthenticator {
        SharedAuthenticator(parcours_runtime::Shared::new(authenticator))
    }

    /// The one in force.
    pub fn current(&self) -> Arc<Authenticator> {
        self.0.current()
    }

    /// Put another in force (requests under way finish with the one they started with).
    /// Its issuers keep the keys the previous one fetched from the same `jwks_uri` until
    /// their own first fetch.
    pub fn replace(&self, authenticator: Authenticator) {
        authenticator.adopt_keys(&self.current());
        self.0.replace(authenticator);
    }

    /// See [`Authenticator::authenticate`].
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Principal, AuthError> {
        self.current().authenticate(headers).await
    }

    /// Keep the issuers' fetched keys current, forever: each second, the fetches that
    /// are due (see [`jwks`]); `parcours_auth_jwks_failing` says how many issuers' last
    /// fetch failed. The caller ends it by dropping the future.
    pub async fn keep_keys_fresh(&self) {
        let failing = &parcours_runtime::metrics::metrics().auth_jwks_failing;
        loop {
            let n = self.current().refresh_keys().await;
            failing.set(i64::try_from(n).unwrap_or(i64::MAX));
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

fn refused(m: &str) -> AuthError {
    AuthError::Refused(m.to_string())
}
