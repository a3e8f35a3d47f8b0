//! A small W3C WebDriver client over reqwest, driving Debian's `chromedriver` and
//! headless `chromium` — just the commands these tests use. Element lookups use the
//! session's implicit wait (the driver polls for the element), and [`Browser::wait_for`]
//! polls a condition: nothing here sleeps a fixed time.

use base64::Engine;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian installs them (`scripts/install-test-tools` does).
fn chromedriver_bin() -> String {
    std::env::var("KIE_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}
fn chromium_bin() -> String {
    std::env::var("KIE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A running chromedriver with one headless browser session.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
}

pub struct Element {
    id: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a 1280×800 headless Chromium. Fails (never skips) when
    /// they are not installed.
    pub async fn start() -> Browser {
        let bin = chromedriver_bin();
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: run scripts/install-test-tools (installs Debian's chromium and chromium-driver)"
        );
        let port = free_port();
        let driver = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let driver_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let ready = match http.get(format!("{driver_url}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .map(|v| v["value"]["ready"] == true)
                    .unwrap_or(false),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_bin(),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,800", "--hide-scrollbars",
                         "--force-device-scale-factor=1"]
            }
        }}});
        let r: Value = http
            .post(format!("{driver_url}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sid = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        let b = Browser {
            driver,
            http,
            base: format!("{driver_url}/session/{sid}"),
        };
        b.cmd(
            "POST",
            "/timeouts",
            json!({"implicit": 10_000, "pageLoad": 30_000}),
        )
        .await;
        // a 1280×800 viewport: the window plus whatever the browser's frame takes
        b.cmd(
            "POST",
            "/window/rect",
            json!({"width": 1280, "height": 800}),
        )
        .await;
        let frame = b
            .cmd(
                "POST",
                "/execute/sync",
                json!({"script": "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];", "args": []}),
            )
            .await;
        let (dw, dh) = (
            frame[0].as_i64().unwrap_or(0),
            frame[1].as_i64().unwrap_or(0),
        );
        b.cmd(
            "POST",
            "/window/rect",
            json!({"width": 1280 + dw, "height": 800 + dh}),
        )
        .await;
        b
    }

    async fn raw(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let rb = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        rb.send().await.unwrap().json().await.unwrap()
    }

    /// A command that must succeed; its `value`.
    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let v = self.raw(method, path, body).await;
        if v["value"].get("error").is_some() {
            panic!("WebDriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({"url": url})).await;
    }

    /// The element matching `xpath`, waiting for it (implicit wait).
    pub async fn find(&self, xpath: &str) -> Element {
        let v = self
            .raw(
                "POST",
                "/element",
                json!({"using": "xpath", "value": xpath}),
            )
            .await;
        match v["value"][ELEMENT].as_str() {
            Some(id) => Element { id: id.to_string() },
            None => panic!(
                "no element {xpath}: {}\npage: {}",
                v["value"],
                self.source_now().await
            ),
        }
    }

    async fn source_now(&self) -> String {
        let v = self.raw("GET", "/source", json!({})).await;
        v["value"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(4000)
            .collect()
    }

    /// How many elements match now (waits up to the implicit wait only when none do).
    pub async fn count(&self, xpath: &str) -> usize {
        self.cmd(
            "POST",
            "/elements",
            json!({"using": "xpath", "value": xpath}),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    /// The form control whose `<label>` reads `label`, checked by its computed
    /// accessible name (what a screen reader announces).
    pub async fn field(&self, label: &str) -> Element {
        let e = self
            .find(&format!(
                "//*[@id=//label[normalize-space()='{label}']/@for]"
            ))
            .await;
        assert_eq!(self.label(&e).await, label);
        e
    }

    /// The button whose accessible name is `name`.
    pub async fn button(&self, name: &str) -> Element {
        let e = self
            .find(&format!(
                "//button[normalize-space()='{name}' or @aria-label='{name}']"
            ))
            .await;
        assert_eq!(self.role(&e).await, "button");
        e
    }

    /// The link whose text is `name`.
    pub async fn link(&self, name: &str) -> Element {
        self.find(&format!("//a[normalize-space()='{name}']")).await
    }

    pub async fn label(&self, e: &Element) -> String {
        self.cmd(
            "GET",
            &format!("/element/{}/computedlabel", e.id),
            json!({}),
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    pub async fn role(&self, e: &Element) -> String {
        self.cmd("GET", &format!("/element/{}/computedrole", e.id), json!({}))
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub async fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.id), json!({}))
            .await;
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.cmd("POST", &format!("/element/{}/clear", e.id), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.id),
            json!({"text": text}),
        )
        .await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.cmd("GET", &format!("/element/{}/text", e.id), json!({}))
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Runs `script` (an async function body; `arguments[0]` is the callback).
    pub async fn run_async(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// The address of the page now shown.
    pub async fn current_url(&self) -> String {
        self.cmd("GET", "/url", json!({}))
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Whether a JavaScript dialog (an `alert(…)`) is open.
    pub async fn alert_open(&self) -> bool {
        let v = self.raw("GET", "/alert/text", json!({})).await;
        v["value"].get("error").is_none()
    }

    pub async fn cookies(&self) -> Value {
        self.cmd("GET", "/cookie", json!({})).await
    }

    /// Polls `check` until it holds (every 50 ms, up to `limit`).
    pub async fn wait_for<F, Fut>(&self, limit: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
        }
    }

    /// A PNG of the viewport (1280×800) into `target/screenshots/{sqlite,postgres}/NAME.png`;
    /// with `KIE_UPDATE_SCREENSHOTS=1` (SQLite runs) into `docs/screenshots/` too, the
    /// committed set the README shows — a plain test run leaves the checkout clean.
    pub async fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", json!({})).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((width, height), (1280, 800), "{name}");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let pg = crate::harness::backend_is_postgres();
        let mut dirs =
            vec![root
                .join("target/screenshots")
                .join(if pg { "postgres" } else { "sqlite" })];
        if !pg && std::env::var("KIE_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
            dirs.push(root.join("docs/screenshots"));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser (DELETE the session, plain blocking HTTP: no runtime needed
        // in drop), then the driver.
        use std::io::{Read, Write};
        if let Some(rest) = self.base.strip_prefix("http://") {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if let Ok(mut c) = std::net::TcpStream::connect(host) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    c,
                    "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let mut sink = Vec::new();
                let _ = c.read_to_end(&mut sink);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
