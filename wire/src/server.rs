//! The server side: [`serve`] drives one HTTP/2 connection with a tower service.
//!
//! One future per connection does everything, with no locks and no hand-offs on the unary
//! path: it reads as much as the socket holds, parses every frame in it, starts the calls
//! whose request is complete (their body is handed over whole), polls them — the engine's
//! handlers usually answer on the first poll — and encodes the answers into one buffer,
//! written with one write. A request body that is still arriving (a client stream) goes
//! through a small shared queue; calls that wait (a group commit, a server stream) are
//! woken individually through a `FuturesUnordered`, and a response body still streaming
//! is polled whenever the connection wakes.
//!
//! What it implements of RFC 9113: the preface and SETTINGS exchange, stream states,
//! HEADERS + CONTINUATION, DATA with padding, flow control both ways (our windows are
//! returned as bodies are consumed; the peer's are respected, queued data waits for
//! WINDOW_UPDATE), RST_STREAM both ways, PING, GOAWAY on errors and on graceful shutdown,
//! SETTINGS_MAX_CONCURRENT_STREAMS (excess streams are refused), and gRPC's
//! `grpc-timeout`. Server push and priorities are not used.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame::{self, Head, Settings, code, flag, kind, setting};
use crate::hpack;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connection's limits (what we advertise in our SETTINGS).
#[derive(Debug, Clone)]
pub struct Config {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams beyond it are refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: how much a client may send on one stream before we
    /// have consumed some.
    pub stream_window: u32,
    /// The connection's receive window (all streams together).
    pub connection_window: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a larger header block resets its stream.
    pub max_header_list: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent_streams: 1024,
            stream_window: 1 << 20,
            connection_window: 2 << 20,
            max_header_list: 16 << 10,
        }
    }
}

/// A connection's read buffer starts this small (10,000 idle node connections would hold
/// 640 MiB at 64 KiB each) and doubles, up to [`READ_MAX`], when a read fills it.
const READ_START: usize = 4 << 10;
/// The most one read takes from the socket (the buffer grows beyond it only to hold one
/// frame: 16 KiB plus its header).
const READ_MAX: usize = 64 << 10;
/// Stop reading while this much output waits for the socket (a peer that does not read).
const WRITE_HIGH_WATER: usize = 1 << 20;
/// A response body is not polled for more while this much of it waits for window.
const STREAM_QUEUE_LIMIT: usize = 256 << 10;

/// The request body handed to the service.
#[derive(Debug)]
pub struct RecvBody(RecvInner);

#[derive(Debug)]
enum RecvInner {
    /// The whole request arrived before the call started (every unary call).
    Full(Option<Bytes>),
    /// The client is still sending.
    Chan(Arc<Mutex<Chan>>),
}

#[derive(Debug, Default)]
struct Chan {
    chunks: VecDeque<Bytes>,
    end: bool,
    reset: bool,
    /// Bytes taken by the service since the connection last looked.
    consumed: usize,
    /// The call waiting for data.
    waker: Option<Waker>,
    /// The connection, to return window as data is taken.
    conn: Option<Waker>,
}

impl RecvBody {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        RecvBody(RecvInner::Full((!data.is_empty()).then_some(data)))
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.0 {
            RecvInner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RecvInner::Chan(chan) => {
                let mut c = chan.lock();
                if let Some(d) = c.chunks.pop_front() {
                    c.consumed += d.len();
                    if let Some(w) = c.conn.take() {
                        w.wake();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                if c.reset {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the client reset the stream",
                    ))));
                }
                if c.end {
                    return Poll::Ready(None);
                }
                c.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            RecvInner::Full(d) => d.is_none(),
            RecvInner::Chan(c) => {
                let c = c.lock();
                c.end && c.chunks.is_empty()
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            RecvInner::Full(d) => {
                http_body::SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64))
            }
            RecvInner::Chan(_) => http_body::SizeHint::default(),
        }
    }
}

impl Chan {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A connection-level failure: GOAWAY with `code`, then close.
#[derive(Debug)]
struct ConnError {
    code: u32,
    why: String,
}

fn conn_err(code: u32, why: impl Into<String>) -> ConnError {
    ConnError {
        code,
        why: why.into(),
    }
}

/// What a stream is doing.
enum Phase<B> {
    /// Headers decoded; the call starts once this read's frames are all parsed.
    Starting {
        req: Option<http::request::Parts>,
        data: BytesMut,
    },
    /// The call runs; its answer has not come yet.
    Calling,
    /// Sending the response.
    Answering(Answer<B>),
}

struct Answer<B> {
    headers: Option<http::response::Parts>,
    /// `None` for an answer that is only headers (an error made here).
    body: Option<Pin<Box<B>>>,
    /// Data waiting for window, then the trailers (or the end).
    queued: VecDeque<Bytes>,
    queued_bytes: usize,
    trailers: Option<HeaderMap>,
    /// The body is finished: once `queued` drains, send `trailers` or an empty END_STREAM.
    finished: bool,
}

struct Stream<B> {
    phase: Phase<B>,
    /// END_STREAM received.
    remote_closed: bool,
    /// The request body's queue, while the client is still sending on a running call.
    chan: Option<Arc<Mutex<Chan>>>,
    /// What the client may still send before we return window.
    recv_window: i64,
    /// What we may still send.
    send_window: i64,
    /// `grpc-timeout`, if the client set one.
    deadline: Option<Duration>,
}

type CallFuture<B> = Pin<Box<dyn Future<Output = (u32, Result<Response<B>, BoxError>)> + Send>>;

/// Serves one HTTP/2 connection (after any TLS handshake) until the client closes it, a
/// protocol error closes it, or `shutdown` completes — then a GOAWAY stops new calls and
/// the ones running finish first. `info` is added to every request's extensions (the
/// peer's address, its certificates).
pub async fn serve<IO, S, B, I>(
    io: IO,
    service: S,
    config: Config,
    info: I,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: tower_service::Service<Request<RecvBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    I: Clone + Send + Sync + 'static,
{
    let mut conn = Conn::new(io, service, config, info);
    let mut shutdown = std::pin::pin!(shutdown);
    std::future::poll_fn(|cx| {
        if !conn.going_away && shutdown.as_mut().poll(cx).is_ready() {
            conn.go_away(code::NO_ERROR, "");
        }
        conn.poll(cx)
    })
    .await
}

struct Conn<IO, S, B, I> {
    io: IO,
    service: S,
    config: Config,
    info: I,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: BytesMut,
    preface_done: bool,
    settings_seen: bool,
    peer: Settings,
    decoder: hpack::Decoder,
    /// A header block still arriving in CONTINUATION frames: stream, END_STREAM, block.
    continuation: Option<(u32, bool, BytesMut)>,
    streams: HashMap<u32, Stream<B>>,
    last_stream: u32,
    starting: Vec<u32>,
    calls: FuturesUnordered<CallFuture<B>>,
    /// Streams whose response body is still streaming or waits for window.
    answering: Vec<u32>,
    /// Streams with a request body queue.
    chans: Vec<u32>,
    send_window: i64,
    /// Receive window returned to the client as bodies are consumed.
    recv_window: i64,
    recv_unacked: usize,
    going_away: bool,
    eof: bool,
}

impl<IO, S, B, I> Conn<IO, S, B, I>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: tower_service::Service<Request<RecvBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    I: Clone + Send + Sync + 'static,
{
    fn new(io: IO, service: S, config: Config, info: I) -> Self {
        let mut wbuf = BytesMut::new();
        frame::put_settings(
            &mut wbuf,
            &[
                (setting::ENABLE_PUSH, 0),
                (
                    setting::MAX_CONCURRENT_STREAMS,
                    config.max_concurrent_streams,
                ),
                (
                    setting::INITIAL_WINDOW_SIZE,
                    config.stream_window.min(frame::MAX_WINDOW),
                ),
                (setting::MAX_HEADER_LIST_SIZE, config.max_header_list),
            ],
        );
        let conn_window = config
            .connection_window
            .clamp(frame::DEFAULT_WINDOW, frame::MAX_WINDOW);
        if conn_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(&mut wbuf, 0, conn_window - frame::DEFAULT_WINDOW);
        }
        Conn {
            io,
            service,
            config,
            info,
            rbuf: vec![0; READ_START],
            rstart: 0,
            rend: 0,
            wbuf,
            preface_done: false,
            settings_seen: false,
            peer: Settings::default(),
            decoder: hpack::Decoder::default(),
            continuation: None,
            streams: HashMap::new(),
            last_stream: 0,
            starting: Vec::new(),
            calls: FuturesUnordered::new(),
            answering: Vec::new(),
            chans: Vec::new(),
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(conn_window),
            recv_unacked: 0,
            going_away: false,
            eof: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut progress = false;
            // Read and parse everything the socket holds (unless the peer is not reading
            // our answers).
            if !self.eof && self.wbuf.len() < WRITE_HIGH_WATER {
                if self.rstart > 0 && (self.rend == self.rbuf.len() || self.rstart == self.rend) {
                    self.rbuf.copy_within(self.rstart..self.rend, 0);
                    self.rend -= self.rstart;
                    self.rstart = 0;
                }
                if self.rend == self.rbuf.len() {
                    // A frame larger than the buffer (up to our max frame size + header).
                    let more = self.rbuf.len();
                    self.rbuf.resize(self.rbuf.len() + more, 0);
                }
                let room = self.rbuf.len() - self.rend;
                let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            self.rend += n;
                        }
                        if n == room && self.rbuf.len() < READ_MAX {
                            // A busy connection: fewer, larger reads.
                            let more = self.rbuf.len();
                            self.rbuf.resize(self.rbuf.len() + more, 0);
                        }
                        progress = true;
                        if let Err(e) = self.parse() {
                            tracing::debug!(code = e.code, "closing the connection: {}", e.why);
                            self.go_away(e.code, &e.why);
                            self.fail_all();
                            self.eof = true;
                        }
                        self.start_calls();
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!("connection read failed: {e}");
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {}
                }
            }
            if self.eof && !self.going_away {
                // The client is gone: nothing it asked for can be answered.
                self.fail_all();
                return Poll::Ready(Ok(()));
            }
            // Calls that finished.
            while let Poll::Ready(Some((id, res))) = self.calls.poll_next_unpin(cx) {
                progress = true;
                self.answered(id, res);
            }
            // Bodies still streaming, data waiting for window, request bodies consumed.
            self.return_consumed(cx);
            if !self.answering.is_empty() {
                self.poll_answers(cx);
            }
            // Write what we have.
            while !self.wbuf.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        bytes::Buf::advance(&mut self.wbuf, n);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if self.wbuf.is_empty() {
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
                if self.going_away && self.streams.is_empty() && self.calls.is_empty() {
                    let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                    return Poll::Ready(Ok(()));
                }
                if self.eof {
                    return Poll::Ready(Ok(()));
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Sends GOAWAY: no stream after the last one seen will be served.
    fn go_away(&mut self, error: u32, why: &str) {
        if !self.going_away {
            self.going_away = true;
            frame::put_goaway(&mut self.wbuf, self.last_stream, error, why.as_bytes());
        }
    }

    /// Drops every stream (the connection is closing on an error or the peer left).
    fn fail_all(&mut self) {
        for (_, s) in self.streams.drain() {
            if let Some(c) = s.chan {
                let mut c = c.lock();
                c.reset = true;
                c.wake();
            }
        }
        self.starting.clear();
        self.answering.clear();
        self.chans.clear();
    }

    /// Resets one stream (ours or the client's decision) and forgets it.
    fn reset(&mut self, id: u32, error: Option<u32>) {
        if let Some(error) = error {
            frame::put_rst(&mut self.wbuf, id, error);
        }
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if let Phase::Starting { data, .. } = &s.phase {
            // A body the call never got (reset before this read's calls started).
            let n = data.len();
            self.consumed(n);
        }
        if let Some(c) = s.chan {
            // What the call took and did not report yet, and what it will never read,
            // go back to the connection's window.
            let unreturned = {
                let mut c = c.lock();
                c.reset = true;
                c.wake();
                c.consumed + c.chunks.iter().map(Bytes::len).sum::<usize>()
            };
            self.consumed(unreturned);
        }
    }

    /// Parses every complete frame in the read buffer.
    fn parse(&mut self) -> Result<(), ConnError> {
        // Out of `self` while frames borrow from it.
        let rbuf = std::mem::take(&mut self.rbuf);
        let r = self.parse_from(&rbuf);
        self.rbuf = rbuf;
        r
    }

    fn parse_from(&mut self, rbuf: &[u8]) -> Result<(), ConnError> {
        if !self.preface_done {
            let have = &rbuf[self.rstart..self.rend];
            let n = have.len().min(frame::PREFACE.len());
            if have[..n] != frame::PREFACE[..n] {
                return Err(conn_err(
                    code::PROTOCOL_ERROR,
                    "not an HTTP/2 connection preface",
                ));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            self.rstart += frame::PREFACE.len();
            self.preface_done = true;
        }
        while let Some(head) = Head::parse(&rbuf[self.rstart..self.rend]) {
            if head.len > frame::DEFAULT_MAX_FRAME as usize {
                return Err(conn_err(
                    code::FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            let start = self.rstart + frame::HEADER_LEN;
            if self.rend - start < head.len {
                break;
            }
            self.rstart = start + head.len;
            if !self.settings_seen && head.kind != kind::SETTINGS {
                return Err(conn_err(
                    code::PROTOCOL_ERROR,
                    "the first frame must be SETTINGS",
                ));
            }
            self.frame(head, &rbuf[start..start + head.len])?;
        }
        Ok(())
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if let Some((id, _, _)) = &self.continuation
            && (head.kind != kind::CONTINUATION || head.stream != *id)
        {
            return Err(conn_err(code::PROTOCOL_ERROR, "header block interrupted"));
        }
        match head.kind {
            kind::DATA => self.data(head, payload),
            kind::HEADERS => {
                if head.stream == 0 || head.stream.is_multiple_of(2) {
                    return Err(conn_err(
                        code::PROTOCOL_ERROR,
                        "HEADERS on stream 0 or an even stream",
                    ));
                }
                let inner =
                    frame::unpad(&head, payload).map_err(|w| conn_err(code::PROTOCOL_ERROR, w))?;
                let end_stream = head.has(flag::END_STREAM);
                if head.has(flag::END_HEADERS) {
                    self.header_block(head.stream, end_stream, &payload[inner])
                } else {
                    self.continuation =
                        Some((head.stream, end_stream, BytesMut::from(&payload[inner])));
                    Ok(())
                }
            }
            kind::CONTINUATION => {
                let Some((id, end_stream, mut block)) = self.continuation.take() else {
                    return Err(conn_err(
                        code::PROTOCOL_ERROR,
                        "CONTINUATION without HEADERS",
                    ));
                };
                block.extend_from_slice(payload);
                if block.len() > self.config.max_header_list as usize * 2 + 4096 {
                    return Err(conn_err(code::ENHANCE_YOUR_CALM, "header block too large"));
                }
                if head.has(flag::END_HEADERS) {
                    self.header_block(id, end_stream, &block)
                } else {
                    self.continuation = Some((id, end_stream, block));
                    Ok(())
                }
            }
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    self.reset(head.stream, Some(code::FRAME_SIZE_ERROR));
                }
                Ok(())
            }
            kind::RST_STREAM => {
                if head.stream == 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
                }
                if head.len != 4 {
                    return Err(conn_err(code::FRAME_SIZE_ERROR, "RST_STREAM length not 4"));
                }
                if head.stream > self.last_stream {
                    return Err(conn_err(
                        code::PROTOCOL_ERROR,
                        "RST_STREAM on an idle stream",
                    ));
                }
                self.reset(head.stream, None);
                Ok(())
            }
            kind::SETTINGS => {
                if head.stream != 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "SETTINGS on a stream"));
                }
                if head.has(flag::ACK) {
                    if head.len != 0 {
                        return Err(conn_err(
                            code::FRAME_SIZE_ERROR,
                            "SETTINGS ACK with a payload",
                        ));
                    }
                    return Ok(());
                }
                self.settings_seen = true;
                let before = self.peer.initial_window;
                self.peer.apply(payload).map_err(|(c, w)| conn_err(c, w))?;
                let delta = i64::from(self.peer.initial_window) - i64::from(before);
                if delta != 0 {
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > i64::from(frame::MAX_WINDOW) {
                            return Err(conn_err(
                                code::FLOW_CONTROL_ERROR,
                                "stream window above 2^31-1",
                            ));
                        }
                    }
                }
                frame::put_settings_ack(&mut self.wbuf);
                Ok(())
            }
            kind::PUSH_PROMISE => Err(conn_err(code::PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            kind::PING => {
                if head.stream != 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "PING on a stream"));
                }
                let Ok(payload) = <[u8; 8]>::try_from(payload) else {
                    return Err(conn_err(code::FRAME_SIZE_ERROR, "PING length not 8"));
                };
                if !head.has(flag::ACK) {
                    frame::put_ping(&mut self.wbuf, true, payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                // The client will open no more streams; the ones running finish.
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let Ok(b) = <[u8; 4]>::try_from(payload) else {
                    return Err(conn_err(
                        code::FRAME_SIZE_ERROR,
                        "WINDOW_UPDATE length not 4",
                    ));
                };
                let inc = i64::from(u32::from_be_bytes(b) & frame::MAX_WINDOW);
                if head.stream == 0 {
                    if inc == 0 {
                        return Err(conn_err(code::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
                    }
                    self.send_window += inc;
                    if self.send_window > i64::from(frame::MAX_WINDOW) {
                        return Err(conn_err(
                            code::FLOW_CONTROL_ERROR,
                            "connection window above 2^31-1",
                        ));
                    }
                } else if let Some(s) = self.streams.get_mut(&head.stream) {
                    s.send_window += inc;
                    if inc == 0 {
                        self.reset(head.stream, Some(code::PROTOCOL_ERROR));
                    } else if s.send_window > i64::from(frame::MAX_WINDOW) {
                        self.reset(head.stream, Some(code::FLOW_CONTROL_ERROR));
                    }
                } else if head.stream > self.last_stream {
                    return Err(conn_err(
                        code::PROTOCOL_ERROR,
                        "WINDOW_UPDATE on an idle stream",
                    ));
                }
                Ok(())
            }
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let inner = frame::take_data(&head, payload, &mut self.recv_window)
            .map_err(|(c, w)| conn_err(c, w))?;
        let len = head.len as i64;
        // Padding and data we drop count as consumed at once.
        let mut consumed = head.len - inner.len();
        let end = head.has(flag::END_STREAM);
        let Some(s) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(conn_err(code::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A stream we reset or finished: its window no longer matters.
            self.consumed(head.len);
            frame::put_rst(&mut self.wbuf, head.stream, code::STREAM_CLOSED);
            return Ok(());
        };
        if s.remote_closed {
            self.consumed(head.len);
            self.reset(head.stream, Some(code::STREAM_CLOSED));
            return Ok(());
        }
        s.recv_window -= len;
        if s.recv_window < 0 {
            self.consumed(head.len);
            self.reset(head.stream, Some(code::FLOW_CONTROL_ERROR));
            return Ok(());
        }
        s.remote_closed = end;
        let data = &payload[inner];
        match (&mut s.phase, &s.chan) {
            (Phase::Starting { data: buf, .. }, _) => buf.extend_from_slice(data),
            (_, Some(chan)) => {
                let mut c = chan.lock();
                if !data.is_empty() {
                    c.chunks.push_back(Bytes::copy_from_slice(data));
                }
                c.end = end;
                c.wake();
            }
            // The call no longer reads its body.
            _ => consumed = head.len,
        }
        self.consumed(consumed);
        Ok(())
    }

    /// Returns connection window for `n` bytes the service took (or we dropped).
    fn consumed(&mut self, n: usize) {
        self.recv_unacked += n;
        if self.recv_unacked >= (self.config.connection_window as usize / 2).max(1) {
            let inc = self.recv_unacked as u32;
            self.recv_window += i64::from(inc);
            self.recv_unacked = 0;
            frame::put_window_update(&mut self.wbuf, 0, inc);
        }
    }

    fn header_block(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        // The block must be decoded whatever becomes of the stream: it changes the table.
        let mut fields = Fields::default();
        let limit = self.config.max_header_list as usize;
        self.decoder
            .decode(block, |n, v| fields.add(n, v, limit))
            .map_err(|e| conn_err(code::COMPRESSION_ERROR, format!("header block: {e}")))?;
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers of a request: they must end it.
            if !end_stream || s.remote_closed {
                self.reset(id, Some(code::PROTOCOL_ERROR));
                return Ok(());
            }
            s.remote_closed = true;
            if let Some(c) = &s.chan {
                let mut c = c.lock();
                c.end = true;
                c.wake();
            }
            return Ok(());
        }
        if id <= self.last_stream {
            return Err(conn_err(code::STREAM_CLOSED, "HEADERS on a closed stream"));
        }
        self.last_stream = id;
        if self.going_away {
            return Ok(());
        }
        if self.streams.len() >= self.config.max_concurrent_streams as usize {
            frame::put_rst(&mut self.wbuf, id, code::REFUSED_STREAM);
            return Ok(());
        }
        let (parts, deadline) = match fields.into_request() {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(stream = id, "malformed request: {why}");
                frame::put_rst(&mut self.wbuf, id, code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        self.streams.insert(
            id,
            Stream {
                phase: Phase::Starting {
                    req: Some(parts),
                    data: BytesMut::new(),
                },
                remote_closed: end_stream,
                chan: None,
                recv_window: i64::from(self.config.stream_window),
                send_window: i64::from(self.peer.initial_window),
                deadline,
            },
        );
        self.starting.push(id);
        Ok(())
    }

    /// Starts the calls whose headers this read brought.
    fn start_calls(&mut self) {
        for id in std::mem::take(&mut self.starting) {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let Phase::Starting { req, data } = &mut s.phase else {
                continue;
            };
            let Some(mut parts) = req.take() else {
                continue;
            };
            let data = std::mem::take(data).freeze();
            let taken = data.len();
            let body = if s.remote_closed {
                RecvBody::full(data)
            } else {
                let mut c = Chan::default();
                if !data.is_empty() {
                    c.chunks.push_back(data);
                }
                let chan = Arc::new(Mutex::new(c));
                s.chan = Some(chan.clone());
                self.chans.push(id);
                RecvBody(RecvInner::Chan(chan))
            };
            s.phase = Phase::Calling;
            let deadline = s.deadline;
            if s.remote_closed {
                self.consumed(taken);
            }
            parts.extensions.insert(self.info.clone());
            let req = Request::from_parts(parts, body);
            let mut service = self.service.clone();
            let call = async move {
                std::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                service.call(req).await.map_err(Into::into)
            };
            // A handler that panics fails its own call (INTERNAL), not every call on the
            // connection (hyper's task per stream gave the same isolation).
            let call = async move {
                match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(call))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(BoxError::from("the handler panicked")),
                }
            };
            let fut: CallFuture<B> = match deadline {
                None => Box::pin(async move { (id, call.await) }),
                Some(d) => Box::pin(async move {
                    match tokio::time::timeout(d, call).await {
                        Ok(r) => (id, r),
                        Err(_) => (id, Err(DeadlineExceeded.into())),
                    }
                }),
            };
            self.calls.push(fut);
        }
    }

    /// Request bodies the service has read from: return their window.
    fn return_consumed(&mut self, cx: &mut Context<'_>) {
        if self.chans.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.chans.len() {
            let id = self.chans[i];
            let Some(s) = self.streams.get_mut(&id) else {
                self.chans.swap_remove(i);
                continue;
            };
            let Some(chan) = &s.chan else {
                self.chans.swap_remove(i);
                continue;
            };
            let n = {
                let mut c = chan.lock();
                let n = std::mem::take(&mut c.consumed);
                if !c.chunks.is_empty() {
                    c.conn = Some(cx.waker().clone());
                }
                n
            };
            if n > 0 {
                // The stream's window matters only while the client still sends on it; the
                // connection's always.
                if !s.remote_closed {
                    s.recv_window += n as i64;
                    frame::put_window_update(&mut self.wbuf, id, n as u32);
                }
                self.consumed(n);
            }
            i += 1;
        }
    }

    /// A call's answer: headers now, the body as it comes.
    fn answered(&mut self, id: u32, res: Result<Response<B>, BoxError>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let (headers, body) = match res {
            Ok(r) => {
                let (parts, body) = r.into_parts();
                (parts, Some(Box::pin(body)))
            }
            Err(e) => (error_response(&*e), None),
        };
        s.phase = Phase::Answering(Answer {
            headers: Some(headers),
            finished: body.is_none(),
            body,
            queued: VecDeque::new(),
            queued_bytes: 0,
            trailers: None,
        });
        self.answering.push(id);
    }

    /// Polls response bodies and sends what the windows allow.
    fn poll_answers(&mut self, cx: &mut Context<'_>) {
        let max_frame = self.peer.max_frame as usize;
        let mut i = 0;
        while i < self.answering.len() {
            let id = self.answering[i];
            let Some(s) = self.streams.get_mut(&id) else {
                self.answering.swap_remove(i);
                continue;
            };
            let Phase::Answering(a) = &mut s.phase else {
                self.answering.swap_remove(i);
                continue;
            };
            // Pull from the body while there is room for it.
            let mut failed = false;
            while !a.finished && a.queued_bytes < STREAM_QUEUE_LIMIT {
                let Some(body) = a.body.as_mut() else { break };
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => match f.into_data() {
                        Ok(d) => {
                            if !d.is_empty() {
                                a.queued_bytes += d.len();
                                a.queued.push_back(d);
                            }
                        }
                        Err(f) => {
                            if let Ok(t) = f.into_trailers() {
                                a.trailers = Some(t);
                                a.finished = true;
                            }
                        }
                    },
                    Poll::Ready(None) => a.finished = true,
                    Poll::Ready(Some(Err(e))) => {
                        let e: BoxError = e.into();
                        tracing::debug!(stream = id, "response body failed: {e}");
                        failed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if failed {
                self.reset(id, Some(code::INTERNAL_ERROR));
                self.answering.swap_remove(i);
                continue;
            }
            // Headers as soon as the answer comes (a streaming client waits for them),
            // with END_STREAM when the answer is only headers (a gRPC error is
            // "trailers-only").
            if let Some(parts) = a.headers.take() {
                let only = a.finished && a.queued.is_empty() && a.trailers.is_none();
                let mut block = BytesMut::with_capacity(128);
                hpack::put_status(&mut block, parts.status.as_u16());
                put_fields(&mut block, &parts.headers);
                frame::put_headers(&mut self.wbuf, id, &block, only, max_frame);
                if only {
                    a.finished = true;
                    a.trailers = None;
                    let done = s.remote_closed;
                    self.finish(id, done);
                    self.answering.swap_remove(i);
                    continue;
                }
            }
            // Data, within both windows.
            while let Some(d) = a.queued.front_mut() {
                let room = s.send_window.min(self.send_window);
                if room <= 0 {
                    break;
                }
                let n = d.len().min(room as usize);
                let chunk = d.split_to(n);
                if d.is_empty() {
                    a.queued.pop_front();
                }
                a.queued_bytes -= n;
                s.send_window -= n as i64;
                self.send_window -= n as i64;
                let end = a.finished && a.queued.is_empty() && a.trailers.is_none();
                frame::put_data(&mut self.wbuf, id, &chunk, end, max_frame);
                if end {
                    a.trailers = None;
                    a.finished = false;
                    a.body = None;
                    let done = s.remote_closed;
                    self.finish(id, done);
                    break;
                }
            }
            let Some(s) = self.streams.get_mut(&id) else {
                self.answering.swap_remove(i);
                continue;
            };
            let Phase::Answering(a) = &mut s.phase else {
                i += 1;
                continue;
            };
            if a.finished && a.queued.is_empty() {
                match a.trailers.take() {
                    Some(t) => {
                        let mut block = BytesMut::with_capacity(64);
                        put_fields(&mut block, &t);
                        frame::put_headers(&mut self.wbuf, id, &block, true, max_frame);
                    }
                    None => frame::put_data(&mut self.wbuf, id, &[], true, max_frame),
                }
                let done = s.remote_closed;
                self.finish(id, done);
                self.answering.swap_remove(i);
                continue;
            }
            i += 1;
        }
    }

    /// Our side of `id` is closed: forget the stream; if the client is still sending,
    /// tell it to stop (RST_STREAM NO_ERROR).
    fn finish(&mut self, id: u32, remote_closed: bool) {
        self.reset(id, (!remote_closed).then_some(code::NO_ERROR));
    }
}

/// The answer to a call that failed outside the service's own answers (a deadline, a
/// service error): trailers-only, with a grpc-status.
fn error_response(e: &(dyn std::error::Error + Send + Sync + 'static)) -> http::response::Parts {
    let (status, msg) = if e.is::<DeadlineExceeded>() {
        ("4", "deadline exceeded".to_string())
    } else {
        ("13", format!("internal error: {e}"))
    };
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from_static(status));
    if let Ok(v) = HeaderValue::from_str(&crate::grpc::percent_encode(&msg)) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    r.into_parts().0
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The `grpc-timeout` elapsed.
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Appends a header map as literals (connection-specific headers are not sent in HTTP/2).
fn put_fields(block: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) {
            continue;
        }
        hpack::put_literal(
            block,
            name.as_str().as_bytes(),
            value.as_bytes(),
            value.is_sensitive(),
        );
    }
}

/// A request's header fields as they are decoded.
#[derive(Default)]
struct Fields {
    method: Option<http::Method>,
    path: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    headers: HeaderMap,
    size: usize,
    error: Option<&'static str>,
    regular_seen: bool,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8], limit: usize) {
        if self.error.is_some() {
            return;
        }
        self.size += name.len() + value.len() + 32;
        if self.size > limit {
            self.error = Some("header list larger than SETTINGS_MAX_HEADER_LIST_SIZE");
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                self.error = Some("pseudo-header after a regular header");
                return;
            }
            let slot = match pseudo {
                b"method" => {
                    if self.method.is_some() {
                        self.error = Some("duplicate :method");
                    }
                    match http::Method::from_bytes(value) {
                        Ok(m) => self.method = Some(m),
                        Err(_) => self.error = Some("invalid :method"),
                    }
                    return;
                }
                b"path" => &mut self.path,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                _ => {
                    self.error = Some("unknown pseudo-header");
                    return;
                }
            };
            if slot.is_some() {
                self.error = Some("duplicate pseudo-header");
            }
            *slot = Some(Bytes::copy_from_slice(value));
            return;
        }
        self.regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            self.error = Some("upper-case header name");
            return;
        }
        if matches!(
            name,
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
        ) || (name == b"te" && value != b"trailers")
        {
            self.error = Some("connection-specific header");
            return;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => self.error = Some("invalid header name or value"),
        }
    }

    fn into_request(self) -> Result<(http::request::Parts, Option<Duration>), &'static str> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let method = self.method.ok_or("missing :method")?;
        let path = self.path.ok_or("missing :path")?;
        let scheme = self.scheme.ok_or("missing :scheme")?;
        if path.is_empty() {
            return Err("empty :path");
        }
        let path = http::uri::PathAndQuery::from_maybe_shared(path).map_err(|_| "invalid :path")?;
        let mut uri = http::uri::Builder::new().path_and_query(path);
        if let Some(a) = self.authority {
            let a = http::uri::Authority::from_maybe_shared(a).map_err(|_| "invalid :authority")?;
            uri = uri.scheme(scheme.as_ref()).authority(a);
        }
        let uri = uri.build().map_err(|_| "invalid :scheme")?;
        let deadline = match self.headers.get("grpc-timeout") {
            Some(v) => Some(parse_timeout(v.as_bytes()).ok_or("invalid grpc-timeout")?),
            None => None,
        };
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Ok((req.into_parts().0, deadline))
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}
