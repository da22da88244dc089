//! `baton-bench fanout`: many streams on a few tasks, one new turn on each task; how
//! long after each turn's end its `final` event reaches every stream of the task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{Target, echo_agent_and_key, percentiles, start_server};

/// Streams opened at once while connecting (the server accepts them one by one).
const CONNECTING: usize = 200;

/// How long connecting every stream may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(300);

/// Opens `streams` streams spread over `tasks` settled tasks (each positioned at its
/// task's end), appends one message to every task, and measures, per stream, the
/// time from the turn's end (the `final` event's `created_at`) to the stream
/// receiving it.
pub(crate) async fn fanout(
    baton: &str,
    cpu: usize,
    streams: usize,
    tasks: usize,
) -> anyhow::Result<Value> {
    let (open_files, _) = rlimit::Resource::NOFILE.get()?;
    if open_files < streams as u64 + 1000 {
        bail!(
            "{streams} streams need more open files than the limit of {open_files} \
             (the hard limit is the most this tool can raise it to: raise it first)"
        );
    }
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let (agent, token) = echo_agent_and_key(baton, &url)?;
    let server = start_server(baton, &url, cpu, &[])?;
    let target = Target {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        base: server.base.clone(),
        token,
        agent,
    };
    let mut ids = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        ids.push(target.create().await?);
    }
    let mut ends = Vec::with_capacity(tasks);
    for id in &ids {
        target.wait_done(*id).await?;
        ends.push(last_seq(&target, *id).await?);
    }
    let tasks_and_ends: Arc<Vec<(i64, i64)>> = Arc::new(ids.iter().copied().zip(ends).collect());

    // Connect every stream, positioned at its task's end, then wait for them all.
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(streams.max(1));
    let mut readers = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    for i in 0..streams {
        let (task, end) = tasks_and_ends[i % tasks_and_ends.len()];
        let (base, token) = (target.base.clone(), target.token.clone());
        let connected = connected_tx.clone();
        let gate = gate.clone();
        readers.spawn(async move {
            let permit = gate.acquire_owned().await?;
            let response = reqwest::Client::new()
                .get(format!(
                    "{base}/v1/chat/tasks/{task}/stream?after={end}&until=final"
                ))
                .bearer_auth(&token)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("stream of task {task}: {}", response.status());
            }
            let mut events = response.bytes_stream().eventsource();
            drop(permit);
            connected.send(()).await.ok();
            while let Some(event) = events.next().await {
                let event = event?;
                if event.event == "final" {
                    let data: Value = serde_json::from_str(&event.data)?;
                    let ended: DateTime<Utc> = data["created_at"]
                        .as_str()
                        .context("final without created_at")?
                        .parse()?;
                    let late = Utc::now() - ended;
                    return Ok(late.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
                }
            }
            bail!("stream of task {task} ended without final")
        });
    }
    drop(connected_tx);
    let connecting = Instant::now();
    let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
    for _ in 0..streams {
        tokio::select! {
            connected = connected_rx.recv() => connected.context("the streams stopped connecting")?,
            // A stream that ends before the messages are sent failed.
            Some(ended) = readers.join_next() => {
                ended??;
                bail!("a stream ended before any message was sent");
            }
            () = tokio::time::sleep_until(deadline) => {
                bail!("streams still connecting after {CONNECT_WITHIN:?}")
            }
        }
    }
    let connect_seconds = connecting.elapsed().as_secs_f64();
    // Every stream has read its `retry:` hint; let the server settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let appending = Instant::now();
    let mut appends = tokio::task::JoinSet::new();
    for id in ids {
        let target = target.clone();
        appends.spawn(async move { target.append(id).await });
    }
    while let Some(appended) = appends.join_next().await {
        appended??;
    }
    let mut late = Vec::with_capacity(streams);
    while let Some(got) = readers.join_next().await {
        late.push(got??);
    }
    let all_seconds = appending.elapsed().as_secs_f64();
    drop(server);
    Ok(json!({
        "streams": streams,
        "tasks": tasks,
        "connect_seconds": connect_seconds,
        "all_final_seconds": all_seconds,
        "final_after_turn_end_ms": percentiles(late),
    }))
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
