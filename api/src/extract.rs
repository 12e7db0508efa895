//! The edge of the API: extractors whose rejections are problem+json responses, never bare
//! text, and the one check of every string a request brings in.
//!
//! Strings are checked here, once, before any handler sees them, so no store has to cope
//! with what it cannot keep (PostgreSQL refuses U+0000 in text):
//! - the URI ([`reject_control_characters`], a middleware on every route and the
//!   fallbacks): a percent-decoded path segment or query parameter with a C0 control
//!   character (U+0000-U+001F) or DEL is a 400;
//! - a JSON body ([`AppJson`]): a string or an object key holding U+0000 is a 422 that
//!   lists where.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON body (`Content-Type: application/json` or `application/*+json`) with no U+0000
/// in any of its strings or keys.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType("expected a body with Content-Type: application/json".into()));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(JsonRejection::from)?;
        let places = nul_places(&bytes);
        if !places.is_empty() {
            return Err(ApiError::invalid(
                "the JSON body contains a NUL character (\\u0000), which no string or key may hold",
                places,
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(value))
    }
}

/// Query parameters.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

/// Path parameters.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

/// Middleware: a request whose percent-decoded path or query holds a control character is
/// refused with 400 before it is routed to a handler.
pub async fn reject_control_characters(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if let Some(c) = control_character(uri.path()) {
        return ApiError::BadRequest(format!(
            "the path contains the control character U+{c:04X}; ids and path segments must not hold control characters"
        ))
        .into_response();
    }
    if let Some(c) = uri.query().and_then(control_character) {
        return ApiError::BadRequest(format!(
            "the query contains the control character U+{c:04X}; query parameters must not hold control characters"
        ))
        .into_response();
    }
    next.run(request).await
}

/// The first C0 control character or DEL of `raw` once percent-decoded.
///
/// Decoding byte by byte is enough: in UTF-8 every byte of a multi-byte character is at
/// least 0x80, so a control byte is a control character. `+` (a space in a query) is none.
fn control_character(raw: &str) -> Option<u8> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let decoded = match (b, bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                i += 2;
                high << 4 | low
            }
            _ => b,
        };
        if decoded < 0x20 || decoded == 0x7f {
            return Some(decoded);
        }
        i += 1;
    }
    None
}

fn hex(digit: &u8) -> Option<u8> {
    char::from(*digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// `application/json`, or any `application/<name>+json`, parameters (`; charset=…`) aside.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else { return false };
    subtype == "json" || (subtype.ends_with("+json") && subtype.len() > "+json".len())
}

/// Where a JSON body holds U+0000 (JSON Pointers), at most 20 places; empty when nowhere.
///
/// In valid JSON a NUL can only be written `\u0000`, so bodies without that text are not
/// parsed twice. A body that does not parse is left to the deserializer's own error.
fn nul_places(body: &[u8]) -> Vec<String> {
    const ESCAPE: &[u8] = b"\\u0000";
    if !body.windows(ESCAPE.len()).any(|w| w == ESCAPE) {
        return Vec::new();
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let mut places = Vec::new();
    collect_nul_places(&value, &mut String::new(), &mut places);
    places
}

fn collect_nul_places(value: &Value, pointer: &mut String, places: &mut Vec<String>) {
    const MAX_PLACES: usize = 20;
    if places.len() >= MAX_PLACES {
        return;
    }
    let here = |pointer: &str| if pointer.is_empty() { "/".to_owned() } else { pointer.to_owned() };
    match value {
        Value::String(s) if s.contains('\0') => places.push(format!("{} holds a NUL character", here(pointer))),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                collect_nul_places(item, pointer, places);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1").replace('\0', "\\u0000"));
                if key.contains('\0') && places.len() < MAX_PLACES {
                    places.push(format!("a key of {} holds a NUL character", here(&pointer[..len])));
                }
                collect_nul_places(item, pointer, places);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_found_once_decoded() {
        assert_eq!(control_character("/orders/abc%00def"), Some(0));
        assert_eq!(control_character("/orders/a%1fb"), Some(0x1f));
        assert_eq!(control_character("definition=x%7F"), Some(0x7f));
        assert_eq!(control_character("/orders/a%2500"), None, "%25 is a literal '%'");
        assert_eq!(control_character("/orders/caf%C3%A9%20x+y%"), None);
        assert_eq!(control_character("a=%0"), None);
    }

    #[test]
    fn nul_is_found_in_strings_and_keys_but_not_in_escaped_backslashes() {
        let body = br#"{"a": ["ok", "x\u0000"], "k\u0000/": {"b": 1}, "c": "\\u0000"}"#;
        assert_eq!(nul_places(body), vec!["/a/1 holds a NUL character", "a key of / holds a NUL character"]);
        assert!(nul_places(br#"{"c": "\\u0000"}"#).is_empty());
        assert!(nul_places(br#"{"c": "\u0000"#).is_empty(), "malformed JSON is the deserializer's to report");
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/json"));
        assert!(!with("application/+json"));
        assert!(!with("text/plain"));
        assert!(!json_content_type(&HeaderMap::new()));
    }
}
