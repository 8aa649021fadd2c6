//! Helpers for tests of terminals: read a [`Terminal`] until it shows
//! something, within a bound.

use std::time::Duration;

use anyhow::bail;
use paddock_agent_client::Terminal;

/// How long [`read_until`] waits for what it looks for.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads `terminal` until its output (since this call began) contains
/// `want`; returns that output, lossily decoded.
///
/// # Errors
/// The terminal closed, a client error, or no `want` within
/// [`READ_TIMEOUT`] (the error shows what came).
pub async fn read_until(terminal: &mut Terminal, want: &str) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    let reading = async {
        while !String::from_utf8_lossy(&seen).contains(want) {
            match terminal.read().await? {
                Some(chunk) => seen.extend(chunk),
                None => bail!("the terminal closed"),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(READ_TIMEOUT, reading).await {
        Ok(read) => read?,
        Err(_) => bail!(
            "no {want:?} within {READ_TIMEOUT:?}; got {:?}",
            String::from_utf8_lossy(&seen)
        ),
    }
    Ok(String::from_utf8_lossy(&seen).into_owned())
}
