use chrono::TimeZone;
use proptest::strategy::Strategy;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn jst() -> DayZone {
    DayZone::Fixed(FixedOffset::east_opt(9 * 3600).unwrap())
}

fn session(id: u16, start: &str) -> Reading {
    Reading::PamsSession(PamsSessionTiming {
        session_id: id,
        sub_session_id: None,
        start: t(start),
        end: None,
        running: true,
    })
}

fn sub(id: u16, sub: u16, start: &str) -> Reading {
    Reading::PamsSession(PamsSessionTiming {
        session_id: id,
        sub_session_id: Some(sub),
        start: t(start),
        end: None,
        running: true,
    })
}

fn steps(session_id: u16, sub_session_id: u16, rel: u32, seq: u32, steps: u32) -> Reading {
    Reading::PamsSteps {
        session_id,
        sub_session_id,
        relative_seconds: rel,
        sequence: seq,
        steps,
        floor_steps: None,
    }
}

fn interval(start: &str, end: &str, steps: u32) -> Reading {
    Reading::Steps {
        start: t(start),
        end: t(end),
        steps,
    }
}

/// Feeds readings in order; returns everything produced and the summed effects.
fn feed(state: &mut DeviceState, readings: Vec<Reading>) -> (Vec<Reading>, Effects) {
    let mut out = Vec::new();
    let mut total = Effects::default();
    for r in readings {
        let (o, fx) = state.process(r);
        out.extend(o);
        total.dropped += fx.dropped;
        total.held += fx.held;
        total.ignored += fx.ignored;
    }
    (out, total)
}

#[test]
fn stateless_readings_pass_through() {
    let mut s = DeviceState::new(jst());
    let hr = Reading::HeartRate {
        at: t("2026-11-27T09:00:00Z"),
        bpm: 60,
        rr_intervals_ms: vec![],
        sensor_contact: None,
        energy_expended_kj: None,
    };
    assert_eq!(s.process(hr.clone()).0, vec![hr]);
}

#[test]
fn pams_step_summaries_become_deltas_of_their_sub_session() {
    let mut s = DeviceState::new(jst());
    let (out, fx) = feed(
        &mut s,
        vec![
            session(7, "2026-11-27T00:00:00Z"),
            sub(7, 1, "2026-11-27T00:10:00Z"),
            steps(7, 1, 1200, 1, 300), // 00:20, first of the sub-session
            steps(7, 1, 1200, 1, 300), // the same indication again
            steps(7, 1, 1800, 2, 450), // 00:30, +150
            steps(7, 1, 1500, 3, 999), // late: before the last one
            steps(7, 1, 2400, 4, 450), // no new steps
            steps(7, 1, 3000, 5, 40),  // the device restarted its count
            steps(7, 2, 3600, 6, 10),  // sub-session 2, start unknown: the session start
        ],
    );
    assert_eq!(
        out,
        vec![
            interval("2026-11-27T00:10:00Z", "2026-11-27T00:20:00Z", 300),
            interval("2026-11-27T00:20:00Z", "2026-11-27T00:30:00Z", 150),
            interval("2026-11-27T00:40:00Z", "2026-11-27T00:50:00Z", 40),
            interval("2026-11-27T00:00:00Z", "2026-11-27T01:00:00Z", 10),
        ]
    );
    assert_eq!(fx.ignored, 2);
    assert_eq!(fx.held, 0);
}

#[test]
fn summaries_wait_for_their_session_start() {
    let mut s = DeviceState::new(jst());
    let (out, fx) = feed(&mut s, vec![steps(3, 0, 600, 1, 20), steps(4, 0, 60, 1, 5)]);
    assert!(out.is_empty());
    assert_eq!(fx.held, 2);
    let (out, _) = feed(&mut s, vec![session(3, "2026-11-27T08:00:00Z")]);
    assert_eq!(
        out,
        vec![interval("2026-11-27T08:00:00Z", "2026-11-27T08:10:00Z", 20)]
    );
    assert_eq!(s.pams.held.len(), 1, "session 4's summary still waits");
}

#[test]
fn held_summaries_are_bounded_and_drops_counted() {
    let mut s = DeviceState::new(jst());
    let many = (0..MAX_HELD as u32 + 5)
        .map(|i| steps(9, 0, i + 1, i, 1))
        .collect();
    let (_, fx) = feed(&mut s, many);
    assert_eq!(fx.dropped, 5);
    assert_eq!(s.pams.held.len(), MAX_HELD);
}

#[test]
fn a_reused_session_id_starts_afresh() {
    let mut s = DeviceState::new(jst());
    feed(
        &mut s,
        vec![session(1, "2026-11-26T00:00:00Z"), steps(1, 0, 600, 9, 100)],
    );
    let (out, _) = feed(
        &mut s,
        vec![session(1, "2026-11-27T00:00:00Z"), steps(1, 0, 600, 9, 100)],
    );
    assert_eq!(
        out,
        vec![interval(
            "2026-11-27T00:00:00Z",
            "2026-11-27T00:10:00Z",
            100
        )],
        "same sequence number, but a new session: not a repeat"
    );
}

#[test]
fn sleep_summaries_become_episodes_once() {
    let mut s = DeviceState::new(jst());
    let summary = PamsSleepSummary {
        session_id: 2,
        sub_session_id: 0,
        relative_seconds: 8 * 3600,
        sequence: 1,
        total_sleep_seconds: Some(6 * 3600 + 1800),
        total_wake_seconds: Some(1800),
        total_bed_seconds: Some(7 * 3600 + 1800),
        awakenings: Some(3),
        latency_seconds: Some(900),
        efficiency_percent: Some(87),
    };
    let (out, fx) = feed(
        &mut s,
        vec![
            Reading::PamsSleep(summary),
            session(2, "2026-11-26T14:00:00Z"),
            Reading::PamsSleep(summary),
        ],
    );
    assert_eq!(fx.ignored, 1);
    let expected = Reading::Sleep(SleepReading {
        start: t("2026-11-26T14:30:00Z"),
        end: t("2026-11-26T22:00:00Z"),
        is_main_sleep: true,
        stages: vec![],
        reported: SleepTotals {
            total_sleep: Some(TimeDelta::minutes(390)),
            latency: Some(TimeDelta::minutes(15)),
            awakenings: Some(3),
            efficiency_percent: Some(87),
        },
    });
    assert_eq!(out, vec![expected]);

    // Without bed time: from the sub-session start; a short nap is not main sleep.
    let nap = PamsSleepSummary {
        session_id: 2,
        sub_session_id: 5,
        relative_seconds: 24 * 3600,
        sequence: 2,
        total_sleep_seconds: Some(1200),
        ..Default::default()
    };
    let (out, _) = feed(
        &mut s,
        vec![sub(2, 5, "2026-11-27T13:30:00Z"), Reading::PamsSleep(nap)],
    );
    assert!(matches!(
        &out[..],
        [Reading::Sleep(SleepReading { start, end, is_main_sleep: false, .. })]
            if *start == t("2026-11-27T13:30:00Z") && *end == t("2026-11-27T14:00:00Z")
    ));
}

#[test]
fn running_daily_totals_become_deltas() {
    let mut s = DeviceState::new(jst());
    let today = |at: &str, total| Reading::StepsToday { at: t(at), total };
    let (out, _) = feed(
        &mut s,
        vec![
            today("2026-11-27T00:00:00Z", 1000), // 09:00 JST: baseline
            today("2026-11-27T01:00:00Z", 1600),
            today("2026-11-27T15:30:00Z", 200), // 00:30 JST next day: rollover
        ],
    );
    assert_eq!(
        out,
        vec![
            interval("2026-11-27T00:00:00Z", "2026-11-27T01:00:00Z", 600),
            interval("2026-11-27T15:00:00Z", "2026-11-27T15:30:00Z", 200),
        ]
    );
}

#[test]
fn state_survives_a_round_trip_through_json() {
    let mut s = DeviceState::new(jst());
    feed(
        &mut s,
        vec![
            session(7, "2026-11-27T00:00:00Z"),
            sub(7, 1, "2026-11-27T00:10:00Z"),
            steps(7, 1, 1200, 1, 300),
            steps(8, 0, 10, 1, 1),
            Reading::PamsSleep(PamsSleepSummary {
                session_id: 7,
                sequence: 3,
                relative_seconds: 5000,
                total_bed_seconds: Some(100),
                ..Default::default()
            }),
            Reading::StepsToday {
                at: Utc.with_ymd_and_hms(2026, 11, 27, 1, 0, 0).unwrap(),
                total: 5,
            },
        ],
    );
    let json = s.to_json();
    let mut back = DeviceState::from_json(&json, jst()).expect("reads back");
    assert_eq!(back, s);
    // And it behaves the same: the next summary is a delta, not a first one.
    assert_eq!(
        back.process(steps(7, 1, 1800, 2, 350)).0,
        vec![interval("2026-11-27T00:20:00Z", "2026-11-27T00:30:00Z", 50)]
    );
    assert!(DeviceState::from_json("not json", jst()).is_none());
}

proptest::proptest! {
    /// A sub-session's summaries (running totals at increasing times), delivered in any order
    /// with repeats: the steps produced never overlap and add up to exactly the total of the
    /// latest summary delivered, so never exceed the largest total, nor count a step twice.
    #[test]
    fn pams_deltas_never_overlap_or_exceed_the_total(
        (history, delivered) in proptest::collection::btree_map(1u32..5000, 0u32..500, 1..40)
            .prop_flat_map(|m| {
                let n = m.len();
                (proptest::strategy::Just(m), proptest::collection::vec(0..n, 1..60))
            })
    ) {
        // (relative seconds, sequence, running total): times and sequence numbers increase,
        // the total never falls (no restart).
        let mut total = 0u32;
        let summaries: Vec<(u32, u32, u32)> = history
            .iter()
            .enumerate()
            .map(|(seq, (&rel, &more))| {
                total += more;
                (rel, seq as u32, total)
            })
            .collect();
        let mut s = DeviceState::new(jst());
        let mut readings = vec![session(1, "2026-11-27T00:00:00Z")];
        readings.extend(delivered.iter().map(|&i| {
            let (rel, seq, n) = summaries[i];
            steps(1, 0, rel, seq, n)
        }));
        let (out, _) = feed(&mut s, readings);
        let mut last_end = None;
        let mut sum = 0u64;
        for r in &out {
            let Reading::Steps { start, end, steps } = r else { panic!("only steps") };
            proptest::prop_assert!(start < end);
            proptest::prop_assert!(*steps > 0);
            if let Some(e) = last_end { proptest::prop_assert!(*start >= e); }
            last_end = Some(*end);
            sum += u64::from(*steps);
        }
        let latest = delivered.iter().map(|&i| summaries[i]).max().map_or(0, |(_, _, n)| n);
        let largest = summaries.iter().map(|&(_, _, n)| n).max().unwrap_or(0);
        proptest::prop_assert_eq!(sum, u64::from(latest), "{:?} delivered as {:?}", summaries, delivered);
        proptest::prop_assert!(sum <= u64::from(largest));
    }

    /// Whatever the summaries say (totals that fall, repeats, sequence numbers reused),
    /// intervals never overlap.
    #[test]
    fn pams_deltas_of_arbitrary_summaries_never_overlap(
        summaries in proptest::collection::vec((0u32..5000, 0u32..50, 0u32..10_000), 1..60)
    ) {
        let mut s = DeviceState::new(jst());
        let mut readings = vec![session(1, "2026-11-27T00:00:00Z")];
        readings.extend(summaries.iter().map(|&(rel, seq, n)| steps(1, 0, rel, seq, n)));
        let (out, _) = feed(&mut s, readings);
        let mut last_end = None;
        for r in &out {
            let Reading::Steps { start, end, steps } = r else { panic!("only steps") };
            proptest::prop_assert!(start < end);
            proptest::prop_assert!(*steps > 0);
            if let Some(e) = last_end { proptest::prop_assert!(*start >= e); }
            last_end = Some(*end);
        }
    }
}

fn local_time(zone: Option<i16>, dst: Option<u16>, at: &str) -> Reading {
    Reading::LocalTime {
        zone_minutes: zone,
        dst_minutes: dst,
        received_at: t(at),
    }
}

/// The band's Local Time Information decides its midnight where it disagrees with the
/// configured zone (issue #13, problem 5); a partial report is read as the module says.
#[test]
fn the_bands_local_time_information_places_its_midnight() {
    let minus = |h: i32| FixedOffset::west_opt(h * 3600).unwrap();
    // Configured -05:00; the band says EST + 1 h DST in July.
    let mut s = DeviceState::new(DayZone::Fixed(minus(5)));
    let (out, _) = s.process(local_time(Some(-300), Some(60), "2026-07-01T12:00:00Z"));
    assert!(out.is_empty(), "device state, no reading");
    assert_eq!(s.offset_at(t("2026-07-02T04:00:00Z")), minus(4));
    s.process(Reading::StepsToday {
        at: t("2026-07-02T03:50:00Z"),
        total: 9_000,
    });
    let (out, _) = s.process(Reading::StepsToday {
        at: t("2026-07-02T04:10:00Z"),
        total: 40,
    });
    assert_eq!(
        out,
        vec![Reading::Steps {
            start: t("2026-07-02T04:00:00Z"),
            end: t("2026-07-02T04:10:00Z"),
            steps: 40
        }],
        "the band's midnight (00:00 EDT)"
    );
    // The report survives a restart, under a zone configured anew.
    let back = DeviceState::from_json(&s.to_json(), DayZone::Fixed(minus(5))).unwrap();
    assert_eq!(back.offset_at(t("2026-07-03T00:00:00Z")), minus(4));

    // DST unknown, standard offset the zone's: the zone (with its DST) stays in charge.
    let ny: DayZone = "America/New_York".parse().unwrap();
    let mut s = DeviceState::new(ny);
    s.process(local_time(Some(-300), None, "2026-07-01T12:00:00Z"));
    assert_eq!(s.offset_at(t("2026-07-01T12:00:00Z")), minus(4));
    assert_eq!(s.offset_at(t("2026-12-01T12:00:00Z")), minus(5));
    // DST unknown, another standard offset: the band's standard offset.
    s.process(local_time(Some(540), None, "2026-07-01T12:00:00Z"));
    assert_eq!(
        s.offset_at(t("2026-12-01T12:00:00Z")),
        FixedOffset::east_opt(9 * 3600).unwrap()
    );
    // Time zone unknown: ignored (the last report stands).
    s.process(local_time(None, Some(60), "2026-07-02T12:00:00Z"));
    assert_eq!(
        s.offset_at(t("2026-12-01T12:00:00Z")),
        FixedOffset::east_opt(9 * 3600).unwrap()
    );
}
