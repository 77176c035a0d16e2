//! Dashboard sign-in through a real OpenID provider on loopback (`tests/oidc/`, over HTTPS with
//! a test CA the gateway trusts through `ca_file`), at the HTTP level: what a browser sends,
//! one request at a time, so each step can be tampered with.
//!
//! - The owner's sign-in opens a session for the person the ID token names; the clinician's
//!   for the practitioner; sign-out ends it.
//! - Refused, with nobody signed in: a callback with another `state`; a callback in a
//!   browser that did not start the sign-in (no pending cookie); the same callback twice; a
//!   code replayed into a new sign-in; an `iss` of another issuer on the callback (mix-up); an
//!   account signing in as a role it does not hold; the provider's error answer.
//! - ID tokens the gateway must refuse, checked with the gateway's own verifier against the
//!   provider's real tokens: another issuer's, another client's, and an expired one.
//!
//! Needs `node` and `tests/oidc/node_modules` (`.ci/run` installs them and runs ignored tests).

use std::net::TcpListener;

use phr_e2e::oidc::{
    trusting, OidcConfig, OidcProvider, API_CLIENT, CLINICIAN_SUB, OWNER_PERSON, OWNER_SUB,
    WEB_CLIENT,
};
use phr_e2e::{browse, Page, TestGateway};
use phr_gateway::idp::{IdpError, Providers, CALLBACK_PATH};
use phr_gateway::store::OffsetClock;

const START_OWNER: &str = "/dashboard/signin/oidc/test?as=owner";
const START_CLINICIAN: &str = "/dashboard/signin/oidc/test?as=clinician";

struct Setup {
    provider: OidcProvider,
    gw: TestGateway,
}

async fn setup() -> anyhow::Result<Setup> {
    setup_with(|c| c).await
}

async fn setup_with(tune: impl FnOnce(OidcConfig) -> OidcConfig) -> anyhow::Result<Setup> {
    let http = TcpListener::bind("127.0.0.1:0")?;
    let callback = format!("http://{}{CALLBACK_PATH}", http.local_addr()?);
    let provider = OidcProvider::start(tune(OidcConfig::phr(&callback)))?;
    let gw =
        TestGateway::start_on(http, None, |c| c.auth.providers.push(trusting(&provider))).await?;
    gw.enrol(OWNER_PERSON, "br-1", &[], chrono::Utc::now())?;
    Ok(Setup { provider, gw })
}

/// A sign-in under way: the pending cookie and the callback URL the provider redirected to.
struct Begun {
    cookie: String,
    callback: String,
}

impl Setup {
    /// Starts a sign-in at the gateway (`start` path) and goes through the provider's login
    /// as `account`, up to the redirect back to the gateway.
    fn begin(&self, start: &str, account: &str) -> anyhow::Result<Begun> {
        let page = browse("GET", &self.gw.url(start), &[], None)?;
        assert_eq!(page.status, 303, "{}", page.body);
        let line = page
            .set_cookie_line("phr_oidc")
            .expect("the pending cookie");
        assert!(
            line.contains("HttpOnly") && line.contains("SameSite=Lax"),
            "{line}"
        );
        let cookie = page.cookie("phr_oidc").expect("the pending cookie");
        let url = page.location.expect("to the provider");
        assert!(url.starts_with(self.provider.issuer()), "{url}");
        for asked in [
            "code_challenge_method=S256",
            "state=",
            "nonce=",
            "scope=openid",
        ] {
            assert!(url.contains(asked), "{asked} in {url}");
        }
        let authorized = self.provider.follow(&url, account)?;
        Ok(Begun {
            cookie,
            callback: authorized.redirect,
        })
    }

    fn finish(&self, begun: &Begun) -> anyhow::Result<Page> {
        browse("GET", &begun.callback, &[("phr_oidc", &begun.cookie)], None)
    }

    fn page(&self, path: &str, session: &str) -> anyhow::Result<Page> {
        browse("GET", &self.gw.url(path), &[("phr_session", session)], None)
    }
}

/// The session cookie a callback answer set, checking the page moves on to `home`.
fn signed_in(page: &Page, home: &str) -> String {
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("0;url={home}")),
        "moves on to {home}: {}",
        page.body
    );
    assert!(
        page.set_cookie_line("phr_oidc")
            .is_some_and(|l| l.contains("Max-Age=0")),
        "the pending cookie is forgotten"
    );
    let line = page.set_cookie_line("phr_session").expect("a session");
    assert!(line.contains("HttpOnly") && line.contains("SameSite=Strict"));
    page.cookie("phr_session").expect("a session")
}

fn nobody_signed_in(page: &Page, status: u16) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(
        page.cookie("phr_session").is_none_or(|v| v.is_empty()),
        "no session: {:?}",
        page.set_cookies
    );
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k == name => format!("{k}={value}"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn owner_and_clinician_sign_in_as_the_people_their_tokens_name_and_sign_out(
) -> anyhow::Result<()> {
    let s = setup().await?;
    // The sign-in page lists the provider.
    let choices = browse("GET", &s.gw.url("/dashboard/signin"), &[], None)?;
    assert_eq!(choices.status, 200);
    assert!(choices
        .body
        .contains(START_OWNER.replace('&', "&amp;").as_str()));

    let owner = signed_in(
        &s.finish(&s.begin(START_OWNER, OWNER_SUB)?)?,
        "/dashboard/me",
    );
    let me = s.page("/dashboard/me", &owner)?;
    assert_eq!(me.status, 200);
    assert!(
        me.body.contains(&format!("{OWNER_PERSON} (owner)")),
        "the person the ID token names: {}",
        me.body
    );

    let kim = signed_in(
        &s.finish(&s.begin(START_CLINICIAN, CLINICIAN_SUB)?)?,
        "/dashboard/clinician",
    );
    let panel = s.page("/dashboard/clinician", &kim)?;
    assert_eq!(panel.status, 200);
    assert!(panel.body.contains(&format!("{CLINICIAN_SUB} (clinician)")));
    // A clinician's session is no owner's.
    assert_eq!(s.page("/dashboard/me", &kim)?.status, 404);

    // Sign-out ends the session.
    let csrf = me.field("csrf").expect("the sign-out form's token");
    let out = browse(
        "POST",
        &s.gw.url("/dashboard/signout"),
        &[("phr_session", &owner)],
        Some(&[("csrf", &csrf)]),
    )?;
    assert_eq!(out.status, 303);
    assert_eq!(s.page("/dashboard/me", &owner)?.status, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn a_wrong_state_another_browser_a_replay_and_a_mixed_up_issuer_sign_nobody_in(
) -> anyhow::Result<()> {
    let s = setup().await?;

    // Another state: refused, and the sign-in is used up (the right state later finds nothing).
    let begun = s.begin(START_OWNER, OWNER_SUB)?;
    let forged = Begun {
        cookie: begun.cookie.clone(),
        callback: replace_param(&begun.callback, "state", "not-the-state"),
    };
    nobody_signed_in(&s.finish(&forged)?, 400);
    nobody_signed_in(&s.finish(&begun)?, 400);

    // Another browser (no pending cookie, or someone else's): refused.
    let begun = s.begin(START_OWNER, OWNER_SUB)?;
    nobody_signed_in(&browse("GET", &begun.callback, &[], None)?, 400);
    let other = s.begin(START_OWNER, OWNER_SUB)?;
    let crossed = Begun {
        cookie: other.cookie.clone(),
        callback: begun.callback.clone(),
    };
    nobody_signed_in(&s.finish(&crossed)?, 400);

    // The same callback twice: the second finds nothing.
    let begun = s.begin(START_OWNER, OWNER_SUB)?;
    signed_in(&s.finish(&begun)?, "/dashboard/me");
    nobody_signed_in(&s.finish(&begun)?, 400);

    // The used code replayed into a new sign-in of this browser (its own state): the provider
    // refuses the code, nobody is signed in.
    let used_code = begun
        .callback
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .expect("a code")
        .to_owned();
    let fresh = s.begin(START_OWNER, OWNER_SUB)?;
    let replay = Begun {
        cookie: fresh.cookie.clone(),
        callback: replace_param(&fresh.callback, "code", &used_code),
    };
    nobody_signed_in(&s.finish(&replay)?, 401);

    // An `iss` of another issuer on the answer (a mix-up attack): refused.
    let begun = s.begin(START_OWNER, OWNER_SUB)?;
    let mixed = Begun {
        cookie: begun.cookie.clone(),
        callback: replace_param(&begun.callback, "iss", "https%3A%2F%2Fevil.test"),
    };
    nobody_signed_in(&s.finish(&mixed)?, 400);

    // The provider's error answer, with this browser's state: refused.
    let begun = s.begin(START_OWNER, OWNER_SUB)?;
    let state = begun
        .callback
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .expect("a state")
        .to_owned();
    let error = Begun {
        cookie: begun.cookie.clone(),
        callback: s.gw.url(&format!(
            "{CALLBACK_PATH}?error=access_denied&state={state}"
        )),
    };
    nobody_signed_in(&s.finish(&error)?, 401);

    // A clinician's account asking to be an owner: the provider signs him in, the gateway
    // finds no person in his token.
    let begun = s.begin(START_OWNER, CLINICIAN_SUB)?;
    nobody_signed_in(&s.finish(&begun)?, 403);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/oidc/node_modules (.ci/run)"]
async fn id_tokens_of_another_issuer_another_client_or_expired_are_refused() -> anyhow::Result<()> {
    let provider =
        OidcProvider::start(OidcConfig::phr("http://127.0.0.1:9/cb").with_ttl("IdToken", 1))?;
    let other = OidcProvider::start(OidcConfig::phr("http://127.0.0.1:9/cb"))?;
    // The gateway's verifier, on a clock the test moves (the provider's tokens stay real).
    let clock = std::sync::Arc::new(OffsetClock::new());
    let gateway_side = Providers::from_config(&[trusting(&provider)], clock.clone())?;
    let verifier = gateway_side.by_name("test").expect("the provider");

    // The web client's own ID token, with its nonce, verifies (the baseline).
    let web = provider.client(WEB_CLIENT).expect("web client").clone();
    let (req, tokens) = provider.sign_in(&web, OWNER_SUB)?;
    let id_token = tokens.id_token.expect("an ID token");
    let claims = verifier.verify_id_token(&id_token, &req.nonce)?;
    assert_eq!(
        verifier.identity(&claims, phr_gateway::idp::Kind::Owner)?,
        OWNER_PERSON
    );
    // Another nonce: refused.
    assert!(verifier.verify_id_token(&id_token, "another").is_err());

    // Another client's ID token (the API client's): refused (audience).
    let api = provider.client(API_CLIENT).expect("api client").clone();
    let (req2, tokens2) = provider.sign_in(&api, OWNER_SUB)?;
    let foreign_client = tokens2.id_token.expect("an ID token");
    assert!(matches!(
        verifier.verify_id_token(&foreign_client, &req2.nonce),
        Err(IdpError::InvalidToken(_))
    ));

    // Another issuer's ID token for a client of the same name: refused.
    let other_web = other.client(WEB_CLIENT).expect("web client").clone();
    let (req3, tokens3) = other.sign_in(&other_web, OWNER_SUB)?;
    let foreign_issuer = tokens3.id_token.expect("an ID token");
    assert!(verifier
        .verify_id_token(&foreign_issuer, &req3.nonce)
        .is_err());

    // Expired: the ID token lives 1 s; past the 30 s leeway it is refused.
    clock.advance(chrono::TimeDelta::seconds(32));
    assert!(matches!(
        verifier.verify_id_token(&id_token, &req.nonce),
        Err(IdpError::InvalidToken(_))
    ));
    Ok(())
}
