//! Webhooks: where a turn's end is delivered, how a delivery is signed (Standard
//! Webhooks), what it carries, which destinations are refused, and when a failed
//! delivery is tried again.
//!
//! Deliveries are written to an outbox in the transaction that ends the turn (see
//! `TaskStore::finish_turn`) and sent by [`crate::webhook_sender::WebhookSender`] on
//! any instance.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::error::FieldError;
use crate::model::{Message, Metadata, Turn, TurnStatus};
/// The webhook value types live with the entities that carry them (an agent's default
/// webhook, a turn's); they are named here too, where the rest of webhooks is.
pub use crate::model::{WebhookEndpoint, WebhookTarget};

/// Which destinations deliveries may go to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    /// `http://` destinations (plain text) are refused unless this is set.
    pub allow_http: bool,
    /// Address ranges allowed although they are loopback, private, link-local or
    /// otherwise internal (for local development and tests).
    pub allow_networks: Vec<ipnet::IpNet>,
}

impl DestinationPolicy {
    /// Why `ip` may not be a destination, if it may not.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let why = internal_address(ip)?;
        if self.allow_networks.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        Some(why)
    }

    /// Checks a URL as far as can be done without resolving it: scheme, host, no
    /// credentials, and a literal address against the policy.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, String> {
        let url = url::Url::parse(raw).map_err(|err| format!("not a valid URL: {err}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err("must be https (http is not allowed on this server)".into()),
            other => return Err(format!("must be https, not {other}")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        match url.host() {
            None => return Err("must name a host".into()),
            Some(url::Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip))?,
            Some(url::Host::Domain(_)) => {}
        }
        if raw.len() > MAX_URL_LEN {
            return Err(format!("must be at most {MAX_URL_LEN} characters"));
        }
        Ok(url)
    }

    fn check_literal(&self, ip: IpAddr) -> Result<(), String> {
        match self.refuses(ip) {
            Some(why) => Err(format!("must not point to {why} ({ip})")),
            None => Ok(()),
        }
    }
}

const MAX_URL_LEN: usize = 2048;

/// The kind of internal address `ip` is, if it is one: what a webhook must not reach
/// (server-side request forgery).
pub fn internal_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            internal_v6(v6)
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("a private address")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("a cloud metadata address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("a multicast or broadcast address")
    } else if ip.is_unspecified() || a == 0 || a >= 240 {
        Some("a reserved address")
    } else {
        None
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("a reserved address")
    } else if ip.is_multicast() {
        Some("a multicast or broadcast address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a private address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        Some("a cloud metadata address")
    } else {
        None
    }
}

/// Secrets are `whsec_` and base64 of 24 to 64 random bytes (Standard Webhooks).
pub fn check_secret(secret: &str) -> Result<(), String> {
    let key = secret
        .strip_prefix("whsec_")
        .ok_or("must start with whsec_")?;
    let bytes = BASE64
        .decode(key)
        .map_err(|_| "must be whsec_ followed by base64")?;
    if !(24..=64).contains(&bytes.len()) {
        return Err("must hold 24 to 64 bytes (32 is usual)".into());
    }
    Ok(())
}

/// A fresh secret, for an agent or a server that was given none.
pub fn new_secret() -> String {
    format!("whsec_{}", BASE64.encode(rand::random::<[u8; 32]>()))
}

/// Checks a request's or an agent's webhook, naming the fields under `prefix`.
pub fn check_target(
    target: &WebhookTarget,
    policy: &DestinationPolicy,
    prefix: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Err(why) = policy.check_url(&target.url) {
        errors.push(FieldError::new(format!("{prefix}.url"), why));
    }
    if let Some(secret) = &target.secret
        && let Err(why) = check_secret(secret)
    {
        errors.push(FieldError::new(format!("{prefix}.secret"), why));
    }
}

/// A delivery's id: the `webhook-id` header, the same on every attempt, so receivers
/// can drop duplicates.
pub fn new_delivery_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let id: String = (0..22)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("msg_{id}")
}

/// The Standard Webhooks headers for a delivery: `webhook-id`, `webhook-timestamp`
/// (Unix seconds) and `webhook-signature`, `v1,<base64 HMAC-SHA256 of
/// "id.timestamp.body">` per secret, separated by spaces.
pub fn sign(id: &str, timestamp: i64, body: &[u8], secrets: &[String]) -> Vec<(String, String)> {
    let signatures: Vec<String> = secrets
        .iter()
        .filter_map(|secret| {
            let mac = signature_mac(secret, id, timestamp, body)?;
            Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
        })
        .collect();
    vec![
        ("webhook-id".to_owned(), id.to_owned()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        ("webhook-signature".to_owned(), signatures.join(" ")),
    ]
}

/// The HMAC-SHA256 of `id.timestamp.body` with a `whsec_` secret, as Standard Webhooks
/// sign; `None` for a secret that is not one.
fn signature_mac(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let key = BASE64.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(mac)
}

/// How far a signed request's `webhook-timestamp` may be from now (Standard Webhooks'
/// recommended tolerance): an older one is a replay.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 5 * 60;

/// Checks a request signed as [`sign`] signs: its three headers (names compared
/// without case), a timestamp within [`SIGNATURE_TOLERANCE_SECS`] of `now`, and one
/// `v1` signature made with `secret` (compared in constant time).
pub fn verify(
    headers: &[(String, String)],
    body: &[u8],
    secret: &str,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| format!("the {name} header is missing"))
    };
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?
        .parse()
        .map_err(|_| "webhook-timestamp is not Unix seconds".to_owned())?;
    if (now.timestamp() - timestamp).abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(format!(
            "webhook-timestamp is more than {SIGNATURE_TOLERANCE_SECS} s from the server's time"
        ));
    }
    if signature_mac(secret, id, timestamp, body).is_none() {
        return Err("the agent's secret is not a whsec_ secret".to_owned());
    }
    let signed = header("webhook-signature")?;
    let matches = signed.split(' ').any(|signature| {
        let given = signature
            .strip_prefix("v1,")
            .and_then(|b64| BASE64.decode(b64).ok());
        match (given, signature_mac(secret, id, timestamp, body)) {
            (Some(given), Some(mac)) => mac.verify_slice(&given).is_ok(),
            _ => false,
        }
    });
    match matches {
        true => Ok(()),
        false => Err("no webhook-signature matches the agent's secret".to_owned()),
    }
}

/// The event type of a turn's end: `turn.completed`, `turn.failed`,
/// `turn.cancelled`, or `turn.interrupted` (failed because its server stopped).
pub fn event_type(turn: &Turn) -> &'static str {
    match turn.status {
        TurnStatus::Completed | TurnStatus::Running => "turn.completed",
        TurnStatus::Cancelled => "turn.cancelled",
        TurnStatus::RequiresAction => "turn.requires_action",
        TurnStatus::Failed
            if turn
                .error
                .as_ref()
                .is_some_and(|e| e.code == "turn_interrupted") =>
        {
            "turn.interrupted"
        }
        TurnStatus::Failed => "turn.failed",
    }
}

/// The body of a turn-end delivery (Standard Webhooks' `{type, timestamp, data}`).
pub fn payload(turn: &Turn, agent_id: i64, output: &[Message], task_metadata: &Metadata) -> Value {
    json!({
        "type": event_type(turn),
        "timestamp": turn.ended_at,
        "data": {
            "task_id": turn.task_id,
            "turn_id": turn.id,
            "agent_id": agent_id,
            "status": turn.status,
            "error": turn.error,
            "output": output,
            "metadata": turn.metadata,
            "task_metadata": task_metadata,
            "attempt": turn.attempt,
            "started_at": turn.started_at,
            "ended_at": turn.ended_at,
        }
    })
}

/// When failed deliveries are tried again: after each delay in turn (with ±20 %
/// jitter), then the delivery is marked failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
}

impl Default for RetrySchedule {
    /// 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h: eleven attempts
    /// over about a day.
    fn default() -> Self {
        let secs = [5, 30, 120, 600, 1800, 3600, 7200, 14_400, 28_800, 28_800];
        RetrySchedule {
            delays: secs.into_iter().map(Duration::from_secs).collect(),
        }
    }
}

impl RetrySchedule {
    /// The delay before the next attempt after `failed` failed attempts in this
    /// round, or `None` when the schedule is spent.
    pub fn next_delay(&self, failed: u32) -> Option<Duration> {
        let base = *self.delays.get(failed.checked_sub(1)? as usize)?;
        let jitter = rand::random_range(0.8..1.2);
        Some(base.mul_f64(jitter))
    }
}

/// A delivery as the sender gets it from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub id: i64,
    pub webhook_id: String,
    pub endpoint: WebhookEndpoint,
    pub payload: String,
    /// Headers of its own besides the signature's (an A2A push's token and
    /// `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Failed attempts so far in this round (a redelivery starts a round).
    pub failed_in_round: u32,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub delivery_id: i64,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// What becomes of the delivery.
    pub next: NextStep,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    GiveUp,
}

/// A delivery as listed to a client or an operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryView {
    pub delivery_id: i64,
    pub webhook_id: String,
    pub task_id: i64,
    pub turn_id: i64,
    pub event_type: String,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The specification's example: secret, id, timestamp, body and signature.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
        let headers = sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &[secret],
        );
        assert_eq!(
            headers[2].1,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn verify_accepts_what_sign_signs_and_nothing_else() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let other = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCEhISE=";
        let now = Utc::now();
        let body = br#"{"attempt":1}"#;
        let headers = sign("msg_1", now.timestamp(), body, &[secret.to_owned()]);
        assert_eq!(verify(&headers, body, secret, now), Ok(()));
        // Signed with another secret, a changed body, a stale timestamp, no headers.
        let forged = sign("msg_1", now.timestamp(), body, &[other.to_owned()]);
        assert!(verify(&forged, body, secret, now).is_err());
        assert!(verify(&headers, br#"{"attempt":2}"#, secret, now).is_err());
        let stale = sign("msg_1", now.timestamp() - 600, body, &[secret.to_owned()]);
        let why = verify(&stale, body, secret, now).unwrap_err();
        assert!(why.contains("webhook-timestamp"), "{why}");
        assert!(verify(&[], body, secret, now).is_err());
        // Header names are compared without case; one good signature of several is enough.
        let mixed: Vec<(String, String)> = sign(
            "msg_1",
            now.timestamp(),
            body,
            &[other.to_owned(), secret.to_owned()],
        )
        .into_iter()
        .map(|(name, value)| (name.to_uppercase(), value))
        .collect();
        assert_eq!(verify(&mixed, body, secret, now), Ok(()));
    }

    #[test]
    fn several_secrets_give_several_signatures() {
        let (a, b) = (new_secret(), new_secret());
        let one = sign("msg_1", 1, b"{}", std::slice::from_ref(&a));
        let both = sign("msg_1", 1, b"{}", &[a, b]);
        let parts: Vec<&str> = both[2].1.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], one[2].1);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_a_sensible_length() {
        assert!(check_secret(&new_secret()).is_ok());
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_AAAA",
        ] {
            assert!(check_secret(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let policy = DestinationPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(policy.refuses(ip).is_some(), "{ip} must be refused");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(policy.refuses(ip), None, "{ip} is public");
        }
        let allowed = DestinationPolicy {
            allow_http: true,
            allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert_eq!(allowed.refuses("127.0.0.1".parse().unwrap()), None);
        assert!(allowed.refuses("10.0.0.1".parse().unwrap()).is_some());
    }

    #[test]
    fn urls_are_checked_before_anything_is_stored() {
        let policy = DestinationPolicy::default();
        assert!(policy.check_url("https://hooks.example.com/baton").is_ok());
        for (bad, why) in [
            ("http://hooks.example.com/", "https"),
            ("ftp://hooks.example.com/", "https"),
            ("https://user:pw@hooks.example.com/", "credentials"),
            ("https://127.0.0.1/hook", "loopback"),
            ("https://[::1]/hook", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "metadata"),
            ("https://10.0.0.7:8443/", "private"),
            ("not a url", "valid URL"),
        ] {
            let err = policy.check_url(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let dev = DestinationPolicy {
            allow_http: true,
            allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(dev.check_url("http://127.0.0.1:9000/hook").is_ok());
    }

    #[test]
    fn the_schedule_backs_off_with_jitter_and_ends() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.next_delay(0), None, "no failure, no retry");
        let first = schedule.next_delay(1).unwrap();
        assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6));
        let last = schedule.next_delay(10).unwrap();
        assert!(last >= Duration::from_secs(23_000));
        assert_eq!(schedule.next_delay(11), None);
        let total: Duration = schedule.delays.iter().sum();
        assert!(total > Duration::from_secs(20 * 3600) && total < Duration::from_secs(30 * 3600));
    }
}
