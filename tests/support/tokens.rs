//! Signed JWTs for the tests and the bench, with the keys in `tests/fixtures/auth`.

use std::path::PathBuf;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

/// A file of `tests/fixtures/auth`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/auth").join(name)
}

/// `claims` signed with HS256 and `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// `claims` signed with RS256 or ES256 and the private key in the fixture `private_pem`,
/// naming `kid` in the header when given.
pub fn signed(algorithm: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let header = Header { kid: kid.map(Into::into), ..Header::new(algorithm) };
    encode(&header, claims, &key).unwrap()
}
