//! berth-wire's server against a real HTTP/2 client (tonic's Channel: hyper + h2), and
//! against raw bytes: unary answers and errors, bodies larger than every window in both
//! directions, server streams, deadlines, cancellation, refused streams, graceful shutdown,
//! and garbage that must close the connection without taking anything down.

// The helpers assert with unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_wire::server::{Config, RecvBody, serve};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: chunks, then trailers.
struct TestBody {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

fn grpc_status(code: u32) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(
        "grpc-status",
        HeaderValue::from_str(&code.to_string()).unwrap(),
    );
    t
}

/// Reads a whole body (or the error that ended it).
async fn collect<B: Body<Data = Bytes> + Unpin>(
    mut b: B,
) -> Result<(Vec<u8>, Option<HeaderMap>), B::Error> {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
        let f = f?;
        match f.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}

/// The service under test, by path: `/t/echo` answers the request body; `/t/sleep`
/// answers after 300 ms; `/t/stream` answers 40 chunks of 100 KiB; `/t/panic` panics;
/// anything else is UNIMPLEMENTED, trailers-only.
#[derive(Clone)]
struct TestService;

impl Service<Request<RecvBody>> for TestService {
    type Response = Response<TestBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RecvBody>) -> Self::Future {
        Box::pin(async move {
            let ok = |chunks: VecDeque<Bytes>| {
                let mut r = Response::new(TestBody {
                    chunks,
                    trailers: Some(grpc_status(0)),
                });
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                r
            };
            match req.uri().path() {
                "/t/echo" => {
                    // A body the client reset ends the call (CANCELLED).
                    let Ok((data, _)) = collect(req.into_body()).await else {
                        let mut r = Response::new(TestBody {
                            chunks: VecDeque::new(),
                            trailers: None,
                        });
                        *r.headers_mut() = grpc_status(1);
                        return Ok(r);
                    };
                    Ok(ok(VecDeque::from([Bytes::from(data)])))
                }
                "/t/sleep" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(ok(VecDeque::from([Bytes::from_static(b"slept")])))
                }
                "/t/stream" => Ok(ok((0..40u8)
                    .map(|i| Bytes::from(vec![i; 100 << 10]))
                    .collect())),
                "/t/panic" => panic!("a handler bug"),
                _ => {
                    let mut r = Response::new(TestBody {
                        chunks: VecDeque::new(),
                        trailers: None,
                    });
                    *r.headers_mut() = grpc_status(12);
                    Ok(r)
                }
            }
        })
    }
}

/// A server on 127.0.0.1:0 serving every connection until `stop` fires.
async fn start(
    config: Config,
) -> (
    std::net::SocketAddr,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let h = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let mut stop = rx.clone();
            tokio::select! {
                a = l.accept() => {
                    let (s, _) = a.unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut stop2 = rx.clone();
                    conns.spawn(serve(s, TestService, config.clone(), (), async move { let _ = stop2.wait_for(|s| *s).await; }));
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        while let Some(r) = conns.join_next().await {
            let _ = r.unwrap();
        }
    });
    (addr, stop, h)
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn request(path: &str, body: Vec<u8>) -> Request<tonic::body::Body> {
    let mut r = Request::new(tonic::body::Body::new(TestBody {
        chunks: VecDeque::from([Bytes::from(body)]),
        trailers: None,
    }));
    *r.method_mut() = http::Method::POST;
    *r.uri_mut() = format!("http://localhost{path}").parse().unwrap();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r.headers_mut()
        .insert("te", HeaderValue::from_static("trailers"));
    r
}

async fn call(
    ch: &mut tonic::transport::Channel,
    req: Request<tonic::body::Body>,
) -> (HeaderMap, Vec<u8>, Option<HeaderMap>) {
    std::future::poll_fn(|cx| ch.poll_ready(cx)).await.unwrap();
    let res = ch.call(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let (data, trailers) = collect(body).await.unwrap();
    (parts.headers, data, trailers)
}

#[tokio::test]
async fn unary_answers_errors_and_large_bodies() {
    let (addr, stop, h) = start(Config::default()).await;
    let mut ch = channel(addr).await;
    let (_, data, trailers) = call(&mut ch, request("/t/echo", b"hello".to_vec())).await;
    assert_eq!(data, b"hello");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    // Larger than the default 64 KiB windows and 16 KiB frames, both ways.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    let (_, data, _) = call(&mut ch, request("/t/echo", big.clone())).await;
    assert_eq!(data, big);
    // A handler that panics fails its call only.
    let (headers, _, _) = call(&mut ch, request("/t/panic", vec![])).await;
    assert_eq!(headers["grpc-status"], "13");
    let (_, data, _) = call(&mut ch, request("/t/echo", b"after".to_vec())).await;
    assert_eq!(data, b"after");
    // Trailers-only error.
    let (headers, data, trailers) = call(&mut ch, request("/t/nope", vec![])).await;
    assert_eq!(headers["grpc-status"], "12");
    assert!(data.is_empty());
    assert!(trailers.is_none());
    // A server stream of 4 MB: the client's windows pace it.
    let (_, data, trailers) = call(&mut ch, request("/t/stream", vec![])).await;
    assert_eq!(data.len(), 40 * (100 << 10));
    assert_eq!(data[100 << 10], 1);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    stop.send(true).unwrap();
    h.await.unwrap();
}

#[tokio::test]
async fn many_concurrent_calls_on_one_connection() {
    let (addr, stop, h) = start(Config::default()).await;
    let ch = channel(addr).await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let mut ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let body = i.to_be_bytes().repeat(1 + i as usize);
            let (_, data, _) = call(&mut ch, request("/t/echo", body.clone())).await;
            assert_eq!(data, body);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.send(true).unwrap();
    h.await.unwrap();
}

/// A raw request's HEADERS frame with `extra` fields; without a body (END_STREAM) unless
/// `body_follows`.
fn raw_request_headers(
    out: &mut bytes::BytesMut,
    id: u32,
    path: &str,
    extra: &[(&str, &str)],
    body_follows: bool,
) {
    let mut block = bytes::BytesMut::new();
    berth_wire::hpack::put_literal(&mut block, b":method", b"POST", false);
    berth_wire::hpack::put_literal(&mut block, b":scheme", b"http", false);
    berth_wire::hpack::put_literal(&mut block, b":path", path.as_bytes(), false);
    for (n, v) in extra {
        berth_wire::hpack::put_literal(&mut block, n.as_bytes(), v.as_bytes(), false);
    }
    berth_wire::frame::put_headers(out, id, &block, !body_follows, 16384);
}

/// A raw request without a body.
fn raw_request(out: &mut bytes::BytesMut, id: u32, path: &str, extra: &[(&str, &str)]) {
    raw_request_headers(out, id, path, extra, false);
}

/// A connection that has sent the preface and an empty SETTINGS.
async fn raw_connection(addr: std::net::SocketAddr) -> (TcpStream, bytes::BytesMut) {
    let s = TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(berth_wire::frame::PREFACE);
    berth_wire::frame::put_settings(&mut out, &[]);
    (s, out)
}

// tonic's client applies grpc-timeout itself (and would give up first): raw frames here.
#[tokio::test]
async fn deadline_answers_deadline_exceeded() {
    use berth_wire::frame::{code, flag, kind};
    let (addr, stop, h) = start(Config::default()).await;
    let (mut s, mut out) = raw_connection(addr).await;
    raw_request(&mut out, 1, "/t/sleep", &[("grpc-timeout", "50m")]);
    raw_request(&mut out, 3, "/t/sleep", &[("grpc-timeout", "bogus")]);
    s.write_all(&out).await.unwrap();
    let frames = read_frames(&mut s, |f| {
        f.iter()
            .any(|(h, _)| h.stream == 1 && h.kind == kind::HEADERS && h.has(flag::END_STREAM))
            && f.iter().any(|(h, _)| h.stream == 3)
    })
    .await;
    let (_, block) = frames
        .iter()
        .find(|(h, _)| h.stream == 1 && h.kind == kind::HEADERS && h.has(flag::END_STREAM))
        .expect("an answer on stream 1");
    let mut fields = Vec::new();
    berth_wire::hpack::Decoder::default()
        .decode(block, |n, v| {
            fields.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })
        .unwrap();
    assert!(
        fields.contains(&("grpc-status".into(), "4".into())),
        "{fields:?}"
    );
    let rst = frames.iter().find(|(h, _)| h.stream == 3).unwrap();
    assert_eq!(
        rst.0.kind,
        kind::RST_STREAM,
        "a malformed grpc-timeout resets the stream"
    );
    assert_eq!(rst.1, code::PROTOCOL_ERROR.to_be_bytes());
    stop.send(true).unwrap();
    h.await.unwrap();
}

/// Requests whose DATA arrives after the call started (HEADERS in one write, the body in
/// a later one) go through the body's queue; what the calls read must go back to the
/// connection's window, or a connection would stall after a window's worth of them.
#[tokio::test]
async fn bodies_that_arrive_late_return_their_window() {
    use berth_wire::frame::{flag, kind};
    let (addr, stop, h) = start(Config::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(berth_wire::frame::PREFACE);
    // Windows large enough for every answer: this client sends no WINDOW_UPDATE.
    berth_wire::frame::put_settings(
        &mut out,
        &[(berth_wire::frame::setting::INITIAL_WINDOW_SIZE, 1 << 24)],
    );
    berth_wire::frame::put_window_update(&mut out, 0, 1 << 30);
    s.write_all(&out).await.unwrap();
    out.clear();
    let body = vec![7u8; 100 << 10];
    // 40 calls of 100 KiB: twice the 2 MiB connection window.
    for i in 0..40u32 {
        let id = 2 * i + 1;
        raw_request_headers(&mut out, id, "/t/echo", &[], true);
        s.write_all(&out).await.unwrap();
        out.clear();
        tokio::time::sleep(Duration::from_millis(2)).await;
        berth_wire::frame::put_data(&mut out, id, &body, true, 16384);
        s.write_all(&out).await.unwrap();
        out.clear();
        let frames = read_frames(&mut s, |f| {
            f.iter()
                .any(|(h, _)| h.stream == id && h.kind == kind::HEADERS && h.has(flag::END_STREAM))
                || f.iter().any(|(h, _)| h.kind == kind::GOAWAY)
        })
        .await;
        assert!(
            !frames.iter().any(|(h, _)| h.kind == kind::GOAWAY),
            "call {i}: {frames:?}"
        );
        let echoed: usize = frames
            .iter()
            .filter(|(h, _)| h.stream == id && h.kind == kind::DATA)
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(echoed, body.len(), "call {i}");
    }
    stop.send(true).unwrap();
    h.await.unwrap();
}

/// Streams the client resets mid-body, before or after their call started: their bytes
/// go back to the connection's window too.
#[tokio::test]
async fn reset_bodies_return_their_window() {
    use berth_wire::frame::{flag, kind};
    let (addr, stop, h) = start(Config::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(berth_wire::frame::PREFACE);
    berth_wire::frame::put_settings(&mut out, &[]);
    // 30 × 100 KiB (read in pieces: the calls start, then the resets come), then 2,200 ×
    // 1,000 bytes (each stream's frames in one read: reset before its call starts); each
    // group alone is more than the 2 MiB connection window.
    let mut id = 1;
    for (count, size) in [(30u32, 100usize << 10), (2200, 1000)] {
        let body = vec![1u8; size];
        for _ in 0..count {
            id += 2;
            raw_request_headers(&mut out, id, "/t/echo", &[], true);
            berth_wire::frame::put_data(&mut out, id, &body, false, 16384);
            berth_wire::frame::put_rst(&mut out, id, berth_wire::frame::code::CANCEL);
            s.write_all(&out).await.unwrap();
            out.clear();
        }
    }
    let last = id + 2;
    raw_request(&mut out, last, "/t/echo", &[]);
    s.write_all(&out).await.unwrap();
    let frames = read_frames(&mut s, |f| {
        f.iter().any(|(h, _)| {
            (h.stream == last && h.kind == kind::HEADERS && h.has(flag::END_STREAM))
                || h.kind == kind::GOAWAY
        })
    })
    .await;
    assert!(
        !frames.iter().any(|(h, _)| h.kind == kind::GOAWAY),
        "{frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|(h, _)| h.stream == last && h.kind == kind::HEADERS)
    );
    stop.send(true).unwrap();
    h.await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_calls_in_flight() {
    let (addr, stop, h) = start(Config::default()).await;
    let mut ch = channel(addr).await;
    let slow = tokio::spawn(async move { call(&mut ch, request("/t/sleep", vec![])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(true).unwrap();
    let (_, data, trailers) = slow.await.unwrap();
    assert_eq!(data, b"slept");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    h.await.unwrap();
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let (addr, stop, h) = start(Config {
        max_concurrent_streams: 1,
        ..Config::default()
    })
    .await;
    // Raw frames: two HEADERS at once, the second must be refused.
    let (mut s, mut out) = raw_connection(addr).await;
    for id in [1u32, 3] {
        raw_request(&mut out, id, "/t/sleep", &[]);
    }
    s.write_all(&out).await.unwrap();
    let frames = read_frames(&mut s, |f| {
        f.iter()
            .any(|(h, _)| h.kind == berth_wire::frame::kind::RST_STREAM)
    })
    .await;
    let rst = frames
        .iter()
        .find(|(h, _)| h.kind == berth_wire::frame::kind::RST_STREAM)
        .unwrap();
    assert_eq!(rst.0.stream, 3);
    assert_eq!(rst.1, berth_wire::frame::code::REFUSED_STREAM.to_be_bytes());
    stop.send(true).unwrap();
    h.await.unwrap();
}

/// Reads frames until `done` says so (or 5 s pass).
async fn read_frames(
    s: &mut TcpStream,
    done: impl Fn(&[(berth_wire::frame::Head, Vec<u8>)]) -> bool,
) -> Vec<(berth_wire::frame::Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(&frames) {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(h) = berth_wire::frame::Head::parse(&buf) {
            if buf.len() < 9 + h.len {
                break;
            }
            frames.push((h, buf[9..9 + h.len].to_vec()));
            buf.drain(..9 + h.len);
        }
    }
    frames
}

#[tokio::test]
async fn protocol_errors_close_with_goaway() {
    let (addr, stop, h) = start(Config::default()).await;
    for bad in [
        // Not HTTP/2 at all.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // A valid preface, then DATA before SETTINGS.
        [
            &berth_wire::frame::PREFACE[..],
            &[0, 0, 1, 0, 0, 0, 0, 0, 1, 7],
        ]
        .concat(),
        // SETTINGS, then HEADERS on stream 0.
        [
            &berth_wire::frame::PREFACE[..],
            &[0, 0, 0, 4, 0, 0, 0, 0, 0],
            &[0, 0, 1, 1, 4, 0, 0, 0, 0, 0x88],
        ]
        .concat(),
        // SETTINGS, then a header block that is not HPACK.
        [
            &berth_wire::frame::PREFACE[..],
            &[0, 0, 0, 4, 0, 0, 0, 0, 0],
            &[0, 0, 2, 1, 5, 0, 0, 0, 1, 0x80, 0xff],
        ]
        .concat(),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bad).await.unwrap();
        let frames = read_frames(&mut s, |f| {
            f.iter()
                .any(|(h, _)| h.kind == berth_wire::frame::kind::GOAWAY)
        })
        .await;
        assert!(
            frames
                .iter()
                .any(|(h, _)| h.kind == berth_wire::frame::kind::GOAWAY),
            "no GOAWAY after {bad:?}: {frames:?}"
        );
        // And the connection is closed.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        let _ = n;
    }
    // The server still serves others.
    let mut ch = channel(addr).await;
    let (_, data, _) = call(&mut ch, request("/t/echo", b"ok".to_vec())).await;
    assert_eq!(data, b"ok");
    stop.send(true).unwrap();
    h.await.unwrap();
}

#[tokio::test]
async fn random_bytes_after_the_preface_never_panic() {
    let (addr, stop, h) = start(Config::default()).await;
    let mut rng = 0x9e3779b97f4a7c15u64;
    for round in 0..200 {
        let mut bytes = berth_wire::frame::PREFACE.to_vec();
        // A valid SETTINGS first half the time, so later frames are reached.
        if round % 2 == 0 {
            bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        }
        for _ in 0..(round % 50 + 1) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Mostly small frames of known types with random contents.
            let len = (rng % 24) as usize;
            bytes.extend_from_slice(&[
                0,
                0,
                len as u8,
                (rng >> 8) as u8 % 11,
                (rng >> 16) as u8,
                0,
                0,
                0,
                (rng >> 24) as u8 % 8,
            ]);
            for i in 0..len {
                bytes.push((rng >> (i % 56)) as u8);
            }
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    }
    let mut ch = channel(addr).await;
    let (_, data, _) = call(&mut ch, request("/t/echo", b"still here".to_vec())).await;
    assert_eq!(data, b"still here");
    stop.send(true).unwrap();
    h.await.unwrap();
}
