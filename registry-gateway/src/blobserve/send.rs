//! Sending a blob: the response head, then the bytes with `sendfile(2)` straight from the
//! store's file to the socket, on a blocking thread.
//!
//! The socket stays non-blocking (tokio owns it between requests): each `sendfile` moves
//! what fits in the socket's send buffer, and `poll(2)` waits for room, up to a stall
//! timeout. A blocking thread rather than the runtime's readiness: a file not in the page
//! cache is read from the disk inside `sendfile`, which would stall a runtime worker (and
//! with it the piece exchange) for as long. The head goes out with `MSG_MORE`, so it
//! shares a segment with the first bytes of the body.

use std::fs::File;
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::SendFlags;

/// The most one `sendfile` call is asked for (Linux moves at most 2 GiB − 4 KiB at once).
const MAX_SENDFILE: u64 = 1 << 30;

/// Why a blob was not sent whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The client read nothing for this long.
    #[error("client read nothing for {0:?}")]
    Stalled(Duration),
    /// The file is shorter than the blob's length (it cannot be: the store's files are
    /// immutable; the connection is cut rather than padded).
    #[error("blob file ended {missing} bytes early")]
    FileEnded {
        /// Bytes of the range never sent.
        missing: u64,
    },
    /// The socket failed (the client went away) or the file could not be read.
    #[error("send: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for SendError {
    fn from(e: Errno) -> Self {
        SendError::Io(e.into())
    }
}

/// Sends `head`, then bytes `range` of `file`, on `socket`. Returns the body bytes sent,
/// and whether all of them were.
pub(crate) fn send_blob(
    socket: BorrowedFd<'_>,
    head: &[u8],
    file: &File,
    range: Range<u64>,
    stall: Duration,
) -> (u64, Result<(), SendError>) {
    let mut pos = range.start;
    let result = send_head(socket, head, !range.is_empty(), stall)
        .and_then(|()| send_body(socket, file, &mut pos, range.end, stall));
    (pos - range.start, result)
}

fn send_head(
    socket: BorrowedFd<'_>,
    head: &[u8],
    more: bool,
    stall: Duration,
) -> Result<(), SendError> {
    let flags = if more {
        SendFlags::NOSIGNAL | SendFlags::MORE
    } else {
        SendFlags::NOSIGNAL
    };
    let mut sent = 0;
    while sent < head.len() {
        match rustix::net::send(socket, &head[sent..], flags) {
            Ok(n) => sent += n,
            Err(Errno::AGAIN) => wait_writable(socket, stall)?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends the file from `*pos` to `end`, advancing `*pos` as bytes go out.
fn send_body(
    socket: BorrowedFd<'_>,
    file: &File,
    pos: &mut u64,
    end: u64,
    stall: Duration,
) -> Result<(), SendError> {
    // A hint only: a larger readahead for a file read once, front to back.
    let _ = rustix::fs::fadvise(
        file,
        *pos,
        NonZeroU64::new(end - *pos),
        rustix::fs::Advice::Sequential,
    );
    while *pos < end {
        // `sendfile` advances `pos` itself by what it sent.
        let count = (end - *pos).min(MAX_SENDFILE) as usize;
        match rustix::fs::sendfile(socket, file, Some(pos), count) {
            Ok(0) => {
                return Err(SendError::FileEnded {
                    missing: end - *pos,
                });
            }
            Ok(_) => {}
            Err(Errno::AGAIN) => wait_writable(socket, stall)?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits until the socket has room (or an error to report), at most `stall`.
fn wait_writable(socket: BorrowedFd<'_>, stall: Duration) -> Result<(), SendError> {
    let timeout = Timespec {
        tv_sec: i64::try_from(stall.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(stall.subsec_nanos()),
    };
    loop {
        let mut fds = [PollFd::new(&socket, PollFlags::OUT)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err(SendError::Stalled(stall)),
            // Room, or an error or hang-up that the next send reports.
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn sends_the_head_then_the_range() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| ((i * 7) >> 3) as u8).collect();
        let file = file_of(&data);
        let (server, mut client) = pair();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        let (sent, result) = send_blob(
            server.as_fd(),
            b"HEAD\r\n",
            &file,
            1000..2_500_000,
            Duration::from_secs(10),
        );
        result.unwrap();
        assert_eq!(sent, 2_499_000);
        drop(server);
        let got = reader.join().unwrap();
        assert_eq!(&got[..6], b"HEAD\r\n");
        assert!(got[6..] == data[1000..2_500_000]);
    }

    #[test]
    fn a_short_file_fails_instead_of_padding() {
        let file = file_of(&[1u8; 100]);
        let (server, _client) = pair();
        let (sent, result) = send_blob(server.as_fd(), b"", &file, 50..200, Duration::from_secs(1));
        assert_eq!(sent, 50);
        assert!(
            matches!(result, Err(SendError::FileEnded { missing: 100 })),
            "{result:?}"
        );
    }

    #[test]
    fn a_client_that_reads_nothing_is_cut_off() {
        let file = file_of(&vec![0u8; 64 << 20]);
        let (server, _client) = pair();
        let (sent, result) = send_blob(
            server.as_fd(),
            b"",
            &file,
            0..64 << 20,
            Duration::from_millis(200),
        );
        assert!(matches!(result, Err(SendError::Stalled(_))), "{result:?}");
        assert!(sent > 0 && sent < 64 << 20);
    }
}
