//! Attacks on the writes that move data between people (issue #12, item 4): a band handed from
//! one owner to another must not let either claim, unlink or erase what was measured while the
//! other held it, or while nobody did.
//!
//! The band `band-h` goes through these periods (minutes from `base`, a recent past hour):
//! - before `A_FROM`: never bound to anyone (its first holder's pre-pairing history);
//! - `[A_FROM, A_TO)`: bound to ana, then ana's binding is closed (she released the band);
//! - `[A_TO, B_FROM)`: bound to nobody (the band changing hands);
//! - from `B_FROM` on: bound to ben, open.
//!
//! Each record carries a distinct step count naming where it was measured, so a test reads
//! whose records went where without trusting the code under test.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};

use phr_e2e::{call, minute_steps, send, step_counts, TestGateway};

const BAND: &str = "band-h";
const BRIDGE: &str = "br-h";

// Period boundaries, in minutes after `base`.
const A_FROM: i64 = 60;
const A_TO: i64 = 240;
const B_FROM: i64 = 360;

// Step counts: quarantined (sent before any binding existed) and stored ones.
const Q_PRE: i64 = 1;
const Q_ANA: i64 = 2;
const Q_GAP: i64 = 3;
const Q_BEN: i64 = 4;
const S_ANA: i64 = 12;
const GAP_LATE: i64 = 13;
const S_BEN: i64 = 14;

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct HandedOver {
    gw: TestGateway,
    base: DateTime<Utc>,
}

impl HandedOver {
    fn at(&self, minutes: i64) -> DateTime<Utc> {
        self.base + TimeDelta::minutes(minutes)
    }

    /// The whole history of the band and beyond, as one range.
    fn everything(&self) -> Value {
        json!({"device_id": BAND, "from": rfc(self.at(-60)), "to": rfc(Utc::now() + TimeDelta::minutes(5))})
    }

    fn range(&self, from: i64, to: i64) -> Value {
        json!({"device_id": BAND, "from": rfc(self.at(from)), "to": rfc(self.at(to))})
    }

    fn post(&self, who: &str, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        call(
            "POST",
            &self.gw.url(path),
            Some(&self.gw.owner_token(who)),
            Some(body),
        )
    }

    /// The step counts of the band's quarantined rows, in measured order (read from the
    /// SQLite file itself, not through the code under test).
    fn quarantined(&self) -> anyhow::Result<Vec<i64>> {
        let conn = rusqlite::Connection::open_with_flags(
            self.gw.config.data_dir.join("phr.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut stmt = conn.prepare(
            "SELECT json_extract(body, '$.body.step_count') FROM quarantine WHERE device_id = ?1 ORDER BY start_ms",
        )?;
        let rows = stmt.query_map([BAND], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn quarantine_summary(&self, who: &str) -> anyhow::Result<Value> {
        let (s, b) = call(
            "GET",
            &self.gw.url("/api/v1/me/quarantine"),
            Some(&self.gw.owner_token(who)),
            None,
        )?;
        anyhow::ensure!(s == 200, "{b}");
        Ok(b["quarantine"].clone())
    }
}

/// Ana, ben (and cai, who never held the band) with storage consent; the band's history as
/// described at the top, with one quarantined record in each period and one stored record in
/// each owner's period (plus one more in the gap, arrived after the hand-over).
async fn handed_over() -> anyhow::Result<HandedOver> {
    let gw = TestGateway::start().await?;
    let base = (Utc::now() - TimeDelta::hours(10)).duration_trunc(TimeDelta::minutes(1))?;
    for who in ["ana", "ben", "cai"] {
        gw.enrol(who, BRIDGE, &[], base - TimeDelta::days(1))?;
    }
    let h = HandedOver { gw, base };
    let mut bridge = h.gw.raw_bridge(BRIDGE).await?;
    // History the band held before anyone paired it: quarantined, no binding.
    let early = [
        (30, Q_PRE),
        (A_FROM + 60, Q_ANA),
        (A_TO + 60, Q_GAP),
        (B_FROM + 60, Q_BEN),
    ]
    .iter()
    .map(|&(m, n)| minute_steps(BAND, BRIDGE, h.at(m), n))
    .collect();
    assert_eq!(send(&mut bridge, BAND, early).await?.quarantined, 4);

    let store = &h.gw.gateway.store;
    store.add_device(BAND, BRIDGE, None)?;
    store.bind(BAND, "ana", h.at(A_FROM))?;
    // Ana gives the band away at A_TO (what `DELETE /api/v1/me/devices/{id}/binding` does now).
    assert!(store.release_binding("ana", BAND, h.at(A_TO))?);
    store.bind(BAND, "ben", h.at(B_FROM))?;

    let later = [
        (A_FROM + 120, S_ANA),
        (A_TO + 90, GAP_LATE),
        (B_FROM + 120, S_BEN),
    ]
    .iter()
    .map(|&(m, n)| minute_steps(BAND, BRIDGE, h.at(m), n))
    .collect();
    let ack = send(&mut bridge, BAND, later).await?;
    assert_eq!((ack.stored, ack.quarantined), (2, 1), "{ack:?}");
    assert_eq!(step_counts(&h.gw, "ana")?, [S_ANA]);
    assert_eq!(step_counts(&h.gw, "ben")?, [S_BEN]);
    assert_eq!(h.quarantined()?, [Q_PRE, Q_ANA, Q_GAP, GAP_LATE, Q_BEN]);
    Ok(h)
}

const CONFIRM: &str = "/api/v1/me/quarantine/confirm";
const UNLINK: &str = "/api/v1/me/corrections/unlink";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_claims_only_the_quarantine_measured_in_their_own_binding() -> anyhow::Result<()>
{
    let h = handed_over().await?;

    // What ben is shown is what he may claim: one record, measured while he held the band.
    let q = h.quarantine_summary("ben")?;
    assert_eq!(q.as_array().map(Vec::len), Some(1), "{q}");
    assert_eq!(
        (q[0]["device_id"].as_str(), q[0]["records"].as_u64()),
        (Some(BAND), Some(1)),
        "{q}"
    );

    // Ben claims everything: he gets his own record only, and is told how many were left.
    let (s, b) = h.post("ben", CONFIRM, h.everything())?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["correction"]["records"].as_u64(), Some(1), "{b}");
    let left = &b["correction"]["left"];
    assert_eq!(
        left,
        &json!([{"reason": "outside_your_bindings", "records": 4}]),
        "{b}"
    );
    assert!(
        !b.to_string().contains("step_count"),
        "a count, no data: {b}"
    );
    assert_eq!(step_counts(&h.gw, "ben")?, [Q_BEN, S_BEN]);
    assert_eq!(h.quarantined()?, [Q_PRE, Q_ANA, Q_GAP, GAP_LATE]);

    // Ana, who no longer holds the band, still claims what was measured while she did (and,
    // as its first holder, the history from before anyone paired it); never the gap.
    let q = h.quarantine_summary("ana")?;
    assert_eq!(q[0]["records"].as_u64(), Some(2), "{q}");
    let (s, b) = h.post("ana", CONFIRM, h.everything())?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["correction"]["records"].as_u64(), Some(2), "{b}");
    assert_eq!(
        b["correction"]["left"],
        json!([{"reason": "outside_your_bindings", "records": 2}]),
        "{b}"
    );
    assert_eq!(step_counts(&h.gw, "ana")?, [Q_PRE, Q_ANA, S_ANA]);
    assert_eq!(step_counts(&h.gw, "ben")?, [Q_BEN, S_BEN]);
    assert_eq!(h.quarantined()?, [Q_GAP, GAP_LATE], "the gap is nobody's");

    // Both claims are in each one's corrections and disclosure log.
    for who in ["ana", "ben"] {
        let log = h.gw.gateway.store.disclosures(who, 0, 5000)?;
        let corrections: Vec<_> = log
            .iter()
            .filter(|l| {
                l.entry
                    .purpose
                    .starts_with("confirm_quarantine of device band-h")
            })
            .collect();
        assert_eq!(corrections.len(), 1, "{who}: {log:?}");
    }
    h.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_outside_ones_bindings_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let h = handed_over().await?;
    let all = [Q_PRE, Q_ANA, Q_GAP, GAP_LATE, Q_BEN];

    // Ben, the band's owner now, names only the gap, or only ana's time.
    for range in [h.range(A_TO, B_FROM), h.range(A_FROM, A_TO)] {
        let (s, b) = h.post("ben", CONFIRM, range)?;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (403, Some("outside_your_bindings")),
            "{b}"
        );
        assert_eq!(h.quarantined()?, all);
    }
    // Ana names ben's time, which began after she let the band go.
    let (s, b) = h.post("ana", CONFIRM, h.range(B_FROM, B_FROM + 600))?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("outside_your_bindings")),
        "{b}"
    );
    // Cai never held the band at all.
    let (s, b) = h.post("cai", CONFIRM, h.everything())?;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));

    assert_eq!(h.quarantined()?, all);
    assert_eq!(step_counts(&h.gw, "ana")?, [S_ANA]);
    assert_eq!(step_counts(&h.gw, "ben")?, [S_BEN]);
    assert!(step_counts(&h.gw, "cai")?.is_empty());
    h.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinking_is_confined_to_ones_own_records_and_binding_periods() -> anyhow::Result<()> {
    let h = handed_over().await?;
    let all = [Q_PRE, Q_ANA, Q_GAP, GAP_LATE, Q_BEN];
    let why = |mut v: Value| {
        v["why"] = json!("not mine");
        v
    };

    // Ben names ana's time: refused, nothing moves.
    let (s, b) = h.post("ben", UNLINK, why(h.range(A_FROM, A_TO)))?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("outside_your_bindings")),
        "{b}"
    );
    assert_eq!(step_counts(&h.gw, "ana")?, [S_ANA]);
    assert_eq!(h.quarantined()?, all);

    // Ben names everything: only his own record leaves his data; ana's stays hers.
    let (s, b) = h.post("ben", UNLINK, why(h.everything()))?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(1)),
        "{b}"
    );
    assert_eq!(step_counts(&h.gw, "ana")?, [S_ANA]);
    assert!(step_counts(&h.gw, "ben")?.is_empty());
    assert_eq!(
        h.quarantined()?,
        [Q_PRE, Q_ANA, Q_GAP, GAP_LATE, Q_BEN, S_BEN]
    );

    // Ana unlinks her record; ben, the band's owner now, cannot claim it.
    let (s, b) = h.post("ana", UNLINK, why(h.range(A_FROM, A_TO)))?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(1)),
        "{b}"
    );
    let (s, b) = h.post("ben", CONFIRM, h.everything())?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(2)),
        "{b}"
    );
    assert_eq!(step_counts(&h.gw, "ben")?, [Q_BEN, S_BEN]);
    assert!(step_counts(&h.gw, "ana")?.is_empty());
    assert_eq!(h.quarantined()?, [Q_PRE, Q_ANA, S_ANA, Q_GAP, GAP_LATE]);
    h.gw.stop().await;
    Ok(())
}

fn erase(h: &HandedOver, who: &str) -> anyhow::Result<Value> {
    let (s, b) = call(
        "DELETE",
        &h.gw.url("/api/v1/me/data?confirm=erase-all-my-data"),
        Some(&h.gw.owner_token(who)),
        None,
    )?;
    anyhow::ensure!(s == 200, "{b}");
    Ok(b["erased"].clone())
}

/// What an erasure removed and closed (its answer also says how many feed rows went and
/// whether the file was overwritten, checked elsewhere).
fn counts(erased: &Value) -> Value {
    json!({
        "records": erased["records"],
        "quarantined": erased["quarantined"],
        "bindings_closed": erased["bindings_closed"],
        "consents_withdrawn": erased["consents_withdrawn"],
    })
}

/// Who the feed says erased everything.
fn people_erased(h: &HandedOver) -> anyhow::Result<Vec<String>> {
    let conn = rusqlite::Connection::open_with_flags(
        h.gw.config.data_dir.join("phr.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt =
        conn.prepare("SELECT person_id FROM changes WHERE op = 'person_erased' ORDER BY seq")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `(op, person)` of every change to the band's records after `after`, in order: what sync
/// readers are told.
fn changes(h: &HandedOver, after: i64) -> anyhow::Result<Vec<(String, String, i64)>> {
    let conn = rusqlite::Connection::open_with_flags(
        h.gw.config.data_dir.join("phr.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = conn.prepare(
        "SELECT op, person_id, seq FROM changes WHERE device_id = ?1 AND seq > ?2 AND audience IS NULL ORDER BY seq",
    )?;
    let rows = stmt.query_map(rusqlite::params![BAND, after], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_owners_erasure_leaves_the_previous_owners_data() -> anyhow::Result<()> {
    let h = handed_over().await?;
    let before = changes(&h, 0)?.last().map_or(0, |c| c.2);
    let erased = erase(&h, "ben")?;
    assert_eq!(
        counts(&erased),
        json!({"records": 1, "quarantined": 1, "bindings_closed": 1, "consents_withdrawn": 1}),
    );
    assert!(step_counts(&h.gw, "ben")?.is_empty());
    assert_eq!(
        step_counts(&h.gw, "ana")?,
        [S_ANA],
        "ana's records stay hers"
    );
    assert_eq!(
        h.quarantined()?,
        [Q_PRE, Q_ANA, Q_GAP, GAP_LATE],
        "only what was measured while ben held the band is erased"
    );
    // Sync readers learn of ben's erasure (one notice naming no record), and of no change
    // to anyone else's records of the band.
    assert!(changes(&h, before)?.is_empty());
    assert_eq!(people_erased(&h)?, ["ben"]);
    // Ana can still claim what she measured.
    let (s, b) = h.post("ana", CONFIRM, h.everything())?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(2)),
        "{b}"
    );
    h.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_owners_erasure_leaves_the_new_owners_data() -> anyhow::Result<()> {
    let h = handed_over().await?;
    let erased = erase(&h, "ana")?;
    assert_eq!(
        counts(&erased),
        json!({"records": 1, "quarantined": 2, "bindings_closed": 0, "consents_withdrawn": 1}),
        "ana's binding had ended already"
    );
    assert!(step_counts(&h.gw, "ana")?.is_empty());
    assert_eq!(
        step_counts(&h.gw, "ben")?,
        [S_BEN],
        "ben's records stay his"
    );
    assert_eq!(h.quarantined()?, [Q_GAP, GAP_LATE, Q_BEN]);
    // Ben's binding is untouched: he still owns the band and claims what he measured.
    let (s, b) = h.post("ben", CONFIRM, h.everything())?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(1)),
        "{b}"
    );
    assert_eq!(step_counts(&h.gw, "ben")?, [Q_BEN, S_BEN]);
    h.gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reattribution_moves_only_the_named_persons_records() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let base = (Utc::now() - TimeDelta::hours(8)).duration_trunc(TimeDelta::minutes(1))?;
    let at = |h: i64| base + TimeDelta::hours(h);
    for who in ["ana", "ben", "cai"] {
        gw.enrol(who, "br-r", &[], base - TimeDelta::days(1))?;
    }
    gw.gateway.store.add_device("band-r", "br-r", None)?;
    // Ana, then cai, then ana again wore the band; ben never did.
    gw.gateway.store.bind("band-r", "ana", at(0))?;
    gw.gateway.store.bind("band-r", "cai", at(2))?;
    gw.gateway.store.bind("band-r", "ana", at(4))?;
    let mut bridge = gw.raw_bridge("br-r").await?;
    let records = (0..6)
        .map(|h| minute_steps("band-r", "br-r", at(h) + TimeDelta::minutes(10), 10 + h))
        .collect();
    assert_eq!(send(&mut bridge, "band-r", records).await?.stored, 6);
    assert_eq!(step_counts(&gw, "cai")?, [12, 13]);

    let admin =
        gw.gateway
            .keys
            .issue("operator-1", "phr:admin", TimeDelta::hours(1), Utc::now())?;
    let body = json!({"kind": "reattribute", "device_id": "band-r", "from": rfc(at(-1)), "to": rfc(Utc::now()),
                      "from_person": "ana", "to_person": "ben", "why": "ben wore ana's band"});
    let (s, b) = call(
        "POST",
        &gw.url("/api/v1/admin/corrections"),
        Some(&admin),
        Some(body),
    )?;
    assert_eq!(
        (s, b["correction"]["records"].as_u64()),
        (200, Some(4)),
        "{b}"
    );
    assert!(step_counts(&gw, "ana")?.is_empty());
    assert_eq!(step_counts(&gw, "ben")?, [10, 11, 14, 15]);
    assert_eq!(
        step_counts(&gw, "cai")?,
        [12, 13],
        "cai's records untouched"
    );

    // Audited for both people it concerns, by the operator; nothing in cai's log.
    let corrections = |who: &str| -> anyhow::Result<Vec<(String, String, u64)>> {
        Ok(gw
            .gateway
            .store
            .disclosures(who, 0, 5000)?
            .into_iter()
            .filter(|l| l.entry.purpose.starts_with("reattribute"))
            .map(|l| (l.entry.actor, l.entry.actor_kind, l.entry.records))
            .collect())
    };
    for who in ["ana", "ben"] {
        assert_eq!(
            corrections(who)?,
            [("operator-1".to_owned(), "operator".to_owned(), 4)],
            "{who}"
        );
    }
    assert!(corrections("cai")?.is_empty());
    gw.stop().await;
    Ok(())
}
