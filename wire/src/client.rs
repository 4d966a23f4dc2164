//! Unary gRPC calls over one HTTP/2 connection, for the load harness.
//!
//! A [`Client`] is a handle on one connection. Each call goes through an unbounded channel
//! to the connection's driver task, which owns the socket: every time it runs it reads
//! what the socket has and handles every complete frame, takes every queued call and
//! encodes it (HEADERS through an HPACK [`Indexer`](crate::hpack::Indexer), so the
//! repeated headers cost a byte each after the first call, plus one DATA frame), and
//! writes all of its output with one write. Answers go back through a oneshot channel.
//!
//! The driver follows the server's SETTINGS (concurrent streams: calls beyond the limit
//! wait in a queue; frame size; flow-control windows: request bodies that do not fit wait
//! for WINDOW_UPDATE), answers SETTINGS and PING, and keeps the server's windows open
//! (1 MiB per stream, 8 MiB for the connection).

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{self, Head, Settings, code, flag, kind, setting};
use crate::hpack;

/// Our SETTINGS_INITIAL_WINDOW_SIZE: what the server may send on one stream unacknowledged.
const LOCAL_STREAM_WINDOW: u32 = 1 << 20;
/// The connection window we open right after the preface.
const LOCAL_CONN_WINDOW: u32 = 8 << 20;
/// Our SETTINGS_MAX_FRAME_SIZE (the default: we do not announce another).
const LOCAL_MAX_FRAME: usize = frame::DEFAULT_MAX_FRAME as usize;
/// The read buffer: several frames of the largest size we accept.
const READ_BUF: usize = 64 << 10;
/// Unwritten output above which no new calls are taken (the server is not reading).
const WRITE_HIGH: usize = 1 << 20;
/// The largest response message accepted.
const MAX_MESSAGE: usize = 64 << 20;
/// The largest header block (HEADERS plus CONTINUATION) accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// gRPC status codes used here.
const OK: i32 = 0;
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNIMPLEMENTED: i32 = 12;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// A call's outcome: the response message, or why there is none.
type Answer = Result<Bytes, Status>;

/// Headers sent on every call of a handle: (lowercase name, value).
type Metadata = Arc<[(Box<[u8]>, Box<[u8]>)]>;

/// A gRPC status: the call failed, at the server (`grpc-status` other than 0) or on the
/// way (transport failures are `UNAVAILABLE` (14), protocol and parse failures `INTERNAL`
/// (13)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The gRPC status code (`grpc-status`).
    pub code: i32,
    /// The status message (`grpc-message`, percent-decoded), or what went wrong.
    pub message: String,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            code_name(self.code),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for Status {}

/// The name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "unknown code",
    }
}

/// The name of an HTTP/2 error code.
fn h2_code_name(c: u32) -> String {
    let name = match c {
        code::NO_ERROR => "NO_ERROR",
        code::PROTOCOL_ERROR => "PROTOCOL_ERROR",
        code::INTERNAL_ERROR => "INTERNAL_ERROR",
        code::FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        code::STREAM_CLOSED => "STREAM_CLOSED",
        code::FRAME_SIZE_ERROR => "FRAME_SIZE_ERROR",
        code::REFUSED_STREAM => "REFUSED_STREAM",
        code::CANCEL => "CANCEL",
        code::COMPRESSION_ERROR => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        code::ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => return format!("error code {c:#x}"),
    };
    name.to_owned()
}

/// A handle on one HTTP/2 connection making unary gRPC calls. Clones share the connection
/// (each keeps its own metadata); the connection closes when the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Call>,
    /// Why the connection ended, once it has.
    closed: Arc<OnceLock<String>>,
    /// Headers sent on every call, names lowercase.
    meta: Metadata,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("closed", &self.closed.get())
            .field("metadata", &self.meta.len())
            .finish()
    }
}

/// One call on its way to the driver.
struct Call {
    path: Box<str>,
    message: Bytes,
    meta: Metadata,
    tx: oneshot::Sender<Answer>,
}

impl Client {
    /// Connects over TCP (TCP_NODELAY on), sends the connection preface, our SETTINGS and
    /// a connection WINDOW_UPDATE, waits for the server's SETTINGS (so the first calls
    /// already respect its limits), and spawns the connection's driver task on the current
    /// tokio runtime. The `:authority` of every call is `addr` ("127.0.0.1:50051").
    ///
    /// There is no timeout: wrap the call in one if the server may not answer.
    pub async fn connect(addr: SocketAddr) -> io::Result<Client> {
        let mut io = TcpStream::connect(addr).await?;
        io.set_nodelay(true)?;
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(frame::PREFACE);
        frame::put_settings(
            &mut out,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, LOCAL_STREAM_WINDOW),
            ],
        );
        frame::put_window_update(&mut out, 0, LOCAL_CONN_WINDOW - frame::DEFAULT_WINDOW);
        io.write_all(&out).await?;

        // The server's preface is a SETTINGS frame; the driver applies it (and whatever
        // came after it) before it takes any call.
        let mut rbuf = vec![0u8; READ_BUF].into_boxed_slice();
        let mut end = 0;
        loop {
            if let Some(h) = Head::parse(&rbuf[..end]) {
                if h.kind != kind::SETTINGS
                    || h.has(flag::ACK)
                    || h.stream != 0
                    || h.len > LOCAL_MAX_FRAME
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server did not start with SETTINGS: not an HTTP/2 (prior knowledge) server",
                    ));
                }
                if end >= frame::HEADER_LEN + h.len {
                    break;
                }
            }
            let n = io.read(&mut rbuf[end..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before its SETTINGS",
                ));
            }
            end += n;
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let closed = Arc::new(OnceLock::new());
        let driver = Driver {
            io,
            rx,
            rbuf,
            end,
            closed: closed.clone(),
            conn: Conn::new(addr.to_string().into_bytes().into_boxed_slice()),
        };
        tokio::spawn(driver.run());
        Ok(Client {
            tx,
            closed,
            meta: Arc::from(Vec::new()),
        })
    }

    /// Adds `name: value` to the metadata this handle sends on every call (e.g.
    /// `("authorization", "Bearer ...")`). The name is lowercased; values must be valid
    /// header values (visible ASCII; `-bin` names take base64). Existing clones keep
    /// their metadata.
    pub fn with_metadata(mut self, name: &str, value: &str) -> Client {
        let mut meta: Vec<_> = self.meta.iter().cloned().collect();
        meta.push((
            name.to_ascii_lowercase().into_bytes().into_boxed_slice(),
            value.as_bytes().into(),
        ));
        self.meta = Arc::from(meta);
        self
    }

    /// One unary call: `path` like "/berth.v1.Scheduler/Release"; `message` is the encoded
    /// request message without the 5-byte gRPC prefix (added here). Returns the response
    /// message (prefix stripped), or the call's [`Status`].
    pub async fn unary(&self, path: &str, message: Bytes) -> Result<Bytes, Status> {
        if u32::try_from(message.len()).is_err() {
            return Err(Status::new(
                RESOURCE_EXHAUSTED,
                "request message larger than 4 GiB",
            ));
        }
        let (tx, rx) = oneshot::channel();
        let call = Call {
            path: path.into(),
            message,
            meta: self.meta.clone(),
            tx,
        };
        if self.tx.send(call).is_err() {
            return Err(self.closed_status());
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(self.closed_status()),
        }
    }

    /// A unary call with prost messages: encodes `req`, decodes the response.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        let answer = self.unary(path, Bytes::from(req.encode_to_vec())).await?;
        Resp::decode(answer)
            .map_err(|e| Status::new(INTERNAL, format!("decoding the response message: {e}")))
    }

    /// The status of a call made after the connection ended.
    fn closed_status(&self) -> Status {
        match self.closed.get() {
            Some(why) => Status::new(UNAVAILABLE, format!("connection closed: {why}")),
            None => Status::new(UNAVAILABLE, "connection closed"),
        }
    }
}

/// Hashes stream ids (odd, increasing) for the stream table: cheaper than SipHash, and
/// consecutive ids land in consecutive buckets with spread-out control bytes.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n >> 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A request body not yet (fully) sent: the gRPC prefix, then the message.
struct Outgoing {
    prefix: [u8; 5],
    message: Bytes,
    sent: usize,
}

impl Outgoing {
    fn len(&self) -> usize {
        5 + self.message.len()
    }

    /// Appends bytes `from..from + n` of the body.
    fn put(&self, out: &mut BytesMut, from: usize, n: usize) {
        let to = from + n;
        if from < 5 {
            out.put_slice(&self.prefix[from..to.min(5)]);
        }
        if to > 5 {
            out.put_slice(&self.message[from.max(5) - 5..to - 5]);
        }
    }
}

/// An open stream: one call in flight.
struct Stream {
    tx: oneshot::Sender<Answer>,
    /// What we may still send on it.
    send_window: i64,
    /// The request body while flow control holds part of it back.
    out: Option<Outgoing>,
    /// What the server may still send on it.
    recv_window: i64,
    /// The response headers came.
    got_headers: bool,
    grpc_status: Option<i32>,
    grpc_message: Option<String>,
    /// The response body (gRPC prefix included).
    data: Vec<u8>,
}

/// A header block waiting for its CONTINUATION frames.
struct Continuation {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// Whether a stream that ends sends the server a RST_STREAM.
#[derive(Clone, Copy)]
enum Rst {
    /// Only if part of the request body is still unsent (the server is done, we are not).
    IfUnsent,
    /// With this error code.
    Send(u32),
    /// No (the server reset it).
    Never,
}

/// A connection error: the HTTP/2 error code and what was wrong.
type ConnError = (u32, String);

fn conn_err(c: u32, msg: &str) -> ConnError {
    (c, msg.to_owned())
}

/// The connection's state, apart from the socket and its read buffer.
struct Conn {
    /// Output not yet written.
    wbuf: BytesMut,
    /// Scratch space for a header block.
    hblock: BytesMut,
    authority: Box<[u8]>,
    peer: Settings,
    indexer: hpack::Indexer,
    decoder: hpack::Decoder,
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    next_id: u32,
    /// Calls waiting for a stream (the server's concurrency limit).
    pending: VecDeque<Call>,
    /// Streams whose request body waits for a window, in order.
    blocked: VecDeque<u32>,
    /// What we may still send on the connection.
    send_window: i64,
    /// What the server may still send on the connection.
    recv_window: i64,
    continuation: Option<Continuation>,
    /// Why new calls are refused (GOAWAY, or stream ids used up).
    refusing: Option<String>,
    /// Why the connection is over; the driver stops.
    dead: Option<String>,
}

impl Conn {
    fn new(authority: Box<[u8]>) -> Conn {
        let peer = Settings::default();
        Conn {
            wbuf: BytesMut::with_capacity(16 << 10),
            hblock: BytesMut::with_capacity(256),
            authority,
            peer,
            indexer: hpack::Indexer::new(peer.header_table_size as usize),
            decoder: hpack::Decoder::default(),
            streams: HashMap::default(),
            next_id: 1,
            pending: VecDeque::new(),
            blocked: VecDeque::new(),
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(LOCAL_CONN_WINDOW),
            continuation: None,
            refusing: None,
            dead: None,
        }
    }

    /// Takes a call from a handle.
    fn submit(&mut self, call: Call) {
        if let Some(why) = &self.refusing {
            let _ = call.tx.send(Err(Status::new(UNAVAILABLE, why.clone())));
            return;
        }
        self.pending.push_back(call);
    }

    /// Opens streams for waiting calls while the server's limit allows.
    fn open_pending(&mut self) {
        while !self.pending.is_empty()
            && self.dead.is_none()
            && self.refusing.is_none()
            && (self.streams.len() as u64) < u64::from(self.peer.max_concurrent_streams)
        {
            if self.next_id > frame::MAX_WINDOW {
                self.refuse("the connection has used up its stream ids".to_owned());
                return;
            }
            if let Some(call) = self.pending.pop_front() {
                self.open(call);
            }
        }
    }

    /// Starts a call: HEADERS, then as much of the body as the windows allow.
    fn open(&mut self, call: Call) {
        if call.tx.is_closed() {
            return; // the caller gave up before it started
        }
        let id = self.next_id;
        self.next_id += 2;
        let block = &mut self.hblock;
        block.clear();
        self.indexer.begin(block);
        block.put_u8(0x83); // :method: POST (static table)
        block.put_u8(0x86); // :scheme: http (static table)
        self.indexer.put(block, b":path", call.path.as_bytes());
        self.indexer.put(block, b":authority", &self.authority);
        self.indexer
            .put(block, b"content-type", b"application/grpc");
        self.indexer.put(block, b"te", b"trailers");
        for (name, value) in call.meta.iter() {
            self.indexer.put(block, name, value);
        }
        frame::put_headers(
            &mut self.wbuf,
            id,
            block,
            false,
            self.peer.max_frame as usize,
        );

        let mut prefix = [0u8; 5];
        prefix[1..].copy_from_slice(&(call.message.len() as u32).to_be_bytes());
        self.streams.insert(
            id,
            Stream {
                tx: call.tx,
                send_window: i64::from(self.peer.initial_window),
                out: Some(Outgoing {
                    prefix,
                    message: call.message,
                    sent: 0,
                }),
                recv_window: i64::from(LOCAL_STREAM_WINDOW),
                got_headers: false,
                grpc_status: None,
                grpc_message: None,
                data: Vec::new(),
            },
        );
        if self.send_body(id) {
            self.blocked.push_back(id);
        }
    }

    /// Sends what the windows allow of stream `id`'s request body; whether some is left.
    fn send_body(&mut self, id: u32) -> bool {
        let Some(s) = self.streams.get_mut(&id) else {
            return false;
        };
        let Some(out) = &mut s.out else { return false };
        let total = out.len();
        let max_frame = self.peer.max_frame as usize;
        while out.sent < total {
            let window = self.send_window.min(s.send_window);
            if window <= 0 {
                return true;
            }
            let n = (total - out.sent).min(window as usize).min(max_frame);
            let end = out.sent + n == total;
            frame::put_head(
                &mut self.wbuf,
                n,
                kind::DATA,
                if end { flag::END_STREAM } else { 0 },
                id,
            );
            out.put(&mut self.wbuf, out.sent, n);
            out.sent += n;
            self.send_window -= n as i64;
            s.send_window -= n as i64;
        }
        s.out = None;
        false
    }

    /// Sends blocked request bodies as far as the windows now allow, in order.
    fn flush_blocked(&mut self) {
        let mut blocked = std::mem::take(&mut self.blocked);
        blocked.retain(|&id| self.send_body(id));
        self.blocked = blocked;
    }

    /// Ends stream `id` with `answer`.
    fn finish(&mut self, id: u32, answer: Answer, rst: Rst) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        let rst = match rst {
            Rst::IfUnsent => s.out.is_some().then_some(code::CANCEL),
            Rst::Send(c) => Some(c),
            Rst::Never => None,
        };
        if let Some(c) = rst {
            frame::put_rst(&mut self.wbuf, id, c);
        }
        let _ = s.tx.send(answer);
    }

    /// Refuses new calls from now on (the calls waiting for a stream too).
    fn refuse(&mut self, why: String) {
        for call in self.pending.drain(..) {
            let _ = call.tx.send(Err(Status::new(UNAVAILABLE, why.clone())));
        }
        self.refusing = Some(why);
    }

    /// The connection is over: every call in it or waiting for it fails with `status`.
    fn fail_all(&mut self, status: Status) {
        if self.dead.is_some() {
            return;
        }
        tracing::debug!(%status, "berth-wire client connection ends");
        for (_, s) in self.streams.drain() {
            let _ = s.tx.send(Err(status.clone()));
        }
        for call in self.pending.drain(..) {
            let _ = call.tx.send(Err(status.clone()));
        }
        self.blocked.clear();
        self.dead = Some(status.message);
    }

    /// The server broke the protocol: tell it (GOAWAY) and fail every call.
    fn conn_error(&mut self, (c, msg): ConnError) {
        frame::put_goaway(&mut self.wbuf, 0, c, msg.as_bytes());
        self.fail_all(Status::new(
            INTERNAL,
            format!("HTTP/2 connection error ({}): {msg}", h2_code_name(c)),
        ));
    }

    /// Whether `id` names a stream we never opened (or one the server would have opened).
    fn is_idle(&self, id: u32) -> bool {
        id.is_multiple_of(2) || id >= self.next_id
    }

    /// Handles one frame.
    fn on_frame(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        if let Some(c) = &self.continuation
            && (h.kind != kind::CONTINUATION || h.stream != c.stream)
        {
            return Err(conn_err(code::PROTOCOL_ERROR, "expected CONTINUATION"));
        }
        match h.kind {
            kind::DATA => self.on_data(h, p),
            kind::HEADERS => {
                if h.stream == 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "HEADERS on stream 0"));
                }
                let r = frame::unpad(&h, p).map_err(|m| conn_err(code::PROTOCOL_ERROR, m))?;
                let end_stream = h.has(flag::END_STREAM);
                if h.has(flag::END_HEADERS) {
                    self.on_header_block(h.stream, &p[r], end_stream)
                } else {
                    self.continuation = Some(Continuation {
                        stream: h.stream,
                        end_stream,
                        block: p[r].to_vec(),
                    });
                    Ok(())
                }
            }
            kind::CONTINUATION => {
                let Some(mut c) = self.continuation.take() else {
                    return Err(conn_err(
                        code::PROTOCOL_ERROR,
                        "CONTINUATION without HEADERS",
                    ));
                };
                if c.block.len() + p.len() > MAX_HEADER_BLOCK {
                    return Err(conn_err(code::ENHANCE_YOUR_CALM, "header block too large"));
                }
                c.block.extend_from_slice(p);
                if h.has(flag::END_HEADERS) {
                    self.on_header_block(c.stream, &c.block, c.end_stream)
                } else {
                    self.continuation = Some(c);
                    Ok(())
                }
            }
            kind::RST_STREAM => {
                if h.stream == 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
                }
                let c = be_u32(p)
                    .ok_or_else(|| conn_err(code::FRAME_SIZE_ERROR, "RST_STREAM length not 4"))?;
                if h.len != 4 {
                    return Err(conn_err(code::FRAME_SIZE_ERROR, "RST_STREAM length not 4"));
                }
                if self.is_idle(h.stream) {
                    return Err(conn_err(
                        code::PROTOCOL_ERROR,
                        "RST_STREAM on an idle stream",
                    ));
                }
                let status = match c {
                    code::REFUSED_STREAM => Status::new(
                        UNAVAILABLE,
                        "the server refused the stream (REFUSED_STREAM)",
                    ),
                    code::CANCEL => {
                        Status::new(CANCELLED, "the server cancelled the stream (CANCEL)")
                    }
                    code::ENHANCE_YOUR_CALM => Status::new(
                        RESOURCE_EXHAUSTED,
                        "the server reset the stream (ENHANCE_YOUR_CALM)",
                    ),
                    0xc => Status::new(
                        PERMISSION_DENIED,
                        "the server reset the stream (INADEQUATE_SECURITY)",
                    ),
                    c => Status::new(
                        INTERNAL,
                        format!("the server reset the stream ({})", h2_code_name(c)),
                    ),
                };
                self.finish(h.stream, Err(status), Rst::Never);
                Ok(())
            }
            kind::SETTINGS => self.on_settings(h, p),
            kind::PING => {
                if h.stream != 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "PING on a stream"));
                }
                let payload: [u8; 8] = p
                    .try_into()
                    .map_err(|_| conn_err(code::FRAME_SIZE_ERROR, "PING length not 8"))?;
                if !h.has(flag::ACK) {
                    frame::put_ping(&mut self.wbuf, true, payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if h.stream != 0 {
                    return Err(conn_err(code::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                let (Some(last), Some(c)) = (be_u32(p), p.get(4..).and_then(be_u32)) else {
                    return Err(conn_err(
                        code::FRAME_SIZE_ERROR,
                        "GOAWAY shorter than 8 bytes",
                    ));
                };
                let last = last & frame::MAX_WINDOW;
                let debug = &p[8..];
                let mut why = format!("the server sent GOAWAY ({}", h2_code_name(c));
                if !debug.is_empty() {
                    why.push_str(": ");
                    why.push_str(&String::from_utf8_lossy(&debug[..debug.len().min(256)]));
                }
                why.push(')');
                let mut unprocessed: Vec<u32> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|&id| id > last)
                    .collect();
                unprocessed.sort_unstable();
                for id in unprocessed {
                    let status =
                        Status::new(UNAVAILABLE, format!("{why} before processing this call"));
                    self.finish(id, Err(status), Rst::Never);
                }
                self.refuse(why);
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                if h.len != 4 {
                    return Err(conn_err(
                        code::FRAME_SIZE_ERROR,
                        "WINDOW_UPDATE length not 4",
                    ));
                }
                let inc = i64::from(be_u32(p).unwrap_or(0) & frame::MAX_WINDOW);
                if h.stream == 0 {
                    if inc == 0 {
                        return Err(conn_err(
                            code::PROTOCOL_ERROR,
                            "connection WINDOW_UPDATE of 0",
                        ));
                    }
                    self.send_window += inc;
                    if self.send_window > i64::from(frame::MAX_WINDOW) {
                        return Err(conn_err(
                            code::FLOW_CONTROL_ERROR,
                            "connection window above 2^31-1",
                        ));
                    }
                    if !self.blocked.is_empty() {
                        self.flush_blocked();
                    }
                    return Ok(());
                }
                let Some(s) = self.streams.get_mut(&h.stream) else {
                    if self.is_idle(h.stream) {
                        return Err(conn_err(
                            code::PROTOCOL_ERROR,
                            "WINDOW_UPDATE on an idle stream",
                        ));
                    }
                    return Ok(());
                };
                s.send_window += inc;
                if inc == 0 || s.send_window > i64::from(frame::MAX_WINDOW) {
                    let what = if inc == 0 {
                        "a stream WINDOW_UPDATE of 0"
                    } else {
                        "stream window above 2^31-1"
                    };
                    let c = if inc == 0 {
                        code::PROTOCOL_ERROR
                    } else {
                        code::FLOW_CONTROL_ERROR
                    };
                    self.finish(
                        h.stream,
                        Err(Status::new(INTERNAL, format!("the server sent {what}"))),
                        Rst::Send(c),
                    );
                } else if s.out.is_some() {
                    self.flush_blocked();
                }
                Ok(())
            }
            kind::PUSH_PROMISE => Err(conn_err(
                code::PROTOCOL_ERROR,
                "PUSH_PROMISE with push disabled",
            )),
            // PRIORITY and unknown frame types are ignored.
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        if h.stream != 0 {
            return Err(conn_err(code::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if h.has(flag::ACK) {
            if h.len != 0 {
                return Err(conn_err(
                    code::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        let old = self.peer;
        self.peer.apply(p).map_err(|(c, m)| conn_err(c, m))?;
        frame::put_settings_ack(&mut self.wbuf);
        if self.peer.header_table_size != old.header_table_size {
            self.indexer.set_max(self.peer.header_table_size as usize);
        }
        let delta = i64::from(self.peer.initial_window) - i64::from(old.initial_window);
        if delta != 0 {
            for s in self.streams.values_mut() {
                s.send_window += delta;
                if s.send_window > i64::from(frame::MAX_WINDOW) {
                    return Err(conn_err(
                        code::FLOW_CONTROL_ERROR,
                        "a stream window above 2^31-1",
                    ));
                }
            }
            if delta > 0 && !self.blocked.is_empty() {
                self.flush_blocked();
            }
        }
        Ok(())
    }

    fn on_data(&mut self, h: Head, p: &[u8]) -> Result<(), ConnError> {
        let r = frame::take_data(&h, p, &mut self.recv_window).map_err(|(c, m)| conn_err(c, m))?;
        let len = h.len as i64;
        let used = i64::from(LOCAL_CONN_WINDOW) - self.recv_window;
        if used >= i64::from(LOCAL_CONN_WINDOW / 2) {
            frame::put_window_update(&mut self.wbuf, 0, used as u32);
            self.recv_window += used;
        }
        let Some(s) = self.streams.get_mut(&h.stream) else {
            if self.is_idle(h.stream) {
                return Err(conn_err(code::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            return Ok(()); // a stream we reset or gave up on
        };
        let end_stream = h.has(flag::END_STREAM);
        s.recv_window -= len;
        let data = &p[r];
        let trouble = if s.recv_window < 0 {
            Some((
                code::FLOW_CONTROL_ERROR,
                Status::new(INTERNAL, "the server sent DATA beyond the stream window"),
            ))
        } else if !s.got_headers {
            Some((
                code::PROTOCOL_ERROR,
                Status::new(INTERNAL, "the server sent DATA before the response headers"),
            ))
        } else if s.data.len() + data.len() > MAX_MESSAGE + 5 {
            let msg = format!("response message larger than {MAX_MESSAGE} bytes");
            Some((code::CANCEL, Status::new(RESOURCE_EXHAUSTED, msg)))
        } else {
            None
        };
        if let Some((c, status)) = trouble {
            let rst = if end_stream {
                Rst::IfUnsent
            } else {
                Rst::Send(c)
            };
            self.finish(h.stream, Err(status), rst);
            return Ok(());
        }
        if s.data.is_empty() && data.len() >= 5 {
            // One allocation of the right size for the usual single message.
            let n = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            s.data.reserve_exact(5 + n.min(MAX_MESSAGE));
        }
        s.data.extend_from_slice(data);
        if end_stream {
            // gRPC ends a response with trailers; a body without them is cut short.
            let status = Status::new(
                INTERNAL,
                "the server ended the stream without trailers (no grpc-status)",
            );
            self.finish(h.stream, Err(status), Rst::IfUnsent);
        } else {
            let used = i64::from(LOCAL_STREAM_WINDOW) - s.recv_window;
            if used >= i64::from(LOCAL_STREAM_WINDOW / 2) {
                frame::put_window_update(&mut self.wbuf, h.stream, used as u32);
                s.recv_window += used;
            }
        }
        Ok(())
    }

    /// Handles a complete header block: response headers, trailers, or a trailers-only
    /// response.
    fn on_header_block(
        &mut self,
        id: u32,
        block: &[u8],
        end_stream: bool,
    ) -> Result<(), ConnError> {
        let mut http_status: Option<u16> = None;
        let mut grpc_status: Option<Result<i32, ()>> = None;
        let mut grpc_message: Option<String> = None;
        self.decoder
            .decode(block, |name, value| match name {
                b":status" => http_status = parse_u16(value),
                b"grpc-status" => {
                    grpc_status = Some(
                        std::str::from_utf8(value)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or(()),
                    );
                }
                b"grpc-message" => grpc_message = Some(crate::grpc::percent_decode(value)),
                _ => {}
            })
            .map_err(|e| {
                (
                    code::COMPRESSION_ERROR,
                    format!("undecodable header block: {e}"),
                )
            })?;
        if self.is_idle(id) {
            return Err(conn_err(code::PROTOCOL_ERROR, "HEADERS on an idle stream"));
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if !s.got_headers {
            match http_status {
                // Informational headers; the real ones follow.
                Some(100..=199) if !end_stream => return Ok(()),
                Some(200) => {}
                other => {
                    let status = http_status_to_grpc(other, grpc_message.as_deref());
                    let rst = if end_stream {
                        Rst::IfUnsent
                    } else {
                        Rst::Send(code::CANCEL)
                    };
                    self.finish(id, Err(status), rst);
                    return Ok(());
                }
            }
            s.got_headers = true;
        } else if !end_stream {
            let status = Status::new(INTERNAL, "the server sent trailers without END_STREAM");
            self.finish(id, Err(status), Rst::Send(code::PROTOCOL_ERROR));
            return Ok(());
        }
        if grpc_status.is_some() {
            s.grpc_status = Some(grpc_status.and_then(Result::ok).unwrap_or(-1));
        }
        if grpc_message.is_some() {
            s.grpc_message = grpc_message;
        }
        if end_stream {
            let Some(s) = self.streams.get_mut(&id) else {
                return Ok(());
            };
            let answer = match s.grpc_status {
                None => Err(Status::new(
                    INTERNAL,
                    "the response ended without grpc-status",
                )),
                Some(-1) => Err(Status::new(
                    INTERNAL,
                    "the response's grpc-status is not a number",
                )),
                Some(OK) => take_message(std::mem::take(&mut s.data)),
                Some(c) => Err(Status::new(c, s.grpc_message.take().unwrap_or_default())),
            };
            self.finish(id, answer, Rst::IfUnsent);
        }
        Ok(())
    }
}

/// The response message out of a body: exactly one uncompressed gRPC message.
fn take_message(body: Vec<u8>) -> Answer {
    let Some(prefix) = body.get(..5) else {
        let what = if body.is_empty() {
            "no response message"
        } else {
            "a truncated response message"
        };
        return Err(Status::new(INTERNAL, format!("grpc-status 0 with {what}")));
    };
    if prefix[0] != 0 {
        return Err(Status::new(
            INTERNAL,
            "compressed response message, but no compression was negotiated",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let got = body.len() - 5;
    if got != len {
        let what = if got < len {
            "a truncated response message"
        } else {
            "more than one response message"
        };
        return Err(Status::new(INTERNAL, format!("grpc-status 0 with {what}")));
    }
    let mut b = Bytes::from(body);
    b.advance(5);
    Ok(b)
}

/// The gRPC status of a response whose `:status` is not 200 (the gRPC spec's mapping).
fn http_status_to_grpc(status: Option<u16>, message: Option<&str>) -> Status {
    let Some(status) = status else {
        return Status::new(INTERNAL, "response headers without :status");
    };
    let code = match status {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502..=504 => UNAVAILABLE,
        _ => UNKNOWN,
    };
    let mut msg = format!("HTTP status {status}");
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        msg.push_str(": ");
        msg.push_str(m);
    }
    Status::new(code, msg)
}

fn be_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

fn parse_u16(v: &[u8]) -> Option<u16> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The task that owns a connection's socket.
struct Driver {
    io: TcpStream,
    rx: mpsc::UnboundedReceiver<Call>,
    rbuf: Box<[u8]>,
    /// Bytes of `rbuf` holding unhandled input (always from 0: handled frames are dropped).
    end: usize,
    closed: Arc<OnceLock<String>>,
    conn: Conn,
}

impl Driver {
    async fn run(mut self) {
        // What came with the server's SETTINGS (it first) goes before any call.
        self.handle_input();
        poll_fn(|cx| self.poll(cx)).await;
        let why = self
            .conn
            .dead
            .take()
            .unwrap_or_else(|| "connection closed".to_owned());
        let status = Status::new(UNAVAILABLE, format!("connection closed: {why}"));
        let _ = self.closed.set(why);
        // Calls sent before the channel closed fail too; later ones see it closed.
        self.rx.close();
        while let Ok(call) = self.rx.try_recv() {
            let _ = call.tx.send(Err(status.clone()));
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut again = false;
            if self.conn.dead.is_none() {
                let mut rb = ReadBuf::new(&mut self.rbuf[self.end..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.conn.fail_all(Status::new(
                                UNAVAILABLE,
                                "the server closed the connection",
                            ));
                        } else {
                            self.end += n;
                            self.handle_input();
                            again = true;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        self.conn.fail_all(Status::new(
                            UNAVAILABLE,
                            format!("reading from the connection: {e}"),
                        ));
                    }
                    Poll::Pending => {}
                }
            }

            let mut skipped_calls = false;
            if self.conn.dead.is_none() {
                if self.conn.wbuf.len() >= WRITE_HIGH {
                    skipped_calls = true;
                } else {
                    loop {
                        match self.rx.poll_recv(cx) {
                            Poll::Ready(Some(call)) => self.conn.submit(call),
                            Poll::Ready(None) => {
                                // Every handle is gone.
                                frame::put_goaway(&mut self.conn.wbuf, 0, code::NO_ERROR, b"");
                                self.conn
                                    .fail_all(Status::new(CANCELLED, "the client was dropped"));
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                }
                self.conn.open_pending();
                if self.conn.refusing.is_some() && self.conn.streams.is_empty() {
                    let why = self.conn.refusing.clone().unwrap_or_default();
                    self.conn.fail_all(Status::new(UNAVAILABLE, why));
                }
            }

            let before = self.conn.wbuf.len();
            while !self.conn.wbuf.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.conn.wbuf) {
                    Poll::Ready(Ok(0)) => {
                        self.conn.fail_all(Status::new(
                            UNAVAILABLE,
                            "writing to the connection: wrote 0 bytes",
                        ));
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(n)) => self.conn.wbuf.advance(n),
                    Poll::Ready(Err(e)) => {
                        self.conn.fail_all(Status::new(
                            UNAVAILABLE,
                            format!("writing to the connection: {e}"),
                        ));
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                }
            }
            if self.conn.dead.is_some() {
                // Whatever of the last words (GOAWAY) could be written has been.
                return Poll::Ready(());
            }
            if skipped_calls && self.conn.wbuf.len() < before {
                again = true;
            }
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// Handles every complete frame in the read buffer and keeps the rest.
    fn handle_input(&mut self) {
        let mut pos = 0;
        while let Some(h) = Head::parse(&self.rbuf[pos..self.end]) {
            if h.len > LOCAL_MAX_FRAME {
                self.conn.conn_error(conn_err(
                    code::FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
                return;
            }
            let at = pos + frame::HEADER_LEN;
            if self.end - at < h.len {
                break;
            }
            pos = at + h.len;
            if let Err(e) = self.conn.on_frame(h, &self.rbuf[at..pos]) {
                self.conn.conn_error(e);
                return;
            }
        }
        self.rbuf.copy_within(pos..self.end, 0);
        self.end -= pos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic_health::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    const CHECK: &str = "/grpc.health.v1.Health/Check";
    const ECHO: &str = "/test.Echo/Echo";

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    async fn health_server() -> (SocketAddr, tonic_health::server::HealthReporter) {
        let (reporter, svc) = tonic_health::server::health_reporter();
        let (l, addr) = listener().await;
        let server = tonic::transport::Server::builder().add_service(svc);
        tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(l)));
        (addr, reporter)
    }

    async fn check(c: &Client, service: &str) -> Result<i32, Status> {
        let req = HealthCheckRequest {
            service: service.into(),
        };
        c.call::<_, HealthCheckResponse>(CHECK, &req)
            .await
            .map(|r| r.status)
    }

    type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

    /// "/test.Echo/Echo": answers a HealthCheckRequest with itself; "fail:<msg>" fails
    /// with INVALID_ARGUMENT and <msg>; "meta" answers the call's authorization|x-extra.
    #[derive(Clone)]
    struct Echo;

    impl tonic::server::NamedService for Echo {
        const NAME: &'static str = "test.Echo";
    }

    impl tower_service::Service<http::Request<tonic::body::Body>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                let codec =
                    tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
                Ok(tonic::server::Grpc::new(codec).unary(EchoMethod, req).await)
            })
        }
    }

    struct EchoMethod;

    impl tonic::server::UnaryService<HealthCheckRequest> for EchoMethod {
        type Response = HealthCheckRequest;
        type Future = BoxFuture<Result<tonic::Response<HealthCheckRequest>, tonic::Status>>;

        fn call(&mut self, req: tonic::Request<HealthCheckRequest>) -> Self::Future {
            let meta = |k: &str| {
                req.metadata()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let seen = format!("{}|{}", meta("authorization"), meta("x-extra"));
            let service = req.into_inner().service;
            Box::pin(async move {
                if let Some(m) = service.strip_prefix("fail:") {
                    return Err(tonic::Status::invalid_argument(m));
                }
                let service = if service == "meta" { seen } else { service };
                Ok(tonic::Response::new(HealthCheckRequest { service }))
            })
        }
    }

    async fn echo(c: &Client, s: &str) -> Result<String, Status> {
        let req = HealthCheckRequest { service: s.into() };
        c.call::<_, HealthCheckRequest>(ECHO, &req)
            .await
            .map(|r| r.service)
    }

    #[tokio::test]
    async fn health_checks_against_tonic() {
        let (addr, reporter) = health_server().await;
        let c = Client::connect(addr).await.unwrap();
        assert_eq!(
            check(&c, "").await,
            Ok(1),
            "the server as a whole is SERVING"
        );
        let e = check(&c, "no.such.Service").await.unwrap_err();
        assert_eq!(e.code, 5, "{e}");
        assert_eq!(e.message, "service not registered");
        reporter
            .set_service_status("berth", ServingStatus::NotServing)
            .await;
        assert_eq!(check(&c, "berth").await, Ok(2));
        reporter
            .set_service_status("berth", ServingStatus::Serving)
            .await;
        assert_eq!(check(&c, "berth").await, Ok(1));

        let e = c.unary("/nope.Svc/M", Bytes::new()).await.unwrap_err();
        assert_eq!(e.code, 12, "{e}");
        // The connection is still good after errors, from clones too.
        let c2 = c.clone();
        assert_eq!(check(&c2, "").await, Ok(1));
        assert!(
            Status::new(14, "x")
                .to_string()
                .contains("UNAVAILABLE (14): x")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_one_connection() {
        let (addr, _reporter) = health_server().await;
        let c = Client::connect(addr).await.unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        assert_eq!(check(&c, "").await, Ok(1));
                    }
                    if i % 8 == 0 {
                        check(&c, "unknown").await.unwrap_err().code
                    } else {
                        0
                    }
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), if i % 8 == 0 { 5 } else { 0 });
        }
    }

    #[tokio::test]
    async fn large_messages_small_windows_few_streams() {
        let (l, addr) = listener().await;
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(16 << 10))
            .initial_connection_window_size(Some(64 << 10))
            .max_concurrent_streams(Some(2))
            .add_service(Echo);
        let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(l), |s| {
            s.and_then(|s| s.set_nodelay(true).map(|()| s))
        });
        tokio::spawn(server.serve_with_incoming(incoming));
        let c = Client::connect(addr).await.unwrap();

        // 16 calls at once through 2 streams, each body many frames and windows long.
        let calls: Vec<_> = (0..16u8)
            .map(|i| {
                let c = c.clone();
                let s: String =
                    std::iter::repeat_n(char::from(b'a' + i), 300_000 + usize::from(i)).collect();
                tokio::spawn(async move { (echo(&c, &s).await, s) })
            })
            .collect();
        for t in calls {
            let (got, sent) = t.await.unwrap();
            assert!(got.unwrap() == sent);
        }
        // Responses larger than our stream window, and more in all than half the
        // connection window: both need our WINDOW_UPDATEs.
        for n in 0..3 {
            let s = "x".repeat((3 << 20) + n);
            assert!(echo(&c, &s).await.unwrap() == s);
        }
        assert_eq!(echo(&c, "").await.unwrap(), "");
    }

    #[tokio::test]
    async fn metadata_and_status_messages() {
        let (l, addr) = listener().await;
        let server = tonic::transport::Server::builder().add_service(Echo);
        tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(l)));
        let plain = Client::connect(addr).await.unwrap();
        let c = plain
            .clone()
            .with_metadata("Authorization", "Bearer t0k")
            .with_metadata("x-extra", "1");
        for _ in 0..3 {
            assert_eq!(echo(&c, "meta").await.unwrap(), "Bearer t0k|1");
            assert_eq!(
                echo(&plain, "meta").await.unwrap(),
                "|",
                "clones keep their own metadata"
            );
        }
        let e = echo(&c, "fail:bad ünïcode: 100% \"quoted\"")
            .await
            .unwrap_err();
        assert_eq!(e, Status::new(3, "bad ünïcode: 100% \"quoted\""));
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_fails() {
        let (l, addr) = listener().await;
        drop(l);
        assert!(Client::connect(addr).await.is_err());
    }

    #[test]
    fn a_dropped_server_fails_calls_unavailable() {
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, _reporter) = server_rt.block_on(health_server());
        let client_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = client_rt.block_on(async {
            let c = Client::connect(addr).await.unwrap();
            assert_eq!(check(&c, "").await, Ok(1));
            c
        });
        drop(server_rt);
        client_rt.block_on(async {
            for _ in 0..3 {
                let e = check(&c, "").await.unwrap_err();
                assert_eq!(e.code, 14, "{e}");
            }
        });
    }

    #[tokio::test]
    async fn a_server_shutting_down_fails_new_calls_unavailable() {
        let (_reporter, svc) = tonic_health::server::health_reporter();
        let (l, addr) = listener().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(l), async {
                let _ = stopped.await;
            });
        let server = tokio::spawn(server);
        let c = Client::connect(addr).await.unwrap();
        assert_eq!(check(&c, "").await, Ok(1));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let e = check(&c, "").await.unwrap_err();
        assert_eq!(e.code, 14, "{e}");
    }

    /// What a scripted server sees: each frame, and each complete request.
    enum Ev<'a> {
        Frame(Head, &'a [u8]),
        Request {
            stream: u32,
            path: &'a str,
            body: &'a [u8],
        },
    }

    /// A scripted HTTP/2 server for one connection: sends `settings`, acknowledges the
    /// client's, and lets `hook` answer (into the output buffer) what it sees.
    async fn fake_server<F>(settings: Vec<(u16, u32)>, mut hook: F) -> SocketAddr
    where
        F: FnMut(Ev<'_>, &mut BytesMut) + Send + 'static,
    {
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let (mut io, _) = l.accept().await.unwrap();
            io.set_nodelay(true).unwrap();
            let mut preface = [0u8; 24];
            io.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface, frame::PREFACE);
            let mut out = BytesMut::new();
            frame::put_settings(&mut out, &settings);
            io.write_all(&out).await.unwrap();
            let mut decoder = hpack::Decoder::default();
            let mut requests: HashMap<u32, (String, Vec<u8>)> = HashMap::new();
            let mut buf = BytesMut::new();
            while io.read_buf(&mut buf).await.unwrap_or(0) > 0 {
                let mut out = BytesMut::new();
                while let Some(h) = Head::parse(&buf) {
                    if buf.len() < frame::HEADER_LEN + h.len {
                        break;
                    }
                    let f = buf.split_to(frame::HEADER_LEN + h.len);
                    let p = &f[frame::HEADER_LEN..];
                    match h.kind {
                        kind::SETTINGS if !h.has(flag::ACK) => frame::put_settings_ack(&mut out),
                        kind::HEADERS => {
                            let mut path = String::new();
                            decoder
                                .decode(p, |n, v| {
                                    if n == b":path" {
                                        path = String::from_utf8_lossy(v).into_owned();
                                    }
                                })
                                .unwrap();
                            requests.insert(h.stream, (path, Vec::new()));
                        }
                        kind::DATA => requests.get_mut(&h.stream).unwrap().1.extend_from_slice(p),
                        _ => {}
                    }
                    hook(Ev::Frame(h, p), &mut out);
                    if matches!(h.kind, kind::DATA | kind::HEADERS) && h.has(flag::END_STREAM) {
                        let (path, body) = requests.remove(&h.stream).unwrap();
                        hook(
                            Ev::Request {
                                stream: h.stream,
                                path: &path,
                                body: &body,
                            },
                            &mut out,
                        );
                    }
                }
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    fn block(fields: &[(&str, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        for (n, v) in fields {
            hpack::put_literal(&mut b, n.as_bytes(), v.as_bytes(), false);
        }
        b
    }

    const OK_HEADERS: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/grpc")];

    fn grpc(message: &[u8], flag: u8) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    fn answer(out: &mut BytesMut, stream: u32, body: &[u8], trailers: &[(&str, &str)]) {
        frame::put_headers(out, stream, &block(OK_HEADERS), false, 16384);
        if !body.is_empty() {
            frame::put_data(out, stream, body, false, 16384);
        }
        frame::put_headers(out, stream, &block(trailers), true, 16384);
    }

    /// Appends one frame with a PADDED payload.
    fn padded(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8], pad: u8) {
        frame::put_head(
            out,
            1 + payload.len() + usize::from(pad),
            kind,
            flags | flag::PADDED,
            stream,
        );
        out.put_u8(pad);
        out.put_slice(payload);
        out.put_bytes(0, usize::from(pad));
    }

    #[tokio::test]
    async fn scripted_server_edge_cases() {
        let mut ping_for = None;
        let addr = fake_server(
            vec![(setting::HEADER_TABLE_SIZE, 100)],
            move |ev, out| match ev {
                Ev::Frame(h, p) if h.kind == kind::PING && h.has(flag::ACK) => {
                    assert_eq!(p, b"pingpong");
                    if let Some(stream) = ping_for.take() {
                        answer(out, stream, &grpc(b"ponged", 0), &[("grpc-status", "0")]);
                    }
                }
                Ev::Frame(..) => {}
                Ev::Request { stream, path, body } => match path {
                    "/t/echo" => answer(out, stream, body, &[("grpc-status", "0")]),
                    "/t/split" => {
                        // Headers padded and split across CONTINUATION; the body padded and
                        // split across DATA frames; trailers split too.
                        let b = block(OK_HEADERS);
                        padded(out, kind::HEADERS, 0, stream, &b[..3], 7);
                        frame::put_head(
                            out,
                            b.len() - 3,
                            kind::CONTINUATION,
                            flag::END_HEADERS,
                            stream,
                        );
                        out.put_slice(&b[3..]);
                        let body = grpc(b"split message", 0);
                        padded(out, kind::DATA, 0, stream, &body[..2], 0);
                        padded(out, kind::DATA, 0, stream, &body[2..9], 200);
                        frame::put_data(out, stream, &body[9..], false, 16384);
                        let t = block(&[("grpc-status", "0"), ("x-trailer", "y")]);
                        frame::put_head(out, 2, kind::HEADERS, flag::END_STREAM, stream);
                        out.put_slice(&t[..2]);
                        frame::put_head(
                            out,
                            t.len() - 2,
                            kind::CONTINUATION,
                            flag::END_HEADERS,
                            stream,
                        );
                        out.put_slice(&t[2..]);
                    }
                    "/t/refused" => frame::put_rst(out, stream, code::REFUSED_STREAM),
                    "/t/only" => {
                        let b = block(&[
                            (":status", "200"),
                            ("content-type", "application/grpc"),
                            ("grpc-status", "7"),
                            ("grpc-message", "no%20way%20%E2%9C%93%zz"),
                        ]);
                        frame::put_headers(out, stream, &b, true, 16384);
                    }
                    "/t/http" => {
                        frame::put_headers(out, stream, &block(&[(":status", "503")]), true, 16384)
                    }
                    "/t/notrailers" => {
                        frame::put_headers(out, stream, &block(OK_HEADERS), false, 16384);
                        frame::put_data(out, stream, &grpc(b"x", 0), true, 16384);
                    }
                    "/t/compressed" => answer(out, stream, &grpc(b"x", 1), &[("grpc-status", "0")]),
                    "/t/two" => {
                        let mut two = grpc(b"a", 0);
                        two.extend(grpc(b"b", 0));
                        answer(out, stream, &two, &[("grpc-status", "0")]);
                    }
                    "/t/short" => {
                        answer(out, stream, &grpc(b"abc", 0)[..6], &[("grpc-status", "0")])
                    }
                    "/t/empty" => answer(out, stream, &[], &[("grpc-status", "0")]),
                    "/t/nostatus" => answer(out, stream, &grpc(b"x", 0), &[("x", "y")]),
                    "/t/ping" => {
                        frame::put_ping(out, false, *b"pingpong");
                        ping_for = Some(stream);
                    }
                    "/t/hold" => {}
                    "/t/bad" => frame::put_data(out, 0, b"nope", false, 16384),
                    _ => answer(out, stream, &[], &[("grpc-status", "12")]),
                },
            },
        )
        .await;
        let c = Client::connect(addr).await.unwrap();
        let call = |path: &'static str| {
            let c = c.clone();
            async move { c.unary(path, Bytes::from_static(b"hello")).await }
        };
        assert_eq!(call("/t/echo").await.unwrap(), "hello");
        assert_eq!(call("/t/split").await.unwrap(), "split message");
        let e = call("/t/refused").await.unwrap_err();
        assert_eq!(e.code, 14, "{e}");
        assert_eq!(
            call("/t/only").await.unwrap_err(),
            Status::new(7, "no way ✓%zz")
        );
        let e = call("/t/http").await.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (14, "HTTP status 503"));
        for bad in [
            "/t/notrailers",
            "/t/compressed",
            "/t/two",
            "/t/short",
            "/t/empty",
            "/t/nostatus",
        ] {
            let e = call(bad).await.unwrap_err();
            assert_eq!(e.code, 13, "{bad}: {e}");
        }
        assert_eq!(call("/t/ping").await.unwrap(), "ponged");
        // A caller that gives up leaves the connection usable.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), call("/t/hold"))
                .await
                .is_err()
        );
        assert_eq!(call("/t/echo").await.unwrap(), "hello");
        assert_eq!(
            c.unary("/t/unknown", Bytes::new()).await.unwrap_err().code,
            12
        );

        // A protocol error fails the calls in flight (INTERNAL) and the later ones
        // (UNAVAILABLE).
        let (held, bad) = tokio::join!(call("/t/hold"), call("/t/bad"));
        assert_eq!(held.unwrap_err().code, 13);
        let e = bad.unwrap_err();
        assert_eq!(e.code, 13, "{e}");
        assert!(e.message.contains("DATA on stream 0"), "{e}");
        let e = call("/t/echo").await.unwrap_err();
        assert_eq!(e.code, 14, "{e}");
        assert!(e.message.contains("DATA on stream 0"), "{e}");
    }

    #[tokio::test]
    async fn goaway_fails_unprocessed_and_new_calls() {
        let mut held = None;
        let addr = fake_server(vec![], move |ev, out| {
            if let Ev::Request { stream, path, .. } = ev {
                match path {
                    "/t/hold" => held = Some(stream),
                    _ => {
                        frame::put_goaway(out, stream - 2, code::NO_ERROR, b"bye");
                        if let Some(s) = held.take() {
                            answer(out, s, &grpc(b"done", 0), &[("grpc-status", "0")]);
                        }
                    }
                }
            }
        })
        .await;
        let c = Client::connect(addr).await.unwrap();
        let (a, b) = tokio::join!(
            c.unary("/t/hold", Bytes::new()),
            c.unary("/t/goaway", Bytes::new())
        );
        assert_eq!(
            a.unwrap(),
            "done",
            "streams up to the last one processed finish"
        );
        let e = b.unwrap_err();
        assert_eq!(e.code, 14, "{e}");
        assert!(e.message.contains("GOAWAY (NO_ERROR: bye)"), "{e}");
        let e = c.unary("/t/echo", Bytes::new()).await.unwrap_err();
        assert_eq!(e.code, 14, "{e}");
    }

    /// How a scripted server hands out flow-control credit.
    #[derive(Clone, Copy)]
    struct Credit {
        /// SETTINGS_INITIAL_WINDOW_SIZE in the server's preface.
        initial: u32,
        /// A later SETTINGS_INITIAL_WINDOW_SIZE, sent on the first request's HEADERS.
        raise_to: Option<u32>,
        /// A stream's window is refilled by `refill` once it falls below `low`.
        stream_low: i64,
        stream_refill: u32,
        /// The same for the connection's window.
        conn_low: i64,
        conn_refill: u32,
    }

    /// Four 30 KB requests through one stream at a time and tight windows: the server sees
    /// no window overrun and no second stream, and every call gets its echo.
    async fn windows_hold_requests_back(credit: Credit) {
        let trouble = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = trouble.clone();
        let mut initial = i64::from(credit.initial);
        let (mut open, mut conn_window, mut windows) = (0, 65_535i64, HashMap::<u32, i64>::new());
        let settings = vec![
            (setting::INITIAL_WINDOW_SIZE, credit.initial),
            (setting::MAX_CONCURRENT_STREAMS, 1),
        ];
        let addr = fake_server(settings, move |ev, out| {
            let problem = |m: String| seen.lock().unwrap().push(m);
            match ev {
                Ev::Frame(h, _) if h.kind == kind::HEADERS => {
                    open += 1;
                    if open > 1 {
                        problem(format!("{open} streams open"));
                    }
                    windows.insert(h.stream, initial);
                    if let Some(to) = credit.raise_to.filter(|to| i64::from(*to) != initial) {
                        frame::put_settings(out, &[(setting::INITIAL_WINDOW_SIZE, to)]);
                        for w in windows.values_mut() {
                            *w += i64::from(to) - initial;
                        }
                        initial = i64::from(to);
                    }
                }
                Ev::Frame(h, p) if h.kind == kind::DATA => {
                    let w = windows.get_mut(&h.stream).unwrap();
                    *w -= p.len() as i64;
                    conn_window -= p.len() as i64;
                    if *w < 0 || conn_window < 0 {
                        problem(format!(
                            "window overrun: stream {w}, connection {conn_window}"
                        ));
                    }
                    if *w < credit.stream_low {
                        frame::put_window_update(out, h.stream, credit.stream_refill);
                        *w += i64::from(credit.stream_refill);
                    }
                    if conn_window < credit.conn_low {
                        frame::put_window_update(out, 0, credit.conn_refill);
                        conn_window += i64::from(credit.conn_refill);
                    }
                }
                Ev::Request { stream, body, .. } => {
                    open -= 1;
                    answer(out, stream, body, &[("grpc-status", "0")]);
                }
                Ev::Frame(..) => {}
            }
        })
        .await;
        let c = Client::connect(addr).await.unwrap();
        let calls: Vec<_> = (0..4u8)
            .map(|i| {
                let c = c.clone();
                let m = Bytes::from(vec![i; 30_000 + usize::from(i)]);
                tokio::spawn(async move { (c.unary("/t/echo", m.clone()).await, m) })
            })
            .collect();
        for t in calls {
            let (got, sent) = t.await.unwrap();
            assert_eq!(got.unwrap(), sent);
        }
        assert_eq!(*trouble.lock().unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn request_bodies_wait_for_stream_windows() {
        let credit = Credit {
            initial: 1000,
            raise_to: None,
            stream_low: 500,
            stream_refill: 600,
            conn_low: 20_000,
            conn_refill: 40_000,
        };
        windows_hold_requests_back(credit).await;
    }

    #[tokio::test]
    async fn request_bodies_wait_for_the_connection_window() {
        let credit = Credit {
            initial: 1 << 20,
            raise_to: None,
            stream_low: 0,
            stream_refill: 0,
            conn_low: 1000,
            conn_refill: 7000,
        };
        windows_hold_requests_back(credit).await;
    }

    #[tokio::test]
    async fn request_bodies_wait_for_a_settings_window_raise() {
        let credit = Credit {
            initial: 0,
            raise_to: Some(100_000),
            stream_low: 0,
            stream_refill: 0,
            conn_low: 20_000,
            conn_refill: 40_000,
        };
        windows_hold_requests_back(credit).await;
    }

    #[test]
    fn percent_decoding_and_http_mapping() {
        use crate::grpc::percent_decode;
        assert_eq!(percent_decode(b"%ff"), "\u{fffd}");
        assert_eq!(http_status_to_grpc(Some(404), None).code, 12);
        assert_eq!(
            http_status_to_grpc(Some(401), Some("no")).message,
            "HTTP status 401: no"
        );
        assert_eq!(http_status_to_grpc(None, None).code, 13);
    }
}
