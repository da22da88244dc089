//! Stream tokens: a browser's `EventSource` cannot send an `Authorization` header, so
//! a client that holds a key mints a short-lived token for one task's stream and puts
//! it in the stream's URL instead of the key.
//!
//! A token names the key it was minted with and carries an HMAC-SHA256 made with that
//! key's stored hash, so any instance can check it with the key it already looks up
//! (nothing is stored per token), and revoking the key voids its tokens at once. A
//! token opens one task's stream until it expires; it is not a key: it opens no other
//! route and no other task. (Whoever can read the keys' hashes from the database can
//! mint tokens; they can read the events themselves there too.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use crate::error::StreamTokenRefusal;
use crate::model::{AgentId, ApiKey, TaskId};

/// How long a minted token can open its stream. A stream open when it expires goes on;
/// reopening after that needs a new token.
pub const STREAM_TOKEN_TTL: TimeDelta = TimeDelta::minutes(5);

/// Marks the token's form (and its version).
const FORM: &str = "bts1";

/// What a token claims, as read from its text (not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamClaims {
    pub agent_id: AgentId,
    /// The prefix of the key it was minted with.
    pub key_prefix: String,
    pub task_id: TaskId,
    pub expires_at: DateTime<Utc>,
    mac: Vec<u8>,
}

fn signed_text(agent: AgentId, prefix: &str, task: TaskId, expires: i64) -> String {
    format!("{FORM}.{}.{prefix}.{}.{expires}", agent.0, task.0)
}

fn mac(key: &ApiKey, text: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.secret_hash.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(text.as_bytes());
    mac
}

/// A token for `task`'s stream, made with `key` at `now`, and when it expires: after
/// [`STREAM_TOKEN_TTL`], in whole seconds (the token carries its expiry in seconds).
pub fn mint(key: &ApiKey, task: TaskId, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
    let expires_at = (now + STREAM_TOKEN_TTL).trunc_subsecs(0);
    let text = signed_text(key.agent_id, &key.prefix, task, expires_at.timestamp());
    let tag = mac(key, &text).finalize().into_bytes();
    (
        format!("{text}.{}", URL_SAFE_NO_PAD.encode(tag)),
        expires_at,
    )
}

/// Reads a token's claims; nothing is checked but its form.
pub fn read(token: &str) -> Result<StreamClaims, StreamTokenRefusal> {
    let mut parts = token.split('.');
    let mut next = || parts.next().ok_or(StreamTokenRefusal::Malformed);
    let form = next()?;
    let (agent, prefix, task, expires, tag) = (next()?, next()?, next()?, next()?, next()?);
    let number = |raw: &str| {
        raw.parse::<i64>()
            .map_err(|_| StreamTokenRefusal::Malformed)
    };
    let claims = StreamClaims {
        agent_id: AgentId(number(agent)?),
        key_prefix: prefix.to_owned(),
        task_id: TaskId(number(task)?),
        expires_at: DateTime::from_timestamp(number(expires)?, 0)
            .ok_or(StreamTokenRefusal::Malformed)?,
        mac: URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| StreamTokenRefusal::Malformed)?,
    };
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if form != FORM || parts.next().is_some() || !plain(prefix) {
        return Err(StreamTokenRefusal::Malformed);
    }
    Ok(claims)
}

impl StreamClaims {
    /// Whether the token opens `task`'s stream at `now`, `key` being the key it names
    /// (`None`: no such key); the key it stands for if it does.
    pub fn check<'k>(
        &self,
        task: TaskId,
        key: Option<&'k ApiKey>,
        now: DateTime<Utc>,
    ) -> Result<&'k ApiKey, StreamTokenRefusal> {
        let key = key
            .filter(|key| key.revoked_at.is_none() && key.agent_id == self.agent_id)
            .ok_or(StreamTokenRefusal::BadKey)?;
        let text = signed_text(
            self.agent_id,
            &self.key_prefix,
            self.task_id,
            self.expires_at.timestamp(),
        );
        // Constant-time comparison.
        mac(key, &text)
            .verify_slice(&self.mac)
            .map_err(|_| StreamTokenRefusal::BadKey)?;
        if self.task_id != task {
            return Err(StreamTokenRefusal::OtherTask);
        }
        if now >= self.expires_at {
            return Err(StreamTokenRefusal::Expired);
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ApiKeyId;

    fn key(prefix: &str, hash: &str) -> ApiKey {
        ApiKey {
            id: ApiKeyId(7),
            agent_id: AgentId(3),
            prefix: prefix.into(),
            secret_hash: hash.into(),
            created_at: Utc::now(),
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn a_token_opens_its_task_until_it_expires_and_nothing_else() {
        let key = key("abcd1234", "hash-of-the-key");
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let (token, expires) = mint(&key, TaskId(42), now);
        assert_eq!(expires, now + chrono::Duration::minutes(5));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "a token needs no escaping in a URL: {token}"
        );
        let claims = read(&token).unwrap();
        assert_eq!(claims.task_id, TaskId(42));
        assert_eq!(claims.key_prefix, "abcd1234");
        assert_eq!(claims.check(TaskId(42), Some(&key), now), Ok(&key));
        assert_eq!(
            claims.check(TaskId(43), Some(&key), now),
            Err(StreamTokenRefusal::OtherTask)
        );
        assert_eq!(
            claims.check(TaskId(42), Some(&key), expires),
            Err(StreamTokenRefusal::Expired)
        );
        let revoked = ApiKey {
            revoked_at: Some(now),
            ..key.clone()
        };
        assert_eq!(
            claims.check(TaskId(42), Some(&revoked), now),
            Err(StreamTokenRefusal::BadKey)
        );
        assert_eq!(
            claims.check(TaskId(42), None, now),
            Err(StreamTokenRefusal::BadKey)
        );
        // Another key (same prefix, another secret) did not make it.
        let other = self::key("abcd1234", "hash-of-another-key");
        assert_eq!(
            claims.check(TaskId(42), Some(&other), now),
            Err(StreamTokenRefusal::BadKey)
        );
    }

    #[test]
    fn changing_any_claim_voids_the_token() {
        let key = key("abcd1234", "hash-of-the-key");
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let (token, _) = mint(&key, TaskId(42), now);
        let parts: Vec<&str> = token.split('.').collect();
        for (index, forged) in [(3, "43"), (4, "1900000000"), (1, "4")] {
            let mut changed = parts.clone();
            changed[index] = forged;
            let forged = changed.join(".");
            let claims = read(&forged).unwrap();
            assert_eq!(
                claims.check(claims.task_id, Some(&key), now),
                Err(StreamTokenRefusal::BadKey),
                "{forged}"
            );
        }
        for garbage in [
            "",
            "bts1",
            "bt_abcdefgh_secret",
            &format!("{token}.extra"),
            &token.replacen("bts1", "bts2", 1),
            &token.replacen("abcd1234", "abcd/234", 1),
            &token[..token.len() - 1].replace('.', ","),
        ] {
            assert_eq!(
                read(garbage),
                Err(StreamTokenRefusal::Malformed),
                "{garbage}"
            );
        }
    }
}
