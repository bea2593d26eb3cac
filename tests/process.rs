//! Real `reddot-producer` and `reddot-gateway` processes, as a user runs them: configured
//! through `REDDOT_*` variables, listening on port 0 (the port is read from their JSON
//! start-up log), logs kept in a file, killed when the test ends.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{OnceLock, mpsc},
    time::Duration,
};

use anyhow::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Producer,
    Gateway,
}

impl ServiceKind {
    fn binary(self) -> &'static str {
        match self {
            ServiceKind::Producer => "reddot-producer",
            ServiceKind::Gateway => "reddot-gateway",
        }
    }
}

/// What a service is started with; `vars` override or add `REDDOT_*` variables.
#[derive(Debug, Clone)]
pub struct Env {
    pub database_url: String,
    pub amqp_url: String,
    pub vars: HashMap<String, String>,
}

impl Env {
    pub fn new(database_url: &str, amqp_url: &str) -> Self {
        Self {
            database_url: database_url.into(),
            amqp_url: amqp_url.into(),
            vars: HashMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.insert(key.into(), value.into());
        self
    }
}

pub struct Service {
    pub kind: ServiceKind,
    pub port: u16,
    child: Child,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// Where the service binaries are: next to the running test or bench executable's
/// profile directory (`target/debug` or `target/release`).
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("REDDOT_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Builds the service binaries once per test process, so a test never runs stale ones.
/// Same target set as `cargo test --workspace`, so features unify and nothing is
/// rebuilt twice; a no-op build takes well under a second.
fn ensure_built() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var("REDDOT_SKIP_BUILD").is_ok() {
            return Ok(());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace)
            .args(["build", "--quiet", "--workspace"]);
        // Benchmarks (release) need only the binaries; tests build every target so that
        // features unify with `cargo test --workspace` and nothing is built twice.
        if bin_dir().ends_with("release") {
            cmd.args(["--bins", "--release"]);
        } else {
            cmd.arg("--all-targets");
        }
        // Cargo sets per-crate variables for the running test; some build scripts (ring)
        // rerun when they change, which would rebuild the world on every test run.
        for (key, _) in std::env::vars() {
            let per_crate = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ];
            if per_crate.iter().any(|p| key.starts_with(p)) {
                cmd.env_remove(key);
            }
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of the services failed: {s}")),
            Err(e) => Err(format!("could not run cargo: {e}")),
        }
    })
}

impl Service {
    pub async fn start(kind: ServiceKind, env: &Env) -> anyhow::Result<Self> {
        ensure_built()
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let log_dir = tempfile::tempdir()?;
        let log_path = log_dir.path().join(format!("{}.log", kind.binary()));
        let mut cmd = Command::new(bin_dir().join(kind.binary()));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDDOT_DATABASE_URL", &env.database_url)
            .env("REDDOT_AMQP_URL", &env.amqp_url)
            .env("REDDOT_JWT_SECRET", crate::JWT_SECRET)
            .env(
                "REDDOT_API_KEYS",
                format!("{},second-test-key", crate::API_KEY),
            )
            .env("REDDOT_ALLOWED_ORIGINS", crate::ORIGIN)
            .env("REDDOT_PRODUCER_ADDR", "127.0.0.1:0")
            .env("REDDOT_GATEWAY_ADDR", "127.0.0.1:0")
            .env("REDDOT_RELAY_POLL_MS", "100")
            .env("REDDOT_LOG_FORMAT", "json")
            // Tests and benchmarks open thousands of sessions from 127.0.0.x; the tests
            // of the limit itself switch it back on.
            .env("REDDOT_CONNECT_RATE_PER_IP", "0")
            .env(
                "RUST_LOG",
                std::env::var("REDDOT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(&env.vars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.binary()))?;
        let (port_tx, port_rx) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut log = std::fs::File::create(&log_path)?;
        let mut err_log = log.try_clone()?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = listening_port(&line) {
                    let _ = port_tx.send(port);
                }
                let _ = writeln!(log, "{line}");
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(err_log, "{line}");
            }
        });
        let started = std::time::Instant::now();
        let port = loop {
            if let Ok(port) = port_rx.try_recv() {
                break port;
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before listening:\n{}",
                    kind.binary(),
                    std::fs::read_to_string(&log_path)?
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                anyhow::bail!(
                    "{} did not start within 60 s:\n{}",
                    kind.binary(),
                    std::fs::read_to_string(&log_path)?
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            kind,
            port,
            child,
            log_path,
            _log_dir: log_dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit. True if it exited cleanly in time.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        Ok(false)
    }

    /// Everything the service logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Resident memory of the process in KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var("REDDOT_TEST_SHOW_LOGS").is_ok() {
            eprintln!("---- {} logs ----\n{}", self.kind.binary(), self.logs());
        }
    }
}

fn listening_port(line: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let addr = v.get("listening_addr")?.as_str()?;
    addr.rsplit(':').next()?.parse().ok()
}
