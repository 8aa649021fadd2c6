//! A small HTTP/1 client for the daemon's API, over its Unix socket or TCP
//! with a bearer token (hyper: one connection per request).

use std::path::PathBuf;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paddock_server::wire::ErrorEnvelope;

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Target {
    /// Its Unix socket (the operator's listener).
    Unix(PathBuf),
    /// Its TCP listener (`host:port`) and a tenant's token.
    Tcp {
        /// `host:port`.
        authority: String,
        /// The bearer token.
        token: Option<String>,
    },
}

/// A failed API call: the daemon's error, or no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The daemon answered with an error.
    #[error("{code}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The stable code.
        code: String,
        /// The message.
        message: String,
    },
    /// The daemon could not be reached, or the answer was not readable.
    #[error(transparent)]
    Transport(#[from] anyhow::Error),
}

/// A request body: nothing, bytes, or a stream of chunks.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The body of `bytes`.
#[must_use]
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body streamed from `reader`.
pub fn stream<R: tokio::io::AsyncRead + Send + Sync + 'static>(reader: R) -> BoxBody {
    use futures_util::StreamExt as _;
    let chunks = tokio_util::io::ReaderStream::new(reader).map(|chunk| chunk.map(Frame::data));
    BodyExt::boxed(StreamBody::new(chunks))
}

impl Target {
    /// Sends one request and returns the answer, whatever its status.
    ///
    /// # Errors
    /// The daemon could not be reached.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: BoxBody,
        content_type: Option<&str>,
    ) -> Result<Response<Incoming>, CallError> {
        let mut request = Request::builder().method(method).uri(path);
        request = match self {
            Self::Unix(_) => request.header(hyper::header::HOST, "paddock"),
            Self::Tcp { authority, token } => {
                let request = request.header(hyper::header::HOST, authority.as_str());
                match token {
                    Some(token) => {
                        request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                    }
                    None => request,
                }
            }
        };
        if let Some(content_type) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = request.body(body).context("building the request")?;
        let response = match self {
            Self::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.with_context(|| {
                    format!(
                        "no daemon answers on {} (is `paddock serve` running, and are you root?)",
                        path.display()
                    )
                })?;
                exchange(stream, request).await?
            }
            Self::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .with_context(|| format!("no daemon answers on {authority}"))?;
                exchange(stream, request).await?
            }
        };
        Ok(response)
    }

    /// Sends a request and parses a JSON answer; an error status becomes
    /// [`CallError::Api`].
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CallError> {
        let response = match body {
            Some(value) => {
                let bytes = serde_json::to_vec(&value).context("encoding the request")?;
                self.send(method, path, full(bytes), Some("application/json"))
                    .await?
            }
            None => self.send(method, path, full(Bytes::new()), None).await?,
        };
        let response = check(response).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        Ok(serde_json::from_slice(&bytes).context("the answer is not the expected JSON")?)
    }
}

/// `response` if its status is a success, else its error.
///
/// # Errors
/// [`CallError::Api`] from the JSON error body.
pub async fn check(response: Response<Incoming>) -> Result<Response<Incoming>, CallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the error")?
        .to_bytes();
    match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
        Ok(envelope) => Err(CallError::Api {
            status,
            code: envelope.error.code,
            message: envelope.error.message,
        }),
        Err(_) => Err(CallError::Api {
            status,
            code: status.as_str().to_owned(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
        }),
    }
}

async fn exchange<S>(stream: S, request: Request<BoxBody>) -> anyhow::Result<Response<Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the daemon")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "the connection to the daemon ended");
        }
    });
    sender
        .send_request(request)
        .await
        .context("sending the request to the daemon")
}
