//! What baton's tests need from outside: a real webhook receiver ([`receiver`]), the
//! Standard Webhooks reference verifier ([`standard_webhooks`]), third-party tools
//! ([`python`], [`node`]), a real browser ([`browser`]), and PostgreSQL.
//!
//! PostgreSQL for tests, with nobody starting a server: the first test that asks
//! starts a throwaway cluster (once per test process) on a free loopback port in a
//! temporary directory, migrates a template database once, and gives every test its
//! own database cloned from it (`CREATE DATABASE … TEMPLATE`), dropped afterwards.
//!
//! The binaries are found on `PATH`, then in `/usr/lib/postgresql/*/bin`. If they are
//! absent, tests fail with a message saying what to install; they are never skipped.
//! `BATON_TEST_DATABASE_URL` (e.g. `postgres://user:pass@host:5432/postgres`) points
//! the tests at an existing server instead; they create and drop their databases there.
//!
//! The cluster dies with the test process: a watchdog shell stops it (and removes its
//! directory) once the process that started it is gone.

#![allow(clippy::print_stderr, reason = "tests report where their cluster runs")]

pub mod browser;
pub mod node;
pub mod python;
pub mod receiver;
pub mod standard_webhooks;

/// Makes reqwest clients buildable in tests (see
/// [`baton_webhooks::install_crypto_provider`]).
pub fn init_tls() {
    baton_webhooks::install_crypto_provider();
}

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const TEMPLATE: &str = "baton_template";
const SUPERUSER: &str = "postgres";

/// A PostgreSQL server the tests may create databases on.
#[derive(Debug)]
struct Server {
    /// `postgres://user@host:port` (no database).
    base_url: String,
    /// The `psql` that talks to it.
    psql: PathBuf,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
/// A second cluster, with the durability a production server has, for benchmarks.
static DURABLE_SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test, cloned from the migrated template; dropped
/// when this value is.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    /// The cluster it is on.
    server: &'static Server,
}

impl TestDatabase {
    /// A new, migrated, empty database. Panics (failing the test) with what to install
    /// when PostgreSQL is not available.
    pub fn new() -> TestDatabase {
        TestDatabase::create(&SERVER, Durability::Off, Some(TEMPLATE))
    }

    /// As [`TestDatabase::new`], on a cluster of its own that keeps every commit on
    /// disk as a production server does (`fsync`, `synchronous_commit` and
    /// `full_page_writes` on): for benchmarks, where the tests' cluster (all three off,
    /// for speed) would flatter the figures. Ignores `BATON_TEST_DATABASE_URL`.
    pub fn durable() -> TestDatabase {
        TestDatabase::create(&DURABLE_SERVER, Durability::On, Some(TEMPLATE))
    }

    /// A new database with nothing in it, not even baton's tables.
    pub fn empty() -> TestDatabase {
        TestDatabase::create(&SERVER, Durability::Off, None)
    }

    fn create(
        cluster: &'static OnceLock<Result<Server, String>>,
        durability: Durability,
        template: Option<&str>,
    ) -> TestDatabase {
        let server = match cluster.get_or_init(|| start_server(durability)) {
            Ok(server) => server,
            Err(why) => panic!("{why}"),
        };
        let name = format!(
            "baton_test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        // A leftover from a crashed run of the same pid is dropped first.
        server.psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        server.psql(&format!(
            "CREATE DATABASE {name} TEMPLATE {}",
            template.unwrap_or("template0")
        ));
        TestDatabase {
            server,
            url: format!("{}/{name}", server.base_url),
            name,
        }
    }

    /// `postgres://…/<this database>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes this database unreachable — new connections refused, open ones ended —
    /// or reachable again: a database outage (a restart, a failover) for one test,
    /// without touching the other tests' databases.
    pub fn set_reachable(&self, reachable: bool) -> Result<(), String> {
        let server = self.server;
        server.try_psql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {reachable}",
            self.name
        ))?;
        if !reachable {
            server.try_psql(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ))?;
        }
        Ok(())
    }

    /// Runs one SQL statement on this database with `psql`; its rows, unaligned, one
    /// per line (`psql -tA`).
    pub fn query(&self, sql: &str) -> Result<String, String> {
        self.server.psql_on(&self.url, sql)
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        TestDatabase::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // WITH (FORCE) ends connections a test left open (pools, listeners).
        let _ = self.server.try_psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

impl Server {
    fn try_psql(&self, sql: &str) -> Result<(), String> {
        self.psql_on(&format!("{}/postgres", self.base_url), sql)
            .map(drop)
    }

    /// Runs `sql` on the database at `url`; its rows, unaligned, one per line.
    fn psql_on(&self, url: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(&self.psql)
            .args([
                "--no-psqlrc",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-tA",
                "-d",
                url,
            ])
            .args(["-c", sql])
            .output()
            .map_err(|err| format!("running {}: {err}", self.psql.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!(
                "{sql}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn psql(&self, sql: &str) {
        if let Err(why) = self.try_psql(sql) {
            panic!("test database setup failed: {why}");
        }
    }
}

/// Where the PostgreSQL server binaries are.
fn find_bin_dir() -> Result<PathBuf, String> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.into_iter().rev().find(|dir| has_all(dir)).ok_or_else(|| {
        "PostgreSQL tests need the server binaries initdb, pg_ctl, postgres and psql, found neither on PATH \
         nor in /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: apt-get install postgresql) or set \
         BATON_TEST_DATABASE_URL to an existing server, e.g. postgres://postgres@127.0.0.1:5432/postgres."
            .to_owned()
    })
}

/// Whether a started cluster makes commits durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Off,
    On,
}

fn start_server(durability: Durability) -> Result<Server, String> {
    let server = match std::env::var("BATON_TEST_DATABASE_URL") {
        Ok(url) if durability == Durability::Off => external_server(&url)?,
        _ => start_cluster(durability)?,
    };
    migrate_template(&server)?;
    Ok(server)
}

fn external_server(url: &str) -> Result<Server, String> {
    // Strip the database name: tests make their own databases next to it.
    let base_url = match url.rsplit_once('/') {
        Some((base, _db)) if base.contains("://") && base.len() > "postgres://".len() => {
            base.to_owned()
        }
        _ => url.trim_end_matches('/').to_owned(),
    };
    let psql = which("psql").ok_or("BATON_TEST_DATABASE_URL is set, but psql is not on PATH")?;
    Ok(Server { base_url, psql })
}

fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|err| format!("{what}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// PostgreSQL refuses to run as root; as root, run it as the `postgres` user.
fn as_server_user(program: &Path, running_as_root: bool) -> Command {
    if running_as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", SUPERUSER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|err| format!("finding a free port: {err}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|err| err.to_string())
}

fn start_cluster(durability: Durability) -> Result<Server, String> {
    let bin = find_bin_dir()?;
    let root = is_root();
    let dir =
        std::env::temp_dir().join(format!("baton-pg-{}-{}", std::process::id(), free_port()?));
    std::fs::create_dir_all(&dir).map_err(|err| format!("creating {}: {err}", dir.display()))?;
    if root {
        run(
            Command::new("chown")
                .args([&format!("{SUPERUSER}:{SUPERUSER}")])
                .arg(&dir),
            "chown of the cluster directory",
        )?;
    }
    let data = dir.join("data");
    let started = Instant::now();
    run(
        as_server_user(&bin.join("initdb"), root)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--no-instructions",
                "-D",
            ])
            .arg(&data),
        "initdb",
    )?;
    let port = free_port()?;
    let durable = match durability {
        Durability::Off => "off",
        Durability::On => "on",
    };
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync={durable} \
         -c synchronous_commit={durable} -c full_page_writes={durable} -c max_connections=300"
    );
    // Started and watched by one shell: it stops the cluster and removes its directory
    // once this test process is gone, however the process ends.
    let watchdog = format!(
        "{pg_ctl} -D {data} -o \"{options}\" -l {dir}/log -w start >/dev/null || exit 1; \
         echo ready > {dir}/ready; \
         while [ -d /proc/{parent} ]; do sleep 0.5; done; \
         {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
        parent = std::process::id(),
    );
    let shell = Path::new("/bin/sh");
    as_server_user(shell, root)
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("starting postgres: {err}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("ready").exists() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!(
                "postgres did not start within 60 s; its log:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "baton-test-support: PostgreSQL on 127.0.0.1:{port} in {} (started in {} ms)",
        dir.display(),
        started.elapsed().as_millis()
    );
    Ok(Server {
        base_url: format!("postgres://{SUPERUSER}@127.0.0.1:{port}"),
        psql: bin.join("psql"),
    })
}

/// Creates the template database and applies baton's migrations to it, once.
fn migrate_template(server: &Server) -> Result<(), String> {
    server.try_psql(&format!("DROP DATABASE IF EXISTS {TEMPLATE}"))?;
    server.try_psql(&format!("CREATE DATABASE {TEMPLATE}"))?;
    let url = format!("{}/{TEMPLATE}", server.base_url);
    // Its own runtime on its own thread: the caller may be inside any kind of runtime.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|err| err.to_string())?;
        runtime
            .block_on(baton_persistence::SqlStore::migrate(&url))
            .map(drop)
            .map_err(|err| format!("migrating the template database: {err}"))
    })
    .join()
    .map_err(|_| "the migration thread panicked".to_owned())?
}

/// Runs a third-party tool to its end and returns what it printed (its standard output,
/// then its standard error); fails the test with that if the tool failed.
pub fn tool_output(mut command: std::process::Command) -> String {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{shown} could not start: {err}"));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{shown} failed:\n{printed}");
    printed
}
