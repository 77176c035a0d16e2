//! HTTPS on the API listener from configured PEM files (`http.tls_cert`, `http.tls_key`):
//! a certificate made here, a client that trusts exactly it.

use std::sync::Arc;

use chrono::Utc;

use phr_e2e::TestGateway;
use phr_gateway::dashboard::{session, Role};

/// A self-signed certificate for 127.0.0.1, its PEM files in `dir`, and a client trusting it.
fn certificate(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, ureq::Agent)> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(client))
        .redirects(0)
        .build();
    Ok((cert, key, agent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_from_configured_pem_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key, agent) = certificate(dir.path())?;
    let gw = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.http.tls_cert = Some(cert.clone());
        c.http.tls_key = Some(key.clone());
    })
    .await?;
    let addr = gw.gateway.http_addr;
    let https = |path: &str| format!("https://{addr}{path}");

    let health: serde_json::Value = agent.get(&https("/healthz")).call()?.into_json()?;
    assert_eq!(health["status"], "ok");
    // The announced endpoints are https (the issuer defaults to the listener's scheme).
    let smart: serde_json::Value = agent
        .get(&https("/.well-known/smart-configuration"))
        .call()?
        .into_json()?;
    assert_eq!(
        smart["token_endpoint"],
        format!("https://{addr}/oauth/token")
    );
    // Cookies are Secure because the listener is HTTPS (no proxy involved): the one a
    // sign-in link's confirmation page sets, as the session cookie after it.
    gw.gateway.store.add_person("ana", "Ana", "Asia/Tokyo")?;
    let code = gw.gateway.store.issue_signin_code(
        "ana",
        Role::Owner,
        session::SIGNIN_CODE_TTL,
        Utc::now(),
    )?;
    let resp = match agent
        .get(&https(&format!("{}?code={code}", session::SIGN_IN)))
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    assert_eq!(resp.status(), 200);
    let cookie = resp.header("set-cookie").unwrap_or_default().to_owned();
    assert!(cookie.starts_with(session::SIGNIN_COOKIE), "{cookie}");
    assert!(cookie.split(';').any(|a| a.trim() == "Secure"), "{cookie}");

    // Plain HTTP on the TLS port gets no answer; a client that does not trust the
    // certificate gets no connection.
    assert!(ureq::get(&format!("http://{addr}/healthz")).call().is_err());
    assert!(ureq::get(&https("/healthz")).call().is_err());
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_its_key_is_a_configuration_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, _, _) = certificate(dir.path())?;
    let err = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.http.tls_cert = Some(cert.clone());
    })
    .await
    .expect_err("a certificate alone must not start");
    assert!(err.to_string().contains("tls_key"), "{err}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key")?;
    let err = TestGateway::start_configured(phr_e2e::external_broker(), |c| {
        c.http.tls_cert = Some(cert.clone());
        c.http.tls_key = Some(garbage.clone());
    })
    .await
    .expect_err("an unreadable key must not start");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    Ok(())
}
