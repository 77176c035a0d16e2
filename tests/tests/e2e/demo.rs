//! `phr-gateway demo`, the README's first command, as a user runs it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use phr_e2e::{binary, free_port, get_json, wait_for, Process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_dashboard_and_a_token_that_reads_the_simulated_data() -> anyhow::Result<()> {
    let bin = binary("phr-gateway", "phr-gateway")?;
    let dir = tempfile::tempdir()?;
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(&bin)
        // A little over a day: whatever the time of day, some steps and a night's sleep.
        .args(["demo", "--history-hours", "30", "--http", &http, "--mqtt"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let _demo = Process(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        lines.push(rx.recv_timeout(Duration::from_secs(60))?);
    }
    let dashboard = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("dashboard:"))
        .expect("a dashboard line")
        .trim()
        .to_owned();
    assert_eq!(dashboard, format!("http://{http}/dashboard"));
    let token_at = lines
        .iter()
        .position(|l| l.contains("owner token"))
        .expect("a token line");
    let token = lines[token_at + 1].trim().to_owned();
    let curl = lines
        .iter()
        .find(|l| l.trim_start().starts_with("curl "))
        .expect("a curl line");
    assert!(
        curl.contains(&token) && curl.contains(&format!("http://{http}/api/v1/me/records")),
        "{curl}"
    );

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
    let (client_id, secret) = (field("client id:"), field("client secret:"));
    assert!(lines
        .iter()
        .any(|l| l.contains("/oauth/token") && l.contains(&secret)));
    let resp: serde_json::Value = ureq::post(&format!("http://{http}/oauth/token"))
        .send_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
            ("client_secret", &secret),
        ])?
        .into_json()?;
    let company = resp["access_token"].as_str().expect("a token").to_owned();
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
    let bin = binary("phr-gateway", "phr-gateway")?;
    let dir = tempfile::tempdir()?;
    let holder = TcpListener::bind("127.0.0.1:0")?;
    let taken = holder.local_addr()?;
    for flag in ["--http", "--mqtt"] {
        let out = Command::new(&bin)
            .args(["demo", flag, &taken.to_string(), "--data-dir"])
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
