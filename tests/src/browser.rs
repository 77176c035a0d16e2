//! A headless Chromium for the dashboard tests, driven over the W3C WebDriver protocol
//! (JSON over HTTP to Debian's `chromedriver`, with `ureq`; no browser automation crate is
//! needed for the handful of commands the tests use). [`Browser::start`] starts chromedriver
//! on a port it picks itself (`--port=0`, the port read from what it prints) and one headless session with a fresh profile; dropping it ends both.
//!
//! `PHR_TEST_CHROMEDRIVER` / `PHR_TEST_CHROMIUM` override `/usr/bin/chromedriver` and
//! `/usr/bin/chromium` (`.ci/run` installs Debian's `chromium` and `chromium-driver`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::Process;

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    base: String,
    session: String,
    _profile: tempfile::TempDir,
    _driver: Process,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element {
    id: String,
}

fn program(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The port in chromedriver's `ChromeDriver was started successfully on port 39281.`
fn started_on_port(line: &str) -> Option<u16> {
    line.strip_prefix("ChromeDriver was started successfully on port ")?
        .trim_end_matches('.')
        .trim()
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

impl Browser {
    pub fn start() -> Result<Self> {
        Self::start_with_args(&[])
    }

    /// [`Browser::start`] with more Chromium flags, e.g.
    /// `--ignore-certificate-errors-spki-list=…` to accept one test certificate (the OpenID
    /// provider's, `OidcProvider::spki_sha256`) and no other.
    pub fn start_with_args(extra: &[String]) -> Result<Self> {
        let driver = program("PHR_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = program("PHR_TEST_CHROMIUM", "/usr/bin/chromium");
        for p in [&driver, &chromium] {
            if !p.exists() {
                bail!(
                    "{} not found (apt-get install -y chromium chromium-driver)",
                    p.display()
                );
            }
        }
        // Port 0: chromedriver binds a free port itself and prints which (no port race).
        let mut child = Command::new(&driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let driver_process = Process(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader};
            // Read to the end, so chromedriver never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = started_on_port(&line) {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .context("chromedriver did not say which port it listens on")?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = ureq::get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not become ready on port {port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir()?;
        // Flags: headless, and no background traffic (the machine's network is closed).
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,1600".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(extra.iter().cloned());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.to_string_lossy(), "args": args},
        }}});
        let created = post(&format!("{base}/session"), &caps)?;
        let session = created["sessionId"]
            .as_str()
            .context("no sessionId from chromedriver")?
            .to_owned();
        Ok(Self {
            base,
            session,
            _profile: profile,
            _driver: driver_process,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<()> {
        post(&self.url("/url"), &json!({ "url": url }))?;
        Ok(())
    }

    pub fn current_url(&self) -> Result<String> {
        Ok(get(&self.url("/url"))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub fn title(&self) -> Result<String> {
        Ok(get(&self.url("/title"))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The page's HTML as the browser holds it.
    pub fn source(&self) -> Result<String> {
        Ok(get(&self.url("/source"))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The first element matching a CSS selector, or `None`.
    pub fn find(&self, css: &str) -> Result<Option<Element>> {
        Ok(self.find_all(css)?.into_iter().next())
    }

    /// Every element matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let found = post(
            &self.url("/elements"),
            &json!({"using": "css selector", "value": css}),
        )?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element { id: id.to_owned() })
            .collect())
    }

    /// Like [`Browser::find`], failing when nothing matches.
    pub fn expect(&self, css: &str) -> Result<Element> {
        self.find(css)?.with_context(|| {
            format!(
                "no element matches {css:?} on {}",
                self.current_url().unwrap_or_default()
            )
        })
    }

    /// The first element inside `parent` matching a CSS selector; an error when none does.
    pub fn find_in(&self, parent: &Element, css: &str) -> Result<Element> {
        let found = post(
            &self.url(&format!("/element/{}/element", parent.id)),
            &json!({"using": "css selector", "value": css}),
        )?;
        let id = found[ELEMENT]
            .as_str()
            .with_context(|| format!("no element matches {css:?} inside the given one"))?;
        Ok(Element { id: id.to_owned() })
    }

    /// The rendered text of an element (what a person reads).
    pub fn text(&self, e: &Element) -> Result<String> {
        Ok(get(&self.url(&format!("/element/{}/text", e.id)))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// An element's text content, shown or not (a data table inside a closed `<details>`
    /// has no rendered text, but a screen reader and this read it).
    pub fn content(&self, e: &Element) -> Result<String> {
        Ok(
            get(&self.url(&format!("/element/{}/property/textContent", e.id)))?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    /// An attribute of an element (`None` when absent).
    pub fn attribute(&self, e: &Element, name: &str) -> Result<Option<String>> {
        Ok(
            get(&self.url(&format!("/element/{}/attribute/{name}", e.id)))?
                .as_str()
                .map(str::to_owned),
        )
    }

    pub fn click(&self, e: &Element) -> Result<()> {
        post(&self.url(&format!("/element/{}/click", e.id)), &json!({}))?;
        Ok(())
    }

    /// Types `text` into an input.
    pub fn type_text(&self, e: &Element, text: &str) -> Result<()> {
        post(
            &self.url(&format!("/element/{}/value", e.id)),
            &json!({ "text": text }),
        )?;
        Ok(())
    }

    /// The browser's cookies for the current page, as WebDriver reports them.
    pub fn cookies(&self) -> Result<Vec<Value>> {
        Ok(get(&self.url("/cookie"))?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let b64 = get(&self.url("/screenshot"))?;
        let png = base64_decode(b64.as_str().unwrap_or_default()).context("screenshot data")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

fn unwrap_value(resp: std::result::Result<ureq::Response, ureq::Error>) -> Result<Value> {
    match resp {
        Ok(r) => Ok(r.into_json::<Value>()?["value"].take()),
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r.into_json().unwrap_or_default();
            bail!(
                "WebDriver error {code}: {} {}",
                body["value"]["error"].as_str().unwrap_or_default(),
                body["value"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn get(url: &str) -> Result<Value> {
    unwrap_value(ureq::get(url).timeout(Duration::from_secs(60)).call())
}

fn post(url: &str, body: &Value) -> Result<Value> {
    unwrap_value(
        ureq::post(url)
            .timeout(Duration::from_secs(60))
            .send_json(body.clone()),
    )
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_what_webdriver_sends() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aGV5").unwrap(), b"hey");
        assert_eq!(base64_decode("iVBORw0K").unwrap(), b"\x89PNG\r\n");
        assert!(base64_decode("a*==").is_none());
    }

    /// The browser itself: a data page, an element, its text, a screenshot.
    #[test]
    #[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them"]
    fn chromium_renders_a_page_and_takes_a_screenshot() -> Result<()> {
        let b = Browser::start()?;
        b.goto("data:text/html,<h1 id=t>Hello</h1>")?;
        let h = b.expect("#t")?;
        assert_eq!(b.text(&h)?, "Hello");
        let dir = tempfile::tempdir()?;
        let png = dir.path().join("s.png");
        b.screenshot(&png)?;
        assert!(std::fs::read(&png)?.starts_with(b"\x89PNG"));
        Ok(())
    }
}
