//! A minimal W3C WebDriver client (the dozen commands the browser tests
//! use) over hyper, talking to a chromedriver process it starts and kills.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub(crate) struct Driver {
    child: Child,
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Session<'d> {
    d: &'d Driver,
    id: String,
    pub shots: PathBuf,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Best effort: chromedriver is killed right after anyway.
        let url = format!("{}/session/{}", self.d.base, self.id);
        let http = self.d.http.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let req = http::Request::delete(url).body(Full::default()).unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(5), http.request(req)).await;
            });
        })
        .join();
    }
}

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the browser tests need Debian's chromium and chromium-driver; run scripts/install-deps.sh"
    );
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        require(CHROMIUM);
        require(CHROMEDRIVER);
        let port = testkit::fs::free_port().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: Client::builder(TokioExecutor::new()).build_http(),
            _profile: tempfile::tempdir().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if d.call("GET", "/status", None)
                .await
                .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let uri = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(60), self.http.request(req))
            .await
            .map_err(|_| format!("{method} {path} timed out"))?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status} {}", v["value"]));
        }
        Ok(v)
    }

    pub(crate) async fn session(&self, shots: PathBuf) -> Session<'_> {
        std::fs::create_dir_all(&shots).unwrap();
        let profile = self._profile.path().to_string_lossy().into_owned();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         format!("--user-data-dir={profile}")]
            }
        }}});
        let v = self
            .call("POST", "/session", Some(caps))
            .await
            .expect("creating a chromium session");
        let id = v["value"]["sessionId"].as_str().unwrap().to_owned();
        Session { d: self, id, shots }
    }
}

impl Session<'_> {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.id);
        self.d
            .call(method, &p, body)
            .await
            .unwrap_or_else(|e| panic!("webdriver: {e}"))["value"]
            .clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// A GET command whose value is a string (empty when it is not).
    async fn get_str(&self, path: &str) -> String {
        let v = self.cmd("GET", path, None).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    pub(crate) async fn current_url(&self) -> String {
        self.get_str("/url").await
    }

    pub(crate) async fn source(&self) -> String {
        self.get_str("/source").await
    }

    /// Waits up to `secs` for an element matching `css`.
    pub(crate) async fn find(&self, css: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let p = format!("/session/{}/element", self.id);
            if let Ok(v) = self
                .d
                .call(
                    "POST",
                    &p,
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await
            {
                return v["value"][ELEMENT_KEY].as_str().unwrap().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} on {}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        loop {
            let e = self.find(css, 10).await;
            let p = format!("/session/{}/element/{e}/text", self.id);
            match self.d.call("GET", &p, None).await {
                Ok(v) => return v["value"].as_str().unwrap_or_default().to_owned(),
                // A click that navigates can replace the page between finding
                // the element and reading it; the new page's element is the
                // one wanted, so find it again.
                Err(e) if e.contains("stale element reference") => continue,
                Err(e) => panic!("webdriver: {e}"),
            }
        }
    }

    /// Waits until the text of `css` contains `needle`.
    pub(crate) async fn wait_text(&self, css: &str, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.text(css).await;
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} never contained {needle:?}; last: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css, 10).await;
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub(crate) async fn click(&self, css: &str) {
        let e = self.find(css, 10).await;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    /// How many CSS pixels the page is wider than the viewport (0: no
    /// horizontal scroll), for the cluster pages' layout check.
    pub(crate) async fn horizontal_overflow(&self) -> i64 {
        let script =
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;";
        let v = self
            .cmd(
                "POST",
                "/execute/sync",
                Some(json!({ "script": script, "args": [] })),
            )
            .await;
        v.as_i64().expect("a number of pixels")
    }

    /// Whether the git page on screen scrolls sideways (its document wider
    /// than the window): wide diffs and long names must scroll inside
    /// their own boxes, never the page.
    pub(crate) async fn git_page_scrolls_sideways(&self) -> bool {
        self.horizontal_overflow().await > 0
    }

    /// The CI pages' layout check: the page scrolls only vertically (at
    /// the session's 1280 px width).
    pub(crate) async fn ci_page_fits_width(&self) -> bool {
        self.horizontal_overflow().await <= 0
    }

    /// Saves a PNG of the viewport as `<shots>/<name>.png`.
    pub(crate) async fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}
