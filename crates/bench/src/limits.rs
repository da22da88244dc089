//! The machine's own limits, measured in the same run as baton, so that baton's
//! figures can be quoted as ratios that hold on a noisy machine: what a bare actix-web
//! handler that parses the JSON and answers `202` does on the server's core, and how
//! many SQLite commits (`synchronous=FULL`, WAL) the disk takes, one row and 64 rows
//! at a time.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::Connection;
use diesel::connection::SimpleConnection;
use serde_json::{Value, json};

/// `baton-bench bare-server`: the ceiling of HTTP here. One worker, like the suite's
/// baton; prints the line `start_server` waits for.
pub(crate) fn bare_server() -> anyhow::Result<()> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    async fn accept(body: web::Json<Value>) -> HttpResponse {
        let agent = body.get("agent_id").cloned().unwrap_or(Value::Null);
        HttpResponse::Accepted().json(json!({"task_id": 1, "agent_id": agent, "status": "running"}))
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    actix_web::rt::System::new().block_on(async move {
        // The task read answers `completed`, so the suite's untimed wait for accepted
        // turns returns at once.
        let done = || async { HttpResponse::Ok().json(json!({"status": "completed"})) };
        let server = HttpServer::new(move || {
            App::new()
                .route("/v1/chat/tasks", web::post().to(accept))
                .route("/v1/chat/tasks/{task}", web::get().to(done))
        })
        .workers(1)
        .listen(listener)?
        .run();
        println!("baton listening on http://{address}");
        std::io::stdout().flush()?;
        server.await
    })?;
    Ok(())
}

/// Single-row and 64-row commits a second on a SQLite file in `dir`, each for about
/// `seconds`.
pub(crate) fn sqlite_commits(dir: &Path, seconds: f64) -> anyhow::Result<Value> {
    let path = dir.join("commits.db");
    let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy())
        .context("opening the commit-rate database")?;
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         CREATE TABLE rows (id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )?;
    let mut rate = |rows_per_commit: usize| -> anyhow::Result<f64> {
        let insert = "INSERT INTO rows (data) VALUES (randomblob(200));".repeat(rows_per_commit);
        let statement = format!("BEGIN IMMEDIATE; {insert} COMMIT;");
        let (started, limit) = (Instant::now(), Duration::from_secs_f64(seconds));
        let mut commits = 0u64;
        while started.elapsed() < limit {
            conn.batch_execute(&statement)?;
            commits += 1;
        }
        Ok(commits as f64 / started.elapsed().as_secs_f64())
    };
    let single = rate(1)?;
    let batched = rate(64)?;
    Ok(json!({
        "commits_per_s_1_row": single,
        "rows_per_s_64_per_commit": batched * 64.0,
    }))
}
