//! Dashboard sign-in and the owner's dashboard over real HTTP: one-time sign-in links (a
//! confirmation page, then its form) for an HttpOnly, SameSite=Strict session cookie, CSRF-checked forms, the strict CSP, sign-out,
//! expiry, roles, consent withdrawal, export downloads and erasure.

use chrono::{TimeDelta, Utc};
use serde_json::json;

use phr_e2e::{grant_consent, minute_steps, send, TestGateway};
use phr_gateway::api::me::ERASE_CONFIRMATION;
use phr_gateway::dashboard::{self, session, Role};
use phr_gateway::store::ConsentStatus;

/// An HTTP client that shows redirects instead of following them, and keeps no cookies
/// (each request says which cookie it sends).
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

/// A response of any status, with its body read.
struct Answer {
    status: u16,
    headers: Vec<(String, Vec<String>)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().map(String::as_str)
    }

    /// The `Set-Cookie` line for cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<&str> {
        self.all("set-cookie")
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(String::as_str)
    }

    fn all(&self, name: &str) -> &[String] {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(&[], |(_, v)| v.as_slice())
    }
}

fn request(
    method: &str,
    url: &str,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
) -> anyhow::Result<Answer> {
    let jar: Vec<(&str, &str)> = cookie.map(|c| (session::COOKIE, c)).into_iter().collect();
    request_with(method, url, &jar, form)
}

/// A request from a browser whose cookie jar holds `cookies` (name, value).
fn request_with(
    method: &str,
    url: &str,
    cookies: &[(&str, &str)],
    form: Option<&[(&str, &str)]>,
) -> anyhow::Result<Answer> {
    let mut req = agent().request(method, url);
    if !cookies.is_empty() {
        let jar: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        req = req.set("Cookie", &jar.join("; "));
    }
    let resp = match form {
        Some(f) => req.send_form(f),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let values = resp.all(&n).into_iter().map(str::to_owned).collect();
            (n, values)
        })
        .collect();
    Ok(Answer {
        status: resp.status(),
        headers,
        body: resp.into_string()?,
    })
}

fn get(url: &str, cookie: Option<&str>) -> anyhow::Result<Answer> {
    request("GET", url, cookie, None)
}

fn post(url: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> anyhow::Result<Answer> {
    request("POST", url, cookie, Some(form))
}

fn code(gw: &TestGateway, subject: &str, role: Role) -> String {
    gw.gateway
        .store
        .issue_signin_code(subject, role, session::SIGNIN_CODE_TTL, Utc::now())
        .unwrap()
}

fn signin_url(gw: &TestGateway, code: &str) -> String {
    gw.url(&format!("{}?code={code}", session::SIGN_IN))
}

/// The value of the hidden form field `name` of a page.
fn field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    html[start..].split('"').next().map(str::to_owned)
}

/// Opens a sign-in link as a person does, in a browser holding the session cookie
/// `session` (if any): the GET shows the confirmation page and sets the pre-sign-in cookie,
/// the page's form is sent with it. The GET's answer when it is not the page, else the
/// POST's.
fn open_link(url: &str, session: Option<&str>) -> anyhow::Result<Answer> {
    let page = get(url, session)?;
    if page.status != 200 {
        return Ok(page);
    }
    let nonce = page
        .set_cookie(session::SIGNIN_COOKIE)
        .map(cookie_value_of)
        .unwrap_or_default();
    let code = field(&page.body, "code").unwrap_or_default();
    let csrf = field(&page.body, "csrf").unwrap_or_default();
    let mut jar = vec![(session::SIGNIN_COOKIE, nonce.as_str())];
    jar.extend(session.map(|s| (session::COOKIE, s)));
    request_with(
        "POST",
        &url_of(url, session::SIGN_IN),
        &jar,
        Some(&[("code", &code), ("csrf", &csrf)]),
    )
}

/// `path` on the host of `url`.
fn url_of(url: &str, path: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let host_end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    format!("{}{path}", &url[..host_end])
}

/// Signs in with a fresh code; returns the session cookie's value.
fn sign_in(gw: &TestGateway, subject: &str, role: Role) -> anyhow::Result<String> {
    let a = open_link(&signin_url(gw, &code(gw, subject, role)), None)?;
    anyhow::ensure!(a.status == 303, "sign-in answered {}: {}", a.status, a.body);
    Ok(cookie_value(
        a.set_cookie(session::COOKIE).unwrap_or_default(),
    ))
}

/// The value of a `Set-Cookie` line, whatever its name.
fn cookie_value_of(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap_or_default();
    first
        .split_once('=')
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

fn cookie_value(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap_or_default();
    let (name, value) = first.split_once('=').unwrap_or_default();
    assert_eq!(name, session::COOKIE, "{set_cookie}");
    value.to_owned()
}

/// The CSRF token the page's forms carry.
fn csrf_of(html: &str) -> String {
    let start = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field")
        + "name=\"csrf\" value=\"".len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The cells of each row of the owner page's disclosure log (`table.log`), as text: when,
/// who, as, what, outcome, data types, window, purpose, records.
fn log_rows(html: &str) -> Vec<Vec<String>> {
    let Some(start) = html.find("<table class=\"log\"") else {
        return Vec::new();
    };
    let table = &html[start..start + html[start..].find("</table>").unwrap_or(0)];
    let body = table.split_once("<tbody>").map_or("", |(_, b)| b);
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let inner = &cell[cell.find('>').map_or(0, |i| i + 1)..];
                    let inner = &inner[..inner.find("</td>").unwrap_or(inner.len())];
                    // Text only: drop tags inside the cell (e.g. a flag's span).
                    let mut text = String::new();
                    let mut in_tag = false;
                    for c in inner.chars() {
                        match c {
                            '<' => in_tag = true,
                            '>' => in_tag = false,
                            c if !in_tag => text.push(c),
                            _ => {}
                        }
                    }
                    text
                })
                .collect()
        })
        .collect()
}

fn status_of(gw: &TestGateway, person: &str, consent: &str) -> ConsentStatus {
    gw.gateway
        .store
        .consents(person, Utc::now())
        .unwrap()
        .into_iter()
        .find(|c| c.consent_id.to_string() == consent)
        .expect("the consent")
        .status
}

/// Ana: one band with a few step records, a consent to Dr Kim.
async fn world() -> anyhow::Result<(TestGateway, String)> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol(
        "ana",
        "br-ana",
        &["band-ana".into()],
        now - TimeDelta::days(2),
    )?;
    let mut bridge = gw.raw_bridge("br-ana").await?;
    let steps = (1..=3)
        .map(|h| minute_steps("band-ana", "br-ana", now - TimeDelta::hours(h), 40 + h))
        .collect();
    assert_eq!(send(&mut bridge, "band-ana", steps).await?.stored, 3);
    let consent = grant_consent(
        &gw,
        "ana",
        json!({
            "grantee": "dr-kim",
            "grantee_kind": "practitioner",
            "purpose": "follow-up <visit> & care",
            "data_types": ["step-count", "sleep-episode"],
        }),
    )?;
    Ok((gw, consent))
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_signs_in_withdraws_a_consent_downloads_and_signs_out() -> anyhow::Result<()> {
    let (gw, consent) = world().await?;
    let me = gw.url(dashboard::owner::HOME);

    // The link: a page asking to agree (no session yet), then its form: a session cookie
    // with the right flags, and off to the owner's page.
    let code = code(&gw, "ana", Role::Owner);
    let page = get(&signin_url(&gw, &code), None)?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.set_cookie(session::COOKIE).is_none(), "no session yet");
    assert!(
        page.body.contains("Sign in as ana (owner)?"),
        "{}",
        page.body
    );
    assert_eq!(page.header("content-security-policy"), Some(dashboard::CSP));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let a = open_link(&signin_url(&gw, &code), None)?;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), Some("/dashboard/me"));
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let set_cookie = a.set_cookie(session::COOKIE).unwrap().to_owned();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/dashboard",
        "Max-Age=28800",
    ] {
        assert!(
            set_cookie.split("; ").any(|f| f == flag),
            "{flag} missing in {set_cookie}"
        );
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let cookie = cookie_value(&set_cookie);
    assert_eq!(cookie.len(), 43);
    assert!(!set_cookie.contains(&code));

    // Once only.
    let again = get(&signin_url(&gw, &code), None)?;
    assert_eq!(again.status, 401);
    assert!(again.header("set-cookie").is_none());
    assert!(again
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(
        again.body.contains("invalid, has been used already"),
        "{}",
        again.body
    );
    assert_eq!(again.header("referrer-policy"), Some("no-referrer"));
    // No code, or a made-up one.
    assert_eq!(get(&gw.url(session::SIGN_IN), None)?.status, 400);
    assert_eq!(get(&signin_url(&gw, "made-up"), None)?.status, 401);

    // The page: strict CSP, the consent (escaped) and the device.
    let page = get(&me, Some(&cookie))?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("content-security-policy"), Some(dashboard::CSP));
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("dr-kim"));
    assert!(page.body.contains("follow-up &lt;visit&gt; &amp; care"));
    assert!(!page.body.contains("<visit>"));
    assert!(page.body.contains("band-ana"));
    assert!(page.body.contains("/dashboard/me/charts"));
    assert!(!page.body.contains("<script"));
    assert!(!page.body.contains("style="));
    let withdraw = format!("/dashboard/me/consents/{consent}/withdraw");
    assert!(page.body.contains(&withdraw));
    let csrf = csrf_of(&page.body);
    assert_eq!(csrf.len(), 43);

    // The confirmation page.
    let confirm = get(&gw.url(&withdraw), Some(&cookie))?;
    assert_eq!(confirm.status, 200);
    assert_eq!(csrf_of(&confirm.body), csrf);
    assert_eq!(
        get(
            &gw.url("/dashboard/me/consents/nope/withdraw"),
            Some(&cookie)
        )?
        .status,
        404
    );

    // Forms without the session's CSRF token change nothing.
    let events = gw.gateway.store.consent_event_count("ana")?;
    for form in [vec![], vec![("csrf", "wrong")], vec![("csrf", "")]] {
        let a = post(&gw.url(&withdraw), Some(&cookie), &form)?;
        assert_eq!(a.status, 403, "{form:?}");
        assert!(a.header("content-type").unwrap().starts_with("text/html"));
    }
    // Nor does a form without the cookie (a token alone is not a session).
    assert_eq!(
        post(&gw.url(&withdraw), None, &[("csrf", &csrf)])?.status,
        401
    );
    assert_eq!(gw.gateway.store.consent_event_count("ana")?, events);
    assert_eq!(status_of(&gw, "ana", &consent), ConsentStatus::Granted);

    // With it, the consent is withdrawn at once, as the API sees it too.
    let a = post(&gw.url(&withdraw), Some(&cookie), &[("csrf", &csrf)])?;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), Some("/dashboard/me"));
    assert_eq!(status_of(&gw, "ana", &consent), ConsentStatus::Withdrawn);
    let (s, b) = phr_e2e::call(
        "GET",
        &gw.url("/api/v1/me/consents"),
        Some(&gw.owner_token("ana")),
        None,
    )?;
    assert_eq!(s, 200);
    let listed = b["consents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consent_id"] == consent.as_str())
        .unwrap();
    assert_eq!(listed["status"], "withdrawn");
    let page = get(&me, Some(&cookie))?;
    assert!(
        !page.body.contains(&withdraw),
        "no Withdraw for a withdrawn consent"
    );

    // Downloads are the API's export, attached.
    for format in ["csv", "omh"] {
        let d = get(
            &gw.url(&format!("/dashboard/me/export?format={format}")),
            Some(&cookie),
        )?;
        assert_eq!(d.status, 200, "{}", d.body);
        let disposition = d.header("content-disposition").unwrap();
        assert!(disposition.starts_with("attachment;"), "{disposition}");
        let api = ureq::get(&gw.url(&format!("/api/v1/me/export?format={format}")))
            .set(
                "Authorization",
                &format!("Bearer {}", gw.owner_token("ana")),
            )
            .call()?;
        assert_eq!(d.header("content-type"), api.header("content-type"));
        assert_eq!(
            d.header("content-disposition"),
            api.header("content-disposition")
        );
        let api = api.into_string()?;
        assert_eq!(d.body, api);
        assert!(d.body.len() > 100, "the records are in it");
    }
    assert_eq!(
        get(&gw.url("/dashboard/me/export?format=pdf"), Some(&cookie))?.status,
        400
    );
    // Each export, the dashboard's two downloads and the API's two, is a row of the
    // disclosure log the page shows: by Ana as owner, everything she has, done.
    let page = get(&me, Some(&cookie))?;
    let exports: Vec<Vec<String>> = log_rows(&page.body)
        .into_iter()
        .filter(|row| row.get(3).map(String::as_str) == Some("export"))
        .map(|row| row[1..].to_vec())
        .collect();
    let row = [
        "ana",
        "owner",
        "export",
        "done",
        "step-count, sleep-episode, heart-rate",
        "—",
        "export requested by the person",
        "3",
    ];
    assert_eq!(
        exports,
        vec![row.map(String::from).to_vec(); 4],
        "{}",
        page.body
    );

    // Sign-out needs the token too; then the old cookie is worth nothing.
    let signout = gw.url(session::SIGN_OUT);
    assert_eq!(post(&signout, Some(&cookie), &[("csrf", "x")])?.status, 403);
    assert_eq!(get(&me, Some(&cookie))?.status, 200);
    let a = post(&signout, Some(&cookie), &[("csrf", &csrf)])?;
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), Some("/dashboard"));
    let expired = a.header("set-cookie").unwrap();
    assert!(expired.contains("Max-Age=0") && expired.contains("Path=/dashboard"));
    let after = get(&me, Some(&cookie))?;
    assert_eq!(after.status, 401);
    assert!(after
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(after.body.contains("href=\"/dashboard\""));
    assert_eq!(get(&me, None)?.status, 401);

    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_sessions_roles_and_erasure() -> anyhow::Result<()> {
    let (gw, consent) = world().await?;
    let me = gw.url(dashboard::owner::HOME);
    let store = gw.gateway.store.clone();

    // A session opened nine hours ago has expired.
    let then = Utc::now() - TimeDelta::hours(9);
    let old = store.issue_signin_code("ana", Role::Owner, session::SIGNIN_CODE_TTL, then)?;
    let old = store
        .redeem_signin_code(&old, session::SESSION_TTL, then)?
        .unwrap();
    assert_eq!(get(&me, Some(&old.id))?.status, 401);

    // A clinician has no /dashboard/me, whatever they try.
    let link = open_link(
        &signin_url(&gw, &code(&gw, "dr-kim", Role::Clinician)),
        None,
    )?;
    assert_eq!(link.status, 303);
    assert_eq!(link.header("location"), Some("/dashboard/clinician"));
    let kim = cookie_value(link.set_cookie(session::COOKIE).unwrap());
    assert_eq!(get(&me, Some(&kim))?.status, 404);
    assert_eq!(
        get(&gw.url("/dashboard/me/export?format=csv"), Some(&kim))?.status,
        404
    );
    let kim_csrf = store.session(&kim, Utc::now())?.unwrap().csrf;
    let withdraw = gw.url(&format!("/dashboard/me/consents/{consent}/withdraw"));
    assert_eq!(
        post(&withdraw, Some(&kim), &[("csrf", &kim_csrf)])?.status,
        404
    );
    assert_eq!(status_of(&gw, "ana", &consent), ConsentStatus::Granted);

    // Erasure: the CSRF token and the typed confirmation, or nothing happens.
    // A new link opened in a browser replaces that browser's session; a bad one does not.
    let first = sign_in(&gw, "ana", Role::Owner)?;
    let a = open_link(
        &signin_url(&gw, &code(&gw, "ana", Role::Owner)),
        Some(&first),
    )?;
    assert_eq!(a.status, 303);
    let other = cookie_value(a.set_cookie(session::COOKIE).unwrap());
    assert_eq!(get(&me, Some(&first))?.status, 401);
    assert_eq!(get(&signin_url(&gw, "bad"), Some(&other))?.status, 401);
    assert_eq!(get(&me, Some(&other))?.status, 200);
    let ana = sign_in(&gw, "ana", Role::Owner)?;
    let csrf = csrf_of(&get(&me, Some(&ana))?.body);
    let erase = gw.url("/dashboard/me/erase");
    assert_eq!(
        post(&erase, Some(&ana), &[("confirm", ERASE_CONFIRMATION)])?.status,
        403
    );
    assert_eq!(
        post(&erase, Some(&ana), &[("csrf", &csrf), ("confirm", "yes")])?.status,
        400
    );
    assert_eq!(phr_e2e::step_counts(&gw, "ana")?.len(), 3);

    let a = post(
        &erase,
        Some(&ana),
        &[("csrf", &csrf), ("confirm", ERASE_CONFIRMATION)],
    )?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("content-security-policy"), Some(dashboard::CSP));
    assert!(a.body.contains("erased"));
    assert!(a.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert!(phr_e2e::step_counts(&gw, "ana")?.is_empty());
    assert_eq!(status_of(&gw, "ana", &consent), ConsentStatus::Withdrawn);
    // Every session of Ana's has ended with her data; Dr Kim's has not.
    assert_eq!(get(&me, Some(&ana))?.status, 401);
    assert_eq!(get(&me, Some(&other))?.status, 401);
    assert!(store.session(&kim, Utc::now())?.is_some());

    gw.stop().await;
    Ok(())
}
