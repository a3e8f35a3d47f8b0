//! Test harness: real `kie serve` processes on `127.0.0.1:0`, real `kie admin`
//! commands, a real HTTP client.
//!
//! Backend: SQLite in a temporary data dir by default; with `KIE_TEST_BACKEND=postgres`
//! every server gets a fresh PostgreSQL database on `KIE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`), dropped afterwards. If PostgreSQL is
//! requested but unreachable the test fails: it is never skipped.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const KIE: &str = env!("CARGO_BIN_EXE_kie");

pub fn backend_is_postgres() -> bool {
    std::env::var("KIE_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

fn pg_base() -> String {
    std::env::var("KIE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn rand_suffix() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..12)
        .map(|_| (b'a' + r.gen_range(0..26)) as char)
        .collect()
}

/// A database for one test (and any servers that share it).
pub struct TestDb {
    pub url: Option<String>,
    pg_name: Option<String>,
}

/// Runs a `psql` command; while the shared server answers "too many clients" (every
/// connection slot taken by the servers of tests running in parallel, or by another
/// suite on the same PostgreSQL), tries again until a slot frees up (at most 60 s).
pub fn run_psql(cmd: &mut Command) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(50);
    loop {
        let out = cmd.output().expect("psql must be installed");
        let busy = String::from_utf8_lossy(&out.stderr).contains("too many clients");
        if out.status.success() || !busy || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn psql(sql: &str) {
    let out = run_psql(Command::new("psql").args([
        &format!("{}/postgres", pg_base()),
        "-v",
        "ON_ERROR_STOP=1",
        "-qc",
        sql,
    ]));
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestDb {
    pub fn new() -> TestDb {
        if backend_is_postgres() {
            let name = format!("kie_t_{}", rand_suffix());
            psql(&format!("CREATE DATABASE {name}"));
            TestDb {
                url: Some(format!("{}/{name}", pg_base())),
                pg_name: Some(name),
            }
        } else {
            TestDb {
                url: None,
                pg_name: None,
            }
        }
    }
}

impl TestDb {
    /// SQLite in the server's data dir whatever `KIE_TEST_BACKEND` says (for tests of
    /// SQLite-specific behaviour).
    pub fn sqlite() -> TestDb {
        TestDb {
            url: None,
            pg_name: None,
        }
    }

    /// A fresh database on the shared PostgreSQL whatever `KIE_TEST_BACKEND` says (for
    /// tests of multi-node behaviour, which needs a database several processes share).
    /// Fails, never skips, when PostgreSQL is unreachable.
    pub fn postgres() -> TestDb {
        let name = format!("kie_t_{}", rand_suffix());
        psql(&format!("CREATE DATABASE {name}"));
        TestDb {
            url: Some(format!("{}/{name}", pg_base())),
            pg_name: Some(name),
        }
    }

    /// A database at `url` that this handle neither creates nor drops.
    pub fn at(url: &str) -> TestDb {
        TestDb {
            url: Some(url.to_string()),
            pg_name: None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(n) = &self.pg_name {
            psql(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"));
        }
    }
}

/// Options for starting a server.
#[derive(Clone, Default)]
pub struct Opts {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub demo: bool,
    pub config_toml: Option<String>,
}

impl Opts {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn demo(mut self) -> Self {
        self.demo = true;
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_string());
        self
    }
}

/// A running `kie serve`.
pub struct Server {
    pub child: Option<Child>,
    pub base: String,
    pub addr: String,
    pub data_dir: PathBuf,
    pub db: std::sync::Arc<TestDb>,
    pub demo_key: Option<String>,
    pub opts: Opts,
    _tmp: Option<std::sync::Arc<TempDir>>,
    pub stderr_log: PathBuf,
    /// The TOML config the server was started with (passed to `kie admin` too).
    pub config_path: Option<PathBuf>,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("kie-test-{}", rand_suffix()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// Starts a server with its own data dir and database.
    pub fn start(opts: Opts) -> Server {
        let tmp = std::sync::Arc::new(TempDir::new());
        let db = std::sync::Arc::new(TestDb::new());
        Self::start_in(opts, tmp, db)
    }

    /// Starts a server on an existing data dir/database (restarts, second nodes).
    pub fn start_in(
        opts: Opts,
        tmp: std::sync::Arc<TempDir>,
        db: std::sync::Arc<TestDb>,
    ) -> Server {
        let data_dir = tmp.path().join("data");
        let stderr_log = tmp.path().join(format!("serve-{}.log", rand_suffix()));
        let mut cmd = Command::new(KIE);
        cmd.arg("serve")
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir);
        if let Some(u) = &db.url {
            cmd.arg("--database-url").arg(u);
        }
        if opts.demo {
            cmd.arg("--demo");
        }
        let mut config_path = None;
        if let Some(t) = &opts.config_toml {
            let p = tmp.path().join(format!("config-{}.toml", rand_suffix()));
            std::fs::write(&p, t).unwrap();
            cmd.arg("--config").arg(&p);
            config_path = Some(p);
        }
        cmd.args(&opts.args);
        cmd.env_remove("KIE_API_KEY").env("KIE_LOG", "info");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(&stderr_log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn kie serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // keep draining so the server never blocks on a full pipe
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut demo_key = None;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(k) = line.strip_prefix("demo API key: ") {
                        demo_key = Some(k.trim().to_string());
                    }
                    if let Some(a) = line.strip_prefix("listening on http://") {
                        break a.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                    panic!("kie serve did not start; stderr:\n{log}");
                }
            }
        };
        Server {
            child: Some(child),
            base: format!("http://{addr}"),
            addr,
            data_dir,
            db,
            demo_key,
            opts,
            _tmp: Some(tmp),
            stderr_log,
            config_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The server's `/metrics` page.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn tmp(&self) -> std::sync::Arc<TempDir> {
        self._tmp.clone().unwrap()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().unwrap()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts again on the same data dir and database.
    pub fn restart(mut self) -> Server {
        self.stop();
        let tmp = self._tmp.take().unwrap();
        let db = self.db.clone();
        let opts = self.opts.clone();
        Server::start_in(opts, tmp, db)
    }

    /// Another node on the same database and data dir.
    pub fn second_node(&self) -> Server {
        Server::start_in(self.opts.clone(), self.tmp(), self.db.clone())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// How the process ended, when it ended without being stopped or killed here (a
    /// crash: e.g. "killed by signal 7 (Bus error), core dumped").
    pub fn ended_on_its_own(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let st = self.child.as_mut()?.try_wait().ok()??;
        Some(match st.signal() {
            Some(sig) => {
                let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) };
                format!(
                    "killed by signal {sig} ({}){}",
                    name.to_string_lossy(),
                    if st.core_dumped() {
                        ", core dumped"
                    } else {
                        ""
                    }
                )
            }
            None => format!("exited with {st}"),
        })
    }

    /// Panics when the server is no longer running (with how it ended and the end of
    /// its log): checks that only the database can answer would not notice a crash.
    pub fn assert_running(&mut self) {
        if let Some(why) = self.ended_on_its_own() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            panic!(
                "kie serve {} ended on its own: {why}; last lines of its log:\n{}",
                self.addr,
                tail.join("\n")
            );
        }
    }

    pub fn admin_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KIE);
        cmd.arg("admin").arg("--data-dir").arg(&self.data_dir);
        if let Some(u) = &self.db.url {
            cmd.arg("--database-url").arg(u);
        }
        if let Some(c) = &self.config_path {
            cmd.arg("--config").arg(c);
        }
        cmd.args(args).stdin(Stdio::null());
        // the server's environment (e.g. S3 storage settings) applies to admin too
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `kie admin ARGS` and returns the raw output.
    pub fn admin_raw(&self, args: &[&str]) -> Output {
        let out = self.admin_cmd(args).output().unwrap();
        keep_output(&out);
        out
    }

    /// Runs `kie admin ARGS --json`, asserts success and parses stdout.
    pub fn admin(&self, args: &[&str]) -> Value {
        let out = self.admin_cmd(args).arg("--json").output().unwrap();
        keep_output(&out);
        assert!(
            out.status.success(),
            "kie admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kie admin {args:?}: stdout is not one JSON value ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates an account with `credits` and a key; returns (account id, key).
    pub fn account_with_key(&self, name: &str, credits: &str) -> (String, String) {
        let acc = self.admin(&["account", "create", "--name", name, "--credits", credits]);
        let id = acc["id"].as_str().unwrap().to_string();
        let key = self.admin(&["key", "create", "--account", &id]);
        (id, key["key"].as_str().unwrap().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A crash nobody asked about would go unnoticed (the test may have passed on
        // the database alone): say so next to the test's output.
        if let Some(why) = self.ended_on_its_own() {
            eprintln!("kie serve {} had ended on its own: {why}", self.addr);
        }
        self.kill();
        keep_log(&self.stderr_log, "serve");
    }
}

/// Where every `kie serve` log and `kie admin` stderr of the suite is kept for the
/// secrets scan (`scripts/test` runs `--example scan-secrets` over it at the end):
/// `KIE_TEST_LOG_DIR`, default `target/tmp/test-logs`.
pub fn test_log_dir() -> PathBuf {
    std::env::var_os("KIE_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-logs"))
}

/// Copies a log into [`test_log_dir`] (best effort: a full disk must not fail a test).
fn keep_log(src: &Path, what: &str) {
    let dir = test_log_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::copy(src, dir.join(format!("{what}-{}.log", rand_suffix())));
    }
}

fn keep_output(out: &Output) {
    if out.stderr.is_empty() {
        return;
    }
    let dir = test_log_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join(format!("admin-{}.log", rand_suffix())),
            &out.stderr,
        );
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET with a bearer key; returns (HTTP status, headers, JSON body).
pub async fn get_json(url: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = client().get(url);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&body)));
    (status, headers, v)
}

/// POST a JSON value with a bearer key.
pub async fn post_json(
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = client().post(url).json(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&body)));
    (status, headers, v)
}

/// Waits (up to 5 s) until `GET /api/v1/chat/credit` with `key` answers `data` =
/// `expected`. On PostgreSQL a node reads balances from its cache, and a change made
/// by another process (`kie admin`) reaches it within `balance_cache_ttl` (100 ms; the
/// bound itself is tested in `multinode::credit_reads_…`); SQLite shows it at once.
pub async fn wait_for_credit(s: &Server, key: &str, expected: &Value) {
    let url = s.url("/api/v1/chat/credit");
    let seen = eventually(Duration::from_secs(5), || async {
        get_json(&url, Some(key)).await.2["data"] == *expected
    })
    .await;
    assert!(seen.is_some(), "the credit never showed {expected}");
}

/// Polls `check` every 50 ms until it returns true or `limit` passes; returns how long
/// it took. Used where the contract is "within N seconds" (waits on the real
/// condition, never a fixed delay).
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < limit {
        tick.tick().await;
        if check().await {
            return Some(start.elapsed());
        }
    }
    None
}

// ------------------------------------------------------- crash tests (issue 8)

impl Server {
    /// SIGKILL, then start again on the same data dir and database.
    pub fn crash_restart(mut self) -> Server {
        self.kill();
        let tmp = self._tmp.take().unwrap();
        let db = self.db.clone();
        let opts = self.opts.clone();
        Server::start_in(opts, tmp, db)
    }

    /// Runs an SQL script (several statements) against the server's database with
    /// sqlite3 or psql: for bulk set-up that no public command could make in time.
    pub fn sql_script(&self, script: &str) {
        let path = self.data_dir.join("setup.sql");
        std::fs::write(&path, script).unwrap();
        let out = match &self.db.url {
            Some(u) => run_psql(
                Command::new("psql")
                    .args([u.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-f"])
                    .arg(&path),
            ),
            None => Command::new("sqlite3")
                .args(["-bail", "-cmd", ".timeout 10000"])
                .arg(self.data_dir.join("kie.db"))
                .arg(format!(".read {}", path.display()))
                .output()
                .expect("sqlite3"),
        };
        assert!(
            out.status.success(),
            "sql script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Read-only SQL against the server's database (sqlite3 or psql), rows of
    /// `|`-separated columns. A last resort for invariants no public command shows.
    pub fn sql(&self, query: &str) -> Vec<Vec<String>> {
        let out = match &self.db.url {
            Some(u) => run_psql(Command::new("psql").args([
                u.as_str(),
                "-v",
                "ON_ERROR_STOP=1",
                "-AtF",
                "|",
                "-c",
                query,
            ])),
            None => Command::new("sqlite3")
                .arg("-readonly")
                .args(["-cmd", ".timeout 10000", "-separator", "|"])
                .arg(self.data_dir.join("kie.db"))
                .arg(query)
                .output()
                .expect("sqlite3"),
        };
        assert!(
            out.status.success(),
            "sql {query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }
}

/// A private PostgreSQL cluster (own data dir, own port) that a test may stop and start
/// again — never the shared one other tests use. Runs as the `postgres` user when the
/// test runs as root (PostgreSQL refuses root). Stopped and removed on drop.
pub struct PrivatePg {
    pub port: u16,
    dir: PathBuf,
    running: bool,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn pg_tool(tool: &str, args: &[&str]) -> Output {
    let bin = format!("{PG_BIN}/{tool}");
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &bin]);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} must be installed at {PG_BIN} for the outage tests: {e}")
        })
}

impl PrivatePg {
    /// `initdb` into a new temporary directory and start on a free port.
    pub fn start() -> PrivatePg {
        let dir = std::env::temp_dir().join(format!("kie-pg-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            let st = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(st.success(), "chown {}", dir.display());
        }
        let data = dir.join("data");
        let out = pg_tool(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = PrivatePg {
            port,
            dir,
            running: false,
        };
        pg.resume();
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts (again) and waits until it accepts connections.
    pub fn resume(&mut self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log");
        let out = pg_tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// Stops at once (`-m immediate`: connections are cut, as in a crash).
    pub fn stop(&mut self) {
        let data = self.dir.join("data");
        let out = pg_tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }
}

impl PrivatePg {
    /// The postmaster and its children (backends, background processes).
    fn pids(&self) -> Vec<i32> {
        let pidfile = self.dir.join("data").join("postmaster.pid");
        let pm: i32 = std::fs::read_to_string(pidfile)
            .expect("a running cluster")
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut pids = vec![pm];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid …; comm may contain spaces, so split after ')'
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(pm) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Freezes every process of the cluster (SIGSTOP): connections stay open but
    /// nothing answers, as in a network partition or a stalled host.
    pub fn freeze(&self) {
        // the postmaster first, so that it forks no child we would miss
        let pm = self.pids()[0];
        unsafe {
            libc::kill(pm, libc::SIGSTOP);
        }
        for p in self.pids() {
            unsafe {
                libc::kill(p, libc::SIGSTOP);
            }
        }
    }

    /// Undoes [`PrivatePg::freeze`].
    pub fn thaw(&self) {
        for p in self.pids() {
            unsafe {
                libc::kill(p, libc::SIGCONT);
            }
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if self.running {
            self.thaw();
            let data = self.dir.join("data");
            let _ = pg_tool(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every regular file under a local store directory, as a key relative to it
/// (`ab/abcd…`, or `ab/abcd…#1` for a staged write).
pub fn stored_keys(dir: &Path) -> std::collections::HashSet<String> {
    fn walk(root: &Path, p: &Path, out: &mut std::collections::HashSet<String>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    walk(dir, dir, &mut out);
    out
}

impl Server {
    /// The storage keys of the file records not deleted (read-only SQL).
    pub fn live_storage_keys(&self) -> std::collections::HashSet<String> {
        self.sql("SELECT storage_key FROM files WHERE deleted_at IS NULL")
            .into_iter()
            .map(|r| r[0].clone())
            .collect()
    }
}
