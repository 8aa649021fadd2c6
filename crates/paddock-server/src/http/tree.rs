//! Directory transfers over HTTP (`API.md`, "Directory trees"):
//! `PUT /v1/leases/{id}/tree?path=` unpacks a tar body into a guest
//! directory, streamed to the agent as it arrives; `GET` answers the guest
//! directory as `application/x-tar`.
//!
//! A put's body goes to the agent as it is, which judges every entry
//! (`unsafe_path`); the daemon counts it against `max_bytes`. A get is
//! received whole into a spool file (at most `max_bytes`) and its CRC-32
//! checked before the answer starts, so that a failed transfer is an error
//! status, not a cut archive. The daemon never unpacks what the guest
//! sends: the caller gets the bytes, and must judge them when it unpacks.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use paddock::agent::{ClientError, TreeOptions};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt as _;

use super::{App, answered};
use crate::auth::Caller;
use crate::error::ApiError;

/// The largest tar stream a tree request moves when it names no
/// `max_bytes`: 1 GiB.
pub const DEFAULT_TREE_MAX_BYTES: u64 = 1 << 30;

/// A finished directory upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeResult {
    /// The guest directory.
    pub path: String,
    /// Regular files written.
    pub files: u64,
    /// Directories made or merged into.
    pub dirs: u64,
    /// Symbolic links made.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Bytes of tar stream.
    pub stream_bytes: u64,
    /// The stream's CRC-32/IEEE, as the agent checked it.
    pub crc32: u32,
}

/// `path` (absolute), `max_bytes` and `overwrite` of a tree request.
fn tree_query(query: &HashMap<String, String>) -> Result<(String, TreeOptions), ApiError> {
    let path = query
        .get("path")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| ApiError::bad_request("`path` must be an absolute guest path"))?;
    let max_bytes = match query.get("max_bytes") {
        None => DEFAULT_TREE_MAX_BYTES,
        Some(text) => text
            .parse()
            .map_err(|_| ApiError::bad_request(format!("`max_bytes` {text} is not a number")))?,
    };
    let overwrite = match query.get("overwrite").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`overwrite` {other} is not true or false"
            )));
        }
    };
    let options = TreeOptions {
        max_bytes,
        overwrite,
        ..TreeOptions::default()
    };
    Ok((path.clone(), options))
}

/// `PUT /v1/leases/{id}/tree`: the tar body, unpacked into the guest.
pub(super) async fn put_tree(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let result = async {
        let (path, options) = tree_query(&query)?;
        let hold = app.daemon.hold(&caller, &id).await?;
        let stream = body
            .into_data_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        let mut reader = tokio_util::io::StreamReader::new(stream);
        let put = hold
            .client
            .put_tree_reader(&mut reader, &path, &options)
            .await
            .map_err(|e| match e {
                ClientError::LocalIo { source, .. } => {
                    ApiError::bad_request(format!("The request body broke off: {source}"))
                }
                other => hold.explain(other.into()),
            })?;
        Ok::<_, ApiError>(Json(TreeResult {
            path,
            files: put.done.files,
            dirs: put.done.dirs,
            symlinks: put.done.symlinks,
            bytes: put.done.bytes,
            stream_bytes: put.stream_bytes,
            crc32: put.crc32,
        }))
    }
    .await;
    answered(caller, result)
}

/// `GET /v1/leases/{id}/tree`: the guest directory as a tar.
pub(super) async fn get_tree(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let (path, options) = tree_query(&query)?;
        let hold = app.daemon.hold(&caller, &id).await?;
        let spool = tempfile::tempfile().map_err(|e| ApiError::internal(e.to_string()))?;
        let mut spool = tokio::fs::File::from_std(spool);
        let got = hold
            .client
            .get_tree_writer(&path, &mut spool, &options)
            .await
            .map_err(|e| hold.explain(e.into()))?;
        drop(hold);
        spool
            .rewind()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(spool));
        Ok::<_, ApiError>(
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-tar"),
                    ),
                    (header::CONTENT_LENGTH, HeaderValue::from(got.stream_bytes)),
                    (
                        header::HeaderName::from_static("x-paddock-crc32"),
                        HeaderValue::from(got.crc32),
                    ),
                ],
                body,
            )
                .into_response(),
        )
    }
    .await;
    answered(caller, result)
}
