//! Bearer JWT authentication and roles. A token is verified with an HS256 secret, an RS256 or
//! ES256 public key (PEM), or a JWKS file (by `kid`), and checked for `exp`, `nbf`, and `iss`
//! and `aud` when configured. Its roles come from a configurable claim. Health, metrics, the
//! OpenAPI document and the console's files stay open; everything else needs a role.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::error::ApiError;

/// What a caller may do. `admin` may do everything; `operator` also reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Submits and reads orders.
    Orders,
    /// Reads sagas, streams, aggregates, definitions, stock and credit.
    Viewer,
    /// Runs the operator actions.
    Operator,
    /// Registers definitions, starts sagas, appends to streams, sets stock and credit.
    Admin,
}

impl Role {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "orders" => Some(Self::Orders),
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's `sub`.
    pub sub: String,
    roles: HashSet<Role>,
}

impl Caller {
    /// Whether the caller may act as `role`.
    pub fn may(&self, role: Role) -> bool {
        self.roles.contains(&Role::Admin)
            || self.roles.contains(&role)
            || (role == Role::Viewer && self.roles.contains(&Role::Operator))
    }
}

/// Why a key configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

enum Keys {
    One(DecodingKey, Algorithm),
    /// By `kid`, decoded once when the file is read.
    Set(HashMap<String, DecodingKey>),
}

/// The algorithms a token may be signed with.
const ACCEPTED: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

/// How tokens are verified.
pub struct AuthConfig {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: String,
    /// The checks of a token, one per accepted algorithm, made when the configuration is.
    validations: Vec<Validation>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig").field("issuer", &self.issuer).field("audience", &self.audience).finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))
}

impl AuthConfig {
    fn with_keys(keys: Keys) -> Self {
        Self { keys, issuer: None, audience: None, roles_claim: "roles".into(), validations: Vec::new() }.validating()
    }

    /// Makes the checks for the issuer and audience configured now.
    fn validating(mut self) -> Self {
        self.validations = ACCEPTED
            .iter()
            .map(|algorithm| {
                let mut validation = Validation::new(*algorithm);
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp", "sub"]);
                if let Some(issuer) = &self.issuer {
                    validation.set_issuer(&[issuer]);
                }
                match &self.audience {
                    Some(audience) => validation.set_audience(&[audience]),
                    None => validation.validate_aud = false,
                }
                validation
            })
            .collect();
        self
    }

    /// Tokens signed with HS256 and `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_keys(Keys::One(DecodingKey::from_secret(secret), Algorithm::HS256))
    }

    /// Tokens signed with RS256 or ES256, checked with the public key in the PEM file `path`.
    pub fn public_key(path: &Path, algorithm: Algorithm) -> Result<Self, KeyError> {
        let pem = read(path)?;
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
            other => return Err(KeyError(format!("{other:?} is not supported; use RS256 or ES256"))),
        }
        .map_err(|e| KeyError(format!("{}: not a {algorithm:?} public key: {e}", path.display())))?;
        Ok(Self::with_keys(Keys::One(key, algorithm)))
    }

    /// Tokens checked with the key of their `kid` in the JWKS file `path`.
    pub fn jwks(path: &Path) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_slice(&read(path)?)
            .map_err(|e| KeyError(format!("{}: not a JWKS document: {e}", path.display())))?;
        if set.keys.is_empty() {
            return Err(KeyError(format!("{}: the JWKS holds no key", path.display())));
        }
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                // Tokens naming it are refused, as they would be by a key that is not there.
                Err(err) => tracing::warn!(%kid, error = %err, "a JWKS key cannot be used"),
            }
        }
        Ok(Self::with_keys(Keys::Set(keys)))
    }

    /// Requires this `iss`.
    pub fn with_issuer(self, issuer: impl Into<String>) -> Self {
        Self { issuer: Some(issuer.into()), ..self }.validating()
    }

    /// Requires this `aud`.
    pub fn with_audience(self, audience: impl Into<String>) -> Self {
        Self { audience: Some(audience.into()), ..self }.validating()
    }

    /// Reads the roles from this claim (a dotted path such as `realm_access.roles`).
    pub fn with_roles_claim(self, claim: impl Into<String>) -> Self {
        Self { roles_claim: claim.into(), ..self }
    }

    /// The caller a token stands for, or why it does not stand for one (for the log only).
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
        let (key, algorithm) = match &self.keys {
            Keys::One(key, algorithm) => (key, *algorithm),
            Keys::Set(keys) => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
                let kid = header.kid.as_deref().ok_or("the token names no kid")?;
                (keys.get(kid).ok_or_else(|| format!("no key '{kid}' in the JWKS"))?, header.alg)
            }
        };
        let validation = self
            .validations
            .iter()
            .find(|v| v.algorithms.contains(&algorithm))
            .ok_or_else(|| format!("algorithm {algorithm:?} is not accepted"))?;
        let claims = jsonwebtoken::decode::<Value>(token, key, validation).map_err(|e| e.to_string())?.claims;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or("sub is not a string")?.to_owned();
        let roles = self
            .roles_claim
            .split('.')
            .try_fold(&claims, |value, part| value.get(part))
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).filter_map(Role::parse).collect())
            .unwrap_or_default();
        Ok(Caller { sub, roles })
    }
}

/// The role a request needs; `None`: open to anyone.
fn needed(method: &Method, path: &str) -> Option<Role> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let read = method == Method::GET || method == Method::HEAD;
    match parts.as_slice() {
        ["health", ..] | ["metrics"] | ["openapi.json"] | ["ui", ..] => None,
        ["orders", ..] => Some(Role::Orders),
        ["sagas", _, "retry" | "abort"] | ["sagas", _, "steps", _, "resolve"] => Some(Role::Operator),
        _ if read => Some(Role::Viewer),
        _ => Some(Role::Admin),
    }
}

/// Lets a request through only with a valid token holding the role it needs, and runs it
/// on behalf of the token's `sub` (recorded in the events it appends). Without an auth
/// configuration everything passes.
pub async fn authenticate(State(auth): State<Option<Arc<AuthConfig>>>, request: Request, next: Next) -> Response {
    let Some(auth) = auth.as_deref() else { return next.run(request).await };
    let Some(role) = needed(request.method(), request.uri().path()) else { return next.run(request).await };
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let caller = match token.map(|t| auth.verify(t)) {
        Some(Ok(caller)) => caller,
        Some(Err(why)) => {
            tracing::info!(reason = %why, path = %request.uri().path(), "refused a bearer token");
            return ApiError::Unauthorized("a valid bearer token is required".into()).into_response();
        }
        None => return ApiError::Unauthorized("a valid bearer token is required".into()).into_response(),
    };
    if !caller.may(role) {
        return ApiError::Forbidden(format!("this needs the '{}' role", role.name())).into_response();
    }
    event_store::caller::scope(caller.sub, next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_the_role_the_issue_names() {
        assert_eq!(needed(&Method::GET, "/health/ready"), None);
        assert_eq!(needed(&Method::GET, "/metrics"), None);
        assert_eq!(needed(&Method::GET, "/ui/app.js"), None);
        assert_eq!(needed(&Method::POST, "/orders"), Some(Role::Orders));
        assert_eq!(needed(&Method::GET, "/orders/x"), Some(Role::Orders));
        assert_eq!(needed(&Method::GET, "/sagas"), Some(Role::Viewer));
        assert_eq!(needed(&Method::GET, "/streams/x/events"), Some(Role::Viewer));
        assert_eq!(needed(&Method::POST, "/sagas/x/abort"), Some(Role::Operator));
        assert_eq!(needed(&Method::POST, "/sagas/x/steps/y/resolve"), Some(Role::Operator));
        assert_eq!(needed(&Method::POST, "/saga-definitions"), Some(Role::Admin));
        assert_eq!(needed(&Method::POST, "/streams/x/events"), Some(Role::Admin));
        assert_eq!(needed(&Method::PUT, "/inventory/A"), Some(Role::Admin));
        assert_eq!(needed(&Method::POST, "/sagas"), Some(Role::Admin));
    }

    #[test]
    fn roles_come_from_the_configured_claim_path() {
        let secret = b"unit-test-secret-of-enough-length";
        let claims = serde_json::json!({
            "sub": "kc-user",
            "exp": chrono::Utc::now().timestamp() + 60,
            "roles": ["admin"],
            "realm_access": { "roles": ["viewer", "unknown-role"] },
        });
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap();

        let nested = AuthConfig::hs256(secret).with_roles_claim("realm_access.roles").verify(&token).unwrap();
        assert_eq!(nested.sub, "kc-user");
        assert!(nested.may(Role::Viewer));
        assert!(!nested.may(Role::Admin), "the top-level roles claim is not read");
        let default = AuthConfig::hs256(secret).verify(&token).unwrap();
        assert!(default.may(Role::Admin), "by default the roles claim is `roles`");
        let missing = AuthConfig::hs256(secret).with_roles_claim("resource_access.roles").verify(&token).unwrap();
        assert!(!missing.may(Role::Viewer), "no claim there: no roles");
    }

    #[test]
    fn admin_may_everything_and_an_operator_also_reads() {
        let caller = |roles: &[Role]| Caller { sub: "s".into(), roles: roles.iter().copied().collect() };
        assert!(caller(&[Role::Admin]).may(Role::Orders));
        assert!(caller(&[Role::Operator]).may(Role::Viewer));
        assert!(!caller(&[Role::Viewer]).may(Role::Operator));
        assert!(!caller(&[Role::Orders]).may(Role::Viewer));
    }
}
