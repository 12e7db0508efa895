//! Every error the API can answer with, mapped to `application/problem+json` in one place.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An API error; its response is a problem+json document.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{detail}")]
    Unprocessable { detail: String, errors: Vec<String> },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NoRoute(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{detail}")]
    Conflict { detail: String, actual_version: Option<u64> },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// Past a bound that protects the process (long polls, request time): try again soon.
    #[error("{0}")]
    Busy(String),
    /// The caller writes faster than its rate limit allows.
    #[error("too many writes; try again in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error(transparent)]
    Store(#[from] event_store::Error),
}

impl ApiError {
    /// A 422 listing every problem.
    pub fn invalid(detail: impl Into<String>, errors: Vec<String>) -> Self {
        Self::Unprocessable { detail: detail.into(), errors }
    }
}

struct Problem {
    status: StatusCode,
    slug: &'static str,
    detail: String,
    extra: Value,
}

fn store_problem(err: &event_store::Error) -> Problem {
    use event_store::Error as E;
    let (status, slug, extra) = match err {
        E::WrongExpectedVersion { actual, .. } => {
            (StatusCode::CONFLICT, "wrong-expected-version", json!({ "actual_version": actual }))
        }
        E::DuplicateEventId { .. }
        | E::PartialIdempotentAppend { .. }
        | E::AlreadyProcessed { .. }
        | E::CheckpointMoved => (StatusCode::CONFLICT, "conflict", Value::Null),
        E::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", Value::Null),
        E::Database(_) | E::Sqlite(_) | E::Migrate(_) => {
            tracing::error!(error = %err, "store error");
            return Problem {
                status: StatusCode::SERVICE_UNAVAILABLE,
                slug: "store-unavailable",
                detail: "the event store is not answering; try again".into(),
                extra: Value::Null,
            };
        }
    };
    Problem { status, slug, detail: err.to_string(), extra }
}

fn engine_problem(err: &engine::Error) -> Problem {
    use engine::Error as E;
    match err {
        E::Store(e) => store_problem(e),
        E::ActionRefused(engine::operator_actions::ActionRefused::NotAllowed(_)) => {
            Problem { status: StatusCode::CONFLICT, slug: "saga-state", detail: err.to_string(), extra: Value::Null }
        }
        E::Rejected(_) | E::Invalid(_) | E::ActionRefused(_) => Problem {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            slug: "invalid",
            detail: err.to_string(),
            extra: Value::Null,
        },
        E::InvalidInput { what, problems } => Problem {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            slug: "invalid",
            detail: format!("the {what} has {} problem(s)", problems.len()),
            extra: json!({ "errors": problems }),
        },
        E::InvalidDefinition(errors) => Problem {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            slug: "invalid-definition",
            detail: format!("the saga definition has {} problem(s)", errors.len()),
            extra: json!({ "errors": errors }),
        },
        E::NotFound { .. } => {
            Problem { status: StatusCode::NOT_FOUND, slug: "not-found", detail: err.to_string(), extra: Value::Null }
        }
        E::Contention { .. } => {
            Problem { status: StatusCode::CONFLICT, slug: "contention", detail: err.to_string(), extra: Value::Null }
        }
        E::Decode { .. } | E::Encode(_) | E::Transport(_) | E::Unpublishable { .. } => {
            tracing::error!(error = %err, "internal error");
            Problem {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                slug: "internal",
                detail: "internal error; see the server log".into(),
                extra: Value::Null,
            }
        }
    }
}

impl ApiError {
    fn problem(&self) -> Problem {
        let simple = |status, slug| Problem { status, slug, detail: self.to_string(), extra: Value::Null };
        match self {
            Self::BadRequest(_) => simple(StatusCode::BAD_REQUEST, "bad-request"),
            Self::Unprocessable { errors, .. } => Problem {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                slug: "invalid",
                detail: self.to_string(),
                extra: if errors.is_empty() { Value::Null } else { json!({ "errors": errors }) },
            },
            Self::NotFound(_) => simple(StatusCode::NOT_FOUND, "not-found"),
            Self::NoRoute(_) => simple(StatusCode::NOT_FOUND, "no-such-route"),
            Self::MethodNotAllowed(_) => simple(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            Self::Unauthorized(_) => simple(StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => simple(StatusCode::FORBIDDEN, "forbidden"),
            Self::Conflict { actual_version, .. } => Problem {
                status: StatusCode::CONFLICT,
                slug: "conflict",
                detail: self.to_string(),
                extra: json!({ "actual_version": actual_version }),
            },
            Self::UnsupportedMediaType(_) => simple(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
            Self::PayloadTooLarge(_) => simple(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            Self::Unavailable(_) => simple(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Busy(_) => simple(StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::TooManyRequests { .. } => simple(StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            Self::Engine(e) => engine_problem(e),
            Self::Store(e) => store_problem(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let mut body = json!({
            "type": format!("urn:sagaflow:problem:{}", problem.slug),
            "title": problem.status.canonical_reason().unwrap_or("Error"),
            "status": problem.status.as_u16(),
            "detail": problem.detail,
        });
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, problem.extra) {
            body.extend(extra);
        }
        let mut response =
            (problem.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response();
        match &self {
            Self::Busy(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            Self::TooManyRequests { retry_after_secs } => {
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        if matches!(self, Self::Unauthorized(_)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                Self::invalid(format!("the JSON body does not fit: {}", e.body_text()), vec![])
            }
            JsonRejection::JsonSyntaxError(e) => Self::BadRequest(format!("malformed JSON: {}", e.body_text())),
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("expected a body with Content-Type: application/json".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(other.body_text()),
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(format!("bad path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(format!("bad query: {}", rejection.body_text()))
    }
}

/// Result alias of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
