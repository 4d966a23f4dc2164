//! A tower layer in front of every service: takes the caller's `x-request-id` (or makes one),
//! runs the call inside a `rpc` tracing span carrying it — so every log line the request
//! causes names it — returns it in the response metadata, and records per-RPC metrics.
//!
//! With a store, it also holds each answer until every change logged while the call ran is
//! durable (the group commit of `store::wal`), so nothing acknowledged can be lost; if the
//! disk refuses the write, the answer becomes UNAVAILABLE.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use parking_lot::RwLock;
use tracing::Instrument;

use berth_wire::grpc::{percent_decode, percent_encode};

use crate::store::Store;

/// Metadata key of the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// The header names the layer reads and writes, parsed once (a `&str` key is parsed and
/// validated on every lookup).
static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Distinct RPC paths whose metric handles are kept; calls to further (unknown) paths are
/// still counted, through the registry's own lookup.
const MAX_CACHED_RPCS: usize = 256;

/// One RPC's metric handles: `berth_grpc_request_seconds{rpc}` and
/// `berth_grpc_requests_total{rpc,code}` per code, registered on first use. Looking them up
/// through the `metrics` macros built the labels (two `String`s and a formatted code) and
/// hashed them in the registry on every call.
struct RpcMetrics {
    rpc: String,
    seconds: metrics::Histogram,
    requests: [OnceLock<metrics::Counter>; 17],
}

impl RpcMetrics {
    fn new(rpc: &str) -> Self {
        Self {
            rpc: rpc.to_owned(),
            seconds: metrics::histogram!("berth_grpc_request_seconds", "rpc" => rpc.to_owned()),
            requests: Default::default(),
        }
    }

    fn record(&self, code: tonic::Code, elapsed: f64) {
        let counter = self.requests[(code as usize).min(16)].get_or_init(|| {
            metrics::counter!("berth_grpc_requests_total", "rpc" => self.rpc.clone(), "code" => code_name(code))
        });
        counter.increment(1);
        self.seconds.record(elapsed);
    }
}

/// The handles per RPC path. The layer is built after the metrics recorder is installed
/// (`main`), so the handles belong to it.
#[derive(Default)]
struct MetricsCache(RwLock<HashMap<String, Arc<RpcMetrics>, foldhash::fast::RandomState>>);

impl MetricsCache {
    fn get(&self, rpc: &str) -> Arc<RpcMetrics> {
        if let Some(m) = self.0.read().get(rpc) {
            return m.clone();
        }
        let mut map = self.0.write();
        if let Some(m) = map.get(rpc) {
            return m.clone();
        }
        let m = Arc::new(RpcMetrics::new(rpc));
        if map.len() < MAX_CACHED_RPCS {
            map.insert(rpc.to_owned(), m.clone());
        }
        m
    }
}

impl std::fmt::Debug for MetricsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsCache")
            .field("rpcs", &self.0.read().len())
            .finish()
    }
}

/// A code's name as `{code:?}` writes it (`Ok`, `InvalidArgument`, …), without formatting.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer {
    store: Option<Arc<Store>>,
    metrics: Arc<MetricsCache>,
}

impl RequestIdLayer {
    /// A layer that also waits for `store` (if any) before answering.
    pub fn new(store: Option<Arc<Store>>) -> Self {
        Self {
            store,
            metrics: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId {
            inner,
            store: self.store.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service the layer wraps around each call.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    store: Option<Arc<Store>>,
    metrics: Arc<MetricsCache>,
}

/// A fresh request id: 64 random bits in hex. Uniqueness within a log's horizon is all a
/// request id needs, and this avoids a getrandom syscall per call (uuid v4).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut x = fastrand::u64(..);
    let mut buf = [0u8; 16];
    for b in buf.iter_mut().rev() {
        *b = HEX[(x & 15) as usize];
        x >>= 4;
    }
    // Always valid: 16 hex digits.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
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
        let mut value = match req.headers().get(&REQUEST_ID_HEADER) {
            Some(v) if v.to_str().is_ok_and(usable) => v.clone(),
            _ => {
                let v = new_request_id();
                req.headers_mut()
                    .insert(REQUEST_ID_HEADER.clone(), v.clone());
                v
            }
        };
        // A fresh value on every answer: HPACK would add each one to the connection's
        // header table (evicting useful entries) and search the table's chain of
        // x-request-id entries first. Sensitive values are sent as never-indexed literals.
        value.set_sensitive(true);
        let id = value.to_str().unwrap_or_default();
        let rpc = req.uri().path();
        let span = tracing::info_span!("rpc", request_id = %id, rpc = %rpc);
        let metrics = self.metrics.get(rpc);
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
                res.headers_mut().insert(REQUEST_ID_HEADER.clone(), value);
                // Unary errors are "trailers-only": the status is in the headers. A success
                // carries it in the trailers, after the body; absent here means OK.
                let code = res
                    .headers()
                    .get(&GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                let elapsed = start.elapsed();
                metrics.record(code, elapsed.as_secs_f64());
                let code_name = code_name(code);
                if code == tonic::Code::Ok {
                    tracing::debug!(code = %code_name, micros = elapsed.as_micros() as u64, "done");
                } else {
                    let msg = res
                        .headers()
                        .get(&GRPC_MESSAGE)
                        .and_then(|v| v.to_str().ok())
                        .map(|m| percent_decode(m.as_bytes()))
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
    h.insert(GRPC_STATUS.clone(), HeaderValue::from_static("14"));
    let msg = format!("the change may not be durable: {why}");
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&msg)) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    res
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
        let id = new_request_id();
        assert_eq!(id.len(), 16);
        assert!(id.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
        for c in 0..17 {
            let code = tonic::Code::from_i32(c);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }
}
