//! `baton`: the agent task server and its administration commands — as a library, so
//! that a build of the server can add runners of its own: `baton_server::run(extra)`
//! is the whole `baton` command line with those runners registered too.

#![allow(
    clippy::print_stdout,
    reason = "a command-line program prints its results"
)]

mod config;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use baton_domain::*;
use baton_http::{ApiState, ServerOptions, Shutdown};
use baton_persistence::SqlStore;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use config::{Config, LogFormat, Overrides};

/// baton runs AI-agent conversations as tasks: append a message, get 202 at once, and
/// follow the agent's turn in the background.
#[derive(Debug, Parser)]
#[command(name = "baton", version)]
struct Cli {
    /// A TOML configuration file.
    #[arg(long, global = true, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// The database: sqlite://PATH (or a file path), or postgres://USER@HOST/DB.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// The server's webhook signing secret(s), `whsec_…` (space-separated to rotate);
    /// better given as BATON_WEBHOOKS_SIGNING_SECRET, out of the process list.
    #[arg(long, global = true)]
    webhook_secret: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: Option<String>,
        /// HTTP worker threads.
        #[arg(long)]
        workers: Option<usize>,
        /// Create a demo echo agent and a key for it, and print a ready-to-paste curl.
        #[arg(long)]
        demo: bool,
        /// This instance's name as a lease holder (default: fresh per start).
        #[arg(long)]
        instance_id: Option<String>,
        /// How long a running turn's lease lasts unless renewed, in ms.
        #[arg(long)]
        lease_ttl_ms: Option<u64>,
        /// How often to look for turns whose lease expired, in ms.
        #[arg(long)]
        sweep_interval_ms: Option<u64>,
        /// How long SIGTERM lets running turns finish, in seconds.
        #[arg(long)]
        shutdown_grace_secs: Option<u64>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Webhook deliveries.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Print the effective configuration (defaults, file, `BATON_…` variables and
    /// flags merged) as TOML, secrets redacted.
    Config,
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
    /// Send a delivery again now, with a fresh round of retries.
    Redeliver {
        /// The delivery's `delivery_id` (from GET …/webhook-deliveries).
        delivery: i64,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Create an agent; prints its id.
    Create {
        #[arg(long)]
        name: String,
        /// The runner that plays the agent. Built in: `echo` (replies `echo: <text>`,
        /// for trying things out), `openai` (a model behind an OpenAI-compatible Chat
        /// Completions endpoint), `http` (an agent service of your own); see
        /// docs/agents.md for each one's --runner-config.
        #[arg(long)]
        runner: String,
        /// The runner's configuration as JSON, e.g. '{"delay_ms": 1500}' for echo.
        #[arg(long, default_value = "{}")]
        runner_config: String,
        /// What becomes of a turn whose instance died: `fail` it, or `retry` it (for
        /// agents that are safe to run twice).
        #[arg(long, default_value = "fail")]
        on_interrupt: OnInterrupt,
        /// With `--on-interrupt retry`: attempts in all, the first included.
        #[arg(long, default_value_t = TurnPolicy::default().max_attempts)]
        max_attempts: u32,
        /// A turn running longer than this ends failed with `turn_timeout`, in ms.
        #[arg(long, default_value_t = TurnPolicy::DEFAULT_TIMEOUT_MS)]
        turn_timeout_ms: u64,
        /// What a message sent while a turn of its task runs does, unless its request
        /// says: `reject` it (409 task_busy), `enqueue` it, `interrupt` the turn, or
        /// `steer` it into the turn.
        #[arg(long, default_value = "reject")]
        on_busy: OnBusy,
        /// Where this agent's turn ends are delivered when a request names no webhook.
        #[arg(long)]
        webhook_url: Option<String>,
        /// The default webhook's `whsec_…` secret (a new one is made and printed if
        /// absent).
        #[arg(long, requires = "webhook_url")]
        webhook_secret: Option<String>,
        /// What the agent's A2A Agent Card says of it, as JSON: `{"description": …,
        /// "skills": [{"id", "name", "description", "tags", "examples"}]}`
        /// (docs/a2a.md). Without it, one `conversation` skill.
        #[arg(long)]
        card: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create an API key for an agent; prints the key, which is shown only this once.
    Create {
        #[arg(long)]
        agent: i64,
    },
    /// Revoke a key, given its prefix or the whole key.
    Revoke { key: String },
}

/// The composition root: the one place that knows every adapter.
struct App {
    store: Arc<SqlStore>,
    tasks: TaskService,
    admin: AdminService,
    /// Where this process learns of turn changes, its own and (PostgreSQL) others'.
    hub: LocalNotifier,
}

impl App {
    async fn open(config: &Config, extra: &RunnerRegistry) -> anyhow::Result<App> {
        let (store, applied) = SqlStore::open(&config.database_url, config.store)
            .await
            .with_context(|| format!("opening {}", config.database_url))?;
        for name in &applied {
            info!(migration = %name, "applied migration");
        }
        let store = Arc::new(store);
        let hub = LocalNotifier::default();
        // The client of the runners that call model endpoints and agent services: the
        // operator configures those destinations, so no address filter applies.
        baton_webhooks::install_crypto_provider();
        let runner_http = reqwest::Client::builder()
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the runners' HTTP client")?;
        // Agents and keys are read by every request and every turn: kept in memory;
        // other instances' changes are announced through the hub (PostgreSQL), and
        // whatever is not announced is seen within a second.
        let cached = Arc::new(CachedAgents::new(store.clone(), AGENT_CACHE_FRESHNESS));
        let forget = cached.clone();
        hub.on_agents_changed(Arc::new(move |change| forget.forget(change)));
        let agents: Arc<dyn AgentStore> = cached;
        let executor = TurnExecutor::new(
            store.clone(),
            agents.clone(),
            baton_runners::builtin(runner_http).with_all(extra.clone()),
            Arc::new(hub.clone()),
            Arc::new(SystemClock),
            ExecutorConfig {
                max_concurrent_turns: config.max_concurrent_turns,
                instance_id: config.instance_id.clone(),
                lease_ttl: config.lease_ttl,
                tool_response_timeout: config.tool_response_timeout,
            },
            tokio::runtime::Handle::current(),
        );
        let webhooks = &config.webhooks.settings;
        Ok(App {
            tasks: TaskService::new(store.clone(), agents.clone(), executor.clone(), hub.clone())
                .with_idempotency(config.idempotency)
                .with_limits(config.limits.submit)
                .with_webhooks(webhooks.clone(), store.clone()),
            admin: AdminService::new(agents, executor)
                .with_webhooks(webhooks.destinations.clone(), store.clone()),
            store,
            hub,
        })
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A service error as a CLI message.
fn cli_error(err: ServiceError) -> anyhow::Error {
    match err {
        ServiceError::Validation(fields) => {
            let lines: Vec<_> = fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.reason))
                .collect();
            anyhow::anyhow!("invalid: {}", lines.join("; "))
        }
        other => anyhow::Error::new(other),
    }
}

/// How the `baton` command ends: a failure is one line on stderr — the error and
/// its causes, never a backtrace, whatever `RUST_BACKTRACE` says — and exit code 1.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the `baton` command line (arguments from the process) with the built-in
/// runners and `extra` (an extra runner replaces a built-in one of the same kind).
pub async fn run(extra: RunnerRegistry) -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides = Overrides {
        config_file: cli.config.clone(),
        database_url: cli.database_url.clone(),
        log_format: cli.log_format,
        webhook_secret: cli.webhook_secret.clone(),
        ..Overrides::default()
    };
    if let Command::Serve {
        listen,
        workers,
        instance_id,
        lease_ttl_ms,
        sweep_interval_ms,
        shutdown_grace_secs,
        ..
    } = &cli.command
    {
        overrides.listen = listen.clone();
        overrides.workers = *workers;
        overrides.instance_id = instance_id.clone();
        overrides.lease_ttl_ms = *lease_ttl_ms;
        overrides.sweep_interval_ms = *sweep_interval_ms;
        overrides.shutdown_grace_secs = *shutdown_grace_secs;
    }
    let config = Config::resolve(&overrides)?;
    init_logging(config.log_format);

    match cli.command {
        Command::Serve { demo, .. } => serve(config, demo, &extra).await,
        Command::Config => {
            print!("{}", config.printable()?);
            Ok(())
        }
        Command::Migrate => {
            let applied = SqlStore::migrate(&config.database_url).await?;
            println!("applied {} migration(s)", applied.len());
            Ok(())
        }
        Command::Agent(AgentCommand::Create {
            name,
            runner,
            runner_config,
            on_interrupt,
            max_attempts,
            turn_timeout_ms,
            on_busy,
            webhook_url,
            webhook_secret,
            card,
        }) => {
            let config_json: serde_json::Value =
                serde_json::from_str(&runner_config).context("--runner-config must be JSON")?;
            let card: Option<baton_domain::a2a::CardConfig> = card
                .map(|card| serde_json::from_str(&card))
                .transpose()
                .context("--card must be JSON: {\"description\", \"skills\": [{\"id\", \"name\", \"description\", \"tags\"}]}")?;
            let app = App::open(&config, &extra).await?;
            let spec = RunnerSpec {
                kind: runner,
                config: config_json,
            };
            let policy = TurnPolicy {
                on_interrupt,
                max_attempts,
                turn_timeout_ms,
                on_busy,
            };
            let generated = webhook_url.is_some() && webhook_secret.is_none();
            let webhook = webhook_url.map(|url| WebhookTarget {
                url,
                secret: webhook_secret,
            });
            let agent = app
                .admin
                .create_agent(&name, spec, policy, webhook, card)
                .await
                .map_err(cli_error)?;
            println!("{}", agent.id);
            if let Some(hook) = agent.webhook.as_ref().filter(|_| generated) {
                eprintln!(
                    "Deliveries to {} are signed with this new secret, shown only once: {}",
                    hook.url,
                    hook.secrets.join(" ")
                );
            }
            Ok(())
        }
        Command::Key(KeyCommand::Create { agent }) => {
            let app = App::open(&config, &extra).await?;
            let created = app
                .admin
                .create_key(AgentId(agent))
                .await
                .map_err(|err| match err {
                    ServiceError::AgentNotFound => anyhow::anyhow!("no agent with id {agent}"),
                    other => cli_error(other),
                })?;
            println!("{}", created.token);
            eprintln!(
                "This key is shown only once. Its prefix is {}.",
                created.key.prefix
            );
            Ok(())
        }
        Command::Webhook(WebhookCommand::Redeliver { delivery }) => {
            let app = App::open(&config, &extra).await?;
            if !app.admin.redeliver(delivery).await.map_err(cli_error)? {
                bail!("no webhook delivery {delivery}");
            }
            println!("due again");
            Ok(())
        }
        Command::Key(KeyCommand::Revoke { key }) => {
            let app = App::open(&config, &extra).await?;
            if !app.admin.revoke_key(&key).await.map_err(cli_error)? {
                bail!("no live key matches {key:?}");
            }
            println!("revoked");
            Ok(())
        }
    }
}

/// Installs the Prometheus recorder and returns what renders `/metrics`: the recorded
/// metrics plus the database pools' use, SQLite's writer counts and PostgreSQL's batch
/// counts, read at each scrape.
fn metrics_renderer(store: Arc<SqlStore>) -> anyhow::Result<baton_http::MetricsRenderer> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 600.0,
    ];
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    telemetry::describe();
    Ok(baton_http::MetricsRenderer(Arc::new(move || {
        for usage in store.pool_usage() {
            for (state, count) in [
                ("in_use", usage.in_use),
                ("idle", usage.idle),
                ("max", usage.max),
            ] {
                metrics::gauge!(telemetry::DB_CONNECTIONS, "pool" => usage.pool, "state" => state)
                    .set(count as f64);
            }
        }
        if let Some(writer) = store.writer_stats() {
            metrics::counter!(telemetry::SQLITE_WRITE_GROUPS).absolute(writer.groups);
            metrics::counter!(telemetry::SQLITE_WRITE_OPERATIONS).absolute(writer.operations);
        }
        for (kind, batches) in store.batch_stats() {
            metrics::counter!(telemetry::POSTGRES_WRITE_BATCHES, "kind" => kind)
                .absolute(batches.batches);
            metrics::counter!(telemetry::POSTGRES_BATCHED_WRITES, "kind" => kind)
                .absolute(batches.writes);
        }
        prometheus.render()
    })))
}

async fn serve(config: Config, demo: bool, extra: &RunnerRegistry) -> anyhow::Result<()> {
    // Before anything reads the turns: a second server on an embedded database would
    // take the first's live turns for orphans.
    let _serving = SqlStore::lock_for_serving(&config.database_url)?;
    let app = App::open(&config, extra).await?;
    let metrics = metrics_renderer(app.store.clone())?;
    let executor = app.tasks.executor().clone();

    // Turns left running by a dead instance are ended or retried now, not after their
    // leases run out. The embedded database serves one process, so every running turn
    // at start-up is an orphan whatever its lease says; on PostgreSQL only expired
    // leases are, since other instances may be alive.
    let cutoff = if app.store.is_single_instance() {
        DateTime::<Utc>::MAX_UTC
    } else {
        SystemClock.now()
    };
    let recovered = executor
        .sweep(cutoff)
        .await
        .context("recovering turns left running by a previous process")?;
    if recovered != SweepReport::default() {
        warn!(
            failed = recovered.failed,
            retried = recovered.retried,
            "recovered turns left running by a previous process"
        );
    }
    let maintenance = app.tasks.spawn_maintenance(config.sweep_interval);
    let transport = baton_webhooks::HttpTransport::new(
        config.webhooks.settings.destinations.clone(),
        config.webhooks.timeout,
    )
    .context("building the webhook client")?;
    let sender = WebhookSender::new(
        app.store.clone(),
        Arc::new(transport),
        Arc::new(SystemClock),
        config.webhooks.sender.clone(),
    )
    .spawn();
    // On PostgreSQL, turn changes of other instances wake this one's waiters.
    let relay = app.store.relay_changes(app.hub.clone());

    let listener = TcpListener::bind(&config.listen)
        .with_context(|| format!("listening on {}", config.listen))?;
    let address = listener.local_addr()?;
    if demo {
        print_demo(&app, &address.to_string()).await?;
    } else if app.admin.count_agents().await.map_err(cli_error)? == 0 {
        warn!(
            "the database has no agents yet: create one with `baton agent create --name NAME --runner echo`, \
             then a key with `baton key create --agent ID`, or restart with `baton serve --demo`"
        );
    }
    let shutdown = Shutdown::default();
    let key_rate = baton_http::limits::KeyRate::new(
        config.limits.requests_per_second_per_key,
        config.limits.request_burst_per_key,
    );
    // Buckets of keys that went quiet are dropped now and then.
    let forget = key_rate.clone().map(|rate| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                ticks.tick().await;
                rate.forget_idle();
            }
        })
    });
    let server = baton_http::serve(
        listener,
        ApiState {
            tasks: app.tasks.clone(),
            body_limit: config.body_limit,
            sse: baton_http::sse::SseOptions {
                heartbeat: config.stream_heartbeat,
                ..baton_http::sse::SseOptions::default()
            },
            shutdown: shutdown.clone(),
            metrics: Some(metrics),
            limits: baton_http::limits::RequestLimits {
                json_depth: config.limits.json_depth,
                per_key: key_rate.clone(),
                body_timeout: config.limits.body_timeout,
            },
            admin: config
                .admin_token
                .as_deref()
                .map(|token| baton_http::admin::AdminApi::new(app.admin.clone(), token)),
            cors: config.cors.clone(),
            console: config.console,
        },
        ServerOptions {
            workers: config.workers,
            ..ServerOptions::default()
        },
    )?;
    let handle = server.handle();
    let running = tokio::spawn(server);
    println!("baton listening on http://{address}");
    info!(%address, database = %config.database_url, instance_id = %config.instance_id, "serving");

    let signal = shutdown_signal().await?;
    // 1. No new requests (503 shutting_down); requests being served go on.
    shutdown.draining.cancel();
    // This instance no longer takes over turns; it is about to give some up.
    maintenance.abort();
    info!(
        signal,
        grace_secs = config.shutdown_grace.as_secs(),
        "stopping: new requests are refused; letting running turns finish"
    );
    // 2. Running turns get the grace period to finish.
    let left = executor.wait_idle(config.shutdown_grace).await;
    // 3. The rest end by their agents' policy (failed, or released for a retry).
    if left > 0 {
        let ended = executor.end_unfinished().await;
        warn!(
            failed = ended.failed,
            released_for_retry = ended.released,
            "ended turns still running after the shutdown grace period"
        );
    }
    // 4. Streams end with a last comment, long-polls answer; then the server stops.
    shutdown.closing.cancel();
    handle.stop(true).await;
    running.await.context("the HTTP server task")??;
    // Deliveries being sent now are abandoned; their claims run out and another
    // instance (or the next start) sends them again.
    sender.abort();
    if let Some(forget) = forget {
        forget.abort();
    }
    if let Some(relay) = relay {
        relay.abort();
    }
    info!("stopped");
    Ok(())
}

/// Waits for SIGINT or SIGTERM and says which.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => { result?; Ok("SIGINT") }
        _ = term.recv() => Ok("SIGTERM"),
    }
}

async fn print_demo(app: &App, address: &str) -> anyhow::Result<()> {
    let spec = RunnerSpec {
        kind: "echo".to_owned(),
        config: serde_json::json!({"delay_ms": 3000}),
    };
    let agent = app
        .admin
        .create_agent("demo", spec, TurnPolicy::default(), None, None)
        .await
        .map_err(cli_error)?;
    let key = app.admin.create_key(agent.id).await.map_err(cli_error)?;
    println!(
        "Demo echo agent {} (replies after 3 s). Paste this into another terminal:\n",
        agent.id
    );
    println!("export BATON_KEY={}", key.token);
    println!("export BATON_AGENT={}", agent.id);
    println!(
        "curl -i -X POST http://{address}/v1/chat/tasks \\\n  -H \"Authorization: Bearer $BATON_KEY\" -H 'Content-Type: application/json' \\\n  -d '{{\"agent_id\": '\"$BATON_AGENT\"', \"message\": {{\"role\": \"user\", \"content\": \"hello\"}}}}'\n"
    );
    Ok(())
}
