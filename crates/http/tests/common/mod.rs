//! The test harness shared by the HTTP tests: a real actix server on a free port, a
//! real SQLite file, the echo runner.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_domain::*;
use baton_http::cors::CorsOptions;
use baton_http::{ApiState, ServerOptions, Shutdown, serve};
use baton_persistence::{SqlStore, StoreOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A reqwest client for the tests.
pub fn client() -> reqwest::Client {
    baton_test_support::init_tls();
    reqwest::Client::new()
}

/// The admin token in these tests.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// The server's webhook signing secret in these tests.
pub const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub admin: AdminService,
    /// An echo agent that replies at once, and a key for it.
    pub agent: i64,
    pub token: String,
    _dir: tempfile::TempDir,
    _server: actix_web::dev::ServerHandle,
    /// This process's hub of task changes.
    pub hub: LocalNotifier,
    pub store: Arc<SqlStore>,
    /// The server's graceful-stop signals.
    pub shutdown: Shutdown,
    pub tasks: TaskService,
}

impl TestApp {
    pub async fn start() -> TestApp {
        TestApp::with(
            baton_http::DEFAULT_BODY_LIMIT,
            baton_http::sse::SseOptions::default(),
        )
        .await
    }

    pub async fn with_body_limit(body_limit: usize) -> TestApp {
        TestApp::with(body_limit, baton_http::sse::SseOptions::default()).await
    }

    pub async fn with(body_limit: usize, sse: baton_http::sse::SseOptions) -> TestApp {
        TestApp::with_limits(
            body_limit,
            sse,
            baton_http::limits::RequestLimits::default(),
            SubmitLimits::default(),
        )
        .await
    }

    pub async fn with_limits(
        body_limit: usize,
        sse: baton_http::sse::SseOptions,
        limits: baton_http::limits::RequestLimits,
        submit: SubmitLimits,
    ) -> TestApp {
        TestApp::with_all(body_limit, sse, limits, submit, CorsOptions::default()).await
    }

    /// With these CORS options, and the rest as [`TestApp::start`]'s.
    pub async fn with_cors(cors: CorsOptions) -> TestApp {
        TestApp::with_all(
            baton_http::DEFAULT_BODY_LIMIT,
            baton_http::sse::SseOptions::default(),
            baton_http::limits::RequestLimits::default(),
            SubmitLimits::default(),
            cors,
        )
        .await
    }

    async fn with_all(
        body_limit: usize,
        sse: baton_http::sse::SseOptions,
        limits: baton_http::limits::RequestLimits,
        submit: SubmitLimits,
        cors: CorsOptions,
    ) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("baton.db").display());
        let (store, _) = SqlStore::open(&url, StoreOptions::default()).await.unwrap();
        let store = Arc::new(store);
        let hub = LocalNotifier::default();
        let executor = TurnExecutor::new(
            store.clone(),
            store.clone(),
            baton_runners::builtin(client()),
            Arc::new(hub.clone()),
            Arc::new(SystemClock),
            ExecutorConfig::default(),
            tokio::runtime::Handle::current(),
        );
        let tasks = TaskService::new(store.clone(), store.clone(), executor.clone(), hub.clone())
            .with_idempotency(IdempotencyConfig {
                in_flight_wait: Duration::from_secs(5),
                ..IdempotencyConfig::default()
            })
            .with_limits(submit)
            .with_webhooks(
                WebhookSettings {
                    destinations: DestinationPolicy::default(),
                    signing_secrets: vec![SIGNING_SECRET.to_owned()],
                },
                store.clone(),
            );
        let admin = AdminService::new(store.clone(), executor)
            .with_webhooks(DestinationPolicy::default(), store.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::default();
        let server = serve(
            listener,
            ApiState {
                tasks: tasks.clone(),
                body_limit,
                sse,
                shutdown: shutdown.clone(),
                metrics: None,
                limits: limits.clone(),
                admin: Some(baton_http::admin::AdminApi::new(admin.clone(), ADMIN_TOKEN)),
                cors,
                console: true,
            },
            ServerOptions {
                workers: 2,
                ..ServerOptions::default()
            },
        )
        .unwrap();
        let handle = server.handle();
        tokio::spawn(server);
        let mut app = TestApp {
            base,
            http: client(),
            admin,
            agent: 0,
            token: String::new(),
            _dir: dir,
            _server: handle,
            hub,
            store,
            shutdown,
            tasks,
        };
        let (agent, token) = app.agent_with_key(json!({})).await;
        app.agent = agent;
        app.token = token;
        app
    }

    /// A new echo agent with this runner config, and a key for it.
    pub async fn agent_with_key(&self, config: Value) -> (i64, String) {
        self.agent_with_policy(config, TurnPolicy::default()).await
    }

    /// As [`TestApp::agent_with_key`], with a turn policy.
    pub async fn agent_with_policy(&self, config: Value, policy: TurnPolicy) -> (i64, String) {
        let agent = self
            .admin
            .create_agent(
                "echo",
                RunnerSpec {
                    kind: "echo".into(),
                    config,
                },
                policy,
                None,
                None,
            )
            .await
            .unwrap();
        let key = self.admin.create_key(agent.id).await.unwrap();
        (agent.id.0, key.token)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(
        &self,
        token: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    /// A POST that must be refused with this status and error code, in the
    /// envelope (see [`assert_envelope`]); returns the envelope.
    pub async fn refused_post(
        &self,
        token: &str,
        path: &str,
        body: Value,
        status: StatusCode,
        code: &str,
    ) -> Value {
        let (got, headers, envelope) = self.post(token, path, body).await;
        assert_envelope(got, &headers, &envelope, status, code);
        envelope
    }

    /// A POST with extra headers (an `Idempotency-Key`, say).
    pub async fn post_with(
        &self,
        token: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.get_full(token, path).await;
        (status, body)
    }

    /// A GET with its headers, for checking envelopes.
    pub async fn get_full(
        &self,
        token: &str,
        path: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub async fn create(&self, token: &str, agent: i64, text: &str) -> Value {
        let (status, _, body) = self
            .post(
                token,
                "/v1/chat/tasks",
                json!({"agent_id": agent, "message": {"role": "user", "content": text}}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// Creates a task and returns its id.
    pub async fn create_task(&self, token: &str, agent: i64, text: &str) -> i64 {
        let body = self.create(token, agent, text).await;
        body["task_id"].as_i64().unwrap()
    }

    /// Polls the task until its status leaves `running`.
    pub async fn settled(&self, token: &str, task: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(token, &format!("/v1/chat/tasks/{task}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["status"] != "running" {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "task {task} still running after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
    };
    (status, headers, body)
}

/// Asserts an error envelope with this status and code whose request id is the
/// response header's.
pub fn assert_envelope(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    want: StatusCode,
    code: &str,
) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let header = headers
        .get("x-request-id")
        .expect("every response has a request id");
    assert_eq!(
        body["error"]["request_id"],
        header.to_str().unwrap(),
        "{body}"
    );
}
