//! HTTP plumbing shared by registry requests and token requests: the time
//! limit of every network step (connecting, waiting for response headers,
//! waiting for the next bytes of a body), bounded reads of response bodies,
//! and error answers turned into readable text.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// Chunks of a blob as they arrive from the network, produced by `registry`
/// and consumed by `layer`; errors in it wrap an [`crate::Error`].
pub(crate) type BlobStream =
    Pin<Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// How long a TCP connection may take to be established by default (as
/// containerd's dialer).
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take by default.
pub(crate) const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for its response headers by default.
pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a body may go without a byte by default.
pub(crate) const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The limit of each network step; `None` turns one off (only ever on the
/// caller's explicit request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub connect: Option<Duration>,
    pub tls_handshake: Option<Duration>,
    pub response: Option<Duration>,
    pub stall: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Some(DEFAULT_CONNECT_TIMEOUT),
            tls_handshake: Some(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            response: Some(DEFAULT_RESPONSE_TIMEOUT),
            stall: Some(DEFAULT_STALL_TIMEOUT),
        }
    }
}

impl Timeouts {
    /// The connector layer that bounds connection setup for a client.
    pub(crate) fn connect_limit(&self) -> ConnectLimit {
        ConnectLimit {
            connect: self.connect,
            tls_handshake: self.tls_handshake,
        }
    }
}

/// Bounds the setup of each new connection, a `reqwest` connector layer.
/// reqwest (with rustls) makes the TCP connection and the TLS handshake
/// in one connector call that offers no hook in between, so the two cannot
/// be timed apart: a plain HTTP connection gets `connect`, an HTTPS one the
/// sum `connect + tls_handshake` for both steps together (through a proxy:
/// reaching the proxy, the tunnel and the handshake), and turning either
/// limit off leaves an HTTPS connection's setup unbounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectLimit {
    connect: Option<Duration>,
    tls_handshake: Option<Duration>,
}

impl ConnectLimit {
    fn limit(&self, tls: bool) -> Option<Duration> {
        match tls {
            false => self.connect,
            // A sum past what time can hold is no limit at all.
            true => self.connect?.checked_add(self.tls_handshake?),
        }
    }
}

impl<S> tower_layer::Layer<S> for ConnectLimit {
    type Service = ConnectLimited<S>;

    fn layer(&self, inner: S) -> ConnectLimited<S> {
        ConnectLimited {
            inner,
            limit: *self,
        }
    }
}

/// A connector whose connections are set up within their [`ConnectLimit`].
#[derive(Clone)]
pub(crate) struct ConnectLimited<S> {
    inner: S,
    limit: ConnectLimit,
}

impl<S, R> tower_service::Service<R> for ConnectLimited<S>
where
    S: tower_service::Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The request being sent, when the connection is set up for one of
        // ours (hyper starts it from the request's task): whether it needs
        // TLS, and a clock that holds off its wait for response headers.
        let clock = REQUEST.try_with(Arc::clone).ok();
        let tls = clock.as_ref().is_none_or(|clock| clock.tls);
        let setting_up = clock.map(SettingUp::start);
        let limit = self.limit;
        let connecting = self.inner.call(request);
        Box::pin(async move {
            let _setting_up = setting_up;
            let Some(within) = limit.limit(tls) else {
                return connecting.await.map_err(Into::into);
            };
            match tokio::time::timeout(within, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut { limit, tls }) as BoxError),
            }
        })
    }
}

/// A connection not set up within its [`ConnectLimit`].
#[derive(Debug)]
struct ConnectTimedOut {
    limit: ConnectLimit,
    tls: bool,
}

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ConnectLimit {
            connect,
            tls_handshake,
        } = self.limit;
        match (self.tls, connect, tls_handshake) {
            (true, Some(connect), Some(tls)) => write!(
                f,
                "TCP connect and TLS handshake not done within {:?} \
                 (connect_timeout {connect:?} + tls_handshake_timeout {tls:?})",
                connect.saturating_add(tls)
            ),
            (_, Some(connect), _) => {
                write!(f, "not connected within {connect:?} (connect_timeout)")
            }
            _ => f.write_str("not connected in time"),
        }
    }
}

impl std::error::Error for ConnectTimedOut {}

tokio::task_local! {
    static REQUEST: Arc<RequestClock>;
}

/// What the connector and the sender of one request share: whether the
/// request needs TLS, and whether a connection is being set up for it,
/// whose time does not count against the wait for response headers.
struct RequestClock {
    tls: bool,
    state: Mutex<ClockState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct ClockState {
    setting_up: usize,
    last_set_up: Option<Instant>,
}

impl RequestClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes once `limit` has passed without an answer, counted from
    /// `started` or from the end of the last connection set up for the
    /// request; never while one is being set up (that has its own limit).
    async fn headers_overdue(&self, started: Instant, limit: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let since = {
                let state = self.state();
                (state.setting_up == 0)
                    .then(|| state.last_set_up.map_or(started, |at| at.max(started)))
            };
            // A limit too far off to add up is never reached.
            match since.map(|since| since.checked_add(limit)) {
                None | Some(None) => changed.await,
                Some(Some(overdue)) if Instant::now() >= overdue => return,
                Some(Some(overdue)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(overdue) => {}
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// Marks a connection being set up for a request, until dropped.
struct SettingUp(Arc<RequestClock>);

impl SettingUp {
    fn start(clock: Arc<RequestClock>) -> SettingUp {
        clock.state().setting_up += 1;
        clock.changed.notify_waiters();
        SettingUp(clock)
    }
}

impl Drop for SettingUp {
    fn drop(&mut self) {
        {
            let mut state = self.0.state();
            state.setting_up -= 1;
            state.last_set_up = Some(Instant::now());
        }
        self.0.changed.notify_waiters();
    }
}

/// The limits on one call's waits for answers and their bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The longest wait for response headers once connected.
    pub response: Option<Duration>,
    /// The longest wait for a response or for the next bytes of one.
    pub stall: Option<Duration>,
}

/// A request that got no answer.
pub(crate) enum SendError {
    /// The connection, TLS or a redirect failed.
    Transport(reqwest::Error),
    /// A step took longer than its limit; the message names the host and
    /// the step. `connecting`: the connection was not set up in time,
    /// which may be transient.
    TimedOut { message: String, connecting: bool },
}

impl Limits {
    /// The bound on waiting for headers: the response timeout, or the
    /// stall timeout when that is shorter (no byte arrives before them),
    /// with the name of the option that sets it.
    fn headers_limit(&self) -> Option<(Duration, &'static str)> {
        match (self.response, self.stall) {
            (Some(response), Some(stall)) if stall < response => Some((stall, "stall_timeout")),
            (Some(response), _) => Some((response, "response_timeout")),
            (None, Some(stall)) => Some((stall, "stall_timeout")),
            (None, None) => None,
        }
    }

    /// Sends `request` and waits for the response headers, within the
    /// client's connection limits and then [`headers_limit`](Self::headers_limit).
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let (client, request) = request.build_split();
        let request = request.map_err(SendError::Transport)?;
        let url = request.url().clone();
        let clock = Arc::new(RequestClock {
            tls: url.scheme() == "https",
            state: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        let sending = REQUEST.scope(clock.clone(), client.execute(request));
        let sent = match self.headers_limit() {
            None => sending.await,
            Some((limit, option)) => {
                tokio::select! {
                    sent = sending => sent,
                    () = clock.headers_overdue(Instant::now(), limit) => {
                        return Err(SendError::TimedOut {
                            message: format!(
                                "waiting for response headers from {}: nothing within {limit:?} ({option})",
                                host_of(&url)
                            ),
                            connecting: false,
                        });
                    }
                }
            }
        };
        sent.map_err(|err| match find_cause::<ConnectTimedOut>(&err) {
            Some(timed_out) => SendError::TimedOut {
                message: format!(
                    "connecting to {}: {timed_out}",
                    host_of(err.url().unwrap_or(&url))
                ),
                connecting: true,
            },
            None => SendError::Transport(err),
        })
    }

    /// Runs `wait` (for the next bytes from `from`) within the stall
    /// timeout; the error says what went quiet, and for how long.
    pub(crate) async fn stalling<T>(
        &self,
        from: &str,
        wait: impl Future<Output = T>,
    ) -> Result<T, String> {
        let Some(limit) = self.stall else {
            return Ok(wait.await);
        };
        tokio::time::timeout(limit, wait).await.map_err(|_| {
            format!("reading from {from}: nothing received for {limit:?} (stall_timeout)")
        })
    }
}

/// `host:port` of `url`, as messages name a registry.
pub(crate) fn host_of(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => url.to_string(),
    }
}

/// The first cause of `err` (itself included) of type `E`.
fn find_cause<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<E>() {
            return Some(found);
        }
        cause = current.source();
    }
    None
}

/// Reads at most `limit` bytes of a response body, each chunk within the
/// stall timeout; more is an error.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    limits: &Limits,
) -> std::result::Result<Vec<u8>, ReadError> {
    let from = host_of(response.url());
    let mut body = Vec::new();
    while let Some(chunk) = limits
        .stalling(&from, response.chunk())
        .await
        .map_err(ReadError::Stalled)?
        .map_err(ReadError::Request)?
    {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLong(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a response body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Request(reqwest::Error),
    #[error("the answer is longer than {0} bytes")]
    TooLong(usize),
    /// The body went quiet: the message names the host and the limit.
    #[error("{0}")]
    Stalled(String),
}

/// What an error answer says: the `details`, `error_description`, `error`
/// or `errors[].message` of a JSON body, else its text, shortened.
pub(crate) fn reason(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let messages: Vec<&str> = json["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str().or(e["code"].as_str()))
            .chain(
                ["details", "error_description", "error", "message"]
                    .iter()
                    .filter_map(|key| json[key].as_str()),
            )
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(no reason given)".to_owned(),
        None => text.to_owned(),
    }
}

/// An error and its causes on one line: reqwest's own message alone hides
/// whether the connection was refused, reset or failed TLS.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(reason(br#"{"details":"bad password"}"#), "bad password");
        assert_eq!(
            reason(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#),
            "no"
        );
        assert_eq!(reason(b"  plain text \n"), "plain text");
        assert_eq!(reason(b""), "(no reason given)");
    }
}
