//! Request extractors whose refusals are [`Failure`]s: a bad body or query answers 400 with an
//! [`crate::api::ApiError`] that names the problem, like every other error of the API.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api::Failure;

/// A JSON body of type `T`; an empty body (or `null`) is `T::default()`, all fields absent.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Failure {
                status: e.status(),
                ..Failure::invalid(e.body_text())
            })?;
        let text = bytes.trim_ascii();
        if text.is_empty() || text == b"null" {
            return Ok(Body(T::default()));
        }
        // The path names the field at fault (`bytes_per_sec: invalid type ...`).
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(text))
            .map(Body)
            .map_err(|e| match e.path().to_string().as_str() {
                "." => Failure::invalid(format!("request body: {}", e.inner())),
                path => Failure::invalid(format!("request body: {path}: {}", e.inner())),
            })
    }
}

/// Query parameters of type `T`.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Failure> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| Params(q))
            .map_err(|e| Failure::invalid(e.body_text()))
    }
}
