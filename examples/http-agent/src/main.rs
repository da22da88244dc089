//! An agent service for baton's `http` runner: it checks each turn's signature
//! (Standard Webhooks, the secret in `AGENT_SECRET`) and answers with NDJSON events —
//! the user's words in reverse order, a word at a time. See docs/agents.md.
//!
//!     AGENT_SECRET=whsec_… cargo run -p baton-example-http-agent -- 127.0.0.1:9000

#![allow(clippy::print_stdout, reason = "an example says where it listens")]

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// Whether `body` was signed with `secret` (`whsec_…`), as the request's headers say.
fn verified(secret: &str, req: &HttpRequest, body: &[u8]) -> bool {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    signatures.split(' ').any(|signature| {
        let Some(sent) = signature
            .strip_prefix("v1,")
            .and_then(|s| STANDARD.decode(s).ok())
        else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&sent).is_ok() // constant-time
    })
    // (A production agent also refuses timestamps more than a few minutes old.)
}

async fn turn(req: HttpRequest, body: web::Bytes, secret: web::Data<String>) -> HttpResponse {
    if !verified(&secret, &req, &body) {
        return HttpResponse::Unauthorized().body("bad signature");
    }
    let Ok(turn) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().body("not a turn");
    };
    let said = turn["message"]["content"]["content"].as_str().unwrap_or("");
    let reply: Vec<&str> = said.split_whitespace().rev().collect();
    let mut events = String::new();
    for (i, word) in reply.iter().enumerate() {
        let delta = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events += &format!("{}\n", json!({"type": "text_delta", "delta": delta}));
    }
    events += &format!("{}\n", json!({"type": "final"}));
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .body(events)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let secret = std::env::var("AGENT_SECRET").map_err(|_| {
        std::io::Error::other("set AGENT_SECRET to the whsec_… secret baton signs with")
    })?;
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(secret.clone()))
            .route("/turn", web::post().to(turn))
    })
    .workers(1)
    .bind(&address)?;
    for bound in server.addrs() {
        println!("agent listening on {}", bound.port());
    }
    server.run().await
}
