//! The pseudo-terminal of an execution that asked for a `tty`.
//!
//! The agent keeps the master: it reads the process's output from it and
//! writes the host's input to it, so the line discipline between the two
//! echoes input and turns `0x03` into SIGINT to the foreground group, as at
//! a real terminal. The child gets the slave as stdin, stdout and stderr,
//! leads a new session, and makes the slave its controlling terminal
//! ([`become_controlled`], between fork and exec). The agent holds no copy
//! of the slave once the child runs, so the master reads end of file (EIO,
//! read here as 0) when the last process holding the terminal closes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A terminal's master, shared by its reader and its writer.
type Master = Arc<AsyncFd<OwnedFd>>;

/// A new pseudo-terminal: the master, non-blocking, and the slave for the
/// child. Both are close-on-exec (the child gets the slave through dup2).
#[derive(Debug)]
pub(super) struct Pty {
    master: Master,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a pseudo-terminal with a window of `rows` x `cols` (0 x 0:
    /// left as the kernel makes it).
    pub(super) fn open(rows: u16, cols: u16) -> io::Result<Self> {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: posix_openpt takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let master = unsafe { checked(libc::posix_openpt(flags))? };
        // SAFETY: the descriptor is new and owned by nothing else.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        // SAFETY: unlockpt takes a descriptor this function owns.
        unsafe { checked(libc::unlockpt(master.as_raw_fd()))? };
        // TIOCGPTPEER opens the slave of this very master, without a path
        // lookup in /dev/pts that another process could race.
        // SAFETY: the ioctl takes open flags by value and returns a new
        // descriptor that nothing else owns.
        let slave = unsafe { checked(libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags))? };
        // SAFETY: the descriptor is new and owned by nothing else.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        if rows != 0 || cols != 0 {
            set_window(master.as_fd(), rows, cols)?;
        }
        set_nonblocking(master.as_fd())?;
        // SAFETY: the OwnedFd is open and stays so, unchanged, as long as the
        // AsyncFd that owns it.
        let master = unsafe { AsyncFd::register(master) }?;
        Ok(Self {
            master: Arc::new(master),
            slave,
        })
    }

    /// Three copies of the slave for the child's stdin, stdout and stderr.
    pub(super) fn stdio(&self) -> io::Result<[Stdio; 3]> {
        Ok([
            Stdio::from(self.slave.try_clone()?),
            Stdio::from(self.slave.try_clone()?),
            Stdio::from(self.slave.try_clone()?),
        ])
    }

    /// The master's reader, writer, and a handle to resize the window
    /// through. The slave is closed here: from now on only the child holds
    /// it.
    pub(super) fn into_master(self) -> (PtyReader, PtyWriter, PtyWindow) {
        drop(self.slave);
        (
            PtyReader(Arc::clone(&self.master)),
            PtyWriter(Arc::clone(&self.master)),
            PtyWindow(self.master),
        )
    }
}

/// Sets the window size of the terminal of `fd` (the master or the slave);
/// the kernel sends SIGWINCH to the terminal's foreground group.
pub(super) fn set_window(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, valid for
    // the call.
    unsafe { checked(libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size)) }.map(|_| ())
}

/// In the child, between fork and exec: leads a new session (so a new
/// process group, whose id is the child's pid) and makes stdin, the
/// slave, its controlling terminal.
///
/// Only async-signal-safe calls, no allocation.
pub(super) fn become_controlled() -> io::Result<()> {
    // SAFETY: setsid and the ioctl take no pointers.
    unsafe {
        checked(libc::setsid())?;
        checked(libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0))?;
    }
    Ok(())
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL / F_SETFL takes and returns integers.
    unsafe {
        let flags = checked(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        checked(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

/// A libc return value as a result: -1 is errno.
fn checked(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The master's read side: the process's output. EIO, which the master
/// reads once no process holds the slave any more, is the end of file.
#[derive(Debug)]
pub(super) struct PtyReader(Master);

/// Resizes the window of a running execution's terminal.
#[derive(Debug)]
pub(super) struct PtyWindow(Master);

impl PtyWindow {
    /// Sets the window to `rows` x `cols`.
    pub(super) fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_window(self.0.get_ref().as_fd(), rows, cols)
    }
}

impl AsFd for PtyReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: read(2) writes at most `unfilled.len()` bytes into
                // the buffer, which is valid and initialised.
                let rc = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                    )
                };
                usize::try_from(rc).map_err(|_| io::Error::last_os_error())
            });
            match result {
                Ok(Ok(read)) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                // Every slave descriptor is closed: the end of the output.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => {}
            }
        }
    }
}

/// The master's write side: the host's input, as if typed.
#[derive(Debug)]
pub(super) struct PtyWriter(Master);

impl AsyncWrite for PtyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: write(2) reads at most `data.len()` bytes from the
                // slice, valid for the call.
                let rc = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len())
                };
                usize::try_from(rc).map_err(|_| io::Error::last_os_error())
            });
            if let Ok(written) = result {
                return Poll::Ready(written);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
