//! Harness for Tributary's black-box tests: starts real `tributary-broker`
//! processes on loopback (each on ports the OS picks, with its own data
//! directory), stops them gently (SIGTERM) or not (SIGKILL), and runs the
//! `tributary` CLI.
//!
//! The binaries are found next to the test executable's `deps/` folder (the
//! workspace's target directory), or in `TRIBUTARY_BIN_DIR`.
//!
//! Replicated clusters (issue 8) build on the same [`Broker`]:
//!
//! * [`cluster`]: N brokers on fixed loopback ports, each reaching its peers
//!   through per-link TCP proxies ([`proxy`]) so a test can partition the
//!   network; kill, stop, pause, restart; leaders and ISR from Metadata.
//! * [`workload`]: an idempotent `acks=all` producer and a tailing reader
//!   over raw gRPC that follow leaders through failover and record what they
//!   were told into a [`checker::Ledger`].
//! * [`routing`]: leaders from every broker's Metadata merged by leader
//!   epoch, so a stale (cut-off, resumed) broker never misroutes a test.
//! * [`checker`]: reads every partition back, compares every replica's
//!   segment files, and reports lost, duplicated, misplaced and reordered
//!   records, reads that later vanished, and diverging replicas.

pub mod checker;
pub mod cluster;
pub mod proxy;
pub mod routing;
pub mod workload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIBUTARY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("target/<profile> directory").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not built; run the tests with `cargo test --release --workspace` (or set TRIBUTARY_BIN_DIR)",
        path.display()
    );
    path
}

/// Settings that make background work quick enough to observe in a test.
pub const FAST_MAINTENANCE: &str = "retention_check_interval_ms = 200\ncleaner_interval_ms = 200\n";

/// A broker process and its data directory.
pub struct Broker {
    child: Option<Child>,
    root: PathBuf,
    extra_config: String,
    env: Vec<(String, String)>,
    /// Data directory elsewhere than `<root>/data` (e.g. on a small tmpfs).
    data: Option<PathBuf>,
    /// Flags after the common ones (a cluster member's `--node-id`, `--peers`).
    args: Vec<String>,
    /// Starts wait for the "broker ready" log line; a cluster member is not
    /// ready alone, so its starts return at once (see [`Broker::launch`]).
    wait_on_start: bool,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker in a fresh temporary directory.
    pub fn start() -> Result<Broker> {
        Self::start_with(FAST_MAINTENANCE)
    }

    /// Starts a broker with extra TOML settings.
    pub fn start_with(config: &str) -> Result<Broker> {
        Self::start_with_env(config, &[])
    }

    /// Starts a broker with extra TOML settings and environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Result<Broker> {
        let tmp = tempfile::Builder::new().prefix("tributary-e2e-").tempdir()?;
        let mut b = Broker {
            child: None,
            root: tmp.path().to_path_buf(),
            extra_config: config.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            data: None,
            args: Vec::new(),
            wait_on_start: true,
            grpc: "127.0.0.1:0".parse()?,
            http: "127.0.0.1:0".parse()?,
            _tmp: Some(tmp),
        };
        b.spawn()?;
        Ok(b)
    }

    /// Starts a broker whose data directory is `data` (its log and config
    /// stay in a temporary directory).
    pub fn start_in(data: &Path, config: &str) -> Result<Broker> {
        let tmp = tempfile::Builder::new().prefix("tributary-e2e-").tempdir()?;
        let mut b = Broker {
            child: None,
            root: tmp.path().to_path_buf(),
            extra_config: config.to_string(),
            env: Vec::new(),
            data: Some(data.to_path_buf()),
            args: Vec::new(),
            wait_on_start: true,
            grpc: "127.0.0.1:0".parse()?,
            http: "127.0.0.1:0".parse()?,
            _tmp: Some(tmp),
        };
        b.spawn()?;
        Ok(b)
    }

    /// Starts a broker process as `launch` describes and returns without
    /// waiting for it to be ready (a cluster member cannot be ready before
    /// its peers run); [`restart`](Self::restart) does not wait either.
    pub fn launch(launch: Launch) -> Result<Broker> {
        std::fs::create_dir_all(&launch.root)
            .with_context(|| format!("creating {}", launch.root.display()))?;
        let mut b = Broker {
            child: None,
            root: launch.root,
            extra_config: launch.config,
            env: Vec::new(),
            data: None,
            args: launch.args,
            wait_on_start: false,
            grpc: launch.grpc,
            http: launch.http,
            _tmp: None,
        };
        b.spawn()?;
        Ok(b)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(|| self.root.join("data"))
    }

    pub fn bootstrap(&self) -> String {
        self.grpc.to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("broker.log")
    }

    /// Everything the broker process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        let config_path = self.root.join("broker.toml");
        // Restarts reuse the ports of the first start so clients can reconnect.
        let listen = if self.grpc.port() == 0 { "127.0.0.1:0".to_string() } else { self.grpc.to_string() };
        let http = if self.http.port() == 0 { "127.0.0.1:0".to_string() } else { self.http.to_string() };
        std::fs::write(&config_path, &self.extra_config)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        // A free Kafka port each start (never the shared default 9092),
        // unless the test chose one; `kafka_addr` reads it off the log.
        let kafka: &[&str] = if self.args.iter().any(|a| a == "--kafka-listen") {
            &[]
        } else {
            &["--kafka-listen", "127.0.0.1:0"]
        };
        let child = Command::new(bin("tributary-broker"))
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(&listen)
            .arg("--http-listen")
            .arg(&http)
            .args(kafka)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting tributary-broker")?;
        self.child = Some(child);
        if !self.wait_on_start {
            return Ok(());
        }
        let already = self.logs().matches("broker ready").count();
        self.wait_ready(already)
    }

    fn wait_ready(&mut self, ready_lines_before: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = self.logs();
            if logs.matches("broker ready").count() > ready_lines_before {
                let line = logs.lines().rev().find(|l| l.contains("broker ready")).unwrap_or_default();
                self.grpc = field(line, "grpc=").context("ready line without grpc=")?;
                self.http = field(line, "http=").context("ready line without http=")?;
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("broker exited with {status} before it was ready:\n{logs}");
                }
            }
            if Instant::now() > deadline {
                bail!("broker not ready after 60 s:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Kafka listener's address in the broker's latest run (from its
    /// "broker ready" line), once it is ready.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        let logs = self.logs();
        let line = logs.lines().rev().find(|l| l.contains("broker ready"))?;
        field(line, "kafka=")
    }

    /// The process id while the broker runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// False once the process has exited (or was never restarted after a
    /// kill); a stopped (SIGSTOP) process still counts as running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How the process ended, if it has (without reaping a running one).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the running process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let Some(pid) = self.pid() else { bail!("broker is not running") };
        // SAFETY: kill(2) on a child pid we own (not yet reaped, so the pid
        // cannot have been reused); no memory is touched.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL: no chance to flush or write its clean-shutdown marker.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child pid we own; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        bail!("broker exited with {status} on SIGTERM:\n{}", self.logs());
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    child.kill()?;
                    bail!("broker did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Starts the broker again on the same data directory and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.spawn()
    }

    /// Files of one partition's directory with a given extension.
    pub fn segment_files(&self, topic: &str, partition: u32) -> Vec<PathBuf> {
        let dir = self.data_dir().join(format!("{topic}-{partition}"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "log"));
        files.sort();
        files
    }

    /// GET on the broker's HTTP port; returns (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        self.http_get_within(path, Duration::from_secs(10))
    }

    /// GET that gives up after `timeout` (a paused broker accepts the
    /// connection in the kernel but never answers).
    pub fn http_get_within(&self, path: &str, timeout: Duration) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&self.http, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.http)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }

    /// A request with a JSON body on the broker's HTTP port (the schema
    /// registry's API); returns (status, body).
    pub fn http_send(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        http_send(&self.http, method, path, body)
    }

    /// Runs the `tributary` CLI against this broker with `stdin` as input.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Result<Output> {
        run_cli(&self.bootstrap(), args, stdin)
    }
}

/// One HTTP/1.1 request with a JSON body to `addr`; returns (status, body).
pub fn http_send(addr: &SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    http_send_as(addr, method, path, "application/vnd.schemaregistry.v1+json", body)
}

/// [`http_send`] with the given `Content-Type` (the REST proxy's embedded
/// formats).
pub fn http_send_as(
    addr: &SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<(u16, String)> {
    http_request(addr, method, path, &[("Content-Type", content_type)], body)
}

/// One HTTP/1.1 request with these headers (and the body's length) to
/// `addr`; returns (status, body).
pub fn http_request(
    addr: &SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(40);
    let mut s = std::net::TcpStream::connect_timeout(addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(s, "{head}Content-Length: {}\r\n\r\n{body}", body.len())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// How to launch one member of a cluster: see [`Broker::launch`].
pub struct Launch {
    /// Directory for its config, log and (in `data/`) data directory; kept
    /// by the caller.
    pub root: PathBuf,
    /// Fixed addresses: peers must know them before the broker starts.
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// TOML written to its `--config` file.
    pub config: String,
    /// Further flags (`--node-id`, `--peers`, ...).
    pub args: Vec<String>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()?.trim_matches('"').parse().ok()
}

/// Runs the `tributary` CLI with `--bootstrap` and feeds `stdin`.
pub fn run_cli(bootstrap: &str, args: &[&str], stdin: &str) -> Result<Output> {
    use std::io::Write;
    let mut child = Command::new(bin("tributary"))
        .arg("--bootstrap")
        .arg(bootstrap)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tributary")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 100 ms until it returns Ok or `timeout` passes; then
/// fails naming `what` and the last thing `check` reported (its Err), so a
/// timed-out wait says what it saw instead of just "timed out".
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if started.elapsed() > timeout {
            bail!("waited {:.1} s for {what}; last seen: {last}", started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of one partition from its log start up to the high
/// watermark read when the call starts. Never stops at an empty poll: an
/// empty response below the high watermark is a stranded consumer (the bug
/// this helper exists to catch), so that fails after 20 s of no progress.
pub async fn read_to_end(
    bootstrap: &str,
    topic: &str,
    partition: u32,
) -> Result<Vec<tributary_client::ConsumerRecord>> {
    use tributary_client::{Admin, Consumer, ConsumerConfig, OffsetSpec};
    let admin = Admin::connect(bootstrap).await?;
    let end = admin.list_offsets(topic, partition, OffsetSpec::Latest).await?;
    let mut c =
        Consumer::connect(ConsumerConfig { bootstrap: bootstrap.to_string(), ..Default::default() }).await?;
    c.assign(topic, partition, OffsetSpec::Earliest).await?;
    let mut out = Vec::new();
    let mut last_progress = Instant::now();
    while c.position(topic, partition).unwrap_or(0) < end {
        let got = c.poll(Duration::from_millis(200)).await?;
        if got.is_empty() {
            if last_progress.elapsed() > Duration::from_secs(20) {
                bail!(
                    "{topic}-{partition}: stuck at offset {:?} below the high watermark {end} (empty fetches)",
                    c.position(topic, partition)
                );
            }
            continue;
        }
        last_progress = Instant::now();
        out.extend(got);
    }
    Ok(out)
}
