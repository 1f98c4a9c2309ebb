//! What the fuzz targets share: how one fuzz input becomes a request's `Content-Type` and body.

/// Splits a fuzz input into a `Content-Type` header value and a body.
///
/// The first byte `n` says which content type:
/// - `n < 0xF0`: the next `n` bytes, as text (invalid UTF-8 replaced), then the body is the rest;
/// - `0xF0`: no `Content-Type` at all;
/// - `0xF1` to `0xF5`: one of [`PRESETS`], so the fuzzer reaches the parsers behind the media
///   type check at once; any other byte is `text/plain`.
///
/// An input can be written by hand: `printf '\xf1vote=a'` is a form body `vote=a`.
pub fn content_type_and_body(data: &[u8]) -> (Option<String>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (None, data);
    };
    if n < 0xF0 {
        let (content_type, body) = rest.split_at(usize::from(n).min(rest.len()));
        return (Some(String::from_utf8_lossy(content_type).into_owned()), body);
    }
    let content_type = match n {
        0xF0 => None,
        0xF1..=0xF5 => Some(PRESETS[usize::from(n - 0xF1)].to_owned()),
        _ => Some("text/plain".to_owned()),
    };
    (content_type, rest)
}

/// The content types selected by the bytes `0xF1` to `0xF5`.
pub const PRESETS: [&str; 5] = [
    "application/x-www-form-urlencoded",
    "Application/X-WWW-Form-URLEncoded; charset=UTF-8",
    "application/json",
    "application/vnd.api+json; charset=utf-8",
    "APPLICATION/JSON",
];

/// What a `Content-Type` value says, as the targets' own reading of it to check the parsers'
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaType {
    /// No `Content-Type` header.
    Absent,
    /// The media type, lower-cased (media types are case-insensitive), without parameters.
    Essence(String),
    /// A value no request can carry: `HeaderValue::to_str` accepts only visible ASCII, spaces
    /// and tabs. The targets assert nothing about it beyond "no panic".
    Unsendable,
}

pub fn media_type(content_type: Option<&str>) -> MediaType {
    let Some(value) = content_type else {
        return MediaType::Absent;
    };
    if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return MediaType::Unsendable;
    }
    let essence = value.split(';').next().unwrap_or("").trim_matches([' ', '\t']);
    MediaType::Essence(essence.to_ascii_lowercase())
}
