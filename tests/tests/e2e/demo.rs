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
        .args(["demo", "--history-hours", "6", "--http", &http, "--mqtt"])
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
