//! `access_probe <op> <path>`: tries one access and prints `ok` or the
//! error's errno name (`EACCES`, `ENOENT`...), for tests that run it as
//! another user (`setpriv --reuid=65534 ...`) to show what that user can
//! and cannot do. Exit status: 0 when the access worked, 1 when it failed,
//! 2 for bad usage.
//!
//! | op | what it tries |
//! |---|---|
//! | `list` | read the directory's entries |
//! | `write` | create a file in the directory (removed again) |
//! | `read` | open the file for reading and read a byte |
//! | `connect` | connect to the Unix socket |
//!
//! A path may be `/proc/self/fd/0`: a test passes an open directory, file
//! or `O_PATH` socket as standard input, so that only that object's own
//! mode decides, not its parent directories'.

use std::io::Read as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, path] = args.as_slice() else {
        eprintln!("usage: access_probe list|write|read|connect PATH");
        return ExitCode::from(2);
    };
    let attempt: std::io::Result<()> = match op.as_str() {
        "list" => {
            std::fs::read_dir(path).and_then(|mut entries| entries.next().transpose().map(drop))
        }
        "write" => {
            let file = std::path::Path::new(path).join(format!("probe-{}", std::process::id()));
            std::fs::write(&file, b"x").and_then(|()| std::fs::remove_file(&file))
        }
        "read" => std::fs::File::open(path).and_then(|mut file| file.read(&mut [0u8; 1]).map(drop)),
        "connect" => std::os::unix::net::UnixStream::connect(path).map(drop),
        _ => {
            eprintln!("unknown op {op}");
            return ExitCode::from(2);
        }
    };
    match attempt {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("{}", errno_name(&err));
            ExitCode::from(1)
        }
    }
}

fn errno_name(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ENXIO) => "ENXIO".into(),
        Some(code) => format!("errno {code}"),
        None => format!("{err}"),
    }
}
