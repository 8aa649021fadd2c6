//! The `/v1/leases/{id}/fs/...` routes (`API.md`, *File system*): the agent
//! client's file system calls on a lease's guest, behind the same
//! authentication, lease ownership and request gate as the other lease
//! routes. Reads are `GET` with the path in the query; changes are `POST`
//! with a JSON body. A failure in the guest keeps its meaning: each wire
//! code has its own status and code ([`fs_error`]).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use paddock::agent::{ClientError, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::daemon::Hold;
use crate::error::{ApiError, chain};
use crate::http::{App, JsonBody, answered};

/// The routes, merged into the API's router before its authentication.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v1/leases/{id}/fs/dir", get(read_dir))
        .route("/v1/leases/{id}/fs/metadata", get(metadata))
        .route("/v1/leases/{id}/fs/readlink", get(read_link))
        .route("/v1/leases/{id}/fs/exists", get(exists))
        .route("/v1/leases/{id}/fs/mkdir", post(mkdir))
        .route("/v1/leases/{id}/fs/remove", post(remove))
        .route("/v1/leases/{id}/fs/rename", post(rename))
        .route("/v1/leases/{id}/fs/chmod", post(chmod))
}

/// `GET .../fs/dir`: one page of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPageBody {
    /// Entries, sorted by name; each has `name`, `type`, `size`, `mode`,
    /// `uid`, `gid`, `mtime_ms`, `atime_ms` and `ctime_ms`.
    pub entries: Vec<paddock::agent::DirEntry>,
    /// The `cursor` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// `GET .../fs/readlink`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkBody {
    /// The link's target, as stored.
    pub target: String,
}

/// `GET .../fs/exists`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistsBody {
    /// Whether the path exists.
    pub exists: bool,
}

/// `POST .../fs/mkdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirRequest {
    /// The directory.
    pub path: String,
    /// Make missing parents too; an existing directory is success.
    #[serde(default)]
    pub parents: bool,
    /// Permission bits as an octal string (`"700"`); `"755"` when absent.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `POST .../fs/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// A file, a link or an empty directory.
    pub path: String,
    /// A directory and everything under it (links are not followed).
    #[serde(default)]
    pub recursive: bool,
    /// Without `recursive`: `true` only an empty directory, `false` only
    /// something else; absent, either.
    #[serde(default)]
    pub dir: Option<bool>,
}

/// `POST .../fs/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameRequest {
    /// The existing path.
    pub from: String,
    /// The new path.
    pub to: String,
}

/// `POST .../fs/chmod`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChmodRequest {
    /// The path.
    pub path: String,
    /// Permission bits as an octal string (`"640"`), `7777` at most.
    pub mode: String,
}

/// The answer of a change: `{}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// A client error of a file system call as the API's error: the guest's
/// file system codes get their own status and code, the rest map as
/// everywhere else.
#[must_use]
pub fn fs_error(err: ClientError) -> ApiError {
    let status_code = match &err {
        ClientError::Agent { code, .. } => match code {
            ErrorCode::AlreadyExists => Some((StatusCode::CONFLICT, "already_exists")),
            ErrorCode::DirectoryNotEmpty => Some((StatusCode::CONFLICT, "directory_not_empty")),
            ErrorCode::NotADirectory => Some((StatusCode::CONFLICT, "not_a_directory")),
            ErrorCode::IsADirectory => Some((StatusCode::CONFLICT, "is_a_directory")),
            ErrorCode::PermissionDenied => Some((StatusCode::FORBIDDEN, "permission_denied")),
            ErrorCode::NoSpace => Some((StatusCode::INSUFFICIENT_STORAGE, "no_space")),
            _ => None,
        },
        ClientError::Unsupported { .. } => Some((StatusCode::NOT_IMPLEMENTED, "unsupported")),
        _ => None,
    };
    match status_code {
        Some((status, code)) => ApiError::new(status, code, chain(&err)),
        None => ApiError::from(err),
    }
}

fn path_of(query: &HashMap<String, String>) -> Result<String, ApiError> {
    query
        .get("path")
        .filter(|p| p.starts_with('/'))
        .cloned()
        .ok_or_else(|| ApiError::bad_request("`path` must be an absolute guest path"))
}

fn flag(query: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "`{name}` {other:?} is not true or false"
        ))),
    }
}

fn octal(text: &str) -> Result<u32, ApiError> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ApiError::bad_request(format!("`mode` {text:?} is not octal 0..=7777")))
}

/// Runs `call` on the lease `id`'s client and answers its value as JSON.
async fn on_lease<T, F, Fut>(
    app: &App,
    caller: &Caller,
    id: &str,
    call: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: FnOnce(Hold) -> Fut,
    Fut: Future<Output = (Hold, Result<T, ClientError>)>,
{
    let hold = app.daemon.hold(caller, id).await?;
    let (hold, result) = call(hold).await;
    let value = result.map_err(|err| hold.explain(fs_error(err)))?;
    Ok(Json(value).into_response())
}

async fn read_dir(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let path = path_of(&query)?;
        let cursor = query.get("cursor").cloned();
        let limit = match query.get("limit") {
            None => None,
            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("`limit` {text:?} is not a whole number"))
            })?),
        };
        on_lease(&app, &caller, &id, |hold| async move {
            let page = hold
                .client
                .read_dir_page(&path, cursor.as_deref(), limit)
                .await
                .map(|page| DirPageBody {
                    entries: page.entries,
                    next: page.next,
                });
            (hold, page)
        })
        .await
    }
    .await;
    answered(caller, result)
}

async fn metadata(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let path = path_of(&query)?;
        let follow = flag(&query, "follow", true)?;
        on_lease(&app, &caller, &id, |hold| async move {
            let metadata = if follow {
                hold.client.metadata(&path).await
            } else {
                hold.client.symlink_metadata(&path).await
            };
            (hold, metadata)
        })
        .await
    }
    .await;
    answered(caller, result)
}

async fn read_link(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let path = path_of(&query)?;
        on_lease(&app, &caller, &id, |hold| async move {
            let target = hold.client.read_link(&path).await;
            (hold, target.map(|target| LinkBody { target }))
        })
        .await
    }
    .await;
    answered(caller, result)
}

async fn exists(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let path = path_of(&query)?;
        on_lease(&app, &caller, &id, |hold| async move {
            let exists = hold.client.exists(&path).await;
            (hold, exists.map(|exists| ExistsBody { exists }))
        })
        .await
    }
    .await;
    answered(caller, result)
}

async fn mkdir(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<JsonBody<MkdirRequest>, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(request) = body?;
        let mode = request.mode.as_deref().map(octal).transpose()?;
        on_lease(&app, &caller, &id, |hold| async move {
            let made = match (request.parents, mode) {
                (true, None) => hold.client.create_dir_all(&request.path).await,
                (false, None) => hold.client.create_dir(&request.path).await,
                (false, Some(mode)) => hold.client.create_dir_with_mode(&request.path, mode).await,
                (true, Some(_)) => Err(ClientError::InvalidRequest(
                    "`mode` is for one directory: not with `parents`".into(),
                )),
            };
            (hold, made.map(|()| Done {}))
        })
        .await
    }
    .await;
    answered(caller, result)
}

async fn remove(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<JsonBody<RemoveRequest>, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(request) = body?;
        on_lease(&app, &caller, &id, |hold| async move {
            let removed = match (request.recursive, request.dir) {
                (true, _) => hold.client.remove_dir_all(&request.path).await,
                (false, None) => hold.client.remove(&request.path).await,
                (false, Some(true)) => hold.client.remove_dir(&request.path).await,
                (false, Some(false)) => hold.client.remove_file(&request.path).await,
            };
            (hold, removed.map(|()| Done {}))
        })
        .await
    }
    .await;
    answered(caller, result)
}

async fn rename(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<JsonBody<RenameRequest>, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(request) = body?;
        on_lease(&app, &caller, &id, |hold| async move {
            let renamed = hold.client.rename(&request.from, &request.to).await;
            (hold, renamed.map(|()| Done {}))
        })
        .await
    }
    .await;
    answered(caller, result)
}

async fn chmod(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<JsonBody<ChmodRequest>, ApiError>,
) -> Response {
    let result = async {
        let JsonBody(request) = body?;
        let mode = octal(&request.mode)?;
        on_lease(&app, &caller, &id, |hold| async move {
            let set = hold.client.set_permissions(&request.path, mode).await;
            (hold, set.map(|()| Done {}))
        })
        .await
    }
    .await;
    answered(caller, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_system_codes_keep_their_meaning() {
        let agent = |code| ClientError::Agent {
            code,
            message: "m".into(),
        };
        for (code, status, name) in [
            (
                ErrorCode::AlreadyExists,
                StatusCode::CONFLICT,
                "already_exists",
            ),
            (
                ErrorCode::DirectoryNotEmpty,
                StatusCode::CONFLICT,
                "directory_not_empty",
            ),
            (
                ErrorCode::NotADirectory,
                StatusCode::CONFLICT,
                "not_a_directory",
            ),
            (
                ErrorCode::IsADirectory,
                StatusCode::CONFLICT,
                "is_a_directory",
            ),
            (
                ErrorCode::PermissionDenied,
                StatusCode::FORBIDDEN,
                "permission_denied",
            ),
            (
                ErrorCode::NoSpace,
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
            ),
            (ErrorCode::NotFound, StatusCode::NOT_FOUND, "not_found"),
            (
                ErrorCode::InvalidArgument,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
        ] {
            let err = fs_error(agent(code));
            assert_eq!((err.status, err.code), (status, name), "{code:?}");
        }
        let unsupported = fs_error(ClientError::Unsupported { capability: "fs" });
        assert_eq!(unsupported.status, StatusCode::NOT_IMPLEMENTED);
        assert!(octal("7777").is_ok() && octal("10000").is_err() && octal("8").is_err());
    }
}
