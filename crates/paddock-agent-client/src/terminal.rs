//! [`Terminal`]: an execution on a pseudo-terminal in the guest (an
//! interactive shell), with its typed input, its output, its window size
//! and its exit status.

use std::sync::Arc;

use paddock_proto::{ExecResult, Execute, Message, Resize, Tty};

use crate::client::AgentClient;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::exec::{Execution, OutputStream, StdinWriter};

/// A process running on a terminal in the guest.
///
/// What is written with [`Terminal::write`] is typed at the terminal: the
/// guest's line discipline echoes it, and `0x03` (Ctrl-C) interrupts the
/// foreground process group. The output ([`Terminal::read`], or the stream
/// of [`Terminal::take_output`]) is everything the processes on the
/// terminal write, echo included, as raw bytes. Dropping the terminal
/// before its result stops it in the guest, as an [`Execution`].
#[derive(Debug)]
pub struct Terminal {
    execution: Execution,
    input: Option<StdinWriter>,
    output: Option<OutputStream>,
    resizer: TerminalResizer,
}

/// Changes the window size of a [`Terminal`]; cheap to clone, usable from
/// another task (a SIGWINCH handler) while the terminal is read.
#[derive(Debug, Clone)]
pub struct TerminalResizer {
    conn: Arc<Connection>,
    request_id: u64,
}

impl TerminalResizer {
    /// Sets the window to `rows` x `cols`; the guest's foreground process
    /// group gets SIGWINCH. Harmless after the execution ended (the agent
    /// drops a RESIZE for a request that is no longer open).
    ///
    /// # Errors
    /// [`ClientError::ConnectionLost`] if the session is gone.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.conn
            .send(self.request_id, &Message::Resize(Resize { rows, cols }))
    }
}

impl AgentClient {
    /// Starts `request` on a terminal of `tty`'s type and size (an
    /// interactive shell: `Execute::argv(["/bin/sh", "-i"])`). The request
    /// passes the client's gate as any execution does, which a policy
    /// refuses without `exec.tty = true`.
    ///
    /// # Errors
    /// [`ClientError::Unsupported`] if the agent has no terminals
    /// (`tty`), or as [`AgentClient::exec`].
    pub async fn terminal(&self, mut request: Execute, tty: Tty) -> Result<Terminal, ClientError> {
        request.tty = Some(tty);
        let mut execution = self.exec(request).await?;
        let resizer = TerminalResizer {
            conn: Arc::clone(execution.connection()),
            request_id: execution.request_id(),
        };
        Ok(Terminal {
            input: execution.take_stdin(),
            output: execution.take_stdout(),
            execution,
            resizer,
        })
    }
}

impl Terminal {
    /// Types `bytes` at the terminal. Waits for flow-control credit when
    /// the guest does not read its input (up to the client's I/O timeout).
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] once the input was taken, or as
    /// [`StdinWriter::write_all`] (also when the execution ended).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.input {
            Some(input) => input.write_all(bytes).await,
            None => Err(ClientError::InvalidRequest(
                "the terminal's input was taken".into(),
            )),
        }
    }

    /// The next bytes of output, or `None` once the terminal is closed.
    ///
    /// # Errors
    /// [`ClientError::InvalidRequest`] once the output was taken, or a
    /// connection error.
    pub async fn read(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match &mut self.output {
            Some(output) => output.chunk().await,
            None => Err(ClientError::InvalidRequest(
                "the terminal's output was taken".into(),
            )),
        }
    }

    /// Sets the window size (see [`TerminalResizer::resize`]).
    ///
    /// # Errors
    /// As [`TerminalResizer::resize`].
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.resizer.resize(rows, cols)
    }

    /// A handle to resize the window from elsewhere.
    #[must_use]
    pub fn resizer(&self) -> TerminalResizer {
        self.resizer.clone()
    }

    /// Takes the input writer, to type from another task (once).
    pub fn take_input(&mut self) -> Option<StdinWriter> {
        self.input.take()
    }

    /// Takes the output stream, to read from another task (once); it is
    /// also an [`tokio::io::AsyncRead`].
    pub fn take_output(&mut self) -> Option<OutputStream> {
        self.output.take()
    }

    /// Sends a signal to the process group the execution started in (the
    /// terminal's session; Ctrl-C is `write(&[0x03])`).
    ///
    /// # Errors
    /// As [`Execution::signal`].
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.execution.signal(signal)
    }

    /// Ends the execution (SIGTERM, then SIGKILL after the grace period).
    ///
    /// # Errors
    /// As [`Execution::stop`].
    pub fn stop(&self) -> Result<(), ClientError> {
        self.execution.stop()
    }

    /// Waits for the exit status. Output not read is discarded.
    ///
    /// # Errors
    /// As [`Execution::wait`].
    pub async fn wait(mut self) -> Result<ExecResult, ClientError> {
        drop(self.input.take());
        drop(self.output.take());
        self.execution.wait().await
    }
}
