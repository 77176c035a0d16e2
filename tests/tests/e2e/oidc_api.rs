//! The API with the identity provider's access tokens (issue #14), against a real OpenID
//! provider on loopback (`tests/oidc/`, HTTPS with a test CA the gateway trusts via
//! `ca_file`): the same attacks as with the gateway's own tokens, now with the provider's.
//!
//! - Same answers: a table of requests (own data, another person's, erasure, pairing, consents,
//!   the disclosure log) sent with a gateway token and with a provider token of the same
//!   caller and scope gets the same status from each (and the statuses a caller of that kind
//!   must get, so two equally wrong answers do not pass).
//! - Consent still decides: a clinician's and a company's provider tokens read a person only
//!   while that person consents to them, and each read is in that person's disclosure log.
//! - Refused with 401, data untouched: a token of an issuer the gateway does not trust; an ID
//!   token presented as an access token; a token for no audience or another; a tampered
//!   payload; `alg: none`; HS256 keyed with the provider's public key; a token signed by the
//!   attacker's key that names its own key in the header (`jwk`, `jku`: never fetched); an
//!   expired token.
//! - Unknown `kid`s do not make the gateway hammer the provider: a burst of them costs at most
//!   one JWKS refetch per cooldown.
//!
//! Needs `node` and `tests/oidc/node_modules` (`.ci/run` installs them and runs ignored tests).

use std::net::TcpListener;

use chrono::{TimeDelta, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phr_e2e::oidc::{
    trusting, OidcConfig, OidcProvider, API_CLIENT, CLINICIAN_SUB, OWNER_PERSON, OWNER_SUB,
    WEB_CLIENT,
};
use phr_e2e::{b64url, call, grant_consent, minute_steps, send, TestGateway};
use phr_gateway::api::me::ERASE_CONFIRMATION;
use phr_gateway::store::Clock;
use serde_json::{json, Value};

const BRIDGE: &str = "br-ana";
const BAND: &str = "band-ana";
/// Another person with data, whom nobody here may read.
const BOB: &str = "bob";

struct Setup {
    provider: OidcProvider,
    gw: TestGateway,
}

/// A gateway trusting `provider` (roles mapped from the `roles` claim unless `tune` says
/// otherwise), Ana and Bob with three minutes of steps each.
async fn setup_with(
    config: OidcConfig,
    tune: impl FnOnce(&mut phr_gateway::config::ProviderConfig),
) -> anyhow::Result<Setup> {
    let provider = OidcProvider::start(config)?;
    let mut trust = trusting(&provider);
    tune(&mut trust);
    let http = TcpListener::bind("127.0.0.1:0")?;
    let gw = TestGateway::start_on(http, None, |c| c.auth.providers.push(trust)).await?;
    let now = Utc::now();
    for (person, bridge, band) in [(OWNER_PERSON, BRIDGE, BAND), (BOB, "br-bob", "band-bob")] {
        gw.enrol(person, bridge, &[band.to_owned()], now - TimeDelta::days(1))?;
        let mut raw = gw.raw_bridge(bridge).await?;
        let steps = (1..=3)
            .map(|h| minute_steps(band, bridge, now - TimeDelta::hours(h), 40 + h))
            .collect();
        assert_eq!(send(&mut raw, band, steps).await?.stored, 3);
    }
    Ok(Setup { provider, gw })
}

async fn setup() -> anyhow::Result<Setup> {
    setup_with(OidcConfig::phr("http://127.0.0.1:9/cb"), |_| {}).await
}

impl Setup {
    fn gateway_token(&self, subject: &str, scope: &str) -> String {
        self.gw
            .gateway
            .keys
            .issue(subject, scope, TimeDelta::hours(1), self.gw.clock.now())
            .expect("token")
    }

    fn status(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> u16 {
        call(method, &self.gw.url(path), Some(token), body)
            .map(|(s, _)| s)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    fn steps_of(&self, person: &str) -> usize {
        phr_e2e::step_counts(&self.gw, person).expect("steps").len()
    }

    fn disclosures(&self, person: &str) -> Vec<Value> {
        let (_, log) = call(
            "GET",
            &self.gw.url("/api/v1/me/disclosures"),
            Some(&self.gw.owner_token(person)),
            None,
        )
        .expect("disclosures");
        log["disclosures"].as_array().cloned().unwrap_or_default()
    }
}

/// One request of the table and the status a caller must get.
struct Case {
    method: &'static str,
    path: String,
    body: Option<Value>,
    expect: u16,
}

fn case(method: &'static str, path: &str, body: Option<Value>, expect: u16) -> Case {
    Case {
        method,
        path: path.to_owned(),
        body,
        expect,
    }
}

/// Sends every case with both tokens; both must get the expected status.
fn same_answers(s: &Setup, who: &str, gateway: &str, provider: &str, cases: &[Case]) {
    for c in cases {
        let by_gateway = s.status(c.method, &c.path, gateway, c.body.clone());
        let by_provider = s.status(c.method, &c.path, provider, c.body.clone());
        assert_eq!(
            (by_gateway, by_provider),
            (c.expect, c.expect),
            "{who}: {} {} (gateway token, provider token)",
            c.method,
            c.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn provider_tokens_get_the_same_answers_as_the_gateways_own() -> anyhow::Result<()> {
    let s = setup().await?;
    let erase = format!("/api/v1/me/data?confirm={ERASE_CONFIRMATION}");
    let pair = json!({"bridge_id": BRIDGE, "device_id": "band-new"});

    // Ana reading: her own data and log, nobody else's; no erasing, pairing or consenting.
    let read = "patient/*.rs";
    same_answers(
        &s,
        "owner, patient/*.rs",
        &s.gateway_token(OWNER_PERSON, read),
        &s.provider.api_token(OWNER_SUB, read)?,
        &[
            case("GET", "/api/v1/me/records?type=step-count", None, 200),
            case("GET", "/api/v1/me/consents", None, 200),
            case("GET", "/api/v1/me/disclosures", None, 200),
            case("GET", "/api/v1/me/devices", None, 200),
            case(
                "GET",
                "/api/v1/subjects/bob/records?type=step-count",
                None,
                403,
            ),
            case("GET", "/api/v1/subjects", None, 403),
            case("DELETE", &erase, None, 403),
            case(
                "POST",
                "/api/v1/me/devices/pairings",
                Some(pair.clone()),
                403,
            ),
            case(
                "POST",
                "/api/v1/me/consents",
                Some(
                    json!({"grantee": "acme", "grantee_kind": "client", "purpose": "x",
                            "data_types": ["step-count"]}),
                ),
                403,
            ),
            case("GET", "/api/v1/admin/clients", None, 403),
        ],
    );
    assert_eq!(s.steps_of(OWNER_PERSON), 3, "nothing erased");

    // The token reads her own records, not Bob's: the person comes from the token's claim.
    let (_, mine) = call(
        "GET",
        &s.gw.url("/api/v1/me/records?type=step-count"),
        Some(&s.provider.api_token(OWNER_SUB, read)?),
        None,
    )?;
    let records = mine["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 3, "{mine}");
    assert!(records.iter().all(|r| r["device_id"] == BAND), "{mine}");

    // The clinician without Ana's consent: her records are not his to read, with either token.
    let user = "user/*.rs";
    same_answers(
        &s,
        "clinician, no consent",
        &s.gateway_token(CLINICIAN_SUB, user),
        &s.provider.api_token(CLINICIAN_SUB, user)?,
        &[
            case(
                "GET",
                "/api/v1/subjects/ana/records?type=step-count",
                None,
                404,
            ),
            case(
                "GET",
                "/api/v1/subjects/bob/records?type=step-count",
                None,
                404,
            ),
            case("GET", "/api/v1/me/records?type=step-count", None, 403),
            case("DELETE", &erase, None, 403),
        ],
    );

    // Ana with full rights at the provider erases nothing of Bob's and pairs with her bridge.
    let full = s.provider.api_token(OWNER_SUB, "patient/*.cruds")?;
    assert_eq!(
        s.status("POST", "/api/v1/me/devices/pairings", &full, Some(pair)),
        201
    );
    assert_eq!(s.status("DELETE", &erase, &full, None), 200);
    assert_eq!(s.steps_of(OWNER_PERSON), 0, "Ana's data erased");
    assert_eq!(s.steps_of(BOB), 3, "Bob's untouched");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn a_clinicians_provider_token_reads_only_while_consented_and_is_logged() -> anyhow::Result<()>
{
    let s = setup().await?;
    let token = s.provider.api_token(CLINICIAN_SUB, "user/*.rs")?;
    let ana = "/api/v1/subjects/ana/records?type=step-count";
    assert_eq!(s.status("GET", ana, &token, None), 404, "no consent yet");

    let consent = grant_consent(
        &s.gw,
        OWNER_PERSON,
        json!({"grantee": CLINICIAN_SUB, "grantee_kind": "practitioner", "purpose": "care",
               "data_types": ["step-count"]}),
    )?;
    let (status, body) = call("GET", &s.gw.url(ana), Some(&token), None)?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(
        s.status(
            "GET",
            "/api/v1/subjects/bob/records?type=step-count",
            &token,
            None
        ),
        404,
        "Bob did not consent"
    );
    assert!(
        s.disclosures(OWNER_PERSON)
            .iter()
            .any(|e| e["actor"] == CLINICIAN_SUB),
        "the read is in Ana's log: {:?}",
        s.disclosures(OWNER_PERSON)
    );

    // Withdrawn: the same token reads nothing more.
    let withdraw = s.gw.url(&format!("/api/v1/me/consents/{consent}"));
    let (status, body) = call(
        "DELETE",
        &withdraw,
        Some(&s.gw.owner_token(OWNER_PERSON)),
        None,
    )?;
    assert!(status < 300, "withdrawn: {status} {body}");
    assert_eq!(s.status("GET", ana, &token, None), 404, "after withdrawal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn a_companys_client_credentials_token_reads_only_consented_people() -> anyhow::Result<()> {
    // No role mapping: a company is a client-credentials token (sub = client_id).
    let s = setup_with(OidcConfig::phr("http://127.0.0.1:9/cb"), |p| {
        p.claims.roles = None;
    })
    .await?;
    let token = s.provider.service_token("system/*.rs")?;
    let ana = "/api/v1/subjects/ana/records?type=step-count";
    assert_eq!(s.status("GET", ana, &token, None), 404, "no consent yet");
    grant_consent(
        &s.gw,
        OWNER_PERSON,
        json!({"grantee": API_CLIENT, "grantee_kind": "client", "purpose": "research",
               "data_types": ["step-count"]}),
    )?;
    assert_eq!(s.status("GET", ana, &token, None), 200);
    assert_eq!(
        s.status(
            "GET",
            "/api/v1/subjects/bob/records?type=step-count",
            &token,
            None
        ),
        404
    );
    assert!(s
        .disclosures(OWNER_PERSON)
        .iter()
        .any(|e| e["actor"] == API_CLIENT));

    // A person's token at the same client is not the company's: its `sub` is the person.
    let person_as_company = s.provider.api_token(OWNER_SUB, "system/*.rs")?;
    assert_eq!(s.status("GET", ana, &person_as_company, None), 401);
    Ok(())
}

/// The parts of a JWT: header and payload as JSON, the signature as text.
fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let json = |p: Option<&str>| -> Value {
        let bytes = base64_url_decode(p.expect("JWT part"));
        serde_json::from_slice(&bytes).expect("JSON")
    };
    let header = json(it.next());
    let payload = json(it.next());
    (header, payload, it.next().unwrap_or_default().to_owned())
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .expect("base64url")
}

fn encode_json(v: &Value) -> String {
    b64url(&serde_json::to_vec(v).expect("JSON"))
}

/// A fresh Ed25519 key and its public JWK (an attacker's own key).
fn attacker_key(kid: &str) -> (EncodingKey, Value) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = signing.to_pkcs8_der().expect("pkcs8");
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                     "x": b64url(signing.verifying_key().as_bytes())});
    (EncodingKey::from_ed_der(der.as_bytes()), jwk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn forged_foreign_and_expired_provider_tokens_are_refused() -> anyhow::Result<()> {
    let s = setup_with(
        OidcConfig::phr("http://127.0.0.1:9/cb").with_ttl("AccessToken", 2),
        |_| {},
    )
    .await?;
    let me = "/api/v1/me/records?type=step-count";
    let erase = format!("/api/v1/me/data?confirm={ERASE_CONFIRMATION}");
    let good = s.provider.api_token(OWNER_SUB, "patient/*.cruds")?;
    assert_eq!(s.status("GET", me, &good, None), 200, "the baseline");
    let (header, payload, signature) = parts(&good);
    let kid = header["kid"].as_str().unwrap_or_default().to_owned();

    let mut refused: Vec<(&str, String)> = Vec::new();

    // Another issuer (a real provider the gateway does not trust), same client names.
    let other = OidcProvider::start(OidcConfig::phr("http://127.0.0.1:9/cb"))?;
    refused.push((
        "another issuer",
        other.api_token(OWNER_SUB, "patient/*.cruds")?,
    ));

    // The web client's ID token, presented as an access token.
    let web = s.provider.client(WEB_CLIENT).expect("web client").clone();
    let (_, tokens) = s.provider.sign_in(&web, OWNER_SUB)?;
    refused.push(("an ID token", tokens.id_token.expect("ID token")));
    // An access token without the API resource (opaque, for userinfo) and the API client's
    // ID token.
    refused.push(("an opaque access token", tokens.access_token.clone()));

    // Ana's token with Bob's name in it, her signature kept.
    let mut bobs = payload.clone();
    bobs["phr_person"] = json!(BOB);
    refused.push((
        "a tampered payload",
        format!(
            "{}.{}.{signature}",
            encode_json(&header),
            encode_json(&bobs)
        ),
    ));

    // alg none, unsigned.
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    refused.push((
        "alg none",
        format!("{}.{}.", encode_json(&none), encode_json(&payload)),
    ));

    // HS256 keyed with the provider's public key (algorithm confusion).
    let jwks = s.provider.jwks()?;
    let public = serde_json::to_vec(&jwks)?;
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    hs.typ = Some("at+jwt".into());
    refused.push((
        "HS256 with the public key",
        jsonwebtoken::encode(&hs, &payload, &EncodingKey::from_secret(&public))?,
    ));

    // The attacker's own key, named in the header: by value (jwk) and by URL (jku, x5u) on
    // a listener that records whether anyone came.
    let trap = TcpListener::bind("127.0.0.1:0")?;
    trap.set_nonblocking(true)?;
    let trap_url = format!("https://{}/jwks", trap.local_addr()?);
    let (key, jwk) = attacker_key(&kid);
    let mut own = Header::new(Algorithm::EdDSA);
    own.kid = Some(kid.clone());
    own.typ = Some("at+jwt".into());
    own.jwk = Some(serde_json::from_value(jwk)?);
    own.jku = Some(trap_url.clone());
    own.x5u = Some(trap_url);
    refused.push((
        "the attacker's key in the header",
        jsonwebtoken::encode(&own, &payload, &key)?,
    ));
    // The same with an unknown kid, so the gateway does refetch its own JWKS, still never
    // the header's URL.
    own.kid = Some("attacker-kid".into());
    refused.push((
        "the attacker's key and kid",
        jsonwebtoken::encode(&own, &payload, &key)?,
    ));

    for (what, token) in &refused {
        for (method, path) in [("GET", me), ("DELETE", erase.as_str())] {
            let (status, body) = call(method, &s.gw.url(path), Some(token), None)?;
            assert_eq!(status, 401, "{what}: {method} {path}: {body}");
        }
    }
    assert!(
        trap.accept().is_err(),
        "the gateway fetched a key from a URL in a token's header"
    );

    // Expired (2 s lifetime, 30 s leeway): the gateway's clock moves past both.
    s.gw.clock.advance(TimeDelta::seconds(34));
    assert_eq!(s.status("GET", me, &good, None), 401, "expired");
    assert_eq!(s.steps_of(OWNER_PERSON), 3, "nothing erased by any of them");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn a_burst_of_unknown_kids_costs_the_provider_at_most_one_jwks_fetch() -> anyhow::Result<()> {
    let s = setup().await?;
    let good = s.provider.api_token(OWNER_SUB, "patient/*.rs")?;
    let me = "/api/v1/me/records?type=step-count";
    assert_eq!(s.status("GET", me, &good, None), 200, "the baseline");
    let before = s.provider.requests_for("/jwks");
    assert!(before >= 1, "the gateway read the JWKS once");

    let (_, payload, _) = parts(&good);
    let (key, _) = attacker_key("x");
    for i in 0..25 {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(format!("unknown-{i}"));
        h.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&h, &payload, &key)?;
        assert_eq!(s.status("GET", me, &token, None), 401, "kid {i}");
    }
    let after = s.provider.requests_for("/jwks");
    assert!(
        after - before <= 1,
        "25 unknown kids made {} JWKS fetches",
        after - before
    );
    // The real token still works from the cache.
    assert_eq!(s.status("GET", me, &good, None), 200);
    assert_eq!(s.provider.requests_for("/jwks"), after);
    Ok(())
}
