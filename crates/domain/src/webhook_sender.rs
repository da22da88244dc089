//! The webhook sender: claims due deliveries from the outbox, signs and sends them, and
//! records each attempt with what comes next (delivered, retried later, given up).
//! Every instance runs one; claims keep them from sending the same delivery at once,
//! and a claim that runs out (its sender died mid-send) makes the delivery due again,
//! so a delivery is sent at least once and never lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::ports::{Clock, WebhookStore, WebhookTransport};
use crate::webhooks::{AttemptResult, DueDelivery, NextStep, RetrySchedule, sign};

#[derive(Debug, Clone, PartialEq)]
pub struct SenderConfig {
    /// How often the outbox is checked for due deliveries.
    pub poll_interval: Duration,
    /// How long a claim lasts: longer than a send can take (the transport's timeout),
    /// so that only a dead sender's claims run out.
    pub claim_for: Duration,
    /// Deliveries sent at once by this instance.
    pub concurrency: u32,
    pub schedule: RetrySchedule,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            poll_interval: Duration::from_secs(1),
            claim_for: Duration::from_secs(60),
            concurrency: 16,
            schedule: RetrySchedule::default(),
        }
    }
}

#[derive(Clone)]
pub struct WebhookSender {
    store: Arc<dyn WebhookStore>,
    transport: Arc<dyn WebhookTransport>,
    clock: Arc<dyn Clock>,
    config: SenderConfig,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        transport: Arc<dyn WebhookTransport>,
        clock: Arc<dyn Clock>,
        config: SenderConfig,
    ) -> Self {
        WebhookSender {
            store,
            transport,
            clock,
            config,
        }
    }

    /// Sends due deliveries every poll interval until the handle is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.config.poll_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // A full batch may hide more behind it: go on at once.
                while let Ok(sent) = self.send_due().await {
                    if sent < self.config.concurrency as usize {
                        break;
                    }
                }
            }
        })
    }

    /// Claims and sends one batch of due deliveries; returns how many were sent.
    pub async fn send_due(&self) -> Result<usize, crate::error::StoreError> {
        let now = self.clock.now();
        let until = now
            + chrono::Duration::from_std(self.config.claim_for)
                .unwrap_or(chrono::Duration::seconds(60));
        let due = match self
            .store
            .claim_deliveries(now, until, self.config.concurrency)
            .await
        {
            Ok(due) => due,
            Err(err) => {
                warn!(error = %err, "could not read the webhook outbox");
                return Err(err);
            }
        };
        let count = due.len();
        let mut sending = JoinSet::new();
        for delivery in due {
            let sender = self.clone();
            sending.spawn(async move { sender.send(delivery).await });
        }
        while sending.join_next().await.is_some() {}
        Ok(count)
    }

    async fn send(&self, delivery: DueDelivery) {
        let started_at = self.clock.now();
        let mut all_headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        // An A2A push with neither an agent's nor the server's secret goes unsigned:
        // its own token and `Authorization` are what its receiver checks.
        if !delivery.endpoint.secrets.is_empty() {
            all_headers.extend(sign(
                &delivery.webhook_id,
                started_at.timestamp(),
                delivery.payload.as_bytes(),
                &delivery.endpoint.secrets,
            ));
        }
        all_headers.extend(delivery.headers.iter().cloned());
        let clock = Instant::now();
        let result = self
            .transport
            .post(
                &delivery.endpoint.url,
                all_headers,
                delivery.payload.clone().into_bytes(),
            )
            .await;
        let latency_ms = clock.elapsed().as_millis() as u64;
        let (status_code, error) = match result {
            Ok(code) if (200..300).contains(&code) => (Some(code), None),
            Ok(code) => (Some(code), Some(format!("the receiver answered {code}"))),
            Err(why) => (None, Some(why)),
        };
        let next = if error.is_none() {
            NextStep::Delivered
        } else {
            match self
                .config
                .schedule
                .next_delay(delivery.failed_in_round + 1)
            {
                Some(delay) => NextStep::RetryAt(
                    self.clock.now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
                ),
                None => NextStep::GiveUp,
            }
        };
        crate::telemetry::webhook_attempt(match &next {
            NextStep::Delivered => "delivered",
            NextStep::RetryAt(_) => "retry",
            NextStep::GiveUp => "failed",
        });
        match &next {
            NextStep::Delivered => {
                debug!(webhook_id = %delivery.webhook_id, latency_ms, "webhook delivered")
            }
            NextStep::RetryAt(at) => {
                info!(webhook_id = %delivery.webhook_id, error = ?error, retry_at = %at, "webhook attempt failed")
            }
            NextStep::GiveUp => {
                warn!(webhook_id = %delivery.webhook_id, error = ?error, "webhook delivery failed for good")
            }
        }
        let attempt = AttemptResult {
            delivery_id: delivery.id,
            started_at,
            status_code,
            latency_ms,
            error,
            next,
        };
        if let Err(err) = self.store.record_attempt(attempt).await {
            // The claim runs out and the delivery is sent again: at least once.
            warn!(webhook_id = %delivery.webhook_id, error = %err, "could not record a webhook attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockClock, MockWebhookStore, MockWebhookTransport};
    use crate::webhooks::{WebhookEndpoint, new_secret};
    use chrono::TimeZone;

    fn due(id: i64, failed: u32) -> DueDelivery {
        DueDelivery {
            id,
            webhook_id: format!("msg_{id}"),
            endpoint: WebhookEndpoint {
                url: "https://hooks.example.com/".into(),
                secrets: vec![new_secret()],
            },
            payload: r#"{"type":"turn.completed"}"#.into(),
            headers: Vec::new(),
            failed_in_round: failed,
        }
    }

    fn sender(
        store: MockWebhookStore,
        transport: MockWebhookTransport,
        schedule: RetrySchedule,
    ) -> WebhookSender {
        let mut clock = MockClock::new();
        clock
            .expect_now()
            .returning(|| chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap());
        WebhookSender::new(
            Arc::new(store),
            Arc::new(transport),
            Arc::new(clock),
            SenderConfig {
                schedule,
                ..SenderConfig::default()
            },
        )
    }

    #[tokio::test]
    async fn each_attempt_is_signed_recorded_and_scheduled_by_its_outcome() {
        let mut store = MockWebhookStore::new();
        store
            .expect_claim_deliveries()
            .times(1)
            .returning(|_, _, _| Ok(vec![due(1, 0), due(2, 0), due(3, 1), due(4, 0)]));
        let (tx, mut recorded) = tokio::sync::mpsc::unbounded_channel();
        store.expect_record_attempt().returning(move |attempt| {
            tx.send(attempt).unwrap();
            Ok(true)
        });
        let mut transport = MockWebhookTransport::new();
        transport.expect_post().returning(|_, headers, body| {
            let id = &headers.iter().find(|(k, _)| k == "webhook-id").unwrap().1;
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| k == "webhook-signature" && v.starts_with("v1,"))
            );
            assert_eq!(body, br#"{"type":"turn.completed"}"#);
            match id.as_str() {
                "msg_1" => Ok(204),
                "msg_2" => Ok(500),
                "msg_3" => Err("connection refused".into()),
                _ => Ok(302),
            }
        });
        let schedule = RetrySchedule {
            delays: vec![Duration::from_secs(10)],
        };
        assert_eq!(
            sender(store, transport, schedule).send_due().await.unwrap(),
            4
        );
        let mut attempts = Vec::new();
        while let Ok(attempt) = recorded.try_recv() {
            attempts.push(attempt);
        }
        attempts.sort_by_key(|a| a.delivery_id);
        assert_eq!(attempts[0].next, NextStep::Delivered);
        assert_eq!(
            (attempts[0].status_code, &attempts[0].error),
            (Some(204), &None)
        );
        assert!(
            matches!(attempts[1].next, NextStep::RetryAt(_)),
            "a 500 is retried"
        );
        assert_eq!(
            attempts[2].next,
            NextStep::GiveUp,
            "the second failure of a one-step schedule gives up"
        );
        assert_eq!(attempts[2].error.as_deref(), Some("connection refused"));
        assert!(
            matches!(attempts[3].next, NextStep::RetryAt(_)),
            "a redirect is not followed: a failure"
        );
    }

    #[tokio::test]
    async fn a_push_carries_its_own_headers_and_goes_unsigned_without_secrets() {
        let unsigned = DueDelivery {
            endpoint: WebhookEndpoint {
                url: "https://client.example/push".into(),
                secrets: Vec::new(),
            },
            headers: vec![
                ("x-a2a-notification-token".into(), "tok".into()),
                ("authorization".into(), "Bearer cred".into()),
            ],
            ..due(1, 0)
        };
        let mut store = MockWebhookStore::new();
        store
            .expect_claim_deliveries()
            .returning(move |_, _, _| Ok(vec![unsigned.clone()]));
        store.expect_record_attempt().returning(|_| Ok(true));
        let (tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
        let mut transport = MockWebhookTransport::new();
        transport.expect_post().returning(move |_, headers, _| {
            tx.send(headers).unwrap();
            Ok(200)
        });
        let schedule = RetrySchedule::default();
        sender(store, transport, schedule).send_due().await.unwrap();
        let headers = sent.try_recv().unwrap();
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "x-a2a-notification-token", "authorization"],
            "no webhook-id, -timestamp or -signature without a secret"
        );
    }
}
