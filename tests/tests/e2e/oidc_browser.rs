//! Issue #14 end to end in a real browser: headless Chromium signs in to the dashboards
//! through a real OpenID provider on loopback (`tests/oidc/`, the certified `oidc-provider`
//! package, over HTTPS with a test CA the gateway trusts through `ca_file`; Chromium accepts
//! exactly that certificate through `--ignore-certificate-errors-spki-list`).
//!
//! - The owner picks "as a person" on `/dashboard/signin`, picks her account on the
//!   provider's login page, comes back signed in, pairs the simulated band of a running
//!   simulated bridge with the forms (the code is the one the bridge shows, read from its
//!   status), sees the band's data on her charts, and releases the band.
//! - The clinician signs in the same way "as a clinician" and sees the owner on his panel
//!   (she consented to him); the page names him.
//!
//! The band's data after pairing is published through the simulated bridge's own key and
//! channel (a raw client holding that key): the simulator sends a band's minutes an hour at a
//! time, once the hour is over, which a test cannot wait for.
//!
//! Needs `node` with `tests/oidc/node_modules` and Debian's `chromium` and
//! `chromium-driver` (`.ci/run` installs them and runs ignored tests).

use std::net::TcpListener;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use phr_bridge::identity::BridgeKey;
use phr_bridge::publish::Status;
use phr_bridge::simulate::{self, SimulateConfig};
use phr_e2e::browser::Browser;
use phr_e2e::oidc::{trusting, OidcConfig, OidcProvider, CLINICIAN_SUB, OWNER_PERSON, OWNER_SUB};
use phr_e2e::{grant_consent, minute_steps, send, wait_for, TestGateway};
use phr_gateway::idp::CALLBACK_PATH;

const BRIDGE: &str = "br-hall";
const BAND: &str = "sim-band-0000";

/// Waits until the browser's address ends with `path` (the meta refresh after sign-in, a
/// form's redirect).
async fn arrive(browser: &Browser, path: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("the browser to reach {path}"),
        Duration::from_secs(15),
        || {
            browser
                .current_url()
                .ok()
                .filter(|u| u.split('?').next().unwrap_or_default().ends_with(path))
        },
    )
    .await?;
    Ok(())
}

/// Signs the browser in through the provider, choosing `role` at the gateway and `account`
/// on the provider's login page.
async fn sign_in(
    browser: &Browser,
    gw: &TestGateway,
    role: &str,
    account: &str,
) -> anyhow::Result<()> {
    browser.goto(&gw.url("/dashboard/signin"))?;
    let link = browser.expect(&format!("a[href$='as={role}']"))?;
    browser.click(&link)?;
    // The provider's own login page: one button per account.
    let button = wait_for("the provider's login page", Duration::from_secs(15), || {
        browser.find(&format!("#login-{account}")).ok().flatten()
    })
    .await?;
    browser.click(&button)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node, tests/oidc/node_modules and chromium (.ci/run)"]
async fn owner_and_clinician_sign_in_at_the_provider_and_the_owner_pairs_and_releases_a_band(
) -> anyhow::Result<()> {
    // The gateway's address first: it goes into the provider's client registration.
    let http = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", http.local_addr()?);
    let provider = OidcProvider::start(OidcConfig::phr(&format!("{base}{CALLBACK_PATH}")))?;
    let gw =
        TestGateway::start_on(http, None, |c| c.auth.providers.push(trusting(&provider))).await?;

    // Ana is a person here with storage consent, consenting to the clinician; no band yet.
    gw.enrol(OWNER_PERSON, BRIDGE, &[], Utc::now() - TimeDelta::days(1))?;
    grant_consent(
        &gw,
        OWNER_PERSON,
        json!({"grantee": CLINICIAN_SUB, "grantee_kind": "practitioner", "purpose": "care",
               "data_types": ["step-count", "sleep-episode"]}),
    )?;

    // A simulated bridge in the hall with one band, enrolled, running.
    let mut cfg = SimulateConfig::new(
        BRIDGE,
        1,
        gw.dir.path().join("bridge"),
        gw.gateway.mqtt.clone(),
    );
    cfg.topic_prefix = gw.topics().prefix().to_owned();
    gw.enrol_sim(&mut cfg)?;
    cfg.history = TimeDelta::minutes(30);
    // Its band measured until now (before the pairing, so not Ana's to see); the data she
    // sees below is exactly what the bridge sends after the pairing.
    cfg.until = Some(Utc::now());
    cfg.tick = Duration::from_millis(500);
    let (tx, status) = watch::channel(Status::default());
    let stop_bridge = CancellationToken::new();
    tokio::spawn(simulate::run(cfg, tx, stop_bridge.clone()));
    let mut s = status.clone();
    tokio::time::timeout(Duration::from_secs(20), s.wait_for(|s| s.connected)).await??;

    let browser = Browser::start_with_args(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        provider.spki_sha256()
    )])?;

    // Sign in as the owner.
    sign_in(&browser, &gw, "owner", OWNER_SUB).await?;
    arrive(&browser, "/dashboard/me").await?;
    let who = browser.text(&browser.expect(".who")?)?;
    assert_eq!(who, format!("{OWNER_PERSON} (owner)"));
    assert!(
        !browser
            .cookies()?
            .iter()
            .any(|c| c["name"] == "phr_oidc" && c["value"] != ""),
        "the pending sign-in cookie is gone"
    );

    // Pair the band: the bridge typed, the bands it reports nearby shown, the band picked
    // from them, start, the code the bridge shows, confirm.
    wait_for(
        "the bridge's nearby report",
        Duration::from_secs(20),
        || {
            gw.gateway
                .store
                .nearby_for_owner(OWNER_PERSON, BRIDGE, Utc::now())
                .ok()
                .flatten()
                .filter(|n| n.devices.iter().any(|d| d.device_id == BAND))
        },
    )
    .await?;
    browser.type_text(&browser.expect("#pair-bridge")?, BRIDGE)?;
    browser.click(&browser.expect("#pair-nearby")?)?;
    let pick = wait_for("the nearby list", Duration::from_secs(15), || {
        browser
            .find(&format!("#nearby-list input[value='{BAND}']"))
            .ok()
            .flatten()
    })
    .await?;
    browser.click(&pick)?;
    let start = browser.expect("form[action='/dashboard/me/pairings'] button[type=submit]")?;
    browser.click(&start)?;
    let code = wait_for("the bridge to show a code", Duration::from_secs(15), || {
        status.borrow().pairing_codes.last().map(|c| c.code.clone())
    })
    .await?;
    browser.type_text(&browser.expect("#pair-code")?, &code)?;
    let confirm = browser.expect("form[action$='/confirm'] button[type=submit]")?;
    browser.click(&confirm)?;
    wait_for(
        "the pairing to be confirmed",
        Duration::from_secs(15),
        || {
            browser
                .source()
                .ok()
                .filter(|page| page.contains("<h1>Paired</h1>"))
        },
    )
    .await?;
    let open = |gw: &TestGateway| -> anyhow::Result<bool> {
        Ok(gw
            .gateway
            .store
            .bindings_of(OWNER_PERSON)?
            .iter()
            .any(|b| b.device_id == BAND && b.valid_to.is_none()))
    };
    assert!(open(&gw)?, "the band is Ana's");

    // The band's minutes since the pairing, through the bridge's own channel.
    let key = BridgeKey::load_or_create(&gw.dir.path().join("bridge"))?;
    let mut raw = gw.raw_bridge_with(BRIDGE, key).await?;
    let minute = (Utc::now() + TimeDelta::minutes(1)).duration_trunc(TimeDelta::minutes(1))?;
    let ack = send(
        &mut raw,
        BAND,
        vec![
            minute_steps(BAND, BRIDGE, minute, 271),
            minute_steps(BAND, BRIDGE, minute + TimeDelta::minutes(1), 266),
        ],
    )
    .await?;
    assert_eq!(ack.stored, 2, "{ack:?}");
    browser.goto(&gw.url("/dashboard/me/charts"))?;
    let charts = browser.source()?;
    assert!(charts.contains("537"), "{charts}");

    // Release it, with the confirmation page.
    browser.goto(&gw.url("/dashboard/me"))?;
    let release = browser.expect(&format!("a[href$='/devices/{BAND}/release']"))?;
    browser.click(&release)?;
    let really = browser.expect("button.danger")?;
    browser.click(&really)?;
    arrive(&browser, "/dashboard/me").await?;
    assert!(!open(&gw)?, "the band is released");

    // Sign out: the gateway's session ends (the provider's own session is the provider's).
    browser.click(&browser.expect("form[action='/dashboard/signout'] button")?)?;
    wait_for("the session to end", Duration::from_secs(15), || {
        browser.cookies().ok().filter(|cookies| {
            !cookies
                .iter()
                .any(|c| c["name"] == "phr_session" && c["value"] != "")
        })
    })
    .await?;
    browser.goto(&gw.url("/dashboard/me"))?;
    assert!(
        !browser.source()?.contains("ana (owner)"),
        "signed out: {}",
        browser.source()?
    );
    drop(browser);

    // The clinician, in his own browser, sees Ana on his panel.
    let browser = Browser::start_with_args(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        provider.spki_sha256()
    )])?;
    sign_in(&browser, &gw, "clinician", CLINICIAN_SUB).await?;
    arrive(&browser, "/dashboard/clinician").await?;
    assert_eq!(
        browser.text(&browser.expect(".who")?)?,
        format!("{CLINICIAN_SUB} (clinician)")
    );
    let panel = browser.source()?;
    assert!(panel.contains(OWNER_PERSON), "{panel}");

    stop_bridge.cancel();
    Ok(())
}
