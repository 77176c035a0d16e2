//! OAuth client credentials against a real gateway: PHR companies get tokens at
//! `POST /oauth/token` with a signed client assertion (Ed25519, P-384) or a secret (HTTP
//! Basic, or in the body), the tokens authenticate on the API, and every bad request is
//! refused with the RFC 6749 error, the same stable `code`, and no token.

use anyhow::Context as _;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use phr_e2e::{b64url, call, form_encode, get_json, std_b64, TestGateway};
use phr_gateway::store::clients::NewClient;
use phr_gateway::store::Clock;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const STEPS_SCOPE: &str = "system/Observation.rs?code=http://loinc.org|55423-8";

/// A company's signing key and the public JWK it registers.
struct CompanyKey {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
    jwk: Value,
}

impl CompanyKey {
    fn ed25519(kid: &str) -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = sk.to_pkcs8_der().unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                         "x": b64url(&sk.verifying_key().to_bytes())});
        Self {
            key: EncodingKey::from_ed_der(der.as_bytes()),
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            jwk,
        }
    }

    fn p384(kid: &str) -> Self {
        use p384::pkcs8::EncodePrivateKey;
        let sk = p384::SecretKey::random(&mut rand::rngs::OsRng);
        let key = EncodingKey::from_ec_der(sk.to_pkcs8_der().unwrap().as_bytes());
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES384).unwrap(),
        )
        .unwrap();
        jwk["kid"] = kid.into();
        Self {
            key,
            alg: Algorithm::ES384,
            kid: kid.into(),
            jwk,
        }
    }

    fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// A client assertion as SMART Backend Services describes it, `exp` `exp_in` seconds
    /// from now.
    fn assertion(&self, client_id: &str, aud: &str, exp_in: i64) -> String {
        let now = Utc::now().timestamp();
        let claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": now + exp_in,
                            "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// What the token endpoint answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    cache_control: Option<String>,
    pragma: Option<String>,
    www_authenticate: Option<String>,
}

impl Answer {
    /// Asserts a refusal: status, `error`, the same `code`, and no token.
    fn refused(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"], error, "{self:?}");
        assert_eq!(self.body["code"], error, "{self:?}");
        assert!(self.body["error_description"].is_string(), "{self:?}");
        assert!(self.body.get("access_token").is_none(), "{self:?}");
    }

    fn token(&self) -> &str {
        assert_eq!(self.status, 200, "{self:?}");
        self.body["access_token"].as_str().unwrap()
    }
}

fn token_request(gw: &TestGateway, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
    let mut req = ureq::post(&gw.url("/oauth/token"));
    if let Some((id, secret)) = basic {
        let credentials = format!("{}:{}", form_encode(id), form_encode(secret));
        req = req.set(
            "Authorization",
            &format!("Basic {}", std_b64(credentials.as_bytes())),
        );
    }
    let resp = match req.send_form(form) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST /oauth/token: {e}"),
    };
    let header = |h: &str| resp.header(h).map(str::to_owned);
    let (cache_control, pragma, www_authenticate) = (
        header("Cache-Control"),
        header("Pragma"),
        header("WWW-Authenticate"),
    );
    Answer {
        status: resp.status(),
        body: resp.into_json().unwrap(),
        cache_control,
        pragma,
        www_authenticate,
    }
}

fn jwt_form<'a>(assertion: &'a str, scope: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    if let Some(s) = scope {
        f.push(("scope", s));
    }
    f
}

fn register(
    gw: &TestGateway,
    id: &str,
    scopes: &[&str],
    jwks: Option<Value>,
    secret: bool,
) -> Option<String> {
    gw.gateway
        .store
        .add_client(&NewClient {
            client_id: id.into(),
            name: format!("{id} PHR"),
            allowed_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            jwks,
            secret,
        })
        .unwrap()
        .map(|s| s.expose().to_owned())
}

/// The token endpoint URL as the gateway announces it (what assertions name as `aud`).
fn discover(gw: &TestGateway) -> String {
    let (s, config) = get_json(&gw.url("/.well-known/smart-configuration"), None).unwrap();
    assert_eq!(s, 200);
    let issuer = config["issuer"].as_str().unwrap();
    assert_eq!(config["token_endpoint"], format!("{issuer}/oauth/token"));
    assert_eq!(
        config["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json")
    );
    assert_eq!(
        config["grant_types_supported"],
        json!(["client_credentials"])
    );
    assert_eq!(
        config["token_endpoint_auth_methods_supported"],
        json!([
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post"
        ])
    );
    assert_eq!(
        config["token_endpoint_auth_signing_alg_values_supported"],
        json!(["EdDSA", "ES384", "RS384", "ES256"])
    );
    assert_eq!(config["response_types_supported"], json!([]));
    assert!(config["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("client-confidential-asymmetric")));
    config["token_endpoint"].as_str().unwrap().to_owned()
}

/// The token authenticates on the API: without a consent the company gets 404 (not 401).
fn authenticates(gw: &TestGateway, token: &str) {
    let url = gw.url("/api/v1/subjects/alice/records?type=step-count");
    let (s, body) = get_json(&url, Some(token)).unwrap();
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(get_json(&url, None).unwrap().0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companies_get_tokens_by_signed_assertion_or_secret() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let aud = discover(&gw);

    // The published key verifies the gateway's tokens.
    let (s, jwks) = get_json(&gw.url("/.well-known/jwks.json"), None)?;
    assert_eq!(s, 200);
    assert_eq!(jwks["keys"][0]["kid"], gw.gateway.keys.kid());
    assert_eq!(jwks["keys"][0]["x"], b64url(&gw.gateway.keys.public_key()));
    assert_eq!(
        (
            jwks["keys"][0]["kty"].as_str(),
            jwks["keys"][0]["crv"].as_str(),
            jwks["keys"][0]["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );

    let ed = CompanyKey::ed25519("ed-1");
    let es = CompanyKey::p384("es-1");
    register(
        &gw,
        "ed-co",
        &[STEPS_SCOPE, "system/Observation.rs"],
        Some(ed.jwks()),
        false,
    );
    register(
        &gw,
        "es-co",
        &["system/Observation.rs"],
        Some(es.jwks()),
        false,
    );
    let secret = register(&gw, "secret-co", &["system/Observation.rs"], None, true).unwrap();

    // private_key_jwt, Ed25519, narrowed to steps.
    let a = token_request(
        &gw,
        &jwt_form(&ed.assertion("ed-co", &aud, 240), Some(STEPS_SCOPE)),
        None,
    );
    let token = a.token().to_owned();
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["expires_in"], 300);
    assert_eq!(a.body["scope"], STEPS_SCOPE);
    assert_eq!(a.cache_control.as_deref(), Some("no-store"));
    assert_eq!(a.pragma.as_deref(), Some("no-cache"));
    let claims = gw.gateway.keys.verify(&token, gw.clock.now()).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.scope.as_str()),
        ("ed-co", STEPS_SCOPE)
    );
    authenticates(&gw, &token);
    // Without `scope`: every scope the client is allowed.
    let a = token_request(&gw, &jwt_form(&ed.assertion("ed-co", &aud, 60), None), None);
    assert_eq!(
        a.body["scope"],
        format!("{STEPS_SCOPE} system/Observation.rs")
    );

    // private_key_jwt, ES384.
    let a = token_request(
        &gw,
        &jwt_form(&es.assertion("es-co", &aud, 120), None),
        None,
    );
    authenticates(&gw, a.token());
    assert_eq!(a.body["scope"], "system/Observation.rs");

    // client_secret_basic and client_secret_post.
    let grant = [("grant_type", "client_credentials")];
    let a = token_request(&gw, &grant, Some(("secret-co", &secret)));
    authenticates(&gw, a.token());
    assert_eq!(a.cache_control.as_deref(), Some("no-store"));
    let a = token_request(
        &gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "secret-co"),
            ("client_secret", &secret),
            ("scope", "system/Observation.rs"),
        ],
        None,
    );
    authenticates(&gw, a.token());
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_requests_get_no_token() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let aud = discover(&gw);
    let ed = CompanyKey::ed25519("ed-1");
    register(&gw, "ed-co", &[STEPS_SCOPE], Some(ed.jwks()), false);
    let secret = register(&gw, "secret-co", &["system/Observation.rs"], None, true).unwrap();

    // A replayed assertion: the first use passes, the second does not.
    let assertion = ed.assertion("ed-co", &aud, 240);
    token_request(&gw, &jwt_form(&assertion, None), None).token();
    let a = token_request(&gw, &jwt_form(&assertion, None), None);
    a.refused(401, "invalid_client");
    assert!(a.body["error_description"]
        .as_str()
        .unwrap()
        .contains("assertion already used"));
    assert_eq!(a.www_authenticate, None);
    assert_eq!(a.cache_control.as_deref(), Some("no-store"));

    // Expired, and ten minutes ahead.
    let a = token_request(
        &gw,
        &jwt_form(&ed.assertion("ed-co", &aud, -120), None),
        None,
    );
    a.refused(401, "invalid_client");
    assert!(a.body["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let a = token_request(
        &gw,
        &jwt_form(&ed.assertion("ed-co", &aud, 600), None),
        None,
    );
    a.refused(401, "invalid_client");
    // For another audience.
    let a = token_request(
        &gw,
        &jwt_form(
            &ed.assertion("ed-co", "https://elsewhere/oauth/token", 60),
            None,
        ),
        None,
    );
    a.refused(401, "invalid_client");
    // Signed by a key the client never registered, under the registered kid.
    let stranger = CompanyKey::ed25519("ed-1");
    token_request(
        &gw,
        &jwt_form(&stranger.assertion("ed-co", &aud, 60), None),
        None,
    )
    .refused(401, "invalid_client");
    // An unknown client, by assertion and by Basic (which says how to authenticate).
    token_request(
        &gw,
        &jwt_form(&ed.assertion("nobody", &aud, 60), None),
        None,
    )
    .refused(401, "invalid_client");
    let a = token_request(
        &gw,
        &[("grant_type", "client_credentials")],
        Some(("nobody", &secret)),
    );
    a.refused(401, "invalid_client");
    assert!(a.www_authenticate.as_deref().unwrap().starts_with("Basic"));
    // A wrong secret, in the body and by Basic.
    let a = token_request(
        &gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "secret-co"),
            ("client_secret", "wrong"),
        ],
        None,
    );
    a.refused(401, "invalid_client");
    assert_eq!(a.www_authenticate, None);
    token_request(
        &gw,
        &[("grant_type", "client_credentials")],
        Some(("secret-co", "wrong")),
    )
    .refused(401, "invalid_client");
    // No client authentication at all.
    token_request(&gw, &[("grant_type", "client_credentials")], None)
        .refused(401, "invalid_client");
    // A scope the client was not allowed.
    token_request(
        &gw,
        &jwt_form(
            &ed.assertion("ed-co", &aud, 60),
            Some("system/Observation.rs"),
        ),
        None,
    )
    .refused(400, "invalid_scope");
    token_request(
        &gw,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.r"),
        ],
        Some(("secret-co", &secret)),
    )
    .refused(400, "invalid_scope");
    // Another grant type, and none.
    token_request(
        &gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "x"),
        ],
        Some(("secret-co", &secret)),
    )
    .refused(400, "unsupported_grant_type");
    token_request(
        &gw,
        &[("client_id", "secret-co"), ("client_secret", &secret)],
        None,
    )
    .refused(400, "invalid_request");
    // Two authentication methods at once.
    token_request(
        &gw,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "secret-co"),
            ("client_secret", &secret),
        ],
        Some(("secret-co", &secret)),
    )
    .refused(400, "invalid_request");
    // A parameter twice (RFC 6749 §3.2), and not a form at all.
    token_request(
        &gw,
        &[
            ("grant_type", "client_credentials"),
            ("grant_type", "client_credentials"),
        ],
        Some(("secret-co", &secret)),
    )
    .refused(400, "invalid_request");
    let (s, body) = call(
        "POST",
        &gw.url("/oauth/token"),
        None,
        Some(json!({"grant_type": "client_credentials"})),
    )?;
    assert_eq!(
        (s, body["error"].as_str(), body["code"].as_str()),
        (400, Some("invalid_request"), Some("invalid_request"))
    );

    // A disabled client gets nothing, however it authenticates.
    gw.gateway.store.disable_client("secret-co", Utc::now())?;
    token_request(
        &gw,
        &[("grant_type", "client_credentials")],
        Some(("secret-co", &secret)),
    )
    .refused(401, "invalid_client");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_register_clients_and_never_see_secrets_again() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let url = gw.url("/api/v1/admin/clients");
    let admin = gw.gateway.keys.issue(
        "operator",
        "phr:admin",
        chrono::TimeDelta::hours(1),
        Utc::now(),
    )?;
    let body = json!({"client_id": "acme", "name": "ACME PHR", "scopes": ["system/Observation.rs"], "secret": true});

    assert_eq!(call("POST", &url, None, Some(body.clone()))?.0, 401);
    let (s, b) = call(
        "POST",
        &url,
        Some(&gw.owner_token("alice")),
        Some(body.clone()),
    )?;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(get_json(&url, Some(&gw.owner_token("alice")))?.0, 403);

    let (s, created) = call("POST", &url, Some(&admin), Some(body.clone()))?;
    assert_eq!(s, 201, "{created}");
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(created["client"]["client_id"], "acme");
    assert_eq!(
        created["client"]["token_endpoint_auth_methods"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    token_request(
        &gw,
        &[("grant_type", "client_credentials")],
        Some(("acme", &secret)),
    )
    .token();

    let ed = CompanyKey::ed25519("k1");
    let (s, created) = call(
        "POST",
        &url,
        Some(&admin),
        Some(
            json!({"client_id": "keyed", "name": "Keyed PHR", "scopes": [STEPS_SCOPE], "jwks": ed.jwks()}),
        ),
    )?;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["client_secret"], Value::Null);
    let aud = discover(&gw);
    token_request(&gw, &jwt_form(&ed.assertion("keyed", &aud, 60), None), None).token();

    for (bad, code) in [
        (
            json!({"client_id": "acme", "name": "Again", "scopes": ["system/Observation.rs"], "secret": true}),
            None,
        ),
        (
            json!({"client_id": "bad id", "name": "x", "scopes": ["system/Observation.rs"], "secret": true}),
            Some("invalid_client_id"),
        ),
        (
            json!({"client_id": "p", "name": "x", "scopes": ["patient/Observation.rs"], "secret": true}),
            Some("invalid_scope"),
        ),
        (
            json!({"client_id": "p", "name": "x", "scopes": ["system/Observation.rs"], "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
            Some("invalid_jwks"),
        ),
        (
            json!({"client_id": "p", "name": "x", "scopes": ["system/Observation.rs"]}),
            Some("invalid_credentials"),
        ),
        (
            json!({"client_id": "p", "name": "x", "scopes": ["system/Observation.rs"], "secret": true, "extra": 1}),
            Some("invalid_body"),
        ),
    ] {
        let (s, b) = call("POST", &url, Some(&admin), Some(bad.clone()))?;
        match code {
            None => assert_eq!(
                (s, b["error"]["code"].as_str()),
                (409, Some("conflict")),
                "{bad}"
            ),
            Some(code) => assert_eq!((s, b["error"]["code"].as_str()), (400, Some(code)), "{bad}"),
        }
    }

    let (s, list) = get_json(&url, Some(&admin))?;
    assert_eq!(s, 200);
    let ids: Vec<_> = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "keyed"]);
    let text = list.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("sha256") && !text.contains("secret_hash"),
        "{text}"
    );
    gw.stop().await;
    Ok(())
}

/// What the store would keep as given is checked before it gets there: a malformed id, an
/// empty name, no credential, a patient scope, an empty key set. (The check was inside the
/// store until the store became its own crate; both registration paths, the API and
/// `phr-gateway clients add`, call it.)
#[test]
fn invalid_clients_are_refused_before_the_store() {
    let new = |id: &str, secret: bool, jwks: Option<Value>| NewClient {
        client_id: id.into(),
        name: "Example PHR Co".into(),
        allowed_scopes: vec![
            "system/Observation.rs".into(),
            "system/Observation.rs?code=http://loinc.org|55423-8".into(),
        ],
        jwks,
        secret,
    };
    assert!(phr_gateway::oauth::check_new_client(&new("co-1", true, None)).is_ok());
    for bad in [
        new("bad id", true, None),
        new("", true, None),
        new("no-credential", false, None),
        NewClient {
            allowed_scopes: vec!["patient/Observation.rs".into()],
            ..new("co-3", true, None)
        },
        new("co-4", false, Some(json!({"keys": []}))),
    ] {
        assert!(
            phr_gateway::oauth::check_new_client(&bad).is_err(),
            "{bad:?}"
        );
    }
}

/// The operator's path: `phr-gateway clients add` refuses what the API refuses, before the
/// store sees it (nothing registered, a non-zero exit, the reason on stderr, no secret shown).
#[test]
fn the_cli_refuses_invalid_clients_and_registers_nothing() -> anyhow::Result<()> {
    let bin = phr_e2e::binary("phr-gateway", "phr-gateway")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let run = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(&bin)
            .args(["clients"])
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()?)
    };
    let keys = dir.path().join("empty-jwks.json");
    std::fs::write(&keys, r#"{"keys": []}"#)?;
    let keys = keys.to_str().context("path")?;
    let add = |id: &'static str, scope: &'static str, extra: &'static [&'static str]| {
        let mut args = vec!["add", "--client-id", id, "--name", "Example PHR Co"];
        args.extend(["--scope", scope]);
        args.extend(extra);
        args
    };
    // A good client first, so the store exists when the bad ones are tried.
    let out = run(&add("co-0", "system/Observation.rs", &["--secret"]))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("client_secret: "));
    for (what, args, code) in [
        (
            "a malformed id",
            add("bad id", "system/Observation.rs", &["--secret"]),
            "invalid_client_id",
        ),
        (
            "no credential",
            add("co-1", "system/Observation.rs", &[]),
            "invalid_credentials",
        ),
        (
            "a patient scope",
            add("co-2", "patient/Observation.rs", &["--secret"]),
            "invalid_scope",
        ),
        (
            "an unknown LOINC code",
            add(
                "co-3",
                "system/Observation.rs?code=http://loinc.org|0000-0",
                &["--secret"],
            ),
            "invalid_scope",
        ),
    ] {
        let out = run(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(stderr.contains(code), "{what}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("client_secret"),
            "{what}: a secret was printed"
        );
    }
    let mut empty_keys = add("co-4", "system/Observation.rs", &[]);
    empty_keys.extend(["--jwks", keys]);
    let out = run(&empty_keys)?;
    assert!(!out.status.success(), "an empty key set: accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_jwks"));

    // Only the good client is registered.
    let listed = run(&["list"])?;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("co-0"), "{listed}");
    for id in ["bad id", "co-1", "co-2", "co-3", "co-4"] {
        assert!(!listed.contains(id), "{id} was registered: {listed}");
    }
    Ok(())
}
