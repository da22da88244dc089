//! `baton-bench recovery`: how long a surviving PostgreSQL instance takes to end or
//! take over the running turns of an instance killed with SIGKILL.
//!
//! Two instances on a throwaway database, both with short leases. The doomed one
//! accepts `turns` turns of an echo agent that takes ten minutes, so every turn is
//! still running when it is killed. The survivor's sweeps then end them (`fail`) or
//! take them over (`retry`). The figure is the time from the kill until no turn is
//! held by the dead instance any more, beside the bound the design promises: the lease
//! (a turn's last renewal can be up to a third of it before the kill), one sweep
//! period, and one second for the work itself.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::{Target, cli, start_server};

const LEASE_TTL_MS: u64 = 1000;
const SWEEP_INTERVAL_MS: u64 = 200;
const DOOMED: &str = "doomed-instance";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Policy {
    Fail,
    Retry,
}

/// Kills an instance holding `turns` running turns and times their recovery.
pub(crate) async fn recovery(baton: &str, turns: usize, policy: Policy) -> anyhow::Result<Value> {
    let db = tokio::task::spawn_blocking(baton_test_support::TestDatabase::new).await?;
    let url = db.url().to_owned();
    let mut create = vec![
        "agent",
        "create",
        "--name",
        "slow",
        "--runner",
        "echo",
        "--runner-config",
        r#"{"delay_ms": 600000}"#,
    ];
    if policy == Policy::Retry {
        create.extend(["--on-interrupt", "retry", "--max-attempts", "3"]);
    }
    let agent: i64 = cli(baton, &url, &create)?.parse()?;
    let token = cli(
        baton,
        &url,
        &["key", "create", "--agent", &agent.to_string()],
    )?;
    let ttl = LEASE_TTL_MS.to_string();
    let sweep = SWEEP_INTERVAL_MS.to_string();
    let leases = [
        "--lease-ttl-ms",
        ttl.as_str(),
        "--sweep-interval-ms",
        sweep.as_str(),
    ];
    let mut doomed_flags = vec!["--instance-id", DOOMED];
    doomed_flags.extend(leases);
    let doomed = start_server(baton, &url, 0, &doomed_flags)?;
    let survivor = start_server(baton, &url, 1, &leases)?;
    let target = Target::new(doomed.base.clone(), token, agent)?;
    let accepting = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|worker| {
            let target = target.clone();
            tokio::spawn(async move {
                for _ in (worker..turns).step_by(16) {
                    target.create().await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let accepted_s = accepting.elapsed().as_secs_f64();
    let held = |db: &baton_test_support::TestDatabase| -> anyhow::Result<usize> {
        let count = db
            .query(&format!(
                "SELECT count(*) FROM turns WHERE status = 'running' AND lease_owner = '{DOOMED}'"
            ))
            .map_err(anyhow::Error::msg)?;
        count.parse().context("a count")
    };
    if held(&db)? != turns {
        bail!("the doomed instance should hold all {turns} turns before the kill");
    }
    let killed = Instant::now();
    doomed.kill();
    let mut remaining = turns;
    let mut progress = Vec::new();
    while remaining > 0 {
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("{remaining} of {turns} turns still held by the dead instance after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = held(&db)?;
        if now != remaining {
            progress.push(json!({"ms": killed.elapsed().as_millis() as u64, "held": now}));
            remaining = now;
        }
    }
    let recovered_s = killed.elapsed().as_secs_f64();
    let ended = db
        .query("SELECT status, attempt, count(*) FROM turns GROUP BY status, attempt ORDER BY 1, 2")
        .map_err(anyhow::Error::msg)?;
    drop(survivor);
    let bound_s = (LEASE_TTL_MS + SWEEP_INTERVAL_MS) as f64 / 1000.0 + 1.0;
    Ok(json!({
        "turns": turns,
        "policy": match policy { Policy::Fail => "fail", Policy::Retry => "retry" },
        "lease_ttl_ms": LEASE_TTL_MS,
        "sweep_interval_ms": SWEEP_INTERVAL_MS,
        "accepted_in_s": accepted_s,
        "recovered_after_kill_s": recovered_s,
        "bound_s": bound_s,
        "within_bound": recovered_s <= bound_s,
        "progress": progress,
        "turns_by_status_attempt": ended.lines().collect::<Vec<_>>(),
    }))
}
