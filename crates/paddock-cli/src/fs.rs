//! `paddock ls LEASE:/path`: a guest directory through the daemon's
//! `/fs/dir` route, every page, one line per entry (or the API's entries as
//! JSON lines with `--json`).

use hyper::Method;
use paddock_server::fs::DirPageBody;

use crate::Failure;
use crate::client::Target;

/// `paddock ls`.
pub async fn ls(target: &Target, remote: &str, json: bool) -> Result<(), Failure> {
    let Some((lease, path)) = remote
        .split_once(':')
        .filter(|(lease, path)| !lease.is_empty() && !lease.contains('/') && path.starts_with('/'))
    else {
        return Err(Failure {
            status: 2,
            error: anyhow::anyhow!("give the directory as LEASE:/absolute/path"),
        });
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut route = format!("/v1/leases/{lease}/fs/dir?path={}", encode(path));
        if let Some(cursor) = &cursor {
            route.push_str("&cursor=");
            route.push_str(&encode(cursor));
        }
        let page: DirPageBody = target.json(Method::GET, &route, None).await?;
        for entry in &page.entries {
            if json {
                crate::output::print_json(entry);
            } else {
                let kind = match entry.metadata.file_type {
                    paddock::agent::FileType::Dir => 'd',
                    paddock::agent::FileType::Symlink => 'l',
                    paddock::agent::FileType::File => '-',
                    paddock::agent::FileType::Other => '?',
                };
                println!(
                    "{kind} {:04o} {:>12} {}",
                    entry.metadata.mode, entry.metadata.size, entry.name
                );
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
