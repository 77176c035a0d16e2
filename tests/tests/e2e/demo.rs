//! `phr-demo`, the README's first command, as a user runs it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use phr_e2e::{binary, get_json, on_free_port, wait_for, Process};

/// A running `phr-demo` and what it printed up to "Press Ctrl-C".
struct Demo {
    http: String,
    lines: Vec<String>,
    _dir: tempfile::TempDir,
    _process: Process,
}

impl Demo {
    /// The MQTT port is the demo's to pick (port 0); the HTTP port is given, as a user
    /// gives it, so the printed URLs can be checked against it (a taken one is retried).
    fn start(history_hours: u32) -> anyhow::Result<Self> {
        let bin = binary("phr-demo", "phr-demo")?;
        let dir = tempfile::tempdir()?;
        let ((lines, process), port) = on_free_port("phr-demo's HTTP API", |port| {
            let stderr = dir.path().join(format!("stderr-{port}.log"));
            let mut child = Command::new(&bin)
                .args(["--history-hours", &history_hours.to_string()])
                .args(["--http", &format!("127.0.0.1:{port}")])
                .args(["--mqtt", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr)?)
                .stdin(Stdio::null())
                .spawn()?;
            let stdout = child.stdout.take().expect("piped stdout");
            let mut process = Process(child);
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let mut lines = Vec::new();
            while !lines.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
                match rx.recv_timeout(Duration::from_secs(120)) {
                    Ok(line) => lines.push(line),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let exit = process.0.wait()?;
                        let said = std::fs::read_to_string(&stderr).unwrap_or_default();
                        if said.contains("given with --http is not available") {
                            return Ok(None);
                        }
                        anyhow::bail!("phr-demo exited ({exit}):\n{said}");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Some((lines, process)))
        })?;
        Ok(Self {
            http: format!("127.0.0.1:{port}"),
            lines,
            _dir: dir,
            _process: process,
        })
    }

    /// The value printed after `label` on its line.
    fn printed(&self, label: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|| panic!("no {label} line in {:#?}", self.lines))
    }

    /// The value of shell variable `name` as printed (`  NAME=value`).
    fn variable(&self, name: &str) -> String {
        self.printed(&format!("{name}="))
    }

    fn owner_token(&self) -> String {
        self.variable("OWNER_TOKEN")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_dashboard_and_a_token_that_reads_the_simulated_data() -> anyhow::Result<()> {
    // A little over a day: whatever the time of day, some steps and a night's sleep.
    let demo = Demo::start(30)?;
    let (http, lines) = (demo.http.clone(), demo.lines.clone());
    let dashboard = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("dashboard:"))
        .expect("a dashboard line")
        .trim()
        .to_owned();
    assert_eq!(dashboard, format!("http://{http}/dashboard"));
    let token = demo.owner_token();
    let curl = lines
        .iter()
        .find(|l| l.trim_start().starts_with("curl "))
        .expect("a curl line");
    assert!(
        curl.contains("$OWNER_TOKEN") && curl.contains(&format!("http://{http}/api/v1/me/records")),
        "{curl}"
    );
    // Each secret is printed once, into the shell variable the curl lines use.
    for name in ["OWNER_TOKEN", "COMPANY_TOKEN", "CLIENT_SECRET"] {
        let value = demo.variable(name);
        assert!(value.len() >= 20, "{name}={value}");
        let times = lines.iter().filter(|l| l.contains(&value)).count();
        assert_eq!(times, 1, "{name} printed {times} times: {lines:#?}");
    }

    let page = ureq::get(&dashboard).call()?;
    assert_eq!(page.status(), 200);
    let url = format!("http://{http}/api/v1/me/records?type=step-count&limit=10");
    let records = wait_for(
        "the simulated steps to arrive",
        Duration::from_secs(60),
        || {
            get_json(&url, Some(&token)).ok().and_then(|(s, b)| {
                let n = b["records"].as_array().map_or(0, Vec::len);
                (s == 200 && n > 0).then_some(n)
            })
        },
    )
    .await?;
    assert!(records > 0);

    // The company's printed client credentials get a token at /oauth/token, which reads the
    // demo person's consented data through the sync feed.
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
            .expect(name)
    };
    let (client_id, secret) = (field("client id:"), demo.variable("CLIENT_SECRET"));
    assert!(lines
        .iter()
        .any(|l| l.contains("/oauth/token") && l.contains("$CLIENT_SECRET")));
    let resp: serde_json::Value = ureq::post(&format!("http://{http}/oauth/token"))
        .send_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
            ("client_secret", &secret),
        ])?
        .into_json()?;
    assert!(resp["access_token"].is_string(), "{resp}");
    // The printed lines themselves, run in a shell as a user pastes them, get a token too.
    let token_line = lines
        .iter()
        .find(|l| l.trim_start().starts_with("TOKEN=$(curl"))
        .expect("a TOKEN=$(curl ...) line");
    let script = format!(
        "CLIENT_SECRET={secret}\n{}\nprintf %s \"$TOKEN\"",
        token_line.trim()
    );
    let out = Command::new("bash").args(["-c", &script]).output()?;
    assert!(out.status.success(), "{out:?}");
    let company = String::from_utf8(out.stdout)?;
    assert_eq!(company.matches('.').count(), 2, "not a JWT: {company:?}");
    let (s, page) = get_json(
        &format!("http://{http}/api/v1/sync?limit=5"),
        Some(&company),
    )?;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(5), "{page}");
    assert!(page["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| c["record_type"] != "heart-rate"));
    // The second demo person consented to nobody: the company sees the demo person only.
    let (s, list) = get_json(&format!("http://{http}/api/v1/subjects"), Some(&company))?;
    assert_eq!(s, 200, "{list}");
    let people: Vec<&str> = list["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["person_id"].as_str())
        .collect();
    assert_eq!(people, ["demo-person"], "{list}");
    assert!(lines
        .iter()
        .any(|l| l.contains("demo-person-2") && l.contains("no consent to dr-demo")));

    // One-time dashboard sign-in links for the clinician and the owner, said to be so.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Sign in") && l.contains("once") && l.contains("15 minutes")),
        "{lines:#?}"
    );
    let signin = |who: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(who))
            .map(|r| r.trim().to_owned())
            .expect(who)
    };
    let prefix = format!("http://{http}/dashboard/signin?code=");
    let (clinician, owner) = (signin("clinician sign-in:"), signin("owner sign-in:"));
    for link in [&clinician, &owner] {
        assert!(
            link.strip_prefix(&prefix)
                .is_some_and(|code| code.len() >= 32),
            "{link}"
        );
    }
    assert_ne!(clinician, owner);
    // A link opens a confirmation page (no session), whose form opens a session once (a
    // redirect setting the cookie), then no more.
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let answer = |r: Result<ureq::Response, ureq::Error>| match r {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let cookie_of = |r: &ureq::Response, name: &str| {
        r.all("Set-Cookie").into_iter().find_map(|c| {
            let (n, v) = c.split(';').next()?.split_once('=')?;
            (n == name).then(|| v.to_owned())
        })
    };
    let page = answer(agent.get(&owner).call());
    assert_eq!(page.status(), 200);
    assert_eq!(
        cookie_of(&page, "phr_session"),
        None,
        "a GET signs nobody in"
    );
    let nonce = cookie_of(&page, "phr_signin").expect("pre-sign-in cookie");
    let body = page.into_string()?;
    assert!(body.contains("Sign in as demo-person"), "{body}");
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = body.find(&marker).expect(name) + marker.len();
        body[start..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let (code, csrf) = (field("code"), field("csrf"));
    let confirm = || {
        answer(
            agent
                .post(&format!("http://{http}/dashboard/signin"))
                .set("Cookie", &format!("phr_signin={nonce}"))
                .send_form(&[("code", &code), ("csrf", &csrf)]),
        )
    };
    let first = confirm();
    assert!(
        (300..400).contains(&first.status()) && cookie_of(&first, "phr_session").is_some(),
        "{}",
        first.status()
    );
    let second = confirm();
    assert!(
        !(300..400).contains(&second.status()),
        "a used link signed in again: {}",
        second.status()
    );
    assert_eq!(answer(agent.get(&owner).call()).status(), 401);
    Ok(())
}

#[test]
fn demo_refuses_an_explicit_port_that_is_taken() -> anyhow::Result<()> {
    let bin = binary("phr-demo", "phr-demo")?;
    let dir = tempfile::tempdir()?;
    let holder = TcpListener::bind("127.0.0.1:0")?;
    let taken = holder.local_addr()?;
    for flag in ["--http", "--mqtt"] {
        let out = Command::new(&bin)
            .args([flag, &taken.to_string(), "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{flag}: exit status {:?}",
            out.status
        );
        assert!(
            stderr.contains(&taken.port().to_string()) && stderr.contains(flag),
            "{flag}: {stderr}"
        );
    }
    Ok(())
}

/// The demo person wears two bands over the same walks. In a real browser, the clinician's
/// daily-steps table counts each step once: no day exceeds what one band measured plus the
/// other band's minutes the first did not measure (taking whichever band gives more), and a
/// day both bands measured is below their sum. The bounds come from the raw records, which
/// keep both bands' minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver (.ci/run installs them)"]
async fn the_demos_daily_steps_count_each_step_once_in_a_browser() -> anyhow::Result<()> {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::{DateTime, NaiveDate, Utc};
    use phr_e2e::browser::Browser;
    use phr_schema::{Body, Record};

    let demo = Demo::start(96)?;
    let http = demo.http.clone();
    let token = demo.owner_token();

    // Every step record of the demo person, both bands, from the owner's API.
    let mut minutes: BTreeMap<String, BTreeMap<DateTime<Utc>, i64>> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("http://{http}/api/v1/me/records?type=step-count&limit=5000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", phr_e2e::form_encode(c)));
        }
        let (status, page) = get_json(&url, Some(&token))?;
        assert_eq!(status, 200, "{page}");
        for r in page["records"].as_array().into_iter().flatten() {
            let record: Record = serde_json::from_value(r.clone())?;
            if let Body::StepCount(s) = &record.body {
                minutes.entry(record.device_id.clone()).or_default().insert(
                    s.effective_time_frame.start().with_timezone(&Utc),
                    s.step_count,
                );
            }
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(minutes.len(), 2, "two bands: {:?}", minutes.keys());
    let bands: Vec<&BTreeMap<DateTime<Utc>, i64>> = minutes.values().collect();
    // Per local day (the demo person's zone, Asia/Tokyo: +09:00 all year): each band's
    // total, and each band's steps in minutes the other band has no record of.
    let tz = chrono::FixedOffset::east_opt(9 * 3600).expect("JST");
    let day = |t: &DateTime<Utc>| t.with_timezone(&tz).date_naive();
    let mut totals: BTreeMap<NaiveDate, [i64; 2]> = BTreeMap::new();
    let mut alone: BTreeMap<NaiveDate, [i64; 2]> = BTreeMap::new();
    let mut both: BTreeSet<NaiveDate> = BTreeSet::new();
    for (i, band) in bands.iter().enumerate() {
        let other = bands[1 - i];
        for (t, n) in band.iter() {
            totals.entry(day(t)).or_default()[i] += n;
            if other.contains_key(t) {
                both.insert(day(t));
            } else {
                alone.entry(day(t)).or_default()[i] += n;
            }
        }
    }

    // The clinician signs in through the printed one-time link and opens the patient page.
    let browser = Browser::start()?;
    browser.goto(&demo.printed("clinician sign-in:"))?;
    browser.click(&browser.expect("form button[type=submit]")?)?;
    wait_for("the clinician's panel", Duration::from_secs(15), || {
        browser
            .current_url()
            .ok()
            .filter(|u| u.contains("/dashboard/clinician"))
    })
    .await?;
    browser.goto(&format!(
        "http://{http}/dashboard/clinician/patients/demo-person?days=30"
    ))?;
    let mut shown: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    for row in browser.find_all("table#daily-steps tr[data-date]")? {
        let date: NaiveDate = browser
            .attribute(&row, "data-date")?
            .unwrap_or_default()
            .parse()?;
        let cell = browser.find_in(&row, "td.steps")?;
        let text = browser.content(&cell)?.replace([',', ' '], "");
        if !text.is_empty() {
            shown.insert(date, text.parse()?);
        }
    }
    assert!(
        !shown.is_empty(),
        "the table shows days: {}",
        browser.source()?
    );
    let mut compared = 0;
    for (date, total) in &shown {
        let [a, b] = totals.get(date).copied().unwrap_or_default();
        let [a_alone, b_alone] = alone.get(date).copied().unwrap_or_default();
        let bound = (a + b_alone).max(b + a_alone);
        assert!(
            *total <= bound,
            "{date}: {total} shown, more than one band plus the other's own minutes \
             ({a} + {b_alone} or {b} + {a_alone})"
        );
        if both.contains(date) {
            assert!(
                *total < a + b,
                "{date}: {total} is both bands' sum {a} + {b}"
            );
            compared += 1;
        }
    }
    assert!(compared > 0, "some day both bands measured: {shown:?}");
    Ok(())
}
