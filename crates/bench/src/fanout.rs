//! `baton-bench fanout`: many streams on a few tasks. What the open streams cost the
//! server while idle (memory, CPU, the latency of other requests), then one new turn
//! on each task: how long after each turn's end its `final` event reaches every
//! stream of the task.
//!
//! On PostgreSQL two instances run: the turns on one, every stream on the other, so
//! each `final` crosses instances through the database's notifications.

use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::streams::{AtFinal, core_share, cpu_seconds, open, rss_kib};
use crate::{Backend, Target, bench_database, echo_agent_and_key, ms, percentiles, start_server};

/// Messages appended at once.
const APPENDING: usize = 64;

/// What one fan-out run does.
pub(crate) struct Fanout {
    pub(crate) database: Backend,
    pub(crate) streams: usize,
    pub(crate) tasks: usize,
    /// How long the streams are held idle while the server's CPU is measured (at least
    /// one heartbeat period, 15 s, to include the heartbeats).
    pub(crate) idle: Duration,
    /// `GET` task requests made one after another while the streams are idle.
    pub(crate) gets: usize,
    pub(crate) at_final: AtFinal,
}

pub(crate) async fn fanout(baton: &str, cpu: usize, run: &Fanout) -> anyhow::Result<Value> {
    let (open_files, _) = rlimit::Resource::NOFILE.get()?;
    if open_files < run.streams as u64 + 1000 {
        bail!(
            "{} streams need more open files than the limit of {open_files} \
             (the hard limit is the most this tool can raise it to: raise it first)",
            run.streams
        );
    }
    let dir = tempfile::tempdir()?;
    let (pg, url) = bench_database(run.database, dir.path()).await?;
    let (agent, token) = echo_agent_and_key(baton, &url)?;
    let turns_server = start_server(baton, &url, cpu, &[])?;
    let other_server = match run.database {
        Backend::Sqlite => None,
        Backend::Postgres => Some(start_server(baton, &url, cpu, &[])?),
    };
    let watched = other_server.as_ref().unwrap_or(&turns_server);
    let watched_pid = watched.child.id();
    let target = Target::new(turns_server.base.clone(), token, agent)?;
    let mut ids = Vec::with_capacity(run.tasks);
    for _ in 0..run.tasks {
        ids.push(target.create().await?);
    }
    let mut ends = Vec::with_capacity(run.tasks);
    for id in &ids {
        target.wait_done(*id).await?;
        ends.push(last_seq(&target, *id).await?);
    }
    let tasks_and_ends: Vec<(i64, i64)> = ids.iter().copied().zip(ends).collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(watched_pid)?;
    // Every stream positioned at its task's end.
    let positions = (0..run.streams).map(|i| tasks_and_ends[i % tasks_and_ends.len()]);
    let mut streams = open(&watched.base, &target.token, positions, run.at_final).await?;
    // Every stream has its `retry:` hint; let the server settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_with_streams = rss_kib(watched_pid)?;
    let idle_share = core_share(watched_pid, run.idle).await?;
    let gets = get_latencies(&target, &watched.base, &ids, run.gets).await?;

    let cpu_before = [
        cpu_seconds(turns_server.child.id())?,
        cpu_seconds(watched_pid)?,
        cpu_seconds(std::process::id())?,
    ];
    let appending = Instant::now();
    // A bounded number at once: each is a connection, and with as many streams as
    // the open-files limit allows, a burst of a thousand would not fit under it.
    let mut appends = futures_util::stream::iter(ids)
        .map(|id| {
            let target = target.clone();
            async move { target.append(id).await }
        })
        .buffer_unordered(APPENDING);
    while let Some(appended) = appends.next().await {
        appended?;
    }
    let mut late = Vec::with_capacity(run.streams);
    let mut held = Vec::with_capacity(run.streams);
    while let Some(got) = streams.readers.join_next().await {
        let (ms, stream) = got??;
        late.push(ms);
        held.extend(stream);
    }
    let all_seconds = appending.elapsed().as_secs_f64();
    // Whose CPU the fan-out took: if the load generator's share is near one core, the
    // delays measure it rather than the server.
    let used = |pid: u32, before: f64| -> anyhow::Result<f64> { Ok(cpu_seconds(pid)? - before) };
    let fanout_cpu = json!({
        "turns_server_s": used(turns_server.child.id(), cpu_before[0])?,
        "watched_server_s": used(watched_pid, cpu_before[1])?,
        "load_generator_s": used(std::process::id(), cpu_before[2])?,
    });
    drop(held);
    drop(other_server);
    drop(turns_server);
    Ok(json!({
        "database": match run.database { Backend::Sqlite => "sqlite", Backend::Postgres => "postgres" },
        "instances": if pg.is_some() { 2 } else { 1 },
        "streams": run.streams,
        "tasks": run.tasks,
        "at_final": match run.at_final { AtFinal::HoldOpen => "hold-open", AtFinal::Close => "close" },
        "open_seconds": streams.open_seconds,
        "rss_before_kib": rss_before,
        "rss_with_streams_kib": rss_with_streams,
        "bytes_per_idle_stream":
            (rss_with_streams.saturating_sub(rss_before) * 1024) as f64 / run.streams as f64,
        "idle_seconds": run.idle.as_secs_f64(),
        "idle_core_share": idle_share,
        "get_task_ms_while_open": gets,
        "all_final_seconds": all_seconds,
        "cpu_during_fanout": fanout_cpu,
        "final_after_turn_end_ms": percentiles(late),
    }))
}

/// `count` `GET /v1/chat/tasks/{id}` on `base`, one after another over `tasks`.
async fn get_latencies(
    target: &Target,
    base: &str,
    tasks: &[i64],
    count: usize,
) -> anyhow::Result<Value> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let task = tasks[i % tasks.len()];
        let t0 = Instant::now();
        let response = target
            .http
            .get(format!("{base}/v1/chat/tasks/{task}"))
            .bearer_auth(&target.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET task {task}: {}", response.status());
        }
        response.bytes().await?;
        latencies.push(ms(t0));
    }
    Ok(json!({"requests": count, "latency_ms": percentiles(latencies)}))
}

/// The `seq` of the task's last event (its first turn's end), read from its stream.
async fn last_seq(target: &Target, task: i64) -> anyhow::Result<i64> {
    let mut events = std::pin::pin!(target.events_to_final(task).await?);
    let mut last = 0;
    while let Some(event) = events.next().await {
        last = event?.id.parse()?;
    }
    Ok(last)
}
