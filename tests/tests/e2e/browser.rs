//! The dashboards in a real browser: Debian's headless Chromium driven over WebDriver, against
//! a real gateway (port 0) holding a known data set. A clinician signs in with a one-time link
//! (the page it opens names the account; a click agrees) and sees exactly the consenting patients; the patient page's data tables carry the totals
//! that were sent, a gap where a day has none, and the stages of a chosen night; another
//! patient's URL is a 404; the owner withdraws the consent and the clinician's next load no
//! longer lists her; the owner's disclosure log lists the clinician's views. A screenshot of
//! each view is saved under `target/test-artifacts/dashboards/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, DurationRound, FixedOffset, NaiveDate, TimeDelta, Utc};
use serde_json::json;

use phr_e2e::browser::Browser;
use phr_e2e::{grant_consent, minute_steps, send, TestGateway};
use phr_gateway::dashboard::Role;
use phr_schema::record::{
    IntervalFrame, Provenance, SleepEpisode, SleepStage, SleepStageKind, TimeInterval,
};

const CLINICIAN: &str = "dr-who";

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("PHR_TEST_ARTIFACTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/dashboards"),
        PathBuf::from,
    );
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn jst() -> FixedOffset {
    FixedOffset::east_opt(9 * 3600).expect("offset")
}

/// A night with every stage: awake 20 min, light 2 h, deep 1 h 30, REM 1 h, light 1 h,
/// awake 10 min.
const NIGHT: [(SleepStageKind, i64); 6] = [
    (SleepStageKind::Awake, 20),
    (SleepStageKind::Light, 120),
    (SleepStageKind::Deep, 90),
    (SleepStageKind::Rem, 60),
    (SleepStageKind::Light, 60),
    (SleepStageKind::Awake, 10),
];

/// A shorter night with another order, the latest one (what the page shows by default).
const LAST_NIGHT: [(SleepStageKind, i64); 3] = [
    (SleepStageKind::Light, 200),
    (SleepStageKind::Deep, 100),
    (SleepStageKind::Rem, 50),
];

fn stage_name(kind: SleepStageKind) -> &'static str {
    match kind {
        SleepStageKind::Awake => "awake",
        SleepStageKind::Light => "light",
        SleepStageKind::Deep => "deep",
        SleepStageKind::Rem => "rem",
    }
}

/// An episode from `start` made of `plan`, with its minutes per stage.
fn night(
    device: &str,
    start: DateTime<Utc>,
    plan: &[(SleepStageKind, i64)],
) -> (phr_schema::Record, BTreeMap<&'static str, i64>) {
    let s = start.fixed_offset();
    let mut at = s;
    let mut stages = Vec::new();
    let mut minutes = BTreeMap::new();
    for &(kind, m) in plan {
        stages.push(SleepStage {
            stage: kind,
            time_interval: TimeInterval {
                start_date_time: at,
                end_date_time: at + TimeDelta::minutes(m),
            },
        });
        *minutes.entry(stage_name(kind)).or_insert(0) += m;
        at += TimeDelta::minutes(m);
    }
    let record = phr_schema::Record::new(
        device,
        "br-a",
        at,
        Provenance::sensed("test/1"),
        phr_schema::Body::SleepEpisode(SleepEpisode {
            effective_time_frame: IntervalFrame::new(s, at),
            is_main_sleep: true,
            latency_to_sleep_onset: None,
            total_sleep_time: None,
            number_of_awakenings: None,
            sleep_maintenance_efficiency_percentage: None,
            stages,
        }),
    );
    (record, minutes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them"]
async fn clinician_and_owner_dashboards_in_a_real_browser() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let now = Utc::now();
    gw.enrol(
        "pat-a",
        "br-a",
        &["band-a".into()],
        now - TimeDelta::days(40),
    )?;
    gw.enrol(
        "pat-b",
        "br-b",
        &["band-b".into()],
        now - TimeDelta::days(40),
    )?;
    let today = now.with_timezone(&jst()).date_naive();

    // Pat A: steps on the five days before today except the third (a gap), a few minutes
    // each at local noon; a night ending on the day before yesterday.
    let mut expected: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    let mut records = Vec::new();
    for back in 1..=5i64 {
        if back == 3 {
            continue;
        }
        let day = today - TimeDelta::days(back);
        let noon = day
            .and_hms_opt(12, 0, 0)
            .expect("noon")
            .and_local_timezone(jst())
            .single()
            .expect("JST")
            .with_timezone(&Utc);
        for m in 0..(3 + back) {
            let n = 20 * back + m;
            records.push(minute_steps(
                "band-a",
                "br-a",
                noon + TimeDelta::minutes(m),
                n,
            ));
            *expected.entry(day).or_insert(0) += n;
        }
    }
    let night_day = today - TimeDelta::days(2);
    let bed = (night_day - TimeDelta::days(1))
        .and_hms_opt(23, 0, 0)
        .expect("bed")
        .and_local_timezone(jst())
        .single()
        .expect("JST")
        .with_timezone(&Utc)
        .duration_trunc(TimeDelta::minutes(1))?;
    let (sleep, stage_minutes) = night("band-a", bed, &NIGHT);
    records.push(sleep);
    let (last, _) = night("band-a", bed + TimeDelta::days(1), &LAST_NIGHT);
    records.push(last);
    let mut a = gw.raw_bridge("br-a").await?;
    let n = records.len() as u32;
    let ack = send(&mut a, "band-a", records).await?;
    assert_eq!(ack.stored, n, "{ack:?}");
    let mut b = gw.raw_bridge("br-b").await?;
    let other = vec![minute_steps(
        "band-b",
        "br-b",
        now - TimeDelta::hours(30),
        99,
    )];
    assert_eq!(send(&mut b, "band-b", other).await?.stored, 1);
    // Pat A consents to the clinician; Pat B does not.
    grant_consent(
        &gw,
        "pat-a",
        json!({"grantee": CLINICIAN, "grantee_kind": "practitioner", "purpose": "treatment",
               "data_types": ["step-count", "sleep-episode"]}),
    )?;

    let shots = artifacts();
    let link = |who: &str, role: Role| -> anyhow::Result<String> {
        let code =
            gw.gateway
                .store
                .issue_signin_code(who, role, TimeDelta::minutes(15), Utc::now())?;
        Ok(gw.url(&format!("/dashboard/signin?code={code}")))
    };
    let browser = tokio::task::block_in_place(Browser::start)?;
    let br = &browser;
    // Opening a link shows whom it signs in; the person agrees with the page's button.
    let sign_in = |url: &str, who: &str| -> anyhow::Result<()> {
        br.goto(url)?;
        let heading = br.text(&br.expect("h1")?)?;
        anyhow::ensure!(
            heading.contains(who),
            "the confirmation names {who}: {heading}"
        );
        let agree = br.expect("form[action=\"/dashboard/signin\"] button[type=submit]")?;
        br.click(&agree)?;
        // The click returns once the form is sent, not once the next page has loaded: wait
        // for the browser to leave the sign-in page (a loaded machine takes a moment).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while br.current_url()?.contains("/dashboard/signin") {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "still on the sign-in page after confirming"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    };

    // The clinician signs in: the link leaves no code in the address bar, the session cookie
    // is HttpOnly and SameSite=Strict.
    sign_in(&link(CLINICIAN, Role::Clinician)?, CLINICIAN)?;
    assert!(
        br.current_url()?.ends_with("/dashboard/clinician"),
        "{}",
        br.current_url()?
    );
    let cookie = br
        .cookies()?
        .into_iter()
        .find(|c| c["name"] == "phr_session")
        .expect("a session cookie");
    assert_eq!(
        (cookie["httpOnly"].as_bool(), cookie["sameSite"].as_str()),
        (Some(true), Some("Strict"))
    );
    let rows = br.find_all("table#panel tr[data-person]")?;
    let listed: Vec<String> = rows
        .iter()
        .map(|r| {
            br.attribute(r, "data-person")
                .map(Option::unwrap_or_default)
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(listed, ["pat-a"], "exactly the consenting patients");
    br.screenshot(&shots.join("clinician-panel.png"))?;

    // The patient page: daily totals from the chart's data table, the gap, the night.
    br.goto(&gw.url("/dashboard/clinician/patients/pat-a?days=30"))?;
    let mut shown: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    for row in br.find_all("table#daily-steps tr[data-date]")? {
        let date: NaiveDate = br
            .attribute(&row, "data-date")?
            .unwrap_or_default()
            .parse()?;
        let steps = br.find_in(&row, "td.steps")?;
        let text = br.content(&steps)?.replace([',', ' '], "");
        shown.insert(date, text.parse()?);
    }
    assert_eq!(shown, expected, "daily totals as sent, the gap day absent");
    assert!(!shown.contains_key(&(today - TimeDelta::days(3))));
    let night_row = br.expect(&format!("table#night-stages tr[data-date=\"{night_day}\"]"))?;
    for (stage, minutes) in &stage_minutes {
        let cell = br.find_in(&night_row, &format!("td.{stage}"))?;
        let text = br.content(&cell)?;
        assert_eq!(
            text.trim().parse::<f64>().ok(),
            Some(*minutes as f64),
            "{stage}: {text}"
        );
    }
    br.screenshot(&shots.join("clinician-patient.png"))?;

    // A chosen night's hypnogram: the earlier night, not the latest one shown by default.
    let stages_of = |br: &Browser| -> anyhow::Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        for row in br.find_all("table#hypnogram tr[data-stage]")? {
            let stage = br.attribute(&row, "data-stage")?.unwrap_or_default();
            let minutes = br.content(&br.find_in(&row, "td.num")?)?;
            out.push((stage, minutes.trim().parse()?));
        }
        Ok(out)
    };
    let planned = |plan: &[(SleepStageKind, i64)]| -> Vec<(String, f64)> {
        plan.iter()
            .map(|&(k, m)| (stage_name(k).to_owned(), m as f64))
            .collect()
    };
    assert_eq!(
        stages_of(br)?,
        planned(&LAST_NIGHT),
        "by default, the latest night"
    );
    br.goto(&gw.url(&format!(
        "/dashboard/clinician/patients/pat-a?days=30&night={night_day}"
    )))?;
    assert_eq!(
        stages_of(br)?,
        planned(&NIGHT),
        "the chosen night, stage by stage"
    );
    br.screenshot(&shots.join("clinician-patient-hypnogram.png"))?;

    // Pat B did not consent: her page is a 404, like an unknown id.
    br.goto(&gw.url("/dashboard/clinician/patients/pat-b"))?;
    assert!(br.title()?.starts_with("Not found"), "{}", br.title()?);
    br.goto(&gw.url("/dashboard/clinician/patients/nobody-at-all"))?;
    assert!(br.title()?.starts_with("Not found"));

    // Pat A signs in (a new session in the same browser) and withdraws the consent.
    sign_in(&link("pat-a", Role::Owner)?, "pat-a")?;
    assert!(
        br.current_url()?.ends_with("/dashboard/me"),
        "{}",
        br.current_url()?
    );
    let withdraw = br
        .find_all("a.button[href$=\"/withdraw\"]")?
        .into_iter()
        .find(|a| {
            br.attribute(a, "aria-label")
                .ok()
                .flatten()
                .is_some_and(|l| l.contains(CLINICIAN))
        })
        .expect("a withdraw button for the clinician's consent");
    // The log already lists the clinician's views.
    let log = br.text(&br.expect("table.log")?)?;
    assert!(log.contains(CLINICIAN), "{log}");
    br.screenshot(&shots.join("owner.png"))?;
    br.click(&withdraw)?;
    let confirm = br.expect("form[action$=\"/withdraw\"] button[type=submit]")?;
    br.screenshot(&shots.join("owner-withdraw-confirm.png"))?;
    br.click(&confirm)?;
    // The click returns once the form is sent, not once the next page has loaded (seen
    // failing on a loaded machine): wait for the redirect back to my data.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !br.current_url()?.ends_with("/dashboard/me") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "not back on /dashboard/me after withdrawing: {}",
            br.current_url()?
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let consents = br.text(&br.expect("#consents-h")?)?;
    assert!(!consents.is_empty());

    // The clinician's next load: Pat A is gone.
    sign_in(&link(CLINICIAN, Role::Clinician)?, CLINICIAN)?;
    assert!(br.find_all("table#panel tr[data-person]")?.is_empty());
    assert!(br.find("#no-patients")?.is_some());
    br.screenshot(&shots.join("clinician-panel-after-withdrawal.png"))?;
    br.goto(&gw.url("/dashboard/clinician/patients/pat-a"))?;
    assert!(br.title()?.starts_with("Not found"));
    drop(browser);
    gw.stop().await;
    Ok(())
}
