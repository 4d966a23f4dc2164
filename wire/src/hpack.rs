//! HPACK (RFC 7541) for this transport. Huffman decoding is `httlib_huffman`'s (flattened
//! tables); the rest is here and small. Answers are written as literals (no Huffman, never
//! added to the peer's table), which every decoder accepts and which costs a copy; a client
//! may index the few headers it repeats on every call ([`Indexer`]), so after the first
//! call each costs the server one byte to decode.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};

/// Appends an HPACK integer with an `n`-bit prefix; `first` holds the bits above the prefix.
pub fn put_int(out: &mut BytesMut, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.put_u8(first | v as u8);
        return;
    }
    out.put_u8(first | max as u8);
    v -= max;
    while v >= 128 {
        out.put_u8((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.put_slice(s);
}

/// The static table's index for a header name we send often (RFC 7541 Appendix A).
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"authorization" => 23,
        b"content-type" => 31,
        b"user-agent" => 58,
        _ => return None,
    })
}

/// Appends `name: value` as a literal not added to the peer's table; `sensitive` makes it
/// "never indexed", so intermediaries keep it out of their tables too.
pub fn put_literal(out: &mut BytesMut, name: &[u8], value: &[u8], sensitive: bool) {
    let first = if sensitive { 0x10 } else { 0x00 };
    match static_name(name) {
        Some(i) => put_int(out, first, 4, i),
        None => {
            out.put_u8(first);
            put_str(out, name);
        }
    }
    put_str(out, value);
}

/// Appends `:status` (one byte for 200, the static table's entry).
pub fn put_status(out: &mut BytesMut, status: u16) {
    if status == 200 {
        out.put_u8(0x88);
    } else {
        let mut buf = [0u8; 3];
        let s = status.min(999);
        buf[0] = b'0' + (s / 100) as u8;
        buf[1] = b'0' + (s / 10 % 10) as u8;
        buf[2] = b'0' + (s % 10) as u8;
        put_literal(out, b":status", &buf, false);
    }
}

/// An encoder's view of the peer's dynamic table, for a client that repeats the same few
/// headers on every call: the first use adds `name: value` to the table, later uses send
/// its index. Entries are never evicted by us beyond the table's size rules, and only
/// headers the caller marks as repeating are indexed.
#[derive(Debug)]
pub struct Indexer {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
    /// A size update to send at the start of the next block (the peer's limit fell).
    pending_update: Option<usize>,
}

impl Indexer {
    /// An indexer for a peer whose table holds `max` bytes (SETTINGS_HEADER_TABLE_SIZE).
    pub fn new(max: usize) -> Self {
        Indexer {
            entries: VecDeque::new(),
            size: 0,
            max,
            pending_update: None,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed.
    pub fn set_max(&mut self, max: usize) {
        // The peer's decoder changes its table size only when we say so: every change is
        // announced at the start of the next block. Beyond 4096 bytes there is nothing for
        // the few headers we index to gain.
        let max = max.min(4096);
        if max != self.max {
            self.max = max;
            self.evict(0);
            self.pending_update = Some(max);
        }
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    /// Starts a header block (a pending table size update goes first).
    pub fn begin(&mut self, out: &mut BytesMut) {
        if let Some(m) = self.pending_update.take() {
            put_int(out, 0x20, 5, m);
        }
    }

    /// Appends `name: value`, indexed if it is (or now becomes) in the peer's table.
    pub fn put(&mut self, out: &mut BytesMut, name: &[u8], value: &[u8]) {
        if let Some(pos) = self
            .entries
            .iter()
            .position(|(n, v)| n == name && v == value)
        {
            put_int(out, 0x80, 7, 62 + pos);
            return;
        }
        let size = name.len() + value.len() + 32;
        if size > self.max {
            put_literal(out, name, value, false);
            return;
        }
        match static_name(name) {
            Some(i) => put_int(out, 0x40, 6, i),
            None => {
                out.put_u8(0x40);
                put_str(out, name);
            }
        }
        put_str(out, value);
        self.evict(size);
        self.entries.push_front((name.to_vec(), value.to_vec()));
        self.size += size;
    }
}

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The table size our SETTINGS allow (the default; we never announce another).
pub const TABLE_SIZE: usize = 4096;

/// A header block decoder (one per connection direction): the dynamic table, and scratch
/// space for Huffman-coded strings so that decoding a block allocates nothing once warm.
/// (loona-hpack, tried first, builds a hash map for its Huffman decoder on every string:
/// ~60% of a Health/Check's server time.)
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            name: Vec::new(),
            value: Vec::new(),
        }
    }
}

/// A string's place: in the block, or decoded into a scratch buffer.
#[derive(Clone, Copy)]
enum Str {
    Raw(usize, usize),
    Huffman,
}

/// Reads an integer with an `n`-bit prefix at `b[*at]`.
fn get_int(b: &[u8], at: &mut usize, n: u32) -> Result<usize, &'static str> {
    let max = (1usize << n) - 1;
    let first = *b.get(*at).ok_or("truncated integer")? as usize & max;
    *at += 1;
    if first < max {
        return Ok(first);
    }
    let mut v = max;
    let mut shift = 0;
    loop {
        let byte = *b.get(*at).ok_or("truncated integer")?;
        *at += 1;
        v += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
        if shift > 21 {
            return Err("integer too large");
        }
    }
}

impl Decoder {
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), &'static str> {
        match index {
            0 => Err("index 0"),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or("index beyond the dynamic table"),
        }
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        if size <= self.max {
            self.table.push_front((name, value));
            self.size += size;
        }
    }

    /// Reads a string; a Huffman-coded one is decoded into `scratch`.
    fn string(
        &mut self,
        b: &[u8],
        at: &mut usize,
        scratch: &mut Vec<u8>,
    ) -> Result<Str, &'static str> {
        let huffman = b.get(*at).ok_or("truncated string")? & 0x80 != 0;
        let len = get_int(b, at, 7)?;
        let end = at
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or("truncated string")?;
        let start = *at;
        *at = end;
        if huffman {
            scratch.clear();
            httlib_huffman::decode(
                &b[start..end],
                scratch,
                httlib_huffman::DecoderSpeed::FiveBits,
            )
            .map_err(|_| "bad Huffman string")?;
            Ok(Str::Huffman)
        } else {
            Ok(Str::Raw(start, end))
        }
    }

    /// Decodes a complete header block, calling `each(name, value)` per field.
    pub fn decode(&mut self, b: &[u8], mut each: impl FnMut(&[u8], &[u8])) -> Result<(), String> {
        self.decode_inner(b, &mut each).map_err(str::to_owned)
    }

    fn decode_inner(
        &mut self,
        b: &[u8],
        each: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), &'static str> {
        let mut at = 0;
        let mut fields = 0;
        while at < b.len() {
            let first = b[at];
            if first & 0x80 != 0 {
                let i = get_int(b, &mut at, 7)?;
                let (n, v) = self.get(i)?;
                each(n, v);
                fields += 1;
                continue;
            }
            if first & 0xe0 == 0x20 {
                if fields > 0 {
                    return Err("table size update after a header field");
                }
                let m = get_int(b, &mut at, 5)?;
                if m > TABLE_SIZE {
                    return Err("table size update above SETTINGS_HEADER_TABLE_SIZE");
                }
                self.max = m;
                self.evict(0);
                continue;
            }
            let (indexing, prefix) = if first & 0xc0 == 0x40 {
                (true, 6)
            } else {
                (false, 4)
            };
            let i = get_int(b, &mut at, prefix)?;
            let mut name_scratch = std::mem::take(&mut self.name);
            let mut value_scratch = std::mem::take(&mut self.value);
            let r = (|| -> Result<(), &'static str> {
                let name: Str = if i == 0 {
                    self.string(b, &mut at, &mut name_scratch)?
                } else {
                    let (n, _) = self.get(i)?;
                    name_scratch.clear();
                    name_scratch.extend_from_slice(n);
                    Str::Huffman
                };
                let value = self.string(b, &mut at, &mut value_scratch)?;
                let n = match name {
                    Str::Raw(s, e) => &b[s..e],
                    Str::Huffman => &name_scratch[..],
                };
                let v = match value {
                    Str::Raw(s, e) => &b[s..e],
                    Str::Huffman => &value_scratch[..],
                };
                each(n, v);
                if indexing {
                    self.insert(n.to_vec(), v.to_vec());
                }
                Ok(())
            })();
            self.name = name_scratch;
            self.value = value_scratch;
            r?;
            fields += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(d: &mut Decoder, b: &[u8]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        d.decode(b, |n, val| {
            v.push((
                String::from_utf8_lossy(n).into(),
                String::from_utf8_lossy(val).into(),
            ))
        })
        .unwrap();
        v
    }

    #[test]
    fn literals_and_status_decode() {
        let mut b = BytesMut::new();
        put_status(&mut b, 200);
        put_status(&mut b, 404);
        put_literal(&mut b, b"content-type", b"application/grpc", false);
        put_literal(&mut b, b"x-request-id", b"abc", true);
        put_literal(&mut b, b"grpc-message", &[b'x'; 300], false);
        let got = decode(&mut Decoder::default(), &b);
        assert_eq!(got[0], (":status".into(), "200".into()));
        assert_eq!(got[1], (":status".into(), "404".into()));
        assert_eq!(got[2], ("content-type".into(), "application/grpc".into()));
        assert_eq!(got[3], ("x-request-id".into(), "abc".into()));
        assert_eq!(got[4].1.len(), 300);
    }

    #[test]
    fn indexer_matches_a_real_decoder_across_blocks() {
        let mut ix = Indexer::new(4096);
        let mut d = Decoder::default();
        let mut first = BytesMut::new();
        for _ in 0..3 {
            let mut b = BytesMut::new();
            ix.begin(&mut b);
            ix.put(&mut b, b":path", b"/berth.v1.Scheduler/Release");
            ix.put(&mut b, b"te", b"trailers");
            ix.put(&mut b, b"authorization", b"Bearer t");
            let got = decode(&mut d, &b);
            assert_eq!(
                got[0],
                (":path".into(), "/berth.v1.Scheduler/Release".into())
            );
            assert_eq!(got[1], ("te".into(), "trailers".into()));
            assert_eq!(got[2], ("authorization".into(), "Bearer t".into()));
            if first.is_empty() {
                first = b;
            } else {
                assert_eq!(b.len(), 3, "one byte per header once indexed");
            }
        }
        // The peer shrinks its table: a size update goes first and nothing stays indexed.
        ix.set_max(0);
        let mut b = BytesMut::new();
        ix.begin(&mut b);
        ix.put(&mut b, b"te", b"trailers");
        assert_eq!(decode(&mut d, &b), vec![("te".into(), "trailers".into())]);
        // And grows it again: announced too, so both sides agree on what is indexed.
        ix.set_max(4096);
        for _ in 0..2 {
            let mut b = BytesMut::new();
            ix.begin(&mut b);
            ix.put(&mut b, b"te", b"trailers");
            ix.put(&mut b, b":path", b"/x");
            assert_eq!(
                decode(&mut d, &b),
                vec![
                    ("te".into(), "trailers".into()),
                    (":path".into(), "/x".into())
                ]
            );
        }
    }

    #[test]
    fn integers_cross_the_prefix() {
        let mut d = Decoder::default();
        let mut b = BytesMut::new();
        put_literal(&mut b, b"k", &vec![b'v'; 127 + 128 * 3], false);
        assert_eq!(decode(&mut d, &b)[0].1.len(), 127 + 128 * 3);
    }

    fn loona(d: &mut loona_hpack::Decoder<'static>, b: &[u8]) -> Result<Vec<(String, String)>, ()> {
        let mut v = Vec::new();
        d.decode_with_cb(b, |n, val| {
            v.push((
                String::from_utf8_lossy(&n).into(),
                String::from_utf8_lossy(&val).into(),
            ))
        })
        .map_err(|_| ())?;
        Ok(v)
    }

    #[test]
    fn static_table_agrees_with_loona() {
        for i in 1..=61u8 {
            let b = [0x80 | i];
            let ours = decode(&mut Decoder::default(), &b);
            assert_eq!(
                Ok(ours),
                loona(&mut loona_hpack::Decoder::new(), &b),
                "index {i}"
            );
        }
    }

    /// One field as a test encodes it: representation 0 = incremental indexing, 1 =
    /// without, 2 = never indexed; name by static index or literal; Huffman or not.
    fn encode_field(out: &mut BytesMut, name: &str, value: &str, repr: u8, huffman: bool) {
        let (first, prefix) = match repr {
            0 => (0x40, 6),
            1 => (0x00, 4),
            _ => (0x10, 4),
        };
        let string = |out: &mut BytesMut, s: &str| {
            if huffman {
                let mut h = Vec::new();
                httlib_huffman::encode(s.as_bytes(), &mut h).unwrap();
                put_int(out, 0x80, 7, h.len());
                out.put_slice(&h);
            } else {
                put_str(out, s.as_bytes());
            }
        };
        match STATIC.iter().position(|(n, _)| *n == name) {
            Some(i) => put_int(out, first, prefix, i + 1),
            None => {
                put_int(out, first, prefix, 0);
                string(out, name);
            }
        }
        string(out, value);
    }

    #[test]
    fn repeated_long_huffman_strings_decode_the_same() {
        let mut d = Decoder::default();
        let tokens: Vec<String> = (0..7)
            .map(|i| format!("Bearer eyJhbGciOiJIUzI1NiJ9.{}.sig{i}", "x".repeat(40 + i)))
            .collect();
        // Each token twice in a row, then all again: the cache holds 4 of the 7.
        for t in tokens.iter().flat_map(|t| [t, t]).chain(tokens.iter()) {
            let mut b = BytesMut::new();
            encode_field(&mut b, "authorization", t, 2, true);
            assert_eq!(
                decode(&mut d, &b),
                vec![("authorization".into(), t.clone())]
            );
        }
    }

    proptest! {
        /// Blocks of literal fields (indexed into the dynamic table or not, Huffman or not),
        /// then references to what the table should hold: we and loona-hpack agree.
        #[test]
        fn agrees_with_loona(
            blocks in proptest::collection::vec(
                proptest::collection::vec(
                    ("(content-type|te|user-agent|x-[a-z]{1,8}|:path)", "[ -~]{0,80}", 0u8..3, any::<bool>()),
                    1..6),
                1..6),
            refs in proptest::collection::vec(1usize..80, 0..6),
        ) {
            let mut ours = Decoder::default();
            let mut theirs = loona_hpack::Decoder::new();
            for block in blocks {
                let mut b = BytesMut::new();
                for (n, v, repr, h) in &block {
                    encode_field(&mut b, n, v, *repr, *h);
                }
                let mut got = Vec::new();
                let r = ours.decode(&b, |n, v| got.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned())));
                prop_assert!(r.is_ok());
                prop_assert_eq!(Ok(got), loona(&mut theirs, &b));
            }
            for i in refs {
                let mut b = BytesMut::new();
                put_int(&mut b, 0x80, 7, i);
                let mut got = Vec::new();
                let r = ours.decode(&b, |n, v| got.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned())));
                let t = loona(&mut theirs, &b);
                prop_assert_eq!(r.is_ok(), t.is_ok(), "index {}", i);
                if let Ok(t) = t {
                    prop_assert_eq!(got, t);
                }
            }
        }

        /// Whatever bytes a peer sends, decoding returns (maybe an error) and never panics.
        #[test]
        fn decoding_garbage_never_panics(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
            let mut d = Decoder::default();
            for b in blocks {
                let _ = d.decode(&b, |_, _| {});
            }
        }
    }
}
