//! gRPC's `grpc-message` encoding (percent-encoding), shared by both sides and the
//! engine's layers.

/// grpc-message's encoding: printable ASCII but `%` as is, the rest as `%XX`.
pub fn percent_encode(s: &str) -> String {
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

/// Decodes a `grpc-message` (percent-encoded UTF-8; malformed escapes stay as they are).
pub fn percent_decode(v: &[u8]) -> String {
    if !v.contains(&b'%') {
        return String::from_utf8_lossy(v).into_owned();
    }
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                v.get(i + 1).and_then(|&b| hex(b)),
                v.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(percent_decode(b"no%20valid%20host"), "no valid host");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"a%20b%2"), "a b%2");
        assert_eq!(percent_decode(b"%E2%9C%93 ok"), "\u{2713} ok");
        let s = "disk 100% full\n \u{2713}";
        assert_eq!(percent_decode(percent_encode(s).as_bytes()), s);
    }
}
