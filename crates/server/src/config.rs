//! Configuration: defaults, then an optional TOML file, then `BATON_…` environment
//! variables, then flags. Every file key has a variable: `BATON_` and the key in
//! capitals, a section's keys prefixed with the section (`[sqlite] readers` is
//! `BATON_SQLITE_READERS`). Unknown keys, in the file or in variables, are an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use baton_domain::webhooks::RetrySchedule;
use baton_domain::{
    DestinationPolicy, ExecutorConfig, IdempotencyConfig, SenderConfig, SubmitLimits,
    WebhookSettings,
};
use baton_persistence::{PgOptions, SqliteOptions, SqliteSync, StoreOptions};
use serde::{Deserialize, Serialize};

/// The configuration file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub body_limit_bytes: Option<usize>,
    pub max_concurrent_turns: Option<usize>,
    pub shutdown_grace_secs: Option<u64>,
    pub log_format: Option<LogFormat>,
    /// This instance's name as a lease holder; a fresh one per start by default.
    pub instance_id: Option<String>,
    /// The admin API's bearer token; absent, the admin API is off.
    pub admin_token: Option<String>,
    /// How long a client has to answer a turn's tool calls (default an hour).
    pub tool_response_timeout_secs: Option<u64>,
    /// Whether `/console` serves the console (default on).
    pub console: Option<bool>,
    /// How often an idle stream gets a comment that keeps proxies from cutting it.
    pub stream_heartbeat_secs: Option<u64>,
    #[serde(default)]
    pub leases: LeasesFile,
    #[serde(default)]
    pub idempotency: IdempotencyFile,
    #[serde(default)]
    pub webhooks: WebhooksFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub sqlite: SqliteFile,
    #[serde(default)]
    pub postgres: PostgresFile,
    #[serde(default)]
    pub cors: CorsFile,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// Origins whose pages may call the API; `["*"]` for any; empty: CORS off.
    pub allowed_origins: Option<OneOrMany>,
    pub max_age_secs: Option<u64>,
}

/// A list, or one value alone (`BATON_CORS_ALLOWED_ORIGINS=https://app.example.com`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesFile {
    pub ttl_ms: Option<u64>,
    pub sweep_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksFile {
    pub signing_secret: Option<String>,
    pub allow_http: Option<bool>,
    pub allow_networks: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub claim_ms: Option<u64>,
    pub concurrency: Option<u32>,
    pub retry_schedule_ms: Option<Vec<u64>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub requests_per_second_per_key: Option<u32>,
    pub request_burst_per_key: Option<u32>,
    pub json_depth: Option<usize>,
    pub body_timeout_secs: Option<u64>,
    pub max_message_bytes: Option<usize>,
    /// One attachment's bytes (decoded).
    pub max_attachment_bytes: Option<usize>,
    pub max_running_turns_per_agent: Option<u32>,
    /// Messages waiting in one task's queue (`on_busy: enqueue` or `steer`).
    pub max_queued_per_task: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyFile {
    pub ttl_secs: Option<u64>,
    pub in_flight_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    pub pool_size: Option<usize>,
    pub pool_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteFile {
    pub synchronous: Option<SqliteSync>,
    pub busy_timeout_ms: Option<u64>,
    pub readers: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://baton.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub listen: String,
    pub workers: usize,
    pub body_limit: usize,
    pub max_concurrent_turns: usize,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub store: StoreOptions,
    pub instance_id: String,
    /// Whether `instance_id` was set, rather than made fresh for this start.
    pub instance_id_given: bool,
    /// How long a turn's lease lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// How often this instance looks for turns whose lease expired.
    pub sweep_interval: Duration,
    /// How long a client has to answer a turn's tool calls.
    pub tool_response_timeout: Duration,
    pub idempotency: IdempotencyConfig,
    pub webhooks: Webhooks,
    pub limits: Limits,
    pub admin_token: Option<String>,
    pub cors: baton_http::cors::CorsOptions,
    /// Whether `/console` serves the console.
    pub console: bool,
    /// How often an idle stream gets a heartbeat comment.
    pub stream_heartbeat: Duration,
}

/// Request and turn limits. Zero means "no limit" for the rate and the turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_second_per_key: u32,
    pub request_burst_per_key: u32,
    pub json_depth: usize,
    /// How long a request's body may take to arrive.
    pub body_timeout: Duration,
    pub submit: SubmitLimits,
}

/// Webhook settings: what the services check, how the sender sends.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub settings: WebhookSettings,
    /// How long one delivery attempt may take.
    pub timeout: Duration,
    pub sender: SenderConfig,
}

/// How often each instance sweeps expired leases by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The file's sections, whose keys' variables carry the section's name.
const SECTIONS: &[&str] = &[
    "leases",
    "idempotency",
    "webhooks",
    "limits",
    "sqlite",
    "postgres",
    "cors",
];

/// `BATON_…` variables that are not settings.
const NOT_SETTINGS: &[&str] = &["CONFIG", "LOG", "TEST_DATABASE_URL", "KEY"];

impl FileConfig {
    /// The file (if any) with the `BATON_…` variables among `env` laid over it.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<FileConfig> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<toml::Table>(&text)
                    .with_context(|| format!("in config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let mut from_env = Vec::new();
        for (name, raw) in env {
            let Some(key) = name.strip_prefix("BATON_") else {
                continue;
            };
            if NOT_SETTINGS.contains(&key) || key.is_empty() {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let value = env_value(&raw);
            let section = SECTIONS.iter().find(|s| {
                key.strip_prefix(**s)
                    .is_some_and(|rest| rest.starts_with('_'))
            });
            match section {
                Some(section) => {
                    let entry = table
                        .entry(section.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(inner) = entry {
                        inner.insert(key[section.len() + 1..].to_owned(), value);
                    }
                }
                None => {
                    table.insert(key, value);
                }
            }
            from_env.push(name);
        }
        let where_from = match (path, from_env.is_empty()) {
            (Some(path), true) => format!("in config file {}", path.display()),
            (Some(path), false) => format!(
                "in config file {} or the variables {}",
                path.display(),
                from_env.join(", ")
            ),
            (None, _) => format!("in the variables {}", from_env.join(", ")),
        };
        FileConfig::deserialize(toml::Value::Table(table)).context(where_from)
    }
}

/// A variable's value as TOML (`4`, `true`, `["10.0.0.0/8"]`), or else as a string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Values given on the command line, which win over the variables and the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub instance_id: Option<String>,
    pub lease_ttl_ms: Option<u64>,
    pub sweep_interval_ms: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub webhook_secret: Option<String>,
}

impl Config {
    /// What `baton config` prints: the effective configuration as a configuration
    /// file that loads back to it — every key filled in — except what it must not
    /// show or pin: secrets (the admin token, the webhook signing secret, the
    /// database password) are left out and `instance_id` is left out unless it was
    /// set. A comment at the top names each one left out.
    pub fn printable(&self) -> Result<String, toml::ser::Error> {
        let mut left_out = Vec::new();
        if self.admin_token.is_some() {
            left_out.push("admin_token (a secret: set it with BATON_ADMIN_TOKEN)");
        }
        if !self.webhooks.settings.signing_secrets.is_empty() {
            left_out.push(
                "[webhooks] signing_secret (a secret: set it with BATON_WEBHOOKS_SIGNING_SECRET)",
            );
        }
        if url::Url::parse(&self.database_url).is_ok_and(|u| u.password().is_some()) {
            left_out.push(
                "the password of database_url (a secret: give the whole URL in BATON_DATABASE_URL)",
            );
        }
        if !self.instance_id_given {
            left_out.push("instance_id (not set: each start makes a fresh one)");
        }
        let mut text = String::from("# baton's effective configuration.\n");
        for what in left_out {
            text.push_str(&format!("# Left out: {what}.\n"));
        }
        text.push('\n');
        text.push_str(&toml::to_string_pretty(&self.effective())?);
        Ok(text)
    }

    /// The effective configuration in the file's shape, every key filled in but those
    /// [`Config::printable`] leaves out.
    pub fn effective(&self) -> FileConfig {
        let ms = |d: Duration| d.as_millis() as u64;
        let hooks = &self.webhooks;
        FileConfig {
            database_url: Some(without_password(&self.database_url)),
            listen: Some(self.listen.clone()),
            workers: Some(self.workers),
            body_limit_bytes: Some(self.body_limit),
            max_concurrent_turns: Some(self.max_concurrent_turns),
            shutdown_grace_secs: Some(self.shutdown_grace.as_secs()),
            log_format: Some(self.log_format),
            instance_id: self.instance_id_given.then(|| self.instance_id.clone()),
            admin_token: None,
            tool_response_timeout_secs: Some(self.tool_response_timeout.as_secs()),
            console: Some(self.console),
            stream_heartbeat_secs: Some(self.stream_heartbeat.as_secs()),
            leases: LeasesFile {
                ttl_ms: Some(ms(self.lease_ttl)),
                sweep_interval_ms: Some(ms(self.sweep_interval)),
            },
            idempotency: IdempotencyFile {
                ttl_secs: Some(self.idempotency.ttl.as_secs()),
                in_flight_wait_ms: Some(ms(self.idempotency.in_flight_wait)),
            },
            webhooks: WebhooksFile {
                signing_secret: None,
                allow_http: Some(hooks.settings.destinations.allow_http),
                allow_networks: Some(
                    hooks
                        .settings
                        .destinations
                        .allow_networks
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
                timeout_ms: Some(ms(hooks.timeout)),
                poll_interval_ms: Some(ms(hooks.sender.poll_interval)),
                claim_ms: Some(ms(hooks.sender.claim_for)),
                concurrency: Some(hooks.sender.concurrency),
                retry_schedule_ms: Some(
                    hooks
                        .sender
                        .schedule
                        .delays
                        .iter()
                        .map(|d| ms(*d))
                        .collect(),
                ),
            },
            limits: LimitsFile {
                requests_per_second_per_key: Some(self.limits.requests_per_second_per_key),
                request_burst_per_key: Some(self.limits.request_burst_per_key),
                json_depth: Some(self.limits.json_depth),
                body_timeout_secs: Some(self.limits.body_timeout.as_secs()),
                max_message_bytes: Some(self.limits.submit.max_message_bytes),
                max_attachment_bytes: Some(self.limits.submit.max_attachment_bytes),
                max_running_turns_per_agent: Some(
                    self.limits.submit.max_running_turns_per_agent.unwrap_or(0),
                ),
                max_queued_per_task: Some(self.limits.submit.max_queued_per_task),
            },
            sqlite: SqliteFile {
                synchronous: Some(self.store.sqlite.synchronous),
                busy_timeout_ms: Some(ms(self.store.sqlite.busy_timeout)),
                readers: Some(self.store.sqlite.readers),
            },
            postgres: PostgresFile {
                pool_size: Some(self.store.postgres.pool_size),
                pool_wait_ms: Some(ms(self.store.postgres.pool_wait)),
            },
            cors: CorsFile {
                allowed_origins: Some(OneOrMany::Many(match &self.cors.allowed_origins {
                    baton_http::cors::AllowedOrigins::None => Vec::new(),
                    baton_http::cors::AllowedOrigins::Any => vec!["*".to_owned()],
                    baton_http::cors::AllowedOrigins::Listed(origins) => origins.clone(),
                })),
                max_age_secs: Some(self.cors.max_age.as_secs()),
            },
        }
    }
}

/// A database URL without its password.
fn without_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => raw.to_owned(),
    }
}

fn resolve_webhooks(file: WebhooksFile, secret: Option<String>) -> anyhow::Result<Webhooks> {
    let defaults = SenderConfig::default();
    let signing_secrets: Vec<String> = secret
        .or(file.signing_secret)
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    for secret in &signing_secrets {
        baton_domain::webhooks::check_secret(secret)
            .map_err(|why| anyhow::anyhow!("webhooks.signing_secret {why}"))?;
    }
    let allow_networks = file
        .allow_networks
        .unwrap_or_default()
        .iter()
        .map(|net| {
            net.parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!("webhooks.allow_networks: {net:?} is not a CIDR network")
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_millis(file.timeout_ms.unwrap_or(10_000));
    let claim_for = file
        .claim_ms
        .map(Duration::from_millis)
        .unwrap_or(defaults.claim_for);
    anyhow::ensure!(
        claim_for > timeout,
        "webhooks.claim_ms must be longer than webhooks.timeout_ms"
    );
    let schedule = match file.retry_schedule_ms {
        Some(ms) => RetrySchedule {
            delays: ms.into_iter().map(Duration::from_millis).collect(),
        },
        None => defaults.schedule,
    };
    Ok(Webhooks {
        settings: WebhookSettings {
            destinations: DestinationPolicy {
                allow_http: file.allow_http.unwrap_or(false),
                allow_networks,
            },
            signing_secrets,
        },
        timeout,
        sender: SenderConfig {
            poll_interval: file
                .poll_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.poll_interval),
            claim_for,
            concurrency: file.concurrency.unwrap_or(defaults.concurrency).max(1),
            schedule,
        },
    })
}

impl Config {
    pub fn resolve(overrides: &Overrides) -> anyhow::Result<Config> {
        Config::resolve_with_env(overrides, std::env::vars())
    }

    pub fn resolve_with_env(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let file = FileConfig::load(overrides.config_file.as_deref(), env)?;
        let defaults = SqliteOptions::default();
        let pg_defaults = PgOptions::default();
        let idempotency_defaults = IdempotencyConfig::default();
        let webhooks = resolve_webhooks(file.webhooks, overrides.webhook_secret.clone())?;
        let cors = baton_http::cors::CorsOptions {
            allowed_origins: baton_http::cors::AllowedOrigins::from_list(
                file.cors
                    .allowed_origins
                    .map(OneOrMany::into_vec)
                    .unwrap_or_default(),
            )
            .context("cors.allowed_origins")?,
            max_age: file
                .cors
                .max_age_secs
                .map_or(baton_http::cors::DEFAULT_MAX_AGE, Duration::from_secs),
        };
        let config = Config {
            database_url: overrides
                .database_url
                .clone()
                .or(file.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            listen: overrides
                .listen
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            workers: overrides.workers.or(file.workers).unwrap_or(2),
            body_limit: file
                .body_limit_bytes
                .unwrap_or(baton_http::DEFAULT_BODY_LIMIT),
            max_concurrent_turns: file.max_concurrent_turns.unwrap_or(64),
            shutdown_grace: Duration::from_secs(
                overrides
                    .shutdown_grace_secs
                    .or(file.shutdown_grace_secs)
                    .unwrap_or(30),
            ),
            log_format: overrides.log_format.or(file.log_format).unwrap_or_default(),
            instance_id_given: overrides.instance_id.is_some() || file.instance_id.is_some(),
            instance_id: overrides
                .instance_id
                .clone()
                .or(file.instance_id)
                .unwrap_or_else(baton_domain::executor::new_instance_id),
            lease_ttl: overrides
                .lease_ttl_ms
                .or(file.leases.ttl_ms)
                .map(Duration::from_millis)
                .unwrap_or(ExecutorConfig::DEFAULT_LEASE_TTL),
            tool_response_timeout: file
                .tool_response_timeout_secs
                .map(Duration::from_secs)
                .unwrap_or(ExecutorConfig::DEFAULT_TOOL_RESPONSE_TIMEOUT),
            sweep_interval: overrides
                .sweep_interval_ms
                .or(file.leases.sweep_interval_ms)
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_SWEEP_INTERVAL),
            idempotency: IdempotencyConfig {
                ttl: file
                    .idempotency
                    .ttl_secs
                    .map(Duration::from_secs)
                    .unwrap_or(idempotency_defaults.ttl),
                in_flight_wait: file
                    .idempotency
                    .in_flight_wait_ms
                    .map(Duration::from_millis)
                    .unwrap_or(idempotency_defaults.in_flight_wait),
            },
            webhooks,
            cors,
            console: file.console.unwrap_or(true),
            stream_heartbeat: file.stream_heartbeat_secs.map_or(
                baton_http::sse::SseOptions::default().heartbeat,
                Duration::from_secs,
            ),
            admin_token: file.admin_token.filter(|t| !t.is_empty()),
            limits: Limits {
                requests_per_second_per_key: file.limits.requests_per_second_per_key.unwrap_or(0),
                request_burst_per_key: file.limits.request_burst_per_key.unwrap_or(0),
                json_depth: file
                    .limits
                    .json_depth
                    .unwrap_or(baton_http::limits::DEFAULT_JSON_DEPTH),
                body_timeout: file.limits.body_timeout_secs.map_or(
                    baton_http::limits::DEFAULT_BODY_TIMEOUT,
                    Duration::from_secs,
                ),
                submit: SubmitLimits {
                    max_message_bytes: file
                        .limits
                        .max_message_bytes
                        .unwrap_or(SubmitLimits::default().max_message_bytes),
                    max_attachment_bytes: file
                        .limits
                        .max_attachment_bytes
                        .unwrap_or(SubmitLimits::default().max_attachment_bytes),
                    max_running_turns_per_agent: file
                        .limits
                        .max_running_turns_per_agent
                        .filter(|n| *n > 0),
                    max_queued_per_task: file
                        .limits
                        .max_queued_per_task
                        .unwrap_or(SubmitLimits::default().max_queued_per_task),
                },
            },
            store: StoreOptions {
                sqlite: SqliteOptions {
                    synchronous: file.sqlite.synchronous.unwrap_or(defaults.synchronous),
                    busy_timeout: file
                        .sqlite
                        .busy_timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(defaults.busy_timeout),
                    readers: file.sqlite.readers.unwrap_or(defaults.readers),
                    pool_wait: defaults.pool_wait,
                },
                postgres: PgOptions {
                    pool_size: file.postgres.pool_size.unwrap_or(pg_defaults.pool_size),
                    pool_wait: file
                        .postgres
                        .pool_wait_ms
                        .map(Duration::from_millis)
                        .unwrap_or(pg_defaults.pool_wait),
                },
            },
        };
        anyhow::ensure!(config.workers >= 1, "workers must be at least 1");
        anyhow::ensure!(
            config.body_limit >= 1024,
            "body_limit_bytes must be at least 1024"
        );
        anyhow::ensure!(
            config.max_concurrent_turns >= 1,
            "max_concurrent_turns must be at least 1"
        );
        anyhow::ensure!(
            config.lease_ttl >= Duration::from_millis(300),
            "leases.ttl_ms must be at least 300"
        );
        anyhow::ensure!(
            config.sweep_interval >= Duration::from_millis(50),
            "leases.sweep_interval_ms must be at least 50"
        );
        anyhow::ensure!(
            config.tool_response_timeout >= Duration::from_secs(1),
            "tool_response_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            !config.instance_id.trim().is_empty() && config.instance_id.len() <= 128,
            "instance_id must be 1 to 128 characters"
        );
        anyhow::ensure!(
            config.idempotency.ttl >= Duration::from_secs(60),
            "idempotency.ttl_secs must be at least 60"
        );
        anyhow::ensure!(
            (config.limits.requests_per_second_per_key == 0)
                == (config.limits.request_burst_per_key == 0),
            "limits.requests_per_second_per_key and limits.request_burst_per_key go together"
        );
        anyhow::ensure!(
            config.admin_token.as_ref().is_none_or(|t| t.len() >= 16),
            "admin_token must be at least 16 characters"
        );
        anyhow::ensure!(
            (1..=128).contains(&config.limits.json_depth),
            "limits.json_depth must be from 1 to 128"
        );
        anyhow::ensure!(
            (1..=3600).contains(&config.limits.body_timeout.as_secs()),
            "limits.body_timeout_secs must be from 1 to 3600"
        );
        anyhow::ensure!(
            config.limits.submit.max_message_bytes >= 1024,
            "limits.max_message_bytes must be at least 1024"
        );
        // Base64 takes 4 bytes for every 3: a file as large as allowed must fit a body.
        anyhow::ensure!(
            config.limits.submit.max_attachment_bytes / 3 * 4 < config.body_limit,
            "limits.max_attachment_bytes ({}) must fit a request body of body_limit_bytes ({}) once base64-encoded",
            config.limits.submit.max_attachment_bytes,
            config.body_limit
        );
        anyhow::ensure!(
            (1..=600).contains(&config.stream_heartbeat.as_secs()),
            "stream_heartbeat_secs must be from 1 to 600"
        );
        anyhow::ensure!(
            config.store.sqlite.readers >= 1,
            "sqlite.readers must be at least 1"
        );
        anyhow::ensure!(
            config.store.postgres.pool_size >= 1,
            "postgres.pool_size must be at least 1"
        );
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn flags_and_env_win_over_the_file_which_wins_over_defaults() {
        let file = write(
            "database_url = \"sqlite://from-file.db\"\nlisten = \"127.0.0.1:9000\"\n[sqlite]\nsynchronous = \"normal\"\n",
        );
        let env = [
            ("BATON_LISTEN".to_owned(), "127.0.0.1:7000".to_owned()),
            ("BATON_SQLITE_READERS".to_owned(), "7".to_owned()),
            ("BATON_WORKERS".to_owned(), "3".to_owned()),
            ("BATON_STREAM_HEARTBEAT_SECS".to_owned(), "30".to_owned()),
            (
                "BATON_WEBHOOKS_ALLOW_NETWORKS".to_owned(),
                r#"["10.0.0.0/8"]"#.to_owned(),
            ),
            ("BATON_LOG".to_owned(), "debug".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let config = Config::resolve_with_env(
            &Overrides {
                config_file: Some(file.path().to_owned()),
                listen: Some("127.0.0.1:9999".into()),
                ..Overrides::default()
            },
            env,
        )
        .unwrap();
        assert_eq!(config.workers, 3, "a variable wins over the default");
        assert_eq!(config.stream_heartbeat, Duration::from_secs(30));
        assert_eq!(
            config.store.sqlite.readers, 7,
            "section keys have variables too"
        );
        assert_eq!(
            config.webhooks.settings.destinations.allow_networks,
            vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
        );
        assert_eq!(config.database_url, "sqlite://from-file.db");
        assert_eq!(config.listen, "127.0.0.1:9999");
        assert_eq!(config.store.sqlite.synchronous, SqliteSync::Normal);
        let defaults = Config::resolve_with_env(&Overrides::default(), []).unwrap();
        assert_eq!(defaults.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(defaults.store.sqlite.synchronous, SqliteSync::Full);
        assert_eq!(defaults.stream_heartbeat, Duration::from_secs(15));
        for refused in ["0", "601"] {
            let env = [("BATON_STREAM_HEARTBEAT_SECS".to_owned(), refused.to_owned())];
            let err = Config::resolve_with_env(&Overrides::default(), env).unwrap_err();
            assert!(
                err.to_string()
                    .contains("stream_heartbeat_secs must be from 1 to 600"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn cors_origins_come_as_a_list_or_one_value_and_are_checked() {
        use baton_http::cors::AllowedOrigins;
        let resolve = |value: &str| {
            Config::resolve_with_env(
                &Overrides::default(),
                [("BATON_CORS_ALLOWED_ORIGINS".to_owned(), value.to_owned())],
            )
            .map(|config| config.cors.allowed_origins)
        };
        assert_eq!(
            Config::resolve_with_env(&Overrides::default(), [])
                .unwrap()
                .cors
                .allowed_origins,
            AllowedOrigins::None,
            "off by default"
        );
        assert_eq!(
            resolve("https://app.example.com").unwrap(),
            AllowedOrigins::Listed(vec!["https://app.example.com".into()])
        );
        assert_eq!(
            resolve(r#"["https://a.example", "http://localhost:5173"]"#).unwrap(),
            AllowedOrigins::Listed(vec![
                "https://a.example".into(),
                "http://localhost:5173".into()
            ])
        );
        assert_eq!(resolve("*").unwrap(), AllowedOrigins::Any);
        let err = format!("{:#}", resolve("https://a.example/").unwrap_err());
        assert!(
            err.contains("cors.allowed_origins") && err.contains("not an origin"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_key() {
        let file = write("databse_url = \"x\"\n");
        let err = Config::resolve_with_env(
            &Overrides {
                config_file: Some(file.path().to_owned()),
                ..Overrides::default()
            },
            [],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("databse_url"), "{err:#}");
        let typo = [("BATON_WROKERS".to_owned(), "4".to_owned())];
        let err = Config::resolve_with_env(&Overrides::default(), typo).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("wrokers") && text.contains("BATON_WROKERS"),
            "{text}"
        );
    }

    #[test]
    fn the_printed_configuration_loads_back_to_the_same_settings_without_its_secrets() {
        let env = [
            (
                "BATON_DATABASE_URL".to_owned(),
                "postgres://baton:hunter2@db.internal/baton".to_owned(),
            ),
            (
                "BATON_WEBHOOKS_SIGNING_SECRET".to_owned(),
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
            ),
        ];
        let config = Config::resolve_with_env(&Overrides::default(), env.clone()).unwrap();
        let printed = config.printable().unwrap();
        assert!(
            !printed.contains("hunter2") && !printed.contains("MfKQ9r8"),
            "{printed}"
        );
        assert!(
            printed.contains("postgres://baton@db.internal/baton"),
            "{printed}"
        );
        for note in [
            "[webhooks] signing_secret",
            "the password of database_url",
            "instance_id (not set",
        ] {
            assert!(
                printed.contains(&format!("# Left out: {note}")),
                "{printed}"
            );
        }
        for key in [
            "readers",
            "ttl_ms",
            "retry_schedule_ms",
            "pool_size",
            "stream_heartbeat_secs",
        ] {
            assert!(printed.contains(key), "{key} missing: {printed}");
        }
        // Loaded back as a file, with the secrets given again as variables, it is the
        // same configuration — and it pins no instance id.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &printed).unwrap();
        let overrides = Overrides {
            config_file: Some(file),
            ..Overrides::default()
        };
        let reloaded = Config::resolve_with_env(&overrides, env).unwrap();
        assert_eq!(reloaded.printable().unwrap(), printed);
        assert_eq!(reloaded.database_url, config.database_url);
        assert_eq!(
            reloaded.webhooks.settings.signing_secrets,
            config.webhooks.settings.signing_secrets
        );
        assert!(!reloaded.instance_id_given);
    }
}
