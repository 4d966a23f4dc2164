//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte header, the types and flags this transport
//! uses, SETTINGS, and writers that append frames to an output buffer.

use bytes::{BufMut, BytesMut};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame header length.
pub const HEADER_LEN: usize = 9;

/// Frame types.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0;
    /// HEADERS.
    pub const HEADERS: u8 = 1;
    /// PRIORITY (deprecated; ignored).
    pub const PRIORITY: u8 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 4;
    /// PUSH_PROMISE (never accepted: push is disabled).
    pub const PUSH_PROMISE: u8 = 5;
    /// PING.
    pub const PING: u8 = 6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS).
    pub const END_STREAM: u8 = 0x1;
    /// ACK (SETTINGS, PING).
    pub const ACK: u8 = 0x1;
    /// END_HEADERS (HEADERS, CONTINUATION).
    pub const END_HEADERS: u8 = 0x4;
    /// PADDED (DATA, HEADERS).
    pub const PADDED: u8 = 0x8;
    /// PRIORITY (HEADERS).
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    /// Graceful shutdown.
    pub const NO_ERROR: u32 = 0x0;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// Implementation fault.
    pub const INTERNAL_ERROR: u32 = 0x2;
    /// Flow-control limits exceeded.
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    /// Frame received for a closed stream.
    pub const STREAM_CLOSED: u32 = 0x5;
    /// Frame size incorrect.
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    /// Stream not processed.
    pub const REFUSED_STREAM: u32 = 0x7;
    /// Stream cancelled.
    pub const CANCEL: u32 = 0x8;
    /// Header compression state broken.
    pub const COMPRESSION_ERROR: u32 = 0x9;
    /// Too much of something.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// SETTINGS identifiers.
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// The protocol's defaults and bounds.
pub const DEFAULT_WINDOW: u32 = 65_535;
/// Largest window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Default and smallest SETTINGS_MAX_FRAME_SIZE.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
/// Largest SETTINGS_MAX_FRAME_SIZE.
pub const MAX_MAX_FRAME: u32 = (1 << 24) - 1;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: usize,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id (the reserved bit cleared).
    pub stream: u32,
}

impl Head {
    /// Reads a frame header from the first 9 bytes of `b` (`None` if shorter).
    pub fn parse(b: &[u8]) -> Option<Head> {
        let h: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Head {
            len: (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & MAX_WINDOW,
        })
    }

    /// Whether `f` is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Appends a frame header.
pub fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME as usize);
    out.reserve(HEADER_LEN + len);
    out.put_u8((len >> 16) as u8);
    out.put_u8((len >> 8) as u8);
    out.put_u8(len as u8);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream & MAX_WINDOW);
}

/// Appends a SETTINGS frame with `values` (id, value).
pub fn put_settings(out: &mut BytesMut, values: &[(u16, u32)]) {
    put_head(out, values.len() * 6, kind::SETTINGS, 0, 0);
    for (id, v) in values {
        out.put_u16(*id);
        out.put_u32(*v);
    }
}

/// Appends a SETTINGS acknowledgement.
pub fn put_settings_ack(out: &mut BytesMut) {
    put_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Appends a WINDOW_UPDATE.
pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    put_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment & MAX_WINDOW);
}

/// Appends a RST_STREAM.
pub fn put_rst(out: &mut BytesMut, stream: u32, error: u32) {
    put_head(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(error);
}

/// Appends a GOAWAY naming the last stream processed.
pub fn put_goaway(out: &mut BytesMut, last_stream: u32, error: u32, debug: &[u8]) {
    put_head(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.put_u32(last_stream & MAX_WINDOW);
    out.put_u32(error);
    out.put_slice(debug);
}

/// Appends a PING (or its acknowledgement).
pub fn put_ping(out: &mut BytesMut, ack: bool, payload: [u8; 8]) {
    put_head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.put_slice(&payload);
}

/// Appends DATA frames carrying `data`, split at `max_frame`; END_STREAM on the last if
/// `end`. An empty `data` with `end` is one empty frame.
pub fn put_data(out: &mut BytesMut, stream: u32, data: &[u8], end: bool, max_frame: usize) {
    let mut rest = data;
    loop {
        let n = rest.len().min(max_frame);
        let last = n == rest.len();
        put_head(
            out,
            n,
            kind::DATA,
            if last && end { flag::END_STREAM } else { 0 },
            stream,
        );
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
        if last {
            return;
        }
    }
}

/// Appends a header block as HEADERS plus CONTINUATION frames of at most `max_frame`.
pub fn put_headers(
    out: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut rest = block;
    let mut first = true;
    loop {
        let n = rest.len().min(max_frame);
        let last = n == rest.len();
        let mut flags = if last { flag::END_HEADERS } else { 0 };
        let kind = if first {
            if end_stream {
                flags |= flag::END_STREAM;
            }
            kind::HEADERS
        } else {
            kind::CONTINUATION
        };
        put_head(out, n, kind, flags, stream);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
        if last {
            return;
        }
    }
}

/// A peer's SETTINGS as they stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_HEADER_TABLE_SIZE: the most our encoder may use of the peer's table.
    pub header_table_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (`u32::MAX` when unset).
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub initial_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (`u32::MAX` when unset).
    pub max_header_list: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_table_size: 4096,
            max_concurrent_streams: u32::MAX,
            initial_window: DEFAULT_WINDOW,
            max_frame: DEFAULT_MAX_FRAME,
            max_header_list: u32::MAX,
        }
    }
}

/// Why a SETTINGS frame was refused: the error code and what was wrong.
pub type SettingsError = (u32, &'static str);

impl Settings {
    /// Applies a SETTINGS payload. Unknown identifiers are ignored (RFC 9113 §6.5.2).
    pub fn apply(&mut self, payload: &[u8]) -> Result<(), SettingsError> {
        if !payload.len().is_multiple_of(6) {
            return Err((
                code::FRAME_SIZE_ERROR,
                "SETTINGS length not a multiple of 6",
            ));
        }
        for c in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([c[0], c[1]]);
            let v = u32::from_be_bytes([c[2], c[3], c[4], c[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => self.header_table_size = v,
                setting::ENABLE_PUSH if v > 1 => {
                    return Err((code::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH above 1"));
                }
                setting::MAX_CONCURRENT_STREAMS => self.max_concurrent_streams = v,
                setting::INITIAL_WINDOW_SIZE => {
                    if v > MAX_WINDOW {
                        return Err((
                            code::FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    self.initial_window = v;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME..=MAX_MAX_FRAME).contains(&v) {
                        return Err((code::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.max_frame = v;
                }
                setting::MAX_HEADER_LIST_SIZE => self.max_header_list = v,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Strips the padding of a PADDED frame's payload (and the priority fields of a HEADERS
/// frame with PRIORITY). `Err` if the lengths do not add up (a PROTOCOL_ERROR).
pub fn unpad(head: &Head, payload: &[u8]) -> Result<std::ops::Range<usize>, &'static str> {
    let mut start = 0;
    let mut end = payload.len();
    if head.has(flag::PADDED) {
        let pad = usize::from(*payload.first().ok_or("PADDED frame without a pad length")?);
        start = 1;
        end = end
            .checked_sub(pad)
            .filter(|e| *e >= start)
            .ok_or("padding longer than the frame")?;
    }
    if head.kind == kind::HEADERS && head.has(flag::PRIORITY) {
        start += 5;
        if start > end {
            return Err("HEADERS too short for its priority fields");
        }
    }
    Ok(start..end)
}

/// The checks every DATA frame gets before its stream's own, on either side: not on
/// stream 0, within the connection's receive window (debited here by the whole payload,
/// padding included, whatever the stream's state), padding that adds up. Returns where
/// the data lies in `payload`, or the connection error (code, reason).
pub fn take_data(
    head: &Head,
    payload: &[u8],
    window: &mut i64,
) -> Result<std::ops::Range<usize>, (u32, &'static str)> {
    if head.stream == 0 {
        return Err((code::PROTOCOL_ERROR, "DATA on stream 0"));
    }
    *window -= head.len as i64;
    if *window < 0 {
        return Err((
            code::FLOW_CONTROL_ERROR,
            "DATA beyond the connection window",
        ));
    }
    unpad(head, payload).map_err(|w| (code::PROTOCOL_ERROR, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trip() {
        let mut b = BytesMut::new();
        put_head(
            &mut b,
            0x012345,
            kind::HEADERS,
            flag::END_HEADERS,
            0x8000_0007,
        );
        let h = Head::parse(&b).unwrap();
        assert_eq!(h.len, 0x012345);
        assert_eq!(h.kind, kind::HEADERS);
        assert!(h.has(flag::END_HEADERS));
        assert_eq!(h.stream, 7, "the reserved bit is dropped");
        assert_eq!(Head::parse(&b[..8]), None);
    }

    #[test]
    fn data_and_headers_split_at_max_frame() {
        let mut b = BytesMut::new();
        put_data(&mut b, 1, &[7u8; 40], true, 16);
        let sizes: Vec<(usize, u8)> = frames(&b).iter().map(|h| (h.len, h.flags)).collect();
        assert_eq!(sizes, vec![(16, 0), (16, 0), (8, flag::END_STREAM)]);
        let mut b = BytesMut::new();
        put_headers(&mut b, 3, &[1u8; 20], true, 16);
        let f = frames(&b);
        assert_eq!(f[0].kind, kind::HEADERS);
        assert_eq!(f[0].flags, flag::END_STREAM);
        assert_eq!(f[1].kind, kind::CONTINUATION);
        assert_eq!(f[1].flags, flag::END_HEADERS);
    }

    fn frames(mut b: &[u8]) -> Vec<Head> {
        let mut v = Vec::new();
        while let Some(h) = Head::parse(b) {
            b = &b[HEADER_LEN + h.len..];
            v.push(h);
        }
        v
    }

    #[test]
    fn settings_validate() {
        let mut s = Settings::default();
        let mut p = Vec::new();
        for (id, v) in [
            (setting::INITIAL_WINDOW_SIZE, 1u32 << 20),
            (setting::MAX_FRAME_SIZE, 32768),
            (0x99, 5),
        ] {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        s.apply(&p).unwrap();
        assert_eq!((s.initial_window, s.max_frame), (1 << 20, 32768));
        assert_eq!(s.apply(&p[..5]).unwrap_err().0, code::FRAME_SIZE_ERROR);
        let bad = [0, 5, 0, 0, 0, 1];
        assert_eq!(s.apply(&bad).unwrap_err().0, code::PROTOCOL_ERROR);
        let bad = [0, 4, 0x80, 0, 0, 0];
        assert_eq!(s.apply(&bad).unwrap_err().0, code::FLOW_CONTROL_ERROR);
    }

    #[test]
    fn unpad_checks_lengths() {
        let h = Head {
            len: 6,
            kind: kind::DATA,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(unpad(&h, &[2, b'a', b'b', b'c', 0, 0]).unwrap(), 1..4);
        assert!(unpad(&h, &[9, 1, 2]).is_err());
        assert!(unpad(&h, &[]).is_err());
        let h = Head {
            len: 6,
            kind: kind::HEADERS,
            flags: flag::PRIORITY,
            stream: 1,
        };
        assert_eq!(unpad(&h, &[0, 0, 0, 0, 0, 9]).unwrap(), 5..6);
        assert!(unpad(&h, &[0, 0]).is_err());
    }
}
