//! The engine against a fake upstream (a real axum server on 127.0.0.1:0) and an in-memory
//! ledger: what is held, billed and released for each way a call can end, without a database.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    Endpoint,
    catalog::Catalog,
    serve,
    state::{CreditHold, Ledger, LlmState, UpstreamTimeouts},
};
use crate::{
    accounts::auth::{AuthUser, Role},
    accounts::{rate_limiter::RateLimiter, rate_limits::RateLimits},
    billing::{HoldError, Settlement},
    gpu::fleet::Fleet,
    http::error::{ApiError, Outcome},
    http::{RequestContext, RequestLimits},
    telemetry::RequestId,
};

/// A user's credit in memory: what is available, what is held by calls in flight, what was billed.
#[derive(Clone, Default)]
struct FakeLedger(Arc<Books>);

#[derive(Default)]
struct Books {
    state: Mutex<Account>,
    settled: Notify,
}

#[derive(Default)]
struct Account {
    credit: Decimal,
    held: Decimal,
    holds: usize,
    settlements: Vec<Settlement>,
}

struct FakeHold {
    books: Arc<Books>,
    amount: Decimal,
    settled: bool,
}

impl FakeLedger {
    fn with_credit(credit: Decimal) -> Self {
        let ledger = Self::default();
        ledger.0.state.lock().unwrap().credit = credit;
        ledger
    }

    fn held(&self) -> Decimal {
        self.0.state.lock().unwrap().held
    }

    fn holds(&self) -> usize {
        self.0.state.lock().unwrap().holds
    }

    fn settlements(&self) -> Vec<Settlement> {
        self.0.state.lock().unwrap().settlements.clone()
    }

    /// The settlements once `n` are there (a stream settles after its last event is sent).
    async fn settled(&self, n: usize) -> Vec<Settlement> {
        let wait = async {
            loop {
                let notified = self.0.settled.notified();
                if self.settlements().len() >= n {
                    return self.settlements();
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.expect("the call settles")
    }
}

impl Ledger for FakeLedger {
    type Hold = FakeHold;

    fn hold(&self, _user: Uuid, amount: Decimal) -> impl Future<Output = Result<FakeHold, HoldError>> + Send {
        let books = self.0.clone();
        async move {
            let mut account = books.state.lock().unwrap();
            let available = account.credit - account.held;
            if amount > available {
                return Err(HoldError::Insufficient { needed: amount, available });
            }
            account.held += amount;
            account.holds += 1;
            drop(account);
            Ok(FakeHold { books, amount, settled: false })
        }
    }
}

impl CreditHold for FakeHold {
    fn settle(mut self, settlement: Settlement) {
        self.settled = true;
        let mut account = self.books.state.lock().unwrap();
        account.held -= self.amount;
        account.credit -= settlement.cost_usd;
        account.settlements.push(settlement);
        drop(account);
        self.books.settled.notify_waiters();
    }
}

impl Drop for FakeHold {
    fn drop(&mut self) {
        if !self.settled {
            self.books.state.lock().unwrap().held -= self.amount;
        }
    }
}

/// How the fake upstream answers `POST /v1/chat/completions`.
#[derive(Clone, Copy)]
enum Upstream {
    /// One JSON answer reporting 11 prompt and 7 completion tokens.
    Answers,
    /// A 500 with an error body.
    Fails,
    /// Nothing for longer than any test waits.
    Hangs,
    /// An SSE stream of two text chunks, a usage chunk (5 prompt, 3 completion tokens), `[DONE]`.
    Streams,
}

const STREAM: &str = concat!(
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hel\"}}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n",
    "data: [DONE]\n\n",
);

async fn upstream_answer(mode: Upstream) -> Response {
    match mode {
        Upstream::Answers => axum::Json(json!({
            "id": "c1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }))
        .into_response(),
        Upstream::Fails => {
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "boom"}}))).into_response()
        }
        Upstream::Hangs => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        Upstream::Streams => ([(header::CONTENT_TYPE, "text/event-stream")], Body::from(STREAM)).into_response(),
    }
}

/// A fake upstream on a port of its own; returns its base URL and its request count.
async fn spawn_upstream(mode: Upstream) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            upstream_answer(mode)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), hits)
}

/// The engine over a fake upstream answering as `mode` and a ledger holding `credit` USD; the
/// upstream's request count comes back with them.
async fn engine(
    mode: Upstream,
    credit: &str,
    request_timeout: Duration,
) -> (LlmState<FakeLedger>, FakeLedger, Arc<AtomicUsize>) {
    let (upstream, hits) = spawn_upstream(mode).await;
    let toml = format!(
        "[[models]]\nname = \"m\"\nupstream = \"{upstream}\"\ninput_usd_per_mtok = 1000\noutput_usd_per_mtok = 2000\n\
         max_output_tokens = 100\n"
    );
    let ledger = FakeLedger::with_credit(usd(credit));
    let state = LlmState {
        catalog: Arc::new(Catalog::parse(&toml, |_| None).unwrap()),
        http: reqwest::Client::new(),
        upstream: UpstreamTimeouts { request: request_timeout, stream_idle: request_timeout },
        ledger: ledger.clone(),
        limiter: RateLimiter::new(None, 1),
        fleet: Arc::new(Fleet::default()),
    };
    (state, ledger, hits)
}

fn user() -> AuthUser {
    AuthUser {
        user_id: Uuid::new_v4(),
        role: Role::User,
        key_id: Uuid::new_v4(),
        key_limits: RateLimits::default(),
        user_limits: RateLimits::default(),
    }
}

fn context() -> RequestContext {
    RequestContext {
        request_id: RequestId::generate(),
        user: Default::default(),
        limits: RequestLimits::DEFAULT,
        rate_limit: Default::default(),
    }
}

async fn call(state: &LlmState<FakeLedger>, stream: bool) -> Result<Response, ApiError> {
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": stream});
    let body: Map<String, Value> = body.as_object().unwrap().clone();
    serve(state, user(), body, Endpoint::ChatCompletions, &context(), &HeaderMap::new()).await
}

async fn body_of(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn usd(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_served_call_settles_once_at_the_reported_usage() {
    let (state, ledger, hits) = engine(Upstream::Answers, "1", Duration::from_secs(10)).await;

    let response = call(&state, false).await.expect("the call is served");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = serde_json::from_str(&body_of(response).await).unwrap();

    let settled = ledger.settlements();
    assert_eq!(settled.len(), 1, "billed exactly once");
    let s = &settled[0];
    assert_eq!((s.input_tokens, s.output_tokens, s.estimated), (11, 7, false));
    // 11 × 1000 / 1e6 + 7 × 2000 / 1e6
    assert_eq!(s.cost_usd, usd("0.025"));
    assert!(s.flags.is_empty());
    assert_eq!(answer["usage"]["cost_usd"], "0.025");
    assert_eq!(answer["model"], "m");
    assert_eq!((ledger.holds(), ledger.held()), (1, Decimal::ZERO), "the hold is settled, not kept");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_5xx_releases_the_hold_and_bills_nothing() {
    let (state, ledger, hits) = engine(Upstream::Fails, "1", Duration::from_secs(10)).await;

    let error = call(&state, false).await.expect_err("the upstream failed");
    assert!(matches!(error, ApiError::UpstreamError { upstream_status: 500 }), "{error:?}");
    assert_eq!(error.status_code(), StatusCode::BAD_GATEWAY);
    assert_eq!(error.outcome().call_status(), "upstream_error");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(ledger.holds(), 1, "the call was held before it was sent");
    assert_eq!(ledger.held(), Decimal::ZERO, "the hold is released");
    assert!(ledger.settlements().is_empty(), "nothing is billed");
}

#[tokio::test]
async fn an_upstream_timeout_releases_the_hold_and_bills_nothing() {
    let (state, ledger, hits) = engine(Upstream::Hangs, "1", Duration::from_millis(300)).await;

    for stream in [false, true] {
        let error = call(&state, stream).await.expect_err("the upstream never answers");
        assert!(matches!(error, ApiError::UpstreamTimeout), "{error:?}");
        assert_eq!(error.status_code(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(error.outcome(), Outcome::UpstreamTimeout);
        assert_eq!(error.outcome().call_status(), "timeout");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!((ledger.holds(), ledger.held()), (2, Decimal::ZERO), "both holds are released");
    assert!(ledger.settlements().is_empty(), "nothing is billed");
}

#[tokio::test]
async fn a_stream_is_settled_from_its_final_usage_event() {
    let (state, ledger, _) = engine(Upstream::Streams, "1", Duration::from_secs(10)).await;

    let response = call(&state, true).await.expect("the stream is served");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let events = body_of(response).await;
    assert!(
        events.contains("\"hel\"") && events.contains("\"lo\"") && events.ends_with("data: [DONE]\n\n"),
        "{events}"
    );
    // 5 × 1000 / 1e6 + 3 × 2000 / 1e6, written into the usage chunk the client sees.
    assert!(events.contains("\"cost_usd\":\"0.011\""), "{events}");

    let settled = ledger.settled(1).await;
    assert_eq!(settled.len(), 1);
    let s = &settled[0];
    assert_eq!(
        (s.input_tokens, s.output_tokens, s.estimated),
        (5, 3, false),
        "the usage event's counts, not an estimate"
    );
    assert_eq!(s.cost_usd, usd("0.011"));
    assert_eq!(ledger.held(), Decimal::ZERO);
}

#[tokio::test]
async fn an_insufficient_credit_hold_refuses_before_any_upstream_request() {
    // The worst case is about (prompt bound × 1000 + 50 × 2000) / 1e6 USD: far above this.
    let (state, ledger, hits) = engine(Upstream::Answers, "0.001", Duration::from_secs(10)).await;

    for stream in [false, true] {
        let error = call(&state, stream).await.expect_err("the hold does not fit");
        let ApiError::InsufficientCredits { needed, available, cap, .. } = &error else { panic!("{error:?}") };
        assert_eq!((*available, *cap), (usd("0.001"), 50));
        assert!(*needed > *available);
        assert_eq!(error.status_code(), StatusCode::PAYMENT_REQUIRED);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the upstream");
    assert_eq!((ledger.holds(), ledger.held()), (0, Decimal::ZERO));
    assert!(ledger.settlements().is_empty());
}
