//! Many SSE streams opened at once, and what the server process spends on them.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;

/// Streams being opened at once (the server accepts them one by one).
const CONNECTING: usize = 200;

/// How long opening every stream may take.
const OPEN_WITHIN: Duration = Duration::from_secs(300);

/// The `USER_HZ` of `/proc/PID/stat`'s CPU times: 100 on every Linux architecture
/// (it is part of the kernel's ABI, whatever the kernel's own tick).
const TICKS_PER_SECOND: f64 = 100.0;

/// What a stream's reader gives back: how late, in ms, its `final` arrived after the
/// turn's end, and the stream itself if it is held open past `final`.
pub(crate) type Received = (f64, Option<Box<dyn Send>>);

/// How the streams end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AtFinal {
    /// Held open past `final`, as a chat tab holds its stream across turns: the server
    /// writes `final` and goes on with the next stream.
    HoldOpen,
    /// Opened with `?until=final` and closed by the client once `final` is read: each
    /// `final` is followed by the connection's teardown on both sides.
    Close,
}

/// Streams open on a server, each read until its `final` event.
pub(crate) struct OpenStreams {
    pub(crate) readers: tokio::task::JoinSet<anyhow::Result<Received>>,
    pub(crate) open_seconds: f64,
}

/// Opens one stream per `(task, after)` on `base`, through one HTTP client (a client per
/// stream would load its TLS roots each time and make the opening the load
/// generator's own cost), and returns once every stream has its first bytes. A stream
/// that ends before `final` makes its reader fail.
pub(crate) async fn open(
    base: &str,
    token: &str,
    positions: impl IntoIterator<Item = (i64, i64)>,
    at_final: AtFinal,
) -> anyhow::Result<OpenStreams> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let positions: Vec<_> = positions.into_iter().collect();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(positions.len().max(1));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let mut readers = tokio::task::JoinSet::new();
    for &(task, after) in &positions {
        let until = match at_final {
            AtFinal::HoldOpen => "",
            AtFinal::Close => "&until=final",
        };
        let request = http
            .get(format!(
                "{base}/v1/chat/tasks/{task}/stream?after={after}{until}"
            ))
            .bearer_auth(token);
        let (opened, gate) = (opened_tx.clone(), gate.clone());
        readers.spawn(async move {
            let permit = gate.acquire_owned().await?;
            let response = request.send().await?;
            if !response.status().is_success() {
                bail!("stream of task {task}: {}", response.status());
            }
            let mut events = response.bytes_stream().eventsource();
            drop(permit);
            opened.send(()).await.ok();
            while let Some(event) = events.next().await {
                let event = event?;
                if event.event == "final" {
                    let data: Value = serde_json::from_str(&event.data)?;
                    let ended: DateTime<Utc> = data["created_at"]
                        .as_str()
                        .context("final without created_at")?
                        .parse()?;
                    let late = Utc::now() - ended;
                    let late = late.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
                    let held: Option<Box<dyn Send>> = match at_final {
                        AtFinal::HoldOpen => Some(Box::new(events)),
                        AtFinal::Close => None,
                    };
                    return Ok((late, held));
                }
            }
            bail!("stream of task {task} ended without final")
        });
    }
    drop(opened_tx);
    let opening = Instant::now();
    let deadline = tokio::time::Instant::now() + OPEN_WITHIN;
    for _ in 0..positions.len() {
        tokio::select! {
            opened = opened_rx.recv() => opened.context("the streams stopped opening")?,
            Some(ended) = readers.join_next() => {
                ended??;
                bail!("a stream ended while the others were opening");
            }
            () = tokio::time::sleep_until(deadline) => {
                bail!("streams still opening after {OPEN_WITHIN:?}")
            }
        }
    }
    Ok(OpenStreams {
        readers,
        open_seconds: opening.elapsed().as_secs_f64(),
    })
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// CPU time a process has used so far (user and system, all its threads), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let after_name = stat.rsplit_once(')').context("no command name")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are the line's fields 14 and 15: 11 and 12 counted from 0 after
    // the name.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("a short stat line")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// Share of one core a process uses over `window`.
pub(crate) async fn core_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_seconds(pid)?;
    tokio::time::sleep(window).await;
    Ok((cpu_seconds(pid)? - before) / window.as_secs_f64())
}
