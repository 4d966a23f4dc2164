//! A tower layer in front of every service: takes the caller's `x-request-id` (or makes one),
//! runs the call inside a `rpc` tracing span carrying it — so every log line the request
//! causes names it — returns it in the response metadata, and records per-RPC metrics.
//!
//! With a store, it also holds each answer until every change logged while the call ran is
//! durable (the group commit of `store::wal`), so nothing acknowledged can be lost; if the
//! disk refuses the write, the answer becomes UNAVAILABLE.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderValue;
use tracing::Instrument;

use crate::store::Store;

/// Metadata key of the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer {
    store: Option<Arc<Store>>,
}

impl RequestIdLayer {
    /// A layer that also waits for `store` (if any) before answering.
    pub fn new(store: Option<Arc<Store>>) -> Self {
        Self { store }
    }
}

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service the layer wraps around each call.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    store: Option<Arc<Store>>,
}

/// A fresh request id: 64 random bits in hex. Uniqueness within a log's horizon is all a
/// request id needs, and this avoids a getrandom syscall per call (uuid v4).
fn new_request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A caller-supplied id is used when it is short and printable; anything else is replaced.
fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for RequestId<S>
where
    ResB: Default + Send + 'static,
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|s| usable(s))
            .map_or_else(new_request_id, str::to_owned);
        let value = HeaderValue::from_str(&id).ok();
        if let Some(v) = &value {
            req.headers_mut().insert(REQUEST_ID, v.clone());
        }
        let rpc = req.uri().path().to_owned();
        let span = tracing::info_span!("rpc", request_id = %id, rpc = %rpc);
        let start = Instant::now();
        let store = self.store.clone();
        let before = store.as_ref().map_or(0, |s| s.appended());
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let mut res = fut.await?;
                // Nothing logged since the call began: nothing of ours to wait for (and
                // reads keep working while the disk refuses writes).
                if let Some(store) = store {
                    let after = store.appended();
                    if after > before
                        && let Err(e) = store.wait_durable(after).await
                    {
                        res = unavailable(&e.to_string());
                    }
                }
                if let Some(v) = value {
                    res.headers_mut().insert(REQUEST_ID, v);
                }
                // Unary errors are "trailers-only": the status is in the headers. A success
                // carries it in the trailers, after the body; absent here means OK.
                let code = res
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                let elapsed = start.elapsed();
                let code_name = format!("{code:?}");
                metrics::counter!("berth_grpc_requests_total", "rpc" => rpc.clone(), "code" => code_name.clone()).increment(1);
                metrics::histogram!("berth_grpc_request_seconds", "rpc" => rpc).record(elapsed.as_secs_f64());
                if code == tonic::Code::Ok {
                    tracing::debug!(code = %code_name, micros = elapsed.as_micros() as u64, "done");
                } else {
                    let msg = res
                        .headers()
                        .get("grpc-message")
                        .and_then(|v| v.to_str().ok())
                        .map(percent_decode)
                        .unwrap_or_default();
                    tracing::info!(code = %code_name, micros = elapsed.as_micros() as u64, message = %msg, "failed");
                }
                Ok(res)
            }
            .instrument(span),
        )
    }
}

/// A trailers-only UNAVAILABLE answer in place of one whose changes are not durable.
fn unavailable<B: Default>(why: &str) -> http::Response<B> {
    let mut res = http::Response::new(B::default());
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("14"));
    let msg = format!("the change may not be durable: {why}");
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&msg)) {
        h.insert("grpc-message", v);
    }
    res
}

/// grpc-message's encoding: printable ASCII but `%` as is, the rest as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 3 <= b.len())
            .then(|| {
                std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .flatten();
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_decoding() {
        assert!(usable("abc-123"));
        assert!(!usable(""));
        assert!(!usable("has space"));
        assert!(!usable(&"x".repeat(200)));
        assert_eq!(percent_decode("no%20valid%20host"), "no valid host");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            percent_decode(&percent_encode("disk 100% full\n")),
            "disk 100% full\n"
        );
    }
}
