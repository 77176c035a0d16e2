//! Pairing and releasing a band from the owner's dashboard over real HTTP: the forms start a
//! pairing through the real gateway, a raw bridge (the enrolled key) reports the band and
//! computes the code it would show, the owner types it; wrong codes, forged or missing CSRF
//! tokens and another owner's session change nothing; release goes through a confirmation
//! page. Every step is checked in the owner's disclosure log.

use std::time::Duration;

use chrono::Utc;

use phr_e2e::{browse, wait_for, Page, RawBridge, TestGateway};
use phr_gateway::dashboard::{owner, pairing, session, Role};
use phr_schema::PairingReport;

const BRIDGE: &str = "br-hall";
const BAND: &str = "band-7";

/// A browser signed in to the dashboard as an owner (also used by [`crate::nearby`]).
pub(crate) struct Browser<'g> {
    gw: &'g TestGateway,
    session: String,
}

impl<'g> Browser<'g> {
    /// Signs in as `person` with a one-time link: its page, then its form.
    pub(crate) fn sign_in(gw: &'g TestGateway, person: &str) -> anyhow::Result<Self> {
        let code = gw.gateway.store.issue_signin_code(
            person,
            Role::Owner,
            session::SIGNIN_CODE_TTL,
            Utc::now(),
        )?;
        let link = gw.url(&format!("{}?code={code}", session::SIGN_IN));
        let page = browse("GET", &link, &[], None)?;
        anyhow::ensure!(page.status == 200, "{}", page.body);
        let nonce = page.cookie(session::SIGNIN_COOKIE).unwrap_or_default();
        let csrf = page.field("csrf").unwrap_or_default();
        let a = browse(
            "POST",
            &gw.url(session::SIGN_IN),
            &[(session::SIGNIN_COOKIE, &nonce)],
            Some(&[("code", &code), ("csrf", &csrf)]),
        )?;
        anyhow::ensure!(a.status == 303, "sign-in answered {}: {}", a.status, a.body);
        let session = a.cookie(session::COOKIE).unwrap_or_default();
        anyhow::ensure!(!session.is_empty(), "no session cookie");
        Ok(Self { gw, session })
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Page> {
        browse(
            "GET",
            &self.gw.url(path),
            &[(session::COOKIE, &self.session)],
            None,
        )
    }

    pub(crate) fn post(&self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<Page> {
        browse(
            "POST",
            &self.gw.url(path),
            &[(session::COOKIE, &self.session)],
            Some(form),
        )
    }

    /// The CSRF token of this session, as the home page's forms carry it.
    pub(crate) fn csrf(&self) -> anyhow::Result<String> {
        let home = self.get(owner::HOME)?;
        anyhow::ensure!(home.status == 200, "{}", home.body);
        home.field("csrf")
            .ok_or_else(|| anyhow::anyhow!("no csrf field"))
    }

    /// Sends the start form; the id of the pairing it led to.
    fn start(&self, csrf: &str, bridge: &str, device: &str) -> anyhow::Result<uuid::Uuid> {
        let a = self.post(
            pairing::PAIRINGS,
            &[("csrf", csrf), ("bridge", bridge), ("device", device)],
        )?;
        anyhow::ensure!(a.status == 303, "start answered {}: {}", a.status, a.body);
        let to = a.location.unwrap_or_default();
        let id = to
            .strip_prefix("/dashboard/me/pairings/")
            .ok_or_else(|| anyhow::anyhow!("redirected to {to}"))?;
        Ok(id.parse()?)
    }
}

/// What the bridge does for pairing `id` of `band`: reports the band (sealed with its
/// channel key) and returns the code it would show.
async fn bridge_answers(
    gw: &TestGateway,
    raw: &RawBridge,
    id: uuid::Uuid,
    band: &str,
) -> anyhow::Result<String> {
    let channel = raw.key.channel(&gw.gateway.channels.public_key())?;
    let topic = gw.topics().pairing_reports(&raw.bridge);
    let report = serde_json::to_vec(&PairingReport {
        pairing_id: id,
        device_id: band.into(),
        address: Some("02:00:00:00:00:07".into()),
        serial_number: Some("SN-7".into()),
    })?;
    raw.publish_to(topic.clone(), channel.seal(&topic, &report, [7; 24]))
        .await?;
    let store = gw.gateway.store.clone();
    let person = "ana";
    wait_for("the bridge's report", Duration::from_secs(10), || {
        store
            .pairing_summary(person, id)
            .ok()
            .flatten()
            .filter(|p| p.reported)
    })
    .await?;
    Ok(channel.pairing_code(&id, band))
}

/// A code that is not `code`.
fn wrong(code: &str) -> &'static str {
    if code == "000000" {
        "111111"
    } else {
        "000000"
    }
}

/// The purposes of `person`'s disclosure log, oldest first.
fn log_of(gw: &TestGateway, person: &str) -> Vec<String> {
    gw.gateway
        .store
        .disclosures(person, 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|l| l.entry.purpose)
        .collect()
}

fn open_binding(gw: &TestGateway, person: &str, band: &str) -> bool {
    gw.gateway
        .store
        .bindings_of(person)
        .unwrap()
        .iter()
        .any(|b| b.device_id == band && b.valid_to.is_none())
}

/// A gateway with an enrolled raw bridge, and ana (Tokyo) signed in to the dashboard.
async fn hall() -> anyhow::Result<(TestGateway, RawBridge)> {
    let gw = TestGateway::start().await?;
    gw.gateway.store.add_person("ana", "ana", "Asia/Tokyo")?;
    gw.gateway.store.add_person("bo", "bo", "Europe/Paris")?;
    let raw = gw.raw_bridge(BRIDGE).await?;
    Ok((gw, raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_pairs_a_band_with_the_forms_and_the_code_the_bridge_shows() -> anyhow::Result<()>
{
    let (gw, raw) = hall().await?;
    let ana = Browser::sign_in(&gw, "ana")?;
    let csrf = ana.csrf()?;
    let home = ana.get(owner::HOME)?;
    assert!(home.body.contains("Pair a band"), "{}", home.body);
    assert!(
        !home.body.contains("option value=\"br-hall\""),
        "ana has not used the bridge yet"
    );

    let id = ana.start(&csrf, BRIDGE, BAND)?;
    let pending = ana.get(&pairing::pairing_path(id))?;
    assert_eq!(pending.status, 200, "{}", pending.body);
    for shown in [
        "Type the code the bridge shows",
        "<code>band-7</code>",
        "<code>br-hall</code>",
        "JST", // the expiry, in ana's zone
        "5 of 5",
    ] {
        assert!(pending.body.contains(shown), "{shown}: {}", pending.body);
    }

    let code = bridge_answers(&gw, &raw, id, BAND).await?;
    let confirm = pairing::CONFIRM.replace("{pairing_id}", &id.to_string());
    let a = ana.post(&confirm, &[("csrf", &csrf), ("code", wrong(&code))])?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("Wrong code. 4 tries left."), "{}", a.body);
    assert!(!open_binding(&gw, "ana", BAND));

    let a = ana.post(&confirm, &[("csrf", &csrf), ("code", &code)])?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("is yours from now on"), "{}", a.body);
    assert!(open_binding(&gw, "ana", BAND));

    // Home: the bridge is offered next time, the band can be released, the pairing listed.
    let home = ana.get(owner::HOME)?;
    assert!(
        home.body.contains("option value=\"br-hall\""),
        "{}",
        home.body
    );
    assert!(
        home.body
            .contains(&format!("href=\"{}\"", pairing::release_path(BAND))),
        "{}",
        home.body
    );
    assert!(home.body.contains(">paired<"), "{}", home.body);

    // The same code again: the pairing is used.
    let a = ana.post(&confirm, &[("csrf", &csrf), ("code", &code)])?;
    assert_eq!(a.status, 400, "{}", a.body);

    let log = log_of(&gw, "ana");
    for step in [
        "started pairing of device band-7 through bridge br-hall",
        "pairing refused: wrong_code",
        "paired device band-7 through bridge br-hall",
        "pairing refused: pairing_used",
    ] {
        assert!(log.iter().any(|l| l == step), "{step} not in {log:?}");
    }
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_starts_and_too_many_wrong_codes_are_shown_with_the_reason() -> anyhow::Result<()> {
    let (gw, raw) = hall().await?;
    let ana = Browser::sign_in(&gw, "ana")?;
    let csrf = ana.csrf()?;

    // A bridge nobody enrolled.
    let a = ana.post(
        pairing::PAIRINGS,
        &[("csrf", &csrf), ("bridge", "br-nowhere"), ("device", BAND)],
    )?;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.body
            .contains("the bridge is not enrolled with this gateway"),
        "{}",
        a.body
    );
    // Not an id at all: nothing started, nothing logged.
    let before = log_of(&gw, "ana").len();
    let a = ana.post(
        pairing::PAIRINGS,
        &[
            ("csrf", &csrf),
            ("bridge", BRIDGE),
            ("device", "band 7/../x"),
        ],
    )?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(log_of(&gw, "ana").len(), before);

    // Five wrong codes end the pairing; the list says why.
    let id = ana.start(&csrf, BRIDGE, BAND)?;
    let code = bridge_answers(&gw, &raw, id, BAND).await?;
    let confirm = pairing::CONFIRM.replace("{pairing_id}", &id.to_string());
    let mut last = String::new();
    for _ in 0..5 {
        last = ana
            .post(&confirm, &[("csrf", &csrf), ("code", wrong(&code))])?
            .body;
    }
    assert!(last.contains("no tries are left"), "{last}");
    let a = ana.post(&confirm, &[("csrf", &csrf), ("code", &code)])?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(!open_binding(&gw, "ana", BAND));
    // Running out of tries costs a wait (doubling each time) before the next.
    let a = ana.post(
        pairing::PAIRINGS,
        &[("csrf", &csrf), ("bridge", BRIDGE), ("device", BAND)],
    )?;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(
        a.body.contains("You can start another pairing in "),
        "{}",
        a.body
    );
    let home = ana.get(owner::HOME)?;
    assert!(home.body.contains("too many wrong codes"), "{}", home.body);
    assert!(
        home.body
            .contains("the bridge is not enrolled with this gateway"),
        "{}",
        home.body
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_the_sessions_token_or_from_another_owner_change_nothing(
) -> anyhow::Result<()> {
    let (gw, raw) = hall().await?;
    let ana = Browser::sign_in(&gw, "ana")?;
    let bo = Browser::sign_in(&gw, "bo")?;
    let csrf = ana.csrf()?;
    let bo_csrf = bo.csrf()?;
    assert_ne!(csrf, bo_csrf);

    // Start: no token, another session's token.
    for token in [None, Some(bo_csrf.as_str()), Some("forged")] {
        let mut form = vec![("bridge", BRIDGE), ("device", BAND)];
        form.extend(token.map(|t| ("csrf", t)));
        let a = ana.post(pairing::PAIRINGS, &form)?;
        assert_eq!(a.status, 403, "{token:?}: {}", a.body);
    }
    assert!(gw.gateway.store.recent_pairings("ana", 10)?.is_empty());

    let id = ana.start(&csrf, BRIDGE, BAND)?;
    let code = bridge_answers(&gw, &raw, id, BAND).await?;
    let confirm = pairing::CONFIRM.replace("{pairing_id}", &id.to_string());

    // Confirm without ana's token, even with the right code: nothing happens.
    for token in [None, Some(bo_csrf.as_str()), Some("forged")] {
        let mut form = vec![("code", code.as_str())];
        form.extend(token.map(|t| ("csrf", t)));
        let a = ana.post(&confirm, &form)?;
        assert_eq!(a.status, 403, "{token:?}: {}", a.body);
    }
    // Bo, with his own valid session and the right code, cannot see or confirm it.
    assert_eq!(bo.get(&pairing::pairing_path(id))?.status, 404);
    let a = bo.post(&confirm, &[("csrf", &bo_csrf), ("code", &code)])?;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(!open_binding(&gw, "bo", BAND));
    assert!(!open_binding(&gw, "ana", BAND));
    let p = gw.gateway.store.pairing_summary("ana", id)?.unwrap();
    assert_eq!((p.state.as_str(), p.attempts), ("pending", 0));

    // Ana's own confirmation still works afterwards.
    let a = ana.post(&confirm, &[("csrf", &csrf), ("code", &code)])?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(open_binding(&gw, "ana", BAND));

    // Bo cannot pair ana's band through his dashboard; ana is told he tried.
    let a = bo.post(
        pairing::PAIRINGS,
        &[("csrf", &bo_csrf), ("bridge", BRIDGE), ("device", BAND)],
    )?;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.body
            .contains("the device is bound to someone else; its owner releases it first"),
        "{}",
        a.body
    );
    let told =
        format!("someone else tried to pair your device {BAND} through bridge {BRIDGE}: refused");
    assert!(log_of(&gw, "ana").contains(&told));
    let bo_home = bo.get(owner::HOME)?;
    assert!(
        bo_home
            .body
            .contains("the device is bound to someone else; its owner releases it first"),
        "{}",
        bo_home.body
    );

    // Release: no token, a forged one, or bo's session: the binding stays.
    let release = pairing::release_path(BAND);
    for token in [None, Some(bo_csrf.as_str()), Some("forged")] {
        let form: Vec<(&str, &str)> = token.map(|t| ("csrf", t)).into_iter().collect();
        let a = ana.post(&release, &form)?;
        assert_eq!(a.status, 403, "{token:?}: {}", a.body);
    }
    assert_eq!(bo.get(&release)?.status, 404);
    let a = bo.post(&release, &[("csrf", &bo_csrf)])?;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(open_binding(&gw, "ana", BAND));
    assert!(!log_of(&gw, "ana").iter().any(|l| l.starts_with("released")));
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_band_is_released_through_its_confirmation_page_and_the_release_is_logged(
) -> anyhow::Result<()> {
    let (gw, raw) = hall().await?;
    let ana = Browser::sign_in(&gw, "ana")?;
    let csrf = ana.csrf()?;
    let id = ana.start(&csrf, BRIDGE, BAND)?;
    let code = bridge_answers(&gw, &raw, id, BAND).await?;
    let confirm = pairing::CONFIRM.replace("{pairing_id}", &id.to_string());
    assert_eq!(
        ana.post(&confirm, &[("csrf", &csrf), ("code", &code)])?
            .status,
        200
    );

    let release = pairing::release_path(BAND);
    let page = ana.get(&release)?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Release this band"), "{}", page.body);
    assert!(
        page.body
            .contains(&format!("form method=\"post\" action=\"{release}\"")),
        "{}",
        page.body
    );
    assert!(
        open_binding(&gw, "ana", BAND),
        "the page alone changes nothing"
    );

    let a = ana.post(&release, &[("csrf", &csrf)])?;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.location.as_deref(), Some(owner::HOME));
    assert!(!open_binding(&gw, "ana", BAND));
    let closed = gw.gateway.store.bindings_of("ana")?;
    assert_eq!(closed.len(), 1);
    assert!(closed[0].valid_to.is_some());
    assert!(log_of(&gw, "ana")
        .iter()
        .any(|l| l == "released device band-7"));

    // Released: no link, no page, a second release is the 404 page.
    let home = ana.get(owner::HOME)?;
    assert!(
        !home.body.contains(&format!("href=\"{release}\"")),
        "{}",
        home.body
    );
    assert_eq!(ana.get(&release)?.status, 404);
    assert_eq!(ana.post(&release, &[("csrf", &csrf)])?.status, 404);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_said_plainly_and_cannot_pair() -> anyhow::Result<()> {
    let (gw, raw) = hall().await?;
    let ana = Browser::sign_in(&gw, "ana")?;
    let csrf = ana.csrf()?;
    let id = ana.start(&csrf, BRIDGE, BAND)?;
    let code = bridge_answers(&gw, &raw, id, BAND).await?;
    // The code's five minutes pass on the gateway's clock (which it compares the expiry
    // with on every read and confirmation).
    gw.clock
        .advance(phr_gateway::store::pairing::TTL + chrono::TimeDelta::seconds(1));

    let page = ana.get(&pairing::pairing_path(id))?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(">expired<"), "{}", page.body);
    assert!(
        !page.body.contains("name=\"code\""),
        "no code form: {}",
        page.body
    );

    let confirm = pairing::CONFIRM.replace("{pairing_id}", &id.to_string());
    let a = ana.post(&confirm, &[("csrf", &csrf), ("code", &code)])?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("The code has expired."), "{}", a.body);
    assert!(!open_binding(&gw, "ana", BAND));
    let home = ana.get(owner::HOME)?;
    assert!(
        home.body.contains("the pairing has expired"),
        "{}",
        home.body
    );
    assert!(log_of(&gw, "ana")
        .iter()
        .any(|l| l == "pairing refused: pairing_expired"));
    gw.stop().await;
    Ok(())
}
