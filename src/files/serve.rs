//! How file content is served from the API's origin: byte ranges, `ETag`, and headers that
//! keep user content from running as part of the site (`nosniff`, a sandbox, and
//! `Content-Disposition: attachment` for every type a browser would run or render as active
//! content, whatever type the uploader declared).

use std::ops::Range;

/// What a `Range` header asks of content of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranged {
    /// No (usable) range: the whole content.
    Whole,
    /// One satisfiable range (end exclusive).
    Part(Range<u64>),
    /// A range of bytes that cannot be served: 416.
    Unsatisfiable,
}

/// Parses a `Range` header (one `bytes=` range; several ranges are served whole, as RFC
/// 9110 allows). A malformed `bytes=` range is unsatisfiable; other units are ignored.
pub fn parse_range(header: Option<&str>, size: u64) -> Ranged {
    let Some(spec) = header.map(str::trim) else {
        return Ranged::Whole;
    };
    let Some(set) = spec.strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if set.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ranged::Unsatisfiable;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| {
        s.parse::<u64>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
    };
    let range = match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) | None => return Ranged::Unsatisfiable,
            Some(n) => size.saturating_sub(n)..size,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return Ranged::Unsatisfiable;
            };
            let end = if last.is_empty() {
                size
            } else {
                match parse(last) {
                    Some(l) if l >= start => l.saturating_add(1).min(size),
                    _ => return Ranged::Unsatisfiable,
                }
            };
            start..end
        }
        (true, true) => return Ranged::Unsatisfiable,
    };
    if range.start >= size || range.is_empty() {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part(range)
}

/// Types a browser runs or renders as active content (scripts, markup, PDF).
fn is_active_type(mime: &str) -> bool {
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.contains("html")
        || essence.contains("xml")
        || essence.contains("svg")
        || essence.contains("javascript")
        || essence.contains("ecmascript")
        || essence == "application/pdf"
        || essence == "text/css"
        || essence == "application/wasm"
        || essence.is_empty()
}

fn is_active_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
    matches!(
        ext,
        "html"
            | "htm"
            | "xhtml"
            | "shtml"
            | "svg"
            | "svgz"
            | "xml"
            | "xsl"
            | "xslt"
            | "js"
            | "mjs"
            | "pdf"
            | "css"
            | "wasm"
            | "swf"
    )
}

/// Whether content must be served as an attachment: a declared or sniffed active type, or a
/// name that a browser would open as one.
pub fn must_attach(name: &str, declared: &str, sniffed: Option<&str>) -> bool {
    is_active_type(declared) || sniffed.is_some_and(is_active_type) || is_active_name(name)
}

/// The type content is served as: the declared one, unless it is not a well-formed MIME type.
pub fn content_type(declared: &str) -> String {
    match declared.parse::<mime::Mime>() {
        Ok(m) => m.to_string(),
        Err(_) => "application/octet-stream".to_owned(),
    }
}

/// `Content-Disposition` with an ASCII `filename` fallback and the exact name as RFC 6266
/// / RFC 8187 `filename*` (percent-encoded UTF-8), so no name can break out of the header.
pub fn disposition(name: &str, attach: bool) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if attach { "attachment" } else { "inline" };
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 10), Ranged::Whole);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Ranged::Part(0..4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ranged::Part(5..10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ranged::Part(7..10));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ranged::Part(8..10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Ranged::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Ranged::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=x-2"), 10), Ranged::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ranged::Whole);
        assert_eq!(parse_range(Some("lines=1-2"), 10), Ranged::Whole);
    }

    #[test]
    fn active_content_is_attached_whatever_its_declared_type() {
        assert!(must_attach("a.png", "text/html", None));
        assert!(must_attach("a.png", "image/png", Some("image/svg+xml")));
        assert!(must_attach("page.html", "image/png", Some("image/png")));
        assert!(must_attach("doc", "application/pdf", None));
        assert!(!must_attach("photo.jpg", "image/jpeg", Some("image/jpeg")));
    }

    #[test]
    fn a_name_cannot_break_out_of_the_header() {
        let d = disposition("a\"b\r\nSet-Cookie: x.txt", true);
        assert!(!d.contains('\r') && !d.contains('\n'));
        assert!(d.starts_with("attachment; filename=\"a_b__Set-Cookie: x.txt\""));
        assert!(d.contains("filename*=UTF-8''a%22b%0D%0ASet-Cookie%3A%20x.txt"));
        assert!(disposition("résumé.pdf", false).contains("r%C3%A9sum%C3%A9.pdf"));
    }
}
