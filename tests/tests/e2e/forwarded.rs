//! `Forwarded` / `X-Forwarded-Host` / `X-Forwarded-Proto` are believed only from the
//! reverse proxies an operator listed in `http.trusted_proxies`: from anyone else they change
//! neither the URLs the gateway announces nor the session cookie's `Secure` flag.

use chrono::Utc;

use phr_e2e::TestGateway;
use phr_gateway::dashboard::{session, Role};

const FORGED: [(&str, &str); 3] = [
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("Forwarded", "proto=https;host=evil.example"),
];

/// `GET url` with the forged headers; status, `Set-Cookie` values and body.
fn forged_get(url: &str) -> anyhow::Result<(u16, Vec<String>, String)> {
    let mut req = ureq::AgentBuilder::new().redirects(0).build().get(url);
    for (k, v) in FORGED {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let cookies = resp
        .all("set-cookie")
        .into_iter()
        .map(str::to_owned)
        .collect();
    Ok((resp.status(), cookies, resp.into_string()?))
}

/// What a client sending the forged headers is told: the FHIR base URL of the
/// CapabilityStatement, the SMART configuration, and the cookie a sign-in link sets.
struct Seen {
    fhir_url: String,
    smart: String,
    cookie: String,
}

fn seen(gw: &TestGateway) -> anyhow::Result<Seen> {
    let (s, _, body) = forged_get(&gw.url("/fhir/metadata"))?;
    assert_eq!(s, 200, "{body}");
    let cs: serde_json::Value = serde_json::from_str(&body)?;
    let fhir_url = cs["implementation"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (s, _, smart) = forged_get(&gw.url("/.well-known/smart-configuration"))?;
    assert_eq!(s, 200, "{smart}");
    let code = gw.gateway.store.issue_signin_code(
        "ana",
        Role::Owner,
        session::SIGNIN_CODE_TTL,
        Utc::now(),
    )?;
    // Opening a sign-in link shows its confirmation page and sets the pre-sign-in cookie,
    // whose flags follow the same origin rules as the session cookie's.
    let (s, cookies, body) = forged_get(&gw.url(&format!("{}?code={code}", session::SIGN_IN)))?;
    assert_eq!(s, 200, "{body}");
    let cookie = cookies
        .into_iter()
        .find(|c| c.starts_with(&format!("{}=", session::SIGNIN_COOKIE)))
        .expect("a pre-sign-in cookie");
    Ok(Seen {
        fhir_url,
        smart,
        cookie,
    })
}

fn is_secure(cookie: &str) -> bool {
    cookie
        .split(';')
        .any(|a| a.trim().eq_ignore_ascii_case("secure"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_headers_from_a_client_change_nothing() -> anyhow::Result<()> {
    // Default: no trusted proxies. The test client (loopback) is just a client.
    let gw = TestGateway::start().await?;
    gw.gateway.store.add_person("ana", "Ana", "Asia/Tokyo")?;
    let s = seen(&gw)?;
    assert_eq!(
        s.fhir_url,
        format!("http://{}/fhir", gw.gateway.http_addr),
        "the announced FHIR base"
    );
    assert!(!s.smart.contains("evil.example"), "{}", s.smart);
    let smart: serde_json::Value = serde_json::from_str(&s.smart)?;
    assert_eq!(
        smart["token_endpoint"],
        format!("http://{}/oauth/token", gw.gateway.http_addr),
        "the token endpoint (and so the `aud` of client assertions) follows the issuer"
    );
    assert!(
        !is_secure(&s.cookie),
        "a client cannot claim HTTPS for the cookie: {}",
        s.cookie
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_believed() -> anyhow::Result<()> {
    let gw = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a block")];
    })
    .await?;
    gw.gateway.store.add_person("ana", "Ana", "Asia/Tokyo")?;
    let s = seen(&gw)?;
    assert_eq!(s.fhir_url, "https://evil.example/fhir");
    assert!(is_secure(&s.cookie), "{}", s.cookie);
    // The SMART configuration is the configured issuer's, proxy or not.
    assert!(!s.smart.contains("evil.example"), "{}", s.smart);
    gw.stop().await;
    Ok(())
}
