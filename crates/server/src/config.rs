//! Configuration: defaults, then an optional TOML file, then environment variables and
//! flags (clap merges those two). Unknown keys in the file are an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use baton_domain::webhooks::RetrySchedule;
use baton_domain::{
    DestinationPolicy, ExecutorConfig, IdempotencyConfig, SenderConfig, WebhookSettings,
};
use baton_persistence::{PgOptions, SqliteOptions, SqliteSync, StoreOptions};
use serde::Deserialize;

/// The configuration file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
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
    #[serde(default)]
    pub leases: LeasesFile,
    #[serde(default)]
    pub idempotency: IdempotencyFile,
    #[serde(default)]
    pub webhooks: WebhooksFile,
    #[serde(default)]
    pub sqlite: SqliteFile,
    #[serde(default)]
    pub postgres: PostgresFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesFile {
    pub ttl_ms: Option<u64>,
    pub sweep_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyFile {
    pub ttl_secs: Option<u64>,
    pub in_flight_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    pub pool_size: Option<usize>,
    pub pool_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteFile {
    pub synchronous: Option<SqliteSync>,
    pub busy_timeout_ms: Option<u64>,
    pub readers: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
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
    /// How long a turn's lease lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// How often this instance looks for turns whose lease expired.
    pub sweep_interval: Duration,
    pub idempotency: IdempotencyConfig,
    pub webhooks: Webhooks,
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

impl FileConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }
}

/// Values given on the command line or in `BATON_…` variables, which win over the file.
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
        let file = FileConfig::load(overrides.config_file.as_deref())?;
        let defaults = SqliteOptions::default();
        let pg_defaults = PgOptions::default();
        let idempotency_defaults = IdempotencyConfig::default();
        let webhooks = resolve_webhooks(file.webhooks, overrides.webhook_secret.clone())?;
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
            !config.instance_id.trim().is_empty() && config.instance_id.len() <= 128,
            "instance_id must be 1 to 128 characters"
        );
        anyhow::ensure!(
            config.idempotency.ttl >= Duration::from_secs(60),
            "idempotency.ttl_secs must be at least 60"
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
        let config = Config::resolve(&Overrides {
            config_file: Some(file.path().to_owned()),
            listen: Some("127.0.0.1:9999".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.database_url, "sqlite://from-file.db");
        assert_eq!(config.listen, "127.0.0.1:9999");
        assert_eq!(config.store.sqlite.synchronous, SqliteSync::Normal);
        let defaults = Config::resolve(&Overrides::default()).unwrap();
        assert_eq!(defaults.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(defaults.store.sqlite.synchronous, SqliteSync::Full);
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_key() {
        let file = write("databse_url = \"x\"\n");
        let err = Config::resolve(&Overrides {
            config_file: Some(file.path().to_owned()),
            ..Overrides::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("databse_url"), "{err:#}");
    }
}
