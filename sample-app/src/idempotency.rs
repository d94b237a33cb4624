//! `Idempotency-Key` on `POST /todos`: the header's syntax, the todo id a key stands for, and the hash
//! that tells a retry (same todo asked for) from a reuse of the key (another todo).
//!
//! Nothing but the todos table is needed: the id of the todo a key creates is derived from the key, so
//! that a retry, in this region or (once the first create has been replicated) in the other one, finds
//! the todo already there, and the conditional create (`attribute_not_exists`) cannot make a second one.
//! The item keeps the key and the request's hash ([`crate::todo::CreatedWith`]).

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// Longest key, in characters (without the quotes of the structured-field form).
pub const MAX_KEY: usize = 255;

/// What the namespace of derived ids is called; part of every hash, so that keys map to todo ids only
/// through this use (and a later, different derivation can take `v2`).
const ID_NAMESPACE: &str = "tworegion-sample-app/todos/idempotency-key/v1";

/// Likewise for the request hash.
const REQUEST_NAMESPACE: &str = "tworegion-sample-app/todos/create-request/v1";

/// Whether `b` may appear in a key: letters, digits and `-_.:~+/=` (UUIDs, ULIDs, base64, `app:123`).
fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:~+/=".contains(&b)
}

/// The `Idempotency-Key` of a request: `None` if absent. The value is 1 to [`MAX_KEY`] characters of
/// `A-Z a-z 0-9 - _ . : ~ + / =`, bare or as a structured-field string in double quotes (the form of
/// the IETF draft: `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`); both forms are the same
/// key. An error names the header and says what is allowed.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("Idempotency-Key: give the header once".to_owned());
    }
    let bytes = value.as_bytes();
    let bare = match bytes {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    };
    if bare.is_empty() || bare.len() > MAX_KEY || !bare.iter().copied().all(key_byte) {
        return Err(format!(
            "Idempotency-Key: must be 1 to {MAX_KEY} characters of A-Z a-z 0-9 - _ . : ~ + / = \
             (optionally in double quotes), for example a UUID; it has {} bytes",
            bytes.len()
        ));
    }
    // Only ASCII passed the check above.
    Ok(Some(String::from_utf8_lossy(bare).into_owned()))
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so that no two lists of parts hash alike.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The id of the todo that `POST /todos` with this key creates: a UUID (version 8, RFC 9562's
/// custom/name-based form) from the first 16 bytes of SHA-256 over a namespace and the key. Random ids
/// of creates without a key are version 4, so the two kinds never collide.
pub fn todo_id(key: &str) -> String {
    let digest = sha256(&[ID_NAMESPACE.as_bytes(), key.as_bytes()]);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// SHA-256 (lowercase hex) of the todo a create asks for, after defaults: `{"text":"a"}` and
/// `{"text":"a","checked":false}` are the same request.
pub fn request_hash(text: &str, checked: bool) -> String {
    let checked = if checked { "true" } else { "false" };
    sha256(&[
        REQUEST_NAMESPACE.as_bytes(),
        checked.as_bytes(),
        text.as_bytes(),
    ])
    .iter()
    .map(|b| format!("{b:02x}"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(values: &[&[u8]]) -> Result<Option<String>, String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        from_headers(&headers)
    }

    #[test]
    fn keys_are_checked_and_quotes_are_the_same_key() {
        assert_eq!(parse(&[]), Ok(None));
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse(&[uuid.as_bytes()]), Ok(Some(uuid.to_owned())));
        assert_eq!(
            parse(&[format!("\"{uuid}\"").as_bytes()]),
            Ok(Some(uuid.to_owned()))
        );
        assert_eq!(
            parse(&[b"order:42/retry=+~_."]),
            Ok(Some("order:42/retry=+~_.".to_owned()))
        );
        assert!(parse(&["k".repeat(255).as_bytes()]).is_ok());
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"",
            b"a b",
            b"a,b",
            b"\"a",
            b"caf\xc3\xa9",
            "k".repeat(256).as_bytes(),
        ] {
            let error = parse(&[bad]).unwrap_err();
            assert!(error.starts_with("Idempotency-Key: must be"), "{error}");
        }
        assert_eq!(
            parse(&[b"a", b"b"]).unwrap_err(),
            "Idempotency-Key: give the header once"
        );
    }

    #[test]
    fn ids_are_stable_uuids_of_version_8() {
        let id = todo_id("8e03978e-40d5-43e8-bc93-6894a57f9324");
        // Fixed (computed independently with Python's hashlib): the same key must give the same id in
        // both regions and across releases.
        assert_eq!(id, "84872ba9-85e6-8148-8ba0-8831f1b134ec");
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
        assert_ne!(todo_id("a"), todo_id("b"));
        crate::todo::validate_id(&id).unwrap();
    }

    #[test]
    fn request_hashes_tell_todos_apart() {
        assert_eq!(request_hash("a", false), request_hash("a", false));
        assert_ne!(request_hash("a", false), request_hash("a", true));
        assert_ne!(request_hash("a", false), request_hash("b", false));
        assert_eq!(request_hash("a", false).len(), 64);
    }
}
