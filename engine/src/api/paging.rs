//! Page tokens: opaque to clients, here simply the sort key of the last item returned.

use tonic::Status;

use super::status::invalid;

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the client asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// Returns the page of `items` (sorted by `key`) after `token`, and the next token.
pub fn page<T>(
    mut items: Vec<T>,
    page_size: u32,
    token: &str,
    key: impl Fn(&T) -> String,
) -> Result<(Vec<T>, String), Status> {
    if page_size > MAX_PAGE_SIZE {
        return Err(invalid(
            "page_size",
            format!("{page_size} exceeds the maximum {MAX_PAGE_SIZE}"),
        ));
    }
    let size = if page_size == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        page_size
    } as usize;
    if token.len() > 512 {
        return Err(invalid("page_token", "is not a token this server issued"));
    }
    items.sort_by_key(|a| key(a));
    let start = if token.is_empty() {
        0
    } else {
        items.partition_point(|i| key(i).as_str() <= token)
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let next = if rest.len() > size {
        rest.truncate(size);
        rest.last().map(&key).unwrap_or_default()
    } else {
        String::new()
    };
    Ok((rest, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_everything_once() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (p, next) = page(items.clone(), 10, &token, |s| s.clone()).unwrap();
            seen.extend(p);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, items);
        assert!(page(items.clone(), 5000, "", |s| s.clone()).is_err());
    }
}
