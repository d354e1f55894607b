//! Zero-copy relay of one direction between two TCP sockets: Linux `splice(2)` moves the bytes
//! from the source socket into a pipe and from the pipe into the destination socket, so they
//! never enter user space. CONNECT and SOCKS5 flows (TCP on both sides) use it; tunnel flows
//! (QUIC streams) cannot and use the buffered copy in `crate::flow`.
//!
//! The readiness loop is tokio's (`readable`/`writable` + `try_io`); pacing and byte counting
//! work as in the buffered copy since each splice reports how many bytes moved.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most moved per splice call; also the pipe size asked for.
const CHUNK: usize = 1 << 20;

/// A pipe for one direction, made as large as the system allows up to `CHUNK`.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Best effort: the default 64 KiB pipe works, only with more system calls.
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Pipe { read, write })
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

/// Moves up to `CHUNK` bytes from `from` into the pipe; `Ok(0)` at end of stream.
pub(crate) async fn fill(from: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe.write, None, CHUNK, flags()).map_err(io::Error::from)
        }) {
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Moves exactly `len` bytes from the pipe into `to`.
pub(crate) async fn drain(pipe: &Pipe, to: &TcpStream, mut len: usize) -> io::Result<()> {
    while len > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, to, None, len, flags()).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Half-closes `to` (the peer sees end of stream).
pub(crate) fn finish(to: &TcpStream) {
    let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
}
