//! Token issuers' keys fetched from their `jwks_uri`: a real HTTPS server (the test CA
//! of the MLLP TLS tests, trusted through `jwks_ca_file`) serves a key set the test
//! changes as an identity provider would rotate its keys, or stops answering.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parcours_http::auth::jwt::IssuerConfig;
use parcours_http::auth::{AuthConfig, AuthError, Authenticator};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

const ISSUER: &str = "https://idp.test/realms/cpts";
const AUDIENCE: &str = "parcours";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn tls_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../adapters/hl7v2/tests/data/tls")
        .join(name)
}

/// The private key files of the test keys, by key id (any other id signs with the key
/// of k2).
fn key_file(kid: &str) -> &'static str {
    match kid {
        "k1" => "test-rsa.key",
        _ => "other-rsa.key",
    }
}

fn encoding_key(kid: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(data(key_file(kid))).expect("key")).expect("rsa")
}

/// A JWKS holding the public halves of `kids`.
fn jwks(kids: &[&str]) -> Value {
    let keys: Vec<_> = kids
        .iter()
        .map(|kid| {
            let mut jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding_key(kid), Algorithm::RS256)
                    .expect("jwk");
            jwk.common.key_id = Some((*kid).into());
            jwk
        })
        .collect();
    json!({ "keys": keys })
}

fn token(kid: &str) -> String {
    #[allow(clippy::disallowed_methods)]
    let now = jiff::Timestamp::now().as_second();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "rpps-810000000001",
        "exp": now + 300, "iat": now,
        "parcours_tenants": ["cpts-a"], "parcours_roles": ["coordinator"],
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &encoding_key(kid)).expect("sign")
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    h
}

/// The identity provider's key endpoint.
#[derive(Default)]
struct Provider {
    set: Mutex<Value>,
    down: AtomicBool,
    hits: AtomicUsize,
}

impl Provider {
    fn serve(&self, kids: &[&str]) {
        *self.set.lock().expect("set") = jwks(kids);
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn keys(State(p): State<Arc<Provider>>) -> Response {
    p.hits.fetch_add(1, Ordering::SeqCst);
    if p.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(p.set.lock().expect("set").clone()).into_response()
}

/// HTTPS with the test server certificate (SAN 127.0.0.1).
struct Tls {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

async fn provider() -> (Arc<Provider>, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(tls_data("server.pem"))
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(tls_data("server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let p = Arc::new(Provider::default());
    let app = Router::new()
        .route("/realms/cpts/certs", get(keys))
        .with_state(p.clone());
    let listener = Tls {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (
        p,
        format!("https://127.0.0.1:{}/realms/cpts/certs", addr.port()),
    )
}

fn issuer(uri: &str) -> IssuerConfig {
    IssuerConfig {
        jwks_uri: Some(uri.into()),
        jwks_ca_file: Some(tls_data("ca.pem")),
        jwks_min_refetch_secs: 1,
        algorithms: vec!["RS256".into()],
        ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
    }
}

fn authenticator(issuer: IssuerConfig) -> Result<Authenticator, AuthError> {
    Authenticator::new(AuthConfig {
        api_keys: Vec::new(),
        issuers: vec![issuer],
    })
}

async fn check(auth: &Authenticator, kid: &str) -> Result<String, String> {
    auth.authenticate(&bearer(&token(kid)))
        .await
        .map(|p| p.id)
        .map_err(|e| e.to_string())
}

/// Call until `kid`'s token is accepted, or fail after 15 s.
async fn accepted_within(auth: &Authenticator, kid: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match check(auth, kid).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("{kid}'s token still refused after 15 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Present `kid`'s token (a key the issuer's set does not hold) until, the refetch pause
/// over, it makes the set fetched once — or fail after 15 s. Refused every time: the
/// provider is down, or serves no usable key.
async fn refused_with_one_fetch(auth: &Authenticator, p: &Provider, kid: &str) {
    let before = p.hits();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let e = check(auth, kid).await.expect_err("refused");
        assert!(e.contains("no key of the issuer"), "{e}");
        if p.hits() > before {
            assert_eq!(p.hits(), before + 1, "one fetch for the unknown key");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fetch for {kid}'s unknown key in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuers_key_rotation_is_followed_without_a_restart() {
    let (p, uri) = provider().await;
    p.serve(&["k1"]);
    let auth = authenticator(issuer(&uri)).expect("issuer");
    assert_eq!(p.hits(), 0, "nothing is fetched before it is needed");

    // A first token: its key is fetched then.
    let id = check(&auth, "k1").await.expect("k1 accepted");
    assert_eq!(id, format!("jwt:{ISSUER}#rpps-810000000001"));
    assert_eq!(p.hits(), 1);
    // Known keys cost no fetch.
    for _ in 0..20 {
        check(&auth, "k1").await.expect("k1 accepted");
    }
    assert_eq!(p.hits(), 1, "a known key makes no fetch");

    // The provider rotates: it now signs with k2 only.
    p.serve(&["k2"]);
    let before = p.hits();
    let started = tokio::time::Instant::now();
    accepted_within(&auth, "k2").await;
    let fetches = p.hits() - before;
    let allowed = 2 + started.elapsed().as_secs() as usize;
    assert!(
        (1..=allowed).contains(&fetches),
        "{fetches} fetches for the rotation, at most one a second allowed ({allowed})"
    );
    // The old key is gone from the set, so from the keys in force.
    let e = check(&auth, "k1")
        .await
        .expect_err("k1 refused after the rotation");
    assert!(e.contains("no key of the issuer"), "{e}");

    // Made-up key ids do not hammer the provider: at most one fetch a second.
    let forged: Vec<String> = (0..10).map(|i| token(&format!("forged-{i}"))).collect();
    let before = p.hits();
    let started = tokio::time::Instant::now();
    for t in &forged {
        let e = auth.authenticate(&bearer(t)).await.expect_err("refused");
        assert!(e.to_string().contains("no key of the issuer"), "{e}");
    }
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!(
        p.hits() - before <= allowed,
        "{} fetches for 10 unknown keys in {:?}",
        p.hits() - before,
        started.elapsed()
    );

    // The provider fails: the keys in force stay, the failure is reported.
    p.down.store(true, Ordering::SeqCst);
    refused_with_one_fetch(&auth, &p, "k3").await;
    check(&auth, "k2")
        .await
        .expect("k2 still accepted while the provider fails");
    assert_eq!(
        auth.refresh_keys().await,
        1,
        "the issuer's last fetch failed"
    );
    let failed = parcours_runtime::metrics::metrics()
        .auth_jwks_fetches
        .with_label_values(&["failed"])
        .get();
    assert!(failed >= 1, "the failed fetch is counted");

    // Back: a set without a usable key is refused as well, the keys kept.
    p.down.store(false, Ordering::SeqCst);
    *p.set.lock().expect("set") = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
    refused_with_one_fetch(&auth, &p, "k1").await;
    check(&auth, "k2")
        .await
        .expect("k2 kept when the set holds no usable key");
    p.serve(&["k1", "k2"]);
    accepted_within(&auth, "k1").await;
    assert_eq!(
        auth.refresh_keys().await,
        0,
        "the issuer's last fetch succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_uri_is_checked_when_the_configuration_is_read() {
    let refused = |c: IssuerConfig| authenticator(c).expect_err("refused").to_string();
    let e = refused(IssuerConfig {
        jwks_uri: Some("http://idp.example/certs".into()),
        ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
    });
    assert!(e.contains("use https"), "{e}");
    let e = refused(IssuerConfig {
        jwks_uri: Some("not a url".into()),
        ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
    });
    assert!(e.contains("jwks_uri `not a url`"), "{e}");
    let e = refused(IssuerConfig {
        jwks_uri: Some("https://idp.example/certs".into()),
        jwks_refresh_secs: 1,
        ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
    });
    assert!(e.contains("jwks_refresh_secs: at least 10"), "{e}");
    let e = refused(IssuerConfig {
        jwks_uri: Some("https://idp.example/certs".into()),
        jwks_ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
        ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
    });
    assert!(e.contains("jwks_ca_file /nonexistent/ca.pem"), "{e}");
    let e = refused(IssuerConfig {
        jwks_ca_file: Some(tls_data("ca.pem")),
        keys: Vec::new(),
        ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
    });
    assert!(e.contains("jwks_ca_file without jwks_uri"), "{e}");
    // Plain HTTP to a loopback address (a local sidecar) is allowed.
    authenticator(IssuerConfig {
        jwks_uri: Some("http://127.0.0.1:9/certs".into()),
        ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
    })
    .expect("loopback http");
    // The same YAML an operator writes.
    let yaml = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_uri: https://127.0.0.1:1/certs\n    jwks_refresh_secs: 600\n"
    );
    let config = AuthConfig::from_bytes(yaml.as_bytes(), Path::new("auth.yaml")).expect("yaml");
    assert_eq!(config.issuers[0].jwks_refresh_secs, 600);
    assert_eq!(config.issuers[0].jwks_min_refetch_secs, 30);
    Authenticator::new(config).expect("valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_provider_certificate_is_refused() {
    let (p, uri) = provider().await;
    p.serve(&["k1"]);
    // Without the test CA: the system's anchors do not know it.
    let auth = authenticator(IssuerConfig {
        jwks_ca_file: None,
        ..issuer(&uri)
    })
    .expect("issuer");
    let e = check(&auth, "k1").await.expect_err("refused");
    assert!(e.contains("no key of the issuer"), "{e}");
    assert_eq!(p.hits(), 0, "the TLS handshake failed before any request");
    assert_eq!(auth.refresh_keys().await, 1);
}

/// Some providers publish their keys without `alg` (Microsoft Entra ID does): such a key
/// serves each of the issuer's algorithms its type fits. A key for encryption is not a
/// signing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_without_alg_serve_the_issuers_algorithms_of_their_type() {
    let (p, uri) = provider().await;
    let mut set = jwks(&["k1", "k2"]);
    for key in set["keys"].as_array_mut().expect("keys") {
        key.as_object_mut().expect("key").remove("alg");
    }
    set["keys"][0]["use"] = json!("sig");
    set["keys"][1]["use"] = json!("enc");
    *p.set.lock().expect("set") = set;
    let auth = authenticator(IssuerConfig {
        algorithms: vec!["RS256".into(), "ES256".into()],
        ..issuer(&uri)
    })
    .expect("issuer");
    check(&auth, "k1")
        .await
        .expect("an RSA key without alg verifies RS256");
    let e = check(&auth, "k2")
        .await
        .expect_err("an encryption key verifies nothing");
    assert!(e.contains("no key of the issuer"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_does_not_answer_delays_no_other_issuers_keys() {
    // The first issuer's endpoint takes connections and never answers (the fetch gives
    // up after 10 s); the second's serves its keys.
    let stuck = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stuck_uri = format!("http://{}/certs", stuck.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((c, _)) = stuck.accept().await {
            open.push(c);
        }
    });
    let (p, uri) = provider().await;
    p.serve(&["k1"]);
    let auth = Arc::new(
        Authenticator::new(AuthConfig {
            api_keys: Vec::new(),
            issuers: vec![
                IssuerConfig {
                    jwks_uri: Some(stuck_uri),
                    algorithms: vec!["RS256".into()],
                    ..IssuerConfig::new("https://stuck.test", vec![AUDIENCE.into()])
                },
                issuer(&uri),
            ],
        })
        .expect("issuers"),
    );
    let refreshing = tokio::spawn({
        let auth = auth.clone();
        async move { auth.refresh_keys().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while p.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second issuer's keys not fetched in 5 s: waiting behind the first's"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check(&auth, "k1").await.expect("k1 accepted");
    assert_eq!(p.hits(), 1, "accepted with the keys the refresh fetched");
    refreshing.abort();
    held.abort();
}
