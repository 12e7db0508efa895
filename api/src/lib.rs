//! The Sagaflow REST API.
