//! baton's webhook transport, the domain's [`WebhookTransport`] port over reqwest.
//!
//! Server-side request forgery is refused where it cannot be dodged: a literal address
//! is checked before connecting, and a host name is resolved here and only its allowed
//! addresses are handed to the connector — so the address checked is the address
//! connected to (no second lookup an attacker's DNS could answer differently).
//! Redirects are not followed, proxies are not used, and at most a few KiB of the
//! response are read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_domain::{DestinationPolicy, WebhookTransport};
use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How much of a receiver's answer is read (and then dropped).
const MAX_RESPONSE_BYTES: usize = 4096;

/// Sends deliveries over HTTP(S) to allowed destinations only.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    policy: Arc<DestinationPolicy>,
}

/// Installs the process-wide TLS crypto provider (ring) that every reqwest client in
/// a process using this crate needs: reqwest is built without a provider of its own
/// here (its default pulls aws-lc, a large C build). Idempotent; call it before
/// building any reqwest client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl HttpTransport {
    /// A transport that gives up on a delivery after `timeout` (connecting, sending
    /// and reading the answer).
    pub fn new(policy: DestinationPolicy, timeout: Duration) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("baton-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(CheckedResolver {
                policy: policy.clone(),
            }))
            .build()?;
        Ok(HttpTransport { client, policy })
    }
}

#[async_trait]
impl WebhookTransport for HttpTransport {
    async fn post(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<u16, String> {
        // The URL was checked when it was accepted; the policy may have changed since,
        // and a literal address never reaches the resolver.
        let parsed = self.policy.check_url(url)?;
        let mut request = self.client.post(parsed).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let mut stream = response.bytes_stream();
        let mut read = 0;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    read += bytes.len();
                    if read >= MAX_RESPONSE_BYTES {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Ok(status)
    }
}

/// A reqwest error as one line: what failed, with its cause (a refused destination
/// says which address and why).
fn describe(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&err);
    let mut deepest = None;
    while let Some(source) = cause {
        deepest = Some(source.to_string());
        cause = source.source();
    }
    match deepest {
        Some(why) => format!("{kind}: {why}"),
        None => kind.to_owned(),
    }
}

/// Resolves with the system resolver and keeps only the addresses the policy allows.
#[derive(Debug)]
struct CheckedResolver {
    policy: Arc<DestinationPolicy>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|addr| policy.refuses(addr.ip()).is_none());
            if allowed.is_empty() {
                let why = refused
                    .first()
                    .and_then(|addr| policy.refuses(addr.ip()).map(|why| (addr.ip(), why)));
                let message = match why {
                    Some((ip, why)) => {
                        format!("{host} resolves to {why} ({ip}), which is not allowed")
                    }
                    None => format!("{host} resolves to no address"),
                };
                return Err(message.into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}
