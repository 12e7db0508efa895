//! Real processes for fault injection: the `sagaflow` binary, a private Kafka-protocol
//! broker, and a private PostgreSQL cluster, each started, frozen, killed and restarted
//! like an operator (or a crash) would. Everything listens on loopback only, and every
//! wait is bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !port_open(port) {
        assert!(Instant::now() < deadline, "{what} did not open port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Spawns `command` with no input and both outputs going to a new log file at `log`.
fn spawn_logged(command: &mut Command, log: &Path, what: &str) -> Child {
    let out = File::create(log).unwrap_or_else(|e| panic!("{what} log file {}: {e}", log.display()));
    let err = out.try_clone().unwrap_or_else(|e| panic!("{what} log file: {e}"));
    command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("{what} starts: {e}"))
}

/// SIGKILLs `child`, if any, and waits for it.
fn reap(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The `sagaflow` binary of this build (`cargo build --bin sagaflow` puts it beside the
/// test binaries' `deps/` folder; `scripts/test.sh` builds it first).
pub fn sagaflow_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let binary = profile_dir.join("sagaflow");
    assert!(binary.exists(), "{} is missing: run `cargo build --bin sagaflow` first", binary.display());
    binary
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How to start one engine process.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub database_url: String,
    pub kafka: String,
    pub topic_prefix: String,
    pub roles: String,
    pub http_port: u16,
    pub log_dir: PathBuf,
    pub name: String,
    /// More environment variables for the process.
    pub env: Vec<(String, String)>,
}

impl EngineSpec {
    /// Every role, on a free port, with no extra environment.
    pub fn new(database_url: String, kafka: String, topic_prefix: &str, log_dir: &Path, name: &str) -> Self {
        Self {
            database_url,
            kafka,
            topic_prefix: topic_prefix.to_owned(),
            roles: "api,coordinator,participants".into(),
            http_port: free_port(),
            log_dir: log_dir.to_owned(),
            name: name.to_owned(),
            env: Vec::new(),
        }
    }
}

/// A running `sagaflow serve` process.
pub struct EngineProcess {
    spec: EngineSpec,
    child: Option<Child>,
    pub base: String,
    starts: u32,
}

impl EngineProcess {
    /// Starts the process (not waiting for it to be ready).
    pub fn start(spec: EngineSpec) -> Self {
        let base = format!("http://127.0.0.1:{}", spec.http_port);
        let mut engine = Self { spec, child: None, base, starts: 0 };
        engine.spawn();
        engine
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut command = Command::new(sagaflow_binary());
        command
            .arg("serve")
            .env("DATABASE_URL", &self.spec.database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.spec.kafka)
            .env("SAGAFLOW_TOPIC_PREFIX", &self.spec.topic_prefix)
            .env("SAGAFLOW_ROLES", &self.spec.roles)
            .env("SAGAFLOW_HTTP_ADDR", format!("127.0.0.1:{}", self.spec.http_port))
            // The broker's minimum: a crashed member's partitions move on as soon as it allows.
            .env("SAGAFLOW_KAFKA_SESSION_TIMEOUT", "6s")
            // nisshi answers a fetch only when its wait is over: keep hops short.
            .env("SAGAFLOW_KAFKA_FETCH_WAIT", "10ms")
            .env(
                "RUST_LOG",
                std::env::var("SAGAFLOW_TEST_LOG").unwrap_or_else(|_| "info,sqlx=warn,rdkafka=warn".into()),
            )
            .env("NO_COLOR", "1")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        let child = spawn_logged(&mut command, &self.log_path(), "the sagaflow binary");
        self.child = Some(child);
    }

    /// This start's log file.
    pub fn log_path(&self) -> PathBuf {
        self.spec.log_dir.join(format!("{}-{}.log", self.spec.name, self.starts))
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = client.get(format!("{}/health/ready", self.base)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Some(exit) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited with {exit} while starting:\n{}", self.spec.name, tail(&self.log_path(), 40));
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {timeout:?}:\n{}",
                self.spec.name,
                tail(&self.log_path(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, as in a crash: nothing gets to clean up.
    pub fn kill(&mut self) {
        reap(self.child.take());
    }

    /// Starts the same process again (same groups, same port), after a kill.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM; returns the exit status and how long the stop took (`None`: still running
    /// after `timeout`, then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        signal(child.id(), "TERM");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        reap(Some(child));
        None
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private Kafka-protocol broker (nisshi, memory storage) on its own port, so that
/// freezing or restarting it disturbs no other test.
pub struct BrokerProcess {
    child: Option<Child>,
    pub port: u16,
    log_dir: PathBuf,
    starts: u32,
}

impl BrokerProcess {
    /// Starts a broker and waits for its port.
    pub fn start(log_dir: &Path) -> Self {
        let mut broker = Self { child: None, port: free_port(), log_dir: log_dir.to_owned(), starts: 0 };
        broker.spawn();
        broker
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(std::env::var("SAGAFLOW_TEST_BROKER").unwrap_or_else(|_| "nisshi".into()));
        command.args(["broker", "--cluster-id", "sagaflow-faults", "--listener-url", &url]).args([
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://faults/",
        ]);
        let log = self.log_dir.join(format!("broker-{}.log", self.starts));
        self.child = Some(spawn_logged(&mut command, &log, "the broker (nisshi: run scripts/services.sh)"));
        wait_for_port(self.port, "the broker", Duration::from_secs(30));
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("the broker runs")
    }

    /// SIGSTOP: the broker stops answering but keeps its connections open.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGKILL, then a new, empty broker on the same port.
    pub fn restart_empty(&mut self) {
        reap(self.child.take());
        self.spawn();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen broker must be thawed to die.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        reap(self.child.take());
    }
}

/// A private PostgreSQL 15 cluster in a temporary directory on its own port, so that
/// restarting it disturbs no other test. Run as the `postgres` user when the tests run
/// as root (PostgreSQL refuses to run as root).
pub struct PostgresCluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres_user(program: &str, args: &[&str]) -> Command {
    let path = format!("{PG_BIN}/{program}");
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &path]).args(args);
        command
    } else {
        let mut command = Command::new(path);
        command.args(args);
        command
    }
}

fn run_ok(mut command: Command, what: &str) {
    let output = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PostgresCluster {
    /// initdb (trust on loopback, superuser `sagaflow`), start, and create database `sagaflow`.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("sagaflow-pg").tempdir().expect("temporary directory");
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        let data = dir.path().join("data");
        let data_s = data.to_string_lossy().into_owned();
        run_ok(as_postgres_user("initdb", &["-D", &data_s, "-U", "sagaflow", "--auth=trust", "-E", "UTF8"]), "initdb");
        let cluster = Self { dir, port: free_port() };
        cluster.pg_ctl_start();
        run_ok(
            as_postgres_user(
                "createdb",
                &["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "sagaflow", "sagaflow"],
            ),
            "createdb",
        );
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").to_string_lossy().into_owned();
        run_ok(
            as_postgres_user("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"]),
            "pg_ctl start",
        );
    }

    /// The URL of database `sagaflow`.
    pub fn url(&self) -> String {
        format!("postgres://sagaflow@127.0.0.1:{}/sagaflow", self.port)
    }

    /// Fast shutdown: every connection is cut.
    pub fn stop(&self) {
        run_ok(as_postgres_user("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]), "pg_ctl stop");
    }

    /// Starts it again after [`Self::stop`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let _ = as_postgres_user("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The URL of the database behind a `#[sqlx::test]` pool, for a process of its own.
pub async fn database_url_of(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(pool).await.expect("database name");
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL ends in /<database>");
    format!("{server}/{name}")
}
