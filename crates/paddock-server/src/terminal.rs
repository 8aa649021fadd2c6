//! `GET /v1/leases/{id}/terminal`: a terminal in a lease's guest over a
//! WebSocket (`API.md`, *Terminals*).
//!
//! The execution starts before the upgrade, so that a refusal (a policy
//! without `exec.tty`, an agent without terminals, a lease that ended) is
//! an ordinary JSON error with its status. After the upgrade:
//!
//! - binary messages are raw bytes both ways: what the client sends is
//!   typed at the terminal, what the terminal prints is sent as it comes;
//! - text messages are JSON control: `{"resize": {"rows", "cols"}}` from
//!   the client; `{"exit": {...}}` (or `{"error": {...}}`) from the server
//!   once the terminal closed, then the server closes the socket.
//!
//! Input is written from its own task, so a guest that does not read its
//! input holds back the client's input (the socket is not read), never
//! the output. A client that goes away stops the execution.

use std::collections::HashMap;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use futures_util::{SinkExt as _, StreamExt as _};
use paddock::agent::{ClientError, Execute, Terminal, TerminalResizer, Tty};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::daemon::Hold;
use crate::error::ApiError;
use crate::wire::{ErrorBody, ExecEnd};

/// The window a terminal gets when the query sets none.
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// A control message from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientControl {
    /// The client's window changed.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// A control message from the server, the last before it closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerControl {
    /// The terminal's process ended.
    Exit(ExecEnd),
    /// The execution failed (the agent, the lease, the connection).
    Error(ErrorBody),
}

/// The execution the query asks for: `cmd` (a shell line; an interactive
/// `/bin/sh -i` without one), `term`, `rows`, `cols`, `timeout_ms`.
///
/// # Errors
/// [`ApiError::bad_request`] for a number that does not parse.
pub fn request_of(query: &HashMap<String, String>) -> Result<(Execute, Tty), ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        query
            .get(name)
            .map(|value| {
                value
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("`{name}` must be a number")))
            })
            .transpose()
    };
    let size = |name: &str, default: u16| -> Result<u16, ApiError> {
        match number(name)? {
            None => Ok(default),
            Some(n) => u16::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be 1..=65535"))),
        }
    };
    let mut execute = match query.get("cmd") {
        Some(line) if !line.is_empty() => Execute::shell(line.clone()),
        _ => Execute::argv(["/bin/sh", "-i"]),
    };
    execute.timeout_ms = number("timeout_ms")?;
    let term = query.get("term").cloned().unwrap_or_default();
    let tty = Tty::new(
        term,
        size("rows", DEFAULT_SIZE.0)?,
        size("cols", DEFAULT_SIZE.1)?,
    );
    Ok((execute, tty))
}

/// Starts the terminal in `hold`'s guest and answers the upgrade; the
/// WebSocket then carries it until it ends.
///
/// # Errors
/// The query, or the execution refused ([`ApiError`] from the client's
/// error, explained by the lease).
pub async fn open(
    hold: Hold,
    query: &HashMap<String, String>,
    upgrade: WebSocketUpgrade,
) -> Result<axum::response::Response, ApiError> {
    let (execute, tty) = request_of(query)?;
    let terminal = hold
        .client
        .terminal(execute, tty)
        .await
        .map_err(|e| hold.explain(e.into()))?;
    Ok(upgrade.on_upgrade(move |socket| carry(socket, hold, terminal)))
}

/// Carries one terminal over `socket` until it ends; the hold keeps the
/// lease until then.
async fn carry(socket: WebSocket, hold: Hold, mut terminal: Terminal) {
    let (mut sink, stream) = socket.split();
    let client_gone = CancellationToken::new();
    let input = tokio::spawn(read_client(
        stream,
        terminal.take_input(),
        terminal.resizer(),
        client_gone.clone(),
    ));
    let mut failure: Option<ClientError> = None;
    let mut client_left = false;
    if let Some(mut output) = terminal.take_output() {
        loop {
            let chunk = tokio::select! {
                chunk = output.chunk() => chunk,
                () = client_gone.cancelled() => {
                    client_left = true;
                    break;
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        client_left = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
    }
    input.abort();
    if client_left {
        // Nothing of the terminal outlives its client.
        let _ = terminal.stop();
        let _ = terminal.wait().await;
        return;
    }
    let last = match failure {
        Some(err) => Err(err),
        None => terminal.wait().await,
    };
    let last = match last {
        Ok(result) => ServerControl::Exit(crate::http::exec_end(&result)),
        Err(err) => ServerControl::Error(hold.explain(err.into()).body()),
    };
    let text = serde_json::to_string(&last).unwrap_or_default();
    let _ = sink.send(Message::Text(text.into())).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    drop(hold);
}

/// Types what the client sends and applies its resizes, until the client
/// closes or goes away (then cancels `gone`).
async fn read_client(
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    mut input: Option<paddock::agent::StdinWriter>,
    resizer: TerminalResizer,
    gone: CancellationToken,
) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(bytes) => {
                if let Some(writer) = &mut input {
                    if writer.write_all(&bytes).await.is_err() {
                        // The execution ended: what follows is dropped.
                        input = None;
                    }
                }
            }
            Message::Text(text) => match serde_json::from_str::<ClientControl>(&text) {
                Ok(ClientControl::Resize { rows, cols }) => {
                    let _ = resizer.resize(rows, cols);
                }
                Err(err) => tracing::debug!(%err, "Ignored a control message"),
            },
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    gone.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_the_command_and_the_window() {
        let query = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let (execute, tty) = request_of(&query(&[])).expect("defaults");
        assert_eq!(execute, Execute::argv(["/bin/sh", "-i"]));
        assert_eq!(tty, Tty::new("", 24, 80));
        let (execute, tty) = request_of(&query(&[
            ("cmd", "top"),
            ("term", "vt100"),
            ("rows", "50"),
            ("cols", "132"),
            ("timeout_ms", "1000"),
        ]))
        .expect("all");
        assert_eq!(
            execute.command,
            paddock::agent::Command::Shell("top".into())
        );
        assert_eq!(execute.timeout_ms, Some(1000));
        assert_eq!(tty, Tty::new("vt100", 50, 132));
        for bad in [
            ("rows", "0"),
            ("cols", "70000"),
            ("rows", "x"),
            ("timeout_ms", "-1"),
        ] {
            assert!(request_of(&query(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn control_messages_are_the_documented_json() {
        let resize: ClientControl =
            serde_json::from_str(r#"{"resize":{"rows":40,"cols":100}}"#).expect("resize");
        assert_eq!(
            resize,
            ClientControl::Resize {
                rows: 40,
                cols: 100
            }
        );
        let exit = serde_json::to_value(ServerControl::Exit(ExecEnd {
            exit_code: Some(7),
            signal: None,
            timed_out: false,
            duration_ms: 5,
            stdout_truncated: false,
            stderr_truncated: false,
        }))
        .expect("json");
        assert_eq!(exit["exit"]["exit_code"], 7);
    }
}
