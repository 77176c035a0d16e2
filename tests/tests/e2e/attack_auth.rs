//! Attacks on authentication and authorisation, against a real gateway over HTTP: scope
//! strings that grant more than they say, a token endpoint that tells registered client ids
//! from unknown ones, and sign-in links that log another browser in (login CSRF).

use chrono::{TimeDelta, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use phr_e2e::{b64url, browse, call, get_json, minute_steps, send, TestGateway};
use phr_gateway::api::me::ERASE_CONFIRMATION;
use phr_gateway::dashboard::{session, Role};
use phr_gateway::store::clients::NewClient;

// ----- scopes -----

/// A SMART v1 `patient/*.read` token reads, and nothing more: no erasure (`d` is in "read"
/// but not in its meaning, `rs`), no pairing. A `.write` token does not read; letters out
/// of order grant nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_scope_token_can_neither_erase_nor_pair() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol(
        "ana",
        "br-ana",
        &["band-ana".into()],
        now - TimeDelta::days(1),
    )?;
    let mut bridge = gw.raw_bridge("br-ana").await?;
    let steps = (1..=3)
        .map(|h| minute_steps("band-ana", "br-ana", now - TimeDelta::hours(h), 40 + h))
        .collect();
    assert_eq!(send(&mut bridge, "band-ana", steps).await?.stored, 3);
    let token = |scope: &str| {
        gw.gateway
            .keys
            .issue("ana", scope, TimeDelta::hours(1), Utc::now())
            .expect("token")
    };
    let read = token("patient/*.read");

    // The token is good for what it says: reading.
    let (s, _) = call("GET", &gw.url("/api/v1/me/consents"), Some(&read), None)?;
    assert_eq!(s, 200, "patient/*.read reads consents");

    // Erasure needs d, which .read does not mean.
    let erase = gw.url(&format!("/api/v1/me/data?confirm={ERASE_CONFIRMATION}"));
    let (s, body) = call("DELETE", &erase, Some(&read), None)?;
    assert_eq!(s, 403, "patient/*.read erased: {body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        phr_e2e::step_counts(&gw, "ana")?.len(),
        3,
        "data still there"
    );

    // Pairing needs c.
    let pairings = gw.url("/api/v1/me/devices/pairings");
    let pair = json!({"bridge_id": "br-ana", "device_id": "band-new"});
    let (s, body) = call("POST", &pairings, Some(&read), Some(pair.clone()))?;
    assert_eq!(s, 403, "patient/*.read started a pairing: {body}");

    // .write is c u d: no reading (its letters include r).
    let (s, _) = call(
        "GET",
        &gw.url("/api/v1/me/consents"),
        Some(&token("patient/*.write")),
        None,
    )?;
    assert_eq!(s, 403, "patient/*.write read consents");
    // Letters out of order, repeated or unknown grant nothing at all.
    for scope in [
        "patient/*.sr",
        "patient/*.rrs",
        "patient/*.rsd",
        "patient/*.reads",
    ] {
        let t = token(scope);
        let (s, _) = call("GET", &gw.url("/api/v1/me/consents"), Some(&t), None)?;
        assert_eq!(s, 403, "{scope} read consents");
        let (s, _) = call("DELETE", &erase, Some(&t), None)?;
        assert_eq!(s, 403, "{scope} erased");
    }
    assert_eq!(
        phr_e2e::step_counts(&gw, "ana")?.len(),
        3,
        "data still there"
    );
    gw.stop().await;
    Ok(())
}

// ----- the token endpoint -----

/// What the token endpoint answered, byte for byte.
#[derive(Debug, PartialEq, Eq)]
struct Raw {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

fn token_request(url: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Raw {
    let mut req = ureq::post(url);
    if let Some((id, secret)) = basic {
        // Plain ids and secrets here: nothing to form-encode.
        let std = b64url(format!("{id}:{secret}").as_bytes())
            .replace('-', "+")
            .replace('_', "/");
        let padded = format!("{std}{}", "=".repeat((4 - std.len() % 4) % 4));
        req = req.set("Authorization", &format!("Basic {padded}"));
    }
    let resp = match req.send_form(form) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("token request: {e}"),
    };
    Raw {
        status: resp.status(),
        www_authenticate: resp.header("WWW-Authenticate").map(str::to_owned),
        body: resp.into_string().expect("body"),
    }
}

fn ed25519() -> (EncodingKey, Value) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = sk.to_pkcs8_der().expect("der");
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
                     "x": b64url(&sk.verifying_key().to_bytes())});
    (EncodingKey::from_ed_der(der.as_bytes()), jwk)
}

fn assertion(key: &EncodingKey, client: &str, aud: &str) -> String {
    let now = Utc::now().timestamp();
    let claims = json!({"iss": client, "sub": client, "aud": aud, "exp": now + 120,
                        "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, key).expect("signed")
}

/// An unknown client id, a registered one with a wrong secret or a stranger's key, and a
/// disabled one (even with its right key) get byte-identical refusals, per method: RFC 6749
/// §5.2 `invalid_client`, 401, with `WWW-Authenticate` when Basic was used.
#[tokio::test(flavor = "multi_thread")]
async fn token_refusals_do_not_tell_registered_client_ids_from_unknown_ones() -> anyhow::Result<()>
{
    let gw = TestGateway::start().await?;
    let (s, config) = get_json(&gw.url("/.well-known/smart-configuration"), None)?;
    assert_eq!(s, 200);
    let endpoint = config["token_endpoint"]
        .as_str()
        .expect("endpoint")
        .to_owned();
    let (key, jwk) = ed25519();
    let (stranger, _) = ed25519();
    for id in ["known-co", "disabled-co"] {
        gw.gateway.store.add_client(&NewClient {
            client_id: id.into(),
            name: "A PHR company".into(),
            allowed_scopes: vec!["system/Observation.rs".into()],
            jwks: Some(json!({"keys": [jwk]})),
            secret: true,
        })?;
    }
    gw.gateway.store.disable_client("disabled-co", Utc::now())?;
    let url = gw.url("/oauth/token");
    let grant = ("grant_type", "client_credentials");

    // client_secret_basic and client_secret_post.
    for basic in [true, false] {
        let answers: Vec<(&str, Raw)> = ["nobody-co", "known-co", "disabled-co"]
            .into_iter()
            .map(|id| {
                let secret = "not-the-secret";
                let raw = if basic {
                    token_request(&url, &[grant], Some((id, secret)))
                } else {
                    token_request(
                        &url,
                        &[grant, ("client_id", id), ("client_secret", secret)],
                        None,
                    )
                };
                (id, raw)
            })
            .collect();
        let (_, first) = &answers[0];
        assert_eq!(first.status, 401, "{first:?}");
        let body: Value = serde_json::from_str(&first.body)?;
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(first.www_authenticate.is_some(), basic, "{first:?}");
        for (id, raw) in &answers[1..] {
            assert_eq!(raw, first, "{id} (basic: {basic}) is told apart");
        }
    }

    // private_key_jwt: unknown, known but signed by a stranger, disabled with its right key.
    let answers: Vec<(&str, Raw)> = [
        ("nobody-co", &key),
        ("known-co", &stranger),
        ("disabled-co", &key),
    ]
    .into_iter()
    .map(|(id, k)| {
        let a = assertion(k, id, &endpoint);
        let form = [
            grant,
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", a.as_str()),
        ];
        (id, token_request(&url, &form, None))
    })
    .collect();
    let (_, first) = &answers[0];
    assert_eq!(first.status, 401, "{first:?}");
    assert_eq!(first.www_authenticate, None);
    for (id, raw) in &answers[1..] {
        assert_eq!(raw, first, "{id} (private_key_jwt) is told apart");
    }
    // The same refusal as a wrong secret: nothing tells the methods' lookups apart either.
    let secret = token_request(
        &url,
        &[grant, ("client_id", "nobody-co"), ("client_secret", "x")],
        None,
    );
    assert_eq!(first.body, secret.body);

    // The real key of an enabled client still gets a token (the refusals above are not
    // the endpoint being broken).
    let a = assertion(&key, "known-co", &endpoint);
    let ok = token_request(
        &url,
        &[
            grant,
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &a),
        ],
        None,
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    gw.stop().await;
    Ok(())
}

// ----- sign-in links (login CSRF) -----

/// Signs `subject` in the way a person does: opens the link, agrees. Returns the session
/// cookie's value.
fn sign_in(gw: &TestGateway, subject: &str) -> anyhow::Result<String> {
    let code = gw.gateway.store.issue_signin_code(
        subject,
        Role::Owner,
        session::SIGNIN_CODE_TTL,
        Utc::now(),
    )?;
    let link = gw.url(&format!("{}?code={code}", session::SIGN_IN));
    let page = browse("GET", &link, &[], None)?;
    anyhow::ensure!(page.status == 200, "the link answered {}", page.status);
    let nonce = page.cookie(session::SIGNIN_COOKIE).unwrap_or_default();
    let csrf = page.field("csrf").unwrap_or_default();
    let done = browse(
        "POST",
        &gw.url(session::SIGN_IN),
        &[(session::SIGNIN_COOKIE, &nonce)],
        Some(&[("code", &code), ("csrf", &csrf)]),
    )?;
    anyhow::ensure!(done.status == 303, "sign-in answered {}", done.status);
    done.cookie(session::COOKIE)
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))
}

/// Mallory makes a sign-in link for her own account and gets it opened in Ana's browser,
/// or auto-submits its form from her own site there. Neither signs Ana's browser in to
/// Mallory's account; only the browser that opened the link, agreeing on the page that
/// names the account, signs in, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_link_cannot_log_another_browser_in() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let store = gw.gateway.store.clone();
    let ana = sign_in(&gw, "ana")?;
    let me = gw.url("/dashboard/me");
    let post_url = gw.url(session::SIGN_IN);
    let new_code = || {
        store
            .issue_signin_code("mallory", Role::Owner, session::SIGNIN_CODE_TTL, Utc::now())
            .expect("code")
    };

    // Mallory opens her own link in her own browser: a confirmation page naming her
    // account and role, a pre-sign-in cookie, and no session.
    let code = new_code();
    let link = gw.url(&format!("{}?code={code}", session::SIGN_IN));
    let page = browse("GET", &link, &[], None)?;
    assert_eq!(
        page.status, 200,
        "opening a link is not signing in: {page:?}"
    );
    assert_eq!(page.cookie(session::COOKIE), None, "no session from a GET");
    assert!(
        page.body.contains("Sign in as mallory (owner)?"),
        "{}",
        page.body
    );
    let line = page
        .set_cookie_line(session::SIGNIN_COOKIE)
        .expect("pre-sign-in cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/dashboard/signin"] {
        assert!(
            line.split("; ").any(|f| f == flag),
            "{flag} missing: {line}"
        );
    }
    let max_age: i64 = line
        .split("; ")
        .find_map(|f| f.strip_prefix("Max-Age="))
        .expect("Max-Age")
        .parse()?;
    assert!((1..=15 * 60).contains(&max_age), "short-lived: {max_age}");
    let mallory_nonce = page.cookie(session::SIGNIN_COOKIE).expect("nonce");
    let mallory_csrf = page.field("csrf").expect("form token");
    assert_eq!(page.field("code").as_deref(), Some(code.as_str()));
    assert_eq!(store.open_sessions_of("mallory", Utc::now())?, 0);

    // Her site auto-submits the form in Ana's browser: Ana's jar has her session but no
    // pre-sign-in cookie (SameSite=Strict is not sent cross-site, and she never opened
    // the link). Refused; Ana stays Ana.
    let attack = browse(
        "POST",
        &post_url,
        &[(session::COOKIE, &ana)],
        Some(&[("code", &code), ("csrf", &mallory_csrf)]),
    )?;
    assert_eq!(attack.status, 403, "{attack:?}");
    assert_eq!(attack.cookie(session::COOKIE), None);
    assert_eq!(store.open_sessions_of("mallory", Utc::now())?, 0);
    let page_of_ana = browse("GET", &me, &[(session::COOKIE, &ana)], None)?;
    assert_eq!(page_of_ana.status, 200);
    assert!(page_of_ana.body.contains("ana (owner)"));

    // Another browser's pre-sign-in cookie (or a made-up one) does not do either.
    for nonce in ["made-up", mallory_csrf.as_str()] {
        let a = browse(
            "POST",
            &post_url,
            &[(session::SIGNIN_COOKIE, nonce)],
            Some(&[("code", &code), ("csrf", &mallory_csrf)]),
        )?;
        assert_eq!(a.status, 403, "{nonce}: {a:?}");
    }
    // Her own cookie with a wrong form token: the page's form is needed.
    let a = browse(
        "POST",
        &post_url,
        &[(session::SIGNIN_COOKIE, &mallory_nonce)],
        Some(&[("code", &code), ("csrf", "forged")]),
    )?;
    assert_eq!(a.status, 403);
    assert_eq!(store.open_sessions_of("mallory", Utc::now())?, 0);

    // The code was not used up: the browser that opened the link signs in, once.
    let done = browse(
        "POST",
        &post_url,
        &[(session::SIGNIN_COOKIE, &mallory_nonce)],
        Some(&[("code", &code), ("csrf", &mallory_csrf)]),
    )?;
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(done.location.as_deref(), Some("/dashboard/me"));
    let mallory = done.cookie(session::COOKIE).expect("a session");
    let forget = done
        .set_cookie_line(session::SIGNIN_COOKIE)
        .expect("the pre-sign-in cookie is forgotten");
    assert!(forget.contains("Max-Age=0"), "{forget}");
    let page = browse("GET", &me, &[(session::COOKIE, &mallory)], None)?;
    assert!(page.body.contains("mallory (owner)"));
    assert_eq!(store.open_sessions_of("mallory", Utc::now())?, 1);
    let replay = browse(
        "POST",
        &post_url,
        &[(session::SIGNIN_COOKIE, &mallory_nonce)],
        Some(&[("code", &code), ("csrf", &mallory_csrf)]),
    )?;
    assert_eq!(replay.status, 401, "replayed: {replay:?}");
    assert_eq!(browse("GET", &link, &[], None)?.status, 401);

    // A second link, this time opened in Ana's browser (a top-level navigation her site
    // triggers: the pre-sign-in cookie is set there). The form she would have to submit
    // carries a token only that page shows; Mallory's own earlier token for the same code
    // is worth nothing, and nothing happens without Ana's click on a page saying
    // "mallory".
    let code = new_code();
    let link = gw.url(&format!("{}?code={code}", session::SIGN_IN));
    let hers = browse("GET", &link, &[], None)?;
    let stale_csrf = hers.field("csrf").expect("token");
    let in_ana = browse("GET", &link, &[(session::COOKIE, &ana)], None)?;
    assert_eq!(in_ana.status, 200);
    assert!(in_ana.body.contains("Sign in as mallory (owner)?"));
    assert!(
        in_ana.body.contains("signed in as ana (owner) now"),
        "{}",
        in_ana.body
    );
    let ana_nonce = in_ana.cookie(session::SIGNIN_COOKIE).expect("nonce");
    let a = browse(
        "POST",
        &post_url,
        &[
            (session::COOKIE, &ana),
            (session::SIGNIN_COOKIE, &ana_nonce),
        ],
        Some(&[("code", &code), ("csrf", &stale_csrf)]),
    )?;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(store.open_sessions_of("mallory", Utc::now())?, 1);
    let still_ana = browse("GET", &me, &[(session::COOKIE, &ana)], None)?;
    assert!(still_ana.body.contains("ana (owner)"));
    gw.stop().await;
    Ok(())
}
