//! On-disk framing shared by log segments and snapshots.
//!
//! A file is a 24-byte header — 8-byte magic, `u32` format version, `u64` base LSN,
//! CRC-32C of those 20 bytes — followed by frames. A frame is `u32` payload length,
//! CRC-32C of the length bytes and the payload, then the payload (one encoded
//! [`Record`](super::record::Record)). A snapshot ends with a trailer: length
//! `u32::MAX`, the `u64` number of frames, and the CRC-32C of that count, so a snapshot cut
//! short is told from a complete one. All integers are little-endian.

/// Magic of a log segment.
pub const WAL_MAGIC: &[u8; 8] = b"BERTHWAL";
/// Magic of a snapshot.
pub const SNAP_MAGIC: &[u8; 8] = b"BERTHSNP";
/// Format version.
pub const VERSION: u32 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 24;
/// Frame header bytes (length + checksum).
pub const FRAME_HEADER: usize = 8;
/// Largest payload accepted (a server with a long action history is the biggest record;
/// anything above this is a damaged length field).
pub const MAX_PAYLOAD: usize = 64 << 20;
const TRAILER_MARK: u32 = u32::MAX;

/// A file header.
pub fn header(magic: &[u8; 8], base_lsn: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Parses a header: the base LSN, or what is wrong with it.
pub fn parse_header(magic: &[u8; 8], bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..8] != magic {
        return Err("bad magic: not a Berth file of this kind".into());
    }
    let crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if crc32c::crc32c(&bytes[..20]) != crc {
        return Err("header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(format!(
            "format version {version}; this engine reads version {VERSION}"
        ));
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[12..20]);
    Ok(u64::from_le_bytes(lsn))
}

/// Appends one frame holding `payload` to `out`.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a snapshot trailer counting `frames`.
pub fn push_trailer(out: &mut Vec<u8>, frames: u64) {
    let count = frames.to_le_bytes();
    out.extend_from_slice(&TRAILER_MARK.to_le_bytes());
    out.extend_from_slice(&count);
    out.extend_from_slice(&crc32c::crc32c(&count).to_le_bytes());
}

/// What is at an offset of a file body.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A verified frame: its payload and the offset after it.
    Frame(&'a [u8], usize),
    /// A verified trailer: the frame count it states.
    Trailer(u64),
    /// The end of the data, exactly at a frame boundary.
    End,
    /// Something that does not verify, and why.
    Bad(String),
}

/// Reads the item at `off` of `buf`.
pub fn read_item(buf: &[u8], off: usize) -> Item<'_> {
    let rest = &buf[off.min(buf.len())..];
    if rest.is_empty() {
        return Item::End;
    }
    if rest.len() < FRAME_HEADER {
        return Item::Bad(format!(
            "{} stray bytes, fewer than a frame header",
            rest.len()
        ));
    }
    let len_bytes = [rest[0], rest[1], rest[2], rest[3]];
    let len = u32::from_le_bytes(len_bytes);
    if len == TRAILER_MARK {
        if rest.len() < 16 {
            return Item::Bad("trailer cut short".into());
        }
        let mut count = [0u8; 8];
        count.copy_from_slice(&rest[4..12]);
        let crc = u32::from_le_bytes([rest[12], rest[13], rest[14], rest[15]]);
        if crc32c::crc32c(&count) != crc {
            return Item::Bad("trailer checksum mismatch".into());
        }
        return Item::Trailer(u64::from_le_bytes(count));
    }
    let len = len as usize;
    if len > MAX_PAYLOAD {
        return Item::Bad(format!(
            "frame length {len} exceeds the {MAX_PAYLOAD}-byte limit (damaged length)"
        ));
    }
    if rest.len() < FRAME_HEADER + len {
        return Item::Bad(format!(
            "frame of {len} bytes cut short: only {} follow",
            rest.len() - FRAME_HEADER
        ));
    }
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
    let actual = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    if actual != crc {
        return Item::Bad(format!(
            "checksum mismatch in a {len}-byte frame (stored {crc:08x}, computed {actual:08x})"
        ));
    }
    Item::Frame(payload, off + FRAME_HEADER + len)
}

/// After a bad item at `off`, the offset of the first later frame that verifies, if any:
/// tells damage in the middle of a file (verified data follows) from a torn tail.
/// Candidates longer than 1 MiB are skipped, which keeps the scan linear in practice (real
/// records are far smaller; a huge length read from garbage would checksum megabytes).
pub fn next_valid_frame(buf: &[u8], off: usize) -> Option<usize> {
    const RESYNC_MAX: u32 = 1 << 20;
    (off + 1..buf.len().saturating_sub(FRAME_HEADER - 1)).find(|&o| {
        let len = u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        if len == 0 || (len > RESYNC_MAX && len != TRAILER_MARK) {
            return false;
        }
        matches!(read_item(buf, o), Item::Frame(..) | Item::Trailer(_))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_caught() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"hello");
        push_frame(&mut buf, b"world!");
        push_trailer(&mut buf, 2);
        let Item::Frame(p, next) = read_item(&buf, 0) else {
            panic!("first frame")
        };
        assert_eq!(p, b"hello");
        let Item::Frame(p, next) = read_item(&buf, next) else {
            panic!("second frame")
        };
        assert_eq!(p, b"world!");
        assert_eq!(read_item(&buf, next), Item::Trailer(2));

        // A flipped payload byte fails the checksum; the second frame still verifies.
        let mut bad = buf.clone();
        bad[FRAME_HEADER + 1] ^= 0x40;
        assert!(matches!(read_item(&bad, 0), Item::Bad(m) if m.contains("checksum")));
        assert_eq!(next_valid_frame(&bad, 0), Some(FRAME_HEADER + 5));

        // A cut tail: the frame is short, and nothing valid follows.
        let cut = &buf[..FRAME_HEADER + 5 + 3];
        assert!(matches!(read_item(cut, FRAME_HEADER + 5), Item::Bad(m) if m.contains("fewer")));
        assert_eq!(next_valid_frame(cut, FRAME_HEADER + 5), None);
        let cut = &buf[..FRAME_HEADER + 5 + FRAME_HEADER + 2];
        assert!(
            matches!(read_item(cut, FRAME_HEADER + 5), Item::Bad(m) if m.contains("cut short"))
        );

        // A damaged length is refused before it is trusted.
        let mut huge = buf.clone();
        huge[3] = 0x7f;
        assert!(matches!(read_item(&huge, 0), Item::Bad(m) if m.contains("limit")));
    }

    #[test]
    fn headers_check_magic_version_and_checksum() {
        let h = header(WAL_MAGIC, 42);
        assert_eq!(parse_header(WAL_MAGIC, &h), Ok(42));
        assert!(parse_header(SNAP_MAGIC, &h).unwrap_err().contains("magic"));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(
            parse_header(WAL_MAGIC, &bad)
                .unwrap_err()
                .contains("checksum")
        );
        assert!(
            parse_header(WAL_MAGIC, &h[..10])
                .unwrap_err()
                .contains("shorter")
        );
    }
}
