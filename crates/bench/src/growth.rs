//! `baton-bench growth`: whether baton's cost grows with what is stored. For each size,
//! a fresh SQLite database gets one real task (through the API, so every row is what
//! baton writes), which is then copied in bulk SQL until the database holds `size`
//! tasks with their turn, messages and events. The server, pinned to one core, is then
//! measured on `accept` at c=64 and on reading a page of a random stored task's
//! history at c=16. The figures to compare are the p99s at the largest size against
//! the smallest.

use std::time::Instant;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use serde_json::{Value, json};

use crate::{Scenario, Target, echo_agent_and_key, ms, percentiles, run, start_server};

/// Copies task 1 (with its turn, messages and events) into tasks 2..=`size`, in one
/// transaction. Task `i`'s copied turn gets id `i`: in a fresh database the first task
/// has turn 1, so ids stay unique.
fn seed(path: &std::path::Path, size: usize) -> anyhow::Result<()> {
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
    conn.batch_execute(&format!(
        "PRAGMA synchronous = OFF;
         BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < {size})
         INSERT INTO tasks (id, agent_id, metadata, input, created_at, updated_at, last_seq)
         SELECT n.i, agent_id, metadata, input, created_at, updated_at, last_seq
         FROM n, tasks WHERE tasks.id = 1;
         INSERT INTO turns (id, task_id, status, error_code, error_message, metadata,
             started_at, ended_at, attempt, lease_owner, lease_expires_at, webhook_url,
             webhook_secrets, usage, respond_by, output_batches)
         SELECT t.id, t.id, u.status, u.error_code, u.error_message, u.metadata,
             u.started_at, u.ended_at, u.attempt, u.lease_owner, u.lease_expires_at,
             u.webhook_url, u.webhook_secrets, u.usage, u.respond_by, u.output_batches
         FROM tasks t, turns u WHERE u.id = 1 AND t.id > 1;
         INSERT INTO messages (task_id, turn_id, role, content, streaming_status, created_at)
         SELECT t.id, t.id, m.role, m.content, m.streaming_status, m.created_at
         FROM tasks t, messages m WHERE m.task_id = 1 AND t.id > 1 ORDER BY t.id, m.id;
         INSERT INTO events (task_id, seq, turn_id, kind, data, created_at)
         SELECT t.id, e.seq, t.id, e.kind, e.data, e.created_at
         FROM tasks t, events e WHERE e.task_id = 1 AND t.id > 1;
         COMMIT;
         PRAGMA wal_checkpoint(TRUNCATE);"
    ))?;
    Ok(())
}

/// Reads the first page of random stored tasks' messages, `concurrency` at a time.
async fn history(
    target: &Target,
    tasks: usize,
    concurrency: usize,
    reads: usize,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let target = target.clone();
            tokio::spawn(async move {
                // xorshift: spread over the whole id range, reproducible per worker.
                let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (worker as u64 + 1);
                let mut latencies = Vec::new();
                for _ in 0..reads / concurrency {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let task = state % tasks as u64 + 1;
                    let t0 = Instant::now();
                    let response = target
                        .http
                        .get(format!(
                            "{}/v1/chat/tasks/{task}/messages?limit=100",
                            target.base
                        ))
                        .bearer_auth(&target.token)
                        .send()
                        .await?;
                    anyhow::ensure!(response.status().is_success(), "{}", response.status());
                    let page: Value = response.json().await?;
                    anyhow::ensure!(page["data"].as_array().is_some_and(|d| !d.is_empty()));
                    latencies.push(ms(t0));
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "concurrency": concurrency,
        "operations": latencies.len(),
        "per_second": latencies.len() as f64 / seconds,
        "latency_ms": percentiles(latencies),
    }))
}

/// Measures `accept` and history reads on databases of each size.
pub(crate) async fn growth(baton: &str, cpu: usize, sizes: &[usize]) -> anyhow::Result<Value> {
    let mut results = Vec::new();
    for &size in sizes {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("growth.db");
        let url = format!("sqlite://{}", path.display());
        let (agent, token) = echo_agent_and_key(baton, &url)?;
        let target = |base: &str| Target::new(base.to_owned(), token.clone(), agent);
        {
            let server = start_server(baton, &url, cpu, &[])?;
            let first = target(&server.base)?;
            let task = first.create().await?;
            anyhow::ensure!(task == 1, "a fresh database's first task is 1, not {task}");
            first.wait_done(task).await?;
        }
        let seeding = Instant::now();
        let seeded = path.clone();
        tokio::task::spawn_blocking(move || seed(&seeded, size))
            .await?
            .context("seeding")?;
        let seed_seconds = seeding.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&path)?.len();
        eprintln!("{size} tasks seeded in {seed_seconds:.1} s ({bytes} bytes)");

        let server = start_server(baton, &url, cpu, &[])?;
        let target = target(&server.base)?;
        // Warm up what a long-running server would have warm.
        history(&target, size, 4, 400).await?;
        run(&target, Scenario::Accept, 16, 500, 1).await?;
        let accept = run(&target, Scenario::Accept, 64, 3000, 1).await?;
        let read = history(&target, size, 16, 4000).await?;
        let row = json!({
            "tasks": size,
            "seed_seconds": seed_seconds,
            "database_bytes": bytes,
            "accept_c64": accept,
            "history_c16": read,
        });
        eprintln!("{row}");
        results.push(row);
    }
    let p99 = |row: &Value, key: &str| row[key]["latency_ms"]["p99"].as_f64();
    let ratios = match (results.first(), results.last()) {
        (Some(small), Some(large)) => json!({
            "accept_p99_largest_to_smallest": p99(large, "accept_c64").zip(p99(small, "accept_c64")).map(|(l, s)| l / s),
            "history_p99_largest_to_smallest": p99(large, "history_c16").zip(p99(small, "history_c16")).map(|(l, s)| l / s),
        }),
        _ => Value::Null,
    };
    Ok(json!({ "sizes": results, "ratios": ratios }))
}
