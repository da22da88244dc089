//! `baton-bench`: a load generator for baton, and the suite behind docs/benchmarks.md.
//!
//! `baton-bench run` drives a server you started; `baton-bench suite` starts one itself
//! (pinned to one core, on a fresh SQLite file or a throwaway PostgreSQL database),
//! creates an echo agent without delay, and runs every scenario at several
//! concurrencies, printing JSON.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports on stdout and stderr"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

mod fanout;
mod growth;
mod limits;
mod recovery;
mod streams;

#[derive(Debug, Parser)]
#[command(name = "baton-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Scenario {
    /// Create a task and do not wait for its turn.
    Accept,
    /// Create a task and long-poll it to completion.
    Roundtrip,
    /// `--turns` turns on one task, each long-polled to completion.
    Multiturn,
    /// Create a task and read its SSE stream to `final`.
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive a running server with one scenario.
    Run {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        #[arg(long, env = "BATON_KEY")]
        token: String,
        #[arg(long)]
        agent: i64,
        #[arg(long, value_enum)]
        scenario: Scenario,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Operations in all (tasks, for multiturn).
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        #[arg(long, default_value_t = 5)]
        turns: usize,
    },
    /// Start a server pinned to one core and run every scenario at 1, 16 and 64.
    Suite {
        /// The baton binary (build it with `cargo build --release`).
        #[arg(long, default_value = "target/release/baton")]
        baton: String,
        #[arg(long, value_enum, default_value = "sqlite")]
        database: Backend,
        /// The core the server is pinned to (run this tool on another one).
        #[arg(long, default_value_t = 0)]
        server_cpu: usize,
        /// Multiplies the number of operations per run.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Idle streams held open for the memory figure.
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
    },
    /// A bare actix-web handler that parses the JSON and answers 202 (the suite starts
    /// it to measure this machine's HTTP ceiling).
    BareServer,
    /// Measure `accept` and history reads on SQLite databases already holding each
    /// number of tasks (seeded in bulk SQL), to see whether cost grows with size.
    Growth {
        #[arg(long, default_value = "target/release/baton")]
        baton: String,
        /// The core the server is pinned to (run this tool on another one).
        #[arg(long, default_value_t = 0)]
        server_cpu: usize,
        /// Stored tasks, one measurement each; the first and last are compared.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 1_000_000])]
        tasks: Vec<usize>,
    },
    /// Open many streams over a few settled tasks; measure what they cost the server
    /// while idle; append one message to each task and time each `final` from its
    /// turn's end to its streams. On PostgreSQL, two instances: the streams on the
    /// other one than the turns.
    Fanout {
        #[arg(long, default_value = "target/release/baton")]
        baton: String,
        #[arg(long, value_enum, default_value = "sqlite")]
        database: Backend,
        /// The core the server is pinned to (run this tool on another one).
        #[arg(long, default_value_t = 0)]
        server_cpu: usize,
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        #[arg(long, default_value_t = 100)]
        tasks: usize,
        /// Seconds the streams are held idle while the server's CPU is measured.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
        /// `GET` task requests timed one after another while the streams are open.
        #[arg(long, default_value_t = 1000)]
        gets: usize,
        /// Open the streams with `?until=final` and close each once its `final` is
        /// read (by default they stay open past it, as a chat tab's stream does).
        #[arg(long)]
        close_at_final: bool,
    },
    /// Kill a PostgreSQL instance holding many running turns; time how long a
    /// surviving instance takes to end or take them over.
    Recovery {
        #[arg(long, default_value = "target/release/baton")]
        baton: String,
        #[arg(long, default_value_t = 1000)]
        turns: usize,
        /// The agent's `on_interrupt` policy.
        #[arg(long, value_enum, default_value = "fail")]
        policy: recovery::Policy,
    },
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct Report {
    scenario: Scenario,
    concurrency: usize,
    operations: usize,
    seconds: f64,
    per_second: f64,
    latency_ms: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_text_delta_ms: Option<Percentiles>,
    /// `accept` only: how long until every accepted turn had also ended, counted from
    /// the start — the rate the server keeps up when its turns run behind the `202`s
    /// (`per_second` alone can be a burst that leaves a backlog of running turns).
    #[serde(skip_serializing_if = "Option::is_none")]
    settled: Option<Settled>,
}

#[derive(Debug, Serialize)]
struct Settled {
    seconds: f64,
    per_second: f64,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).copied().unwrap_or(f64::NAN)
    };
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or(f64::NAN),
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[derive(Debug, Clone)]
struct Target {
    http: reqwest::Client,
    base: String,
    token: String,
    agent: i64,
}

impl Target {
    /// A target at `base`, through one HTTP client whose requests give up after two
    /// minutes.
    fn new(base: String, token: String, agent: i64) -> anyhow::Result<Self> {
        Ok(Target {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            base,
            token,
            agent,
        })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "POST {path}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        Ok(response.json().await?)
    }

    async fn create(&self) -> anyhow::Result<i64> {
        let body =
            json!({"agent_id": self.agent, "message": {"content": "hello from the benchmark"}});
        let accepted = self.post("/v1/chat/tasks", body).await?;
        accepted["task_id"].as_i64().context("no task_id")
    }

    async fn append(&self, task: i64) -> anyhow::Result<()> {
        let body = json!({"agent_id": self.agent, "message": {"content": "and again"}});
        self.post(&format!("/v1/chat/tasks/{task}/messages"), body)
            .await
            .map(drop)
    }

    /// How many turns the server has ended so far (its `/metrics`), or `None` where it
    /// has no such metric (the bare server).
    async fn turns_ended(&self) -> anyhow::Result<Option<u64>> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        if !response.status().is_success() {
            return Ok(None);
        }
        let text = response.text().await?;
        let counts: Vec<f64> = text
            .lines()
            .filter(|line| line.starts_with("baton_turns_ended_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        Ok((!counts.is_empty()).then(|| counts.iter().sum::<f64>() as u64))
    }

    async fn wait_done(&self, task: i64) -> anyhow::Result<()> {
        let view: Value = self
            .http
            .get(format!("{}/v1/chat/tasks/{task}?wait=30", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        if view["status"] == "running" {
            bail!("task {task} still running after 30 s");
        }
        Ok(())
    }

    /// The task's events from the first to its turn's end (`?until=final`).
    async fn events_to_final(
        &self,
        task: i64,
    ) -> anyhow::Result<
        impl futures_util::Stream<
            Item = Result<
                eventsource_stream::Event,
                eventsource_stream::EventStreamError<reqwest::Error>,
            >,
        >,
    > {
        let response = self
            .http
            .get(format!(
                "{}/v1/chat/tasks/{task}/stream?until=final",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok(response.bytes_stream().eventsource())
    }

    /// Reads the stream to `final`; returns when the first text_delta arrived.
    async fn stream_to_final(&self, task: i64, started: Instant) -> anyhow::Result<Option<f64>> {
        let mut events = std::pin::pin!(self.events_to_final(task).await?);
        let mut first_delta = None;
        while let Some(event) = events.next().await {
            let event = event?;
            if event.event == "text_delta" && first_delta.is_none() {
                first_delta = Some(ms(started));
            }
        }
        Ok(first_delta)
    }
}

async fn run(
    target: &Target,
    scenario: Scenario,
    concurrency: usize,
    operations: usize,
    turns: usize,
) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicUsize::new(0));
    let ended_before = match scenario {
        Scenario::Accept => target.turns_ended().await?,
        _ => None,
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let target = target.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut first_deltas = Vec::new();
                let mut accepted = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < operations {
                    let t0 = Instant::now();
                    match scenario {
                        Scenario::Accept => {
                            accepted.push(target.create().await?);
                            latencies.push(ms(t0));
                        }
                        Scenario::Roundtrip => {
                            let task = target.create().await?;
                            target.wait_done(task).await?;
                            latencies.push(ms(t0));
                        }
                        Scenario::Multiturn => {
                            let task = target.create().await?;
                            target.wait_done(task).await?;
                            latencies.push(ms(t0));
                            for _ in 1..turns {
                                let t1 = Instant::now();
                                target.append(task).await?;
                                target.wait_done(task).await?;
                                latencies.push(ms(t1));
                            }
                        }
                        Scenario::Stream => {
                            let task = target.create().await?;
                            if let Some(first) = target.stream_to_final(task, t0).await? {
                                first_deltas.push(first);
                            }
                            latencies.push(ms(t0));
                        }
                    }
                }
                anyhow::Ok((latencies, first_deltas, accepted))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut first_deltas = Vec::new();
    let mut accepted = Vec::new();
    for worker in workers {
        let (l, f, a) = worker.await??;
        latencies.extend(l);
        first_deltas.extend(f);
        accepted.extend(a);
    }
    let seconds = started.elapsed().as_secs_f64();
    let settled = match ended_before {
        Some(before) => {
            let all = before + accepted.len() as u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while target.turns_ended().await?.unwrap_or(all) < all {
                if Instant::now() > deadline {
                    bail!("accepted turns still running two minutes after the last 202");
                }
                // Each look renders the server's metrics: seldom enough not to weigh on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            Some(Settled {
                seconds,
                per_second: accepted.len() as f64 / seconds,
            })
        }
        None => None,
    };
    // Accepted turns still run after the timed part: let them finish, untimed, so
    // they do not weigh on the next measurement.
    for task in accepted {
        target.wait_done(task).await?;
    }
    Ok(Report {
        scenario,
        concurrency,
        operations: latencies.len(),
        seconds,
        per_second: latencies.len() as f64 / seconds,
        latency_ms: percentiles(latencies),
        first_text_delta_ms: (!first_deltas.is_empty()).then(|| percentiles(first_deltas)),
        settled,
    })
}

/// A baton server started for the suite; stopped when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// SIGKILL: no shutdown, nothing released.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn cli(baton: &str, url: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(baton)
        .env("BATON_DATABASE_URL", url)
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "baton {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A fresh database for a run and its URL: a SQLite file in `dir`, or a database on a
/// throwaway PostgreSQL cluster with `fsync` and synchronous commit on, as a
/// production server has them (kept while the returned handle lives).
async fn bench_database(
    backend: Backend,
    dir: &std::path::Path,
) -> anyhow::Result<(Option<baton_test_support::TestDatabase>, String)> {
    Ok(match backend {
        Backend::Sqlite => (None, format!("sqlite://{}", dir.join("bench.db").display())),
        Backend::Postgres => {
            let db = tokio::task::spawn_blocking(baton_test_support::TestDatabase::durable).await?;
            let url = db.url().to_owned();
            (Some(db), url)
        }
    })
}

/// An echo agent without delay and a key for it, made through the CLI.
fn echo_agent_and_key(baton: &str, url: &str) -> anyhow::Result<(i64, String)> {
    let agent: i64 = cli(
        baton,
        url,
        &["agent", "create", "--name", "bench", "--runner", "echo"],
    )?
    .parse()?;
    let token = cli(
        baton,
        url,
        &["key", "create", "--agent", &agent.to_string()],
    )?;
    Ok((agent, token))
}

fn start_server(baton: &str, url: &str, cpu: usize, extra: &[&str]) -> anyhow::Result<Server> {
    let mut serve = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "1"];
    serve.extend_from_slice(extra);
    start_pinned(
        cpu,
        baton,
        &serve,
        &[("BATON_DATABASE_URL", url), ("BATON_LOG", "warn")],
    )
}

/// Starts `program args` pinned to `cpu` and waits for its `baton listening on URL`.
fn start_pinned(
    cpu: usize,
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<Server> {
    // A profiler to run the server under (`heaptrack`, `strace -c -f`), if asked.
    let wrapper = std::env::var("BENCH_SERVER_WRAPPER").unwrap_or_default();
    let mut child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .args(wrapper.split_whitespace())
        .arg(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the server with taskset")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .context("the server exited before listening")??;
        if let Some(url) = line.strip_prefix("baton listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(Server { child, base })
}

/// Opens `count` idle streams over `tasks` settled tasks and returns the server's RSS
/// growth per stream, in bytes.
async fn idle_streams(target: &Target, pid: u32, count: usize) -> anyhow::Result<Value> {
    let tasks = (count / 10).max(1);
    let mut ids = Vec::new();
    for _ in 0..tasks {
        ids.push(target.create().await?);
    }
    for id in &ids {
        target.wait_done(*id).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = streams::rss_kib(pid)?;
    // Past every task's end: the streams stay idle.
    let positions = (0..count).map(|i| (ids[i % ids.len()], 1_000_000));
    let open = streams::open(
        &target.base,
        &target.token,
        positions,
        streams::AtFinal::Close,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_streams = streams::rss_kib(pid)?;
    drop(open);
    Ok(json!({
        "streams": count,
        "rss_before_kib": before,
        "rss_with_streams_kib": with_streams,
        "bytes_per_stream": ((with_streams.saturating_sub(before)) * 1024) as f64 / count as f64,
    }))
}

async fn suite(
    baton: &str,
    database: Backend,
    cpu: usize,
    scale: f64,
    streams: usize,
) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    // The cluster, if any, lives as long as this run.
    let (_cluster, url) = bench_database(database, dir.path()).await?;
    let (agent, token) = echo_agent_and_key(baton, &url)?;
    let server = start_server(baton, &url, cpu, &[])?;
    let pid = server.child.id();
    let target = Target::new(server.base.clone(), token, agent)?;
    // Warm up, then the idle figure.
    run(&target, Scenario::Roundtrip, 4, 100, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = streams::rss_kib(pid)?;
    let mut reports = Vec::new();
    for scenario in [
        Scenario::Accept,
        Scenario::Roundtrip,
        Scenario::Multiturn,
        Scenario::Stream,
    ] {
        for concurrency in [1, 16, 64] {
            let base = match (scenario, concurrency) {
                (Scenario::Accept, 1) => 500,
                (Scenario::Accept, _) => 3000,
                (Scenario::Multiturn, _) => 100,
                (_, 1) => 300,
                _ => 1000,
            };
            let operations = ((base as f64 * scale) as usize).max(concurrency);
            let report = run(&target, scenario, concurrency, operations, 5).await?;
            eprintln!("{}", serde_json::to_string(&report)?);
            reports.push(report);
        }
    }
    let streams = if streams > 0 {
        Some(idle_streams(&target, pid, streams).await?)
    } else {
        None
    };
    drop(server);
    let machine = machine_limits(&target, cpu, dir.path(), scale).await?;
    let accept_c64 = reports
        .iter()
        .find(|r| r.scenario == Scenario::Accept && r.concurrency == 64)
        .map_or(f64::NAN, |r| r.per_second);
    let ratio = |of: f64, key: &str| of / machine[key].as_f64().unwrap_or(f64::NAN);
    let ratios = json!({
        "accept_c64_to_bare_http_c64": ratio(accept_c64, "bare_http_accept_c64_per_s"),
        "accept_c64_to_sqlite_single_row_commits": ratio(accept_c64, "commits_per_s_1_row"),
    });
    eprintln!("machine: {machine}\nratios: {ratios}");
    Ok(json!({
        "database": match database { Backend::Sqlite => "sqlite", Backend::Postgres => "postgres" },
        "server_cpu": cpu,
        "idle_rss_kib": idle_rss,
        "runs": reports,
        "idle_streams": streams,
        "machine": machine,
        "ratios": ratios,
    }))
}

/// This machine's limits, in the same run: a bare actix-web handler on the server's
/// core driven like `accept` at c=64, and SQLite's commit rates on the suite's disk.
async fn machine_limits(
    target: &Target,
    cpu: usize,
    dir: &std::path::Path,
    scale: f64,
) -> anyhow::Result<Value> {
    let me = std::env::current_exe()?;
    let bare = start_pinned(cpu, &me.to_string_lossy(), &["bare-server"], &[])?;
    let bare_target = Target {
        base: bare.base.clone(),
        ..target.clone()
    };
    let operations = ((20_000.0 * scale) as usize).max(64);
    let http = run(&bare_target, Scenario::Accept, 64, operations, 1).await?;
    drop(bare);
    let dir = dir.to_owned();
    let mut disk = tokio::task::spawn_blocking(move || limits::sqlite_commits(&dir, 2.0)).await??;
    disk["bare_http_accept_c64_per_s"] = json!(http.per_second);
    Ok(disk)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The bare server runs actix's own runtime, not inside Tokio's.
    if let Cmd::BareServer = cli.command {
        return limits::bare_server();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(drive(cli))
}

async fn drive(cli: Cli) -> anyhow::Result<()> {
    // reqwest clients need a TLS crypto provider in this workspace (see baton-webhooks).
    baton_test_support::init_tls();
    // A stream is a descriptor here and one in the server started from here (which
    // inherits the limit): raise the soft limit on open files to the hard one.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {err}");
    }
    match cli.command {
        Cmd::BareServer => bail!("bare-server runs before the Tokio runtime starts"),
        Cmd::Run {
            base_url,
            token,
            agent,
            scenario,
            concurrency,
            requests,
            turns,
        } => {
            let target = Target::new(base_url, token, agent)?;
            let report = run(&target, scenario, concurrency, requests, turns).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Cmd::Suite {
            baton,
            database,
            server_cpu,
            scale,
            streams,
        } => {
            let results = suite(&baton, database, server_cpu, scale, streams).await?;
            println!("{}", serde_json::to_string_pretty(&results)?);
        }
        Cmd::Growth {
            baton,
            server_cpu,
            tasks,
        } => {
            let results = growth::growth(&baton, server_cpu, &tasks).await?;
            println!("{}", serde_json::to_string_pretty(&results)?);
        }
        Cmd::Fanout {
            baton,
            database,
            server_cpu,
            streams,
            tasks,
            idle_seconds,
            gets,
            close_at_final,
        } => {
            let run = fanout::Fanout {
                database,
                streams,
                tasks,
                idle: Duration::from_secs(idle_seconds),
                gets,
                at_final: if close_at_final {
                    streams::AtFinal::Close
                } else {
                    streams::AtFinal::HoldOpen
                },
            };
            let results = fanout::fanout(&baton, server_cpu, &run).await?;
            println!("{}", serde_json::to_string_pretty(&results)?);
        }
        Cmd::Recovery {
            baton,
            turns,
            policy,
        } => {
            let results = recovery::recovery(&baton, turns, policy).await?;
            println!("{}", serde_json::to_string_pretty(&results)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).rev().collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (51.0, 90.0, 99.0, 100.0));
        assert!(percentiles(Vec::new()).p50.is_nan());
    }
}
