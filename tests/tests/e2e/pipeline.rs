//! The whole pipeline returns exactly what the bands produced.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::TimeDelta;

use serde_json::json;

use phr_e2e::{all_records, get_json, TestGateway};
use phr_schema::{Body, RecordType};

use super::{expected, run_bridge, sim_config, sim_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_returns_exactly_the_records_the_bridge_sent() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let until = sim_until();
    let mut cfg = sim_config(
        "bridge-a",
        2,
        gw.dir.path().join("bridge"),
        &gw.gateway.mqtt,
        gw.topics().prefix(),
        until,
        30,
    );
    let bands: Vec<String> = cfg.bands().into_iter().map(|b| b.device_id).collect();
    gw.enrol("alice", "bridge-a", &bands, until - TimeDelta::days(3))?;
    gw.enrol_sim(&mut cfg)?;
    let want = expected(&cfg);
    assert!(
        want.len() > 300,
        "the simulation should produce a realistic day, got {}",
        want.len()
    );
    for t in RecordType::ALL {
        assert!(
            want.values().any(|r| r.record_type() == t),
            "simulation produced no {t}"
        );
    }

    let status = run_bridge(cfg, Duration::from_secs(60)).await?;
    assert_eq!(
        status.stored as usize,
        want.len(),
        "acks report every record stored: {status:?}"
    );
    assert_eq!((status.rejected, status.quarantined), (0, 0));

    // Read everything back through the API, across pages, and compare field for field.
    let token = gw.owner_token("alice");
    let base = gw.url("");
    let mut got = BTreeMap::new();
    for t in RecordType::ALL {
        for r in all_records(&base, &token, t.as_str(), 97)? {
            assert_eq!(r.record_type(), t);
            assert!(
                got.insert(r.record_id, r).is_none(),
                "a record appeared twice across pages"
            );
        }
    }
    assert_eq!(got.len(), want.len());
    for (id, w) in &want {
        assert_eq!(
            got.get(id),
            Some(w),
            "record {id} differs from what the band produced"
        );
    }

    // The same nights as Open mHealth data points: one per episode, one per stage.
    let (s, body) = get_json(
        &gw.url("/api/v1/me/records?type=sleep-episode&format=omh&limit=5000"),
        Some(&token),
    )?;
    assert_eq!(s, 200, "{body}");
    let points = body["data_points"].as_array().expect("data_points");
    let nights: Vec<_> = want
        .values()
        .filter_map(|r| match &r.body {
            Body::SleepEpisode(e) => Some((r.record_id, e)),
            _ => None,
        })
        .collect();
    assert!(!nights.is_empty());
    assert_eq!(
        points.len(),
        nights.len() + nights.iter().map(|(_, e)| e.stages.len()).sum::<usize>()
    );
    for (id, episode) in &nights {
        let own: Vec<_> = points
            .iter()
            .filter(|p| {
                p["header"]["id"] == json!(id) || p["body"]["sleep_episode_id"] == json!(id)
            })
            .collect();
        assert_eq!(own.len(), 1 + episode.stages.len());
        assert_eq!(
            own[0]["header"]["schema_id"],
            json!({"namespace": "omh", "name": "sleep-episode", "version": "1.1"})
        );
        assert_eq!(
            own[0]["body"]["effective_time_frame"],
            json!(episode.effective_time_frame)
        );
        for (p, stage) in own[1..].iter().zip(&episode.stages) {
            assert_eq!(p["header"]["schema_id"]["name"], json!("sleep-stage"));
            assert_eq!(p["body"]["sleep_stage"], json!(stage.stage.as_str()));
        }
    }

    // Another person sees none of it.
    let bob = gw.owner_token("bob");
    assert!(all_records(&base, &bob, "step-count", 100)?.is_empty());
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_window_and_pages_partition_the_records() -> anyhow::Result<()> {
    let gw = TestGateway::start().await?;
    let until = sim_until();
    let mut cfg = sim_config(
        "bridge-w",
        1,
        gw.dir.path().join("bridge"),
        &gw.gateway.mqtt,
        gw.topics().prefix(),
        until,
        12,
    );
    let bands: Vec<String> = cfg.bands().into_iter().map(|b| b.device_id).collect();
    gw.enrol("carol", "bridge-w", &bands, until - TimeDelta::days(2))?;
    gw.enrol_sim(&mut cfg)?;
    let want: Vec<_> = expected(&cfg)
        .into_values()
        .filter(|r| r.record_type() == RecordType::StepCount)
        .collect();
    run_bridge(cfg, Duration::from_secs(60)).await?;

    let token = gw.owner_token("carol");
    // Split at the middle step record's start, so both halves hold data whatever the hour
    // (a split at a fixed time can fall in a night with no steps at all).
    let mut starts: Vec<_> = want
        .iter()
        .map(|r| r.measured().0.with_timezone(&chrono::Utc))
        .collect();
    starts.sort();
    assert!(starts.len() >= 2, "12 hours of a simulated day hold steps");
    let mid = starts[starts.len() / 2];
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let window = |from: &str, to: &str| -> anyhow::Result<usize> {
        let (s, body) = phr_e2e::get_json(
            &gw.url(&format!(
                "/api/v1/me/records?type=step-count&from={from}&to={to}&limit=5000"
            )),
            Some(&token),
        )?;
        assert_eq!(s, 200, "{body}");
        Ok(body["records"].as_array().map_or(0, Vec::len))
    };
    let early = window(&fmt(until - TimeDelta::days(2)), &fmt(mid))?;
    let late = window(&fmt(mid), &fmt(until + TimeDelta::hours(1)))?;
    let expected_early = want.iter().filter(|r| r.measured().0 < mid).count();
    assert_eq!((early, late), (expected_early, want.len() - expected_early));
    assert!(
        early > 0 && late > 0,
        "the window split should cut through the data"
    );
    gw.stop().await;
    Ok(())
}
