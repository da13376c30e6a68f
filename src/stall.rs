//! Connections whose peer stops taking what the broker writes are cut.
//!
//! A client that never reads (a silent event stream, a slow-read attack)
//! would otherwise hold its connection, its stream slot and the buffers
//! behind them for ever. [`Stalling`] wraps a connection's socket: when a
//! write has been pending for `limits.write_stall_secs` without a byte
//! going out, the write fails and hyper closes the connection. An idle
//! connection (nothing to write) never stalls; an event stream cut this way
//! resumes with `Last-Event-ID` and gets `resync` if it fell behind.
//! Until it is cut, an event stream's connection holds at most
//! [`STREAM_SEND_BUFFER`] in the kernel.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What the kernel may hold of an event stream's unsent bytes: the socket's
/// send buffer (`SO_SNDBUF`; Linux doubles it for its bookkeeping). Left to
/// itself Linux grows it to `net.ipv4.tcp_wmem`'s maximum (4 MiB), which a
/// peer that never reads fills: 4 MiB of kernel memory per silent stream,
/// copied out before it is even cut.
pub const STREAM_SEND_BUFFER: usize = 64 * 1024;

pub struct Stalling<T> {
    inner: T,
    limit: Duration,
    /// Running while a write is pending; a write that makes progress clears it.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Set once the connection carries an event stream: its send buffer is
    /// then cut to [`STREAM_SEND_BUFFER`] before the next write.
    streaming: Arc<AtomicBool>,
    bounded: bool,
}

impl<T> Stalling<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Stalling {
            inner,
            limit,
            stalled: None,
            streaming: Arc::default(),
            bounded: false,
        }
    }

    /// The flag that tells this connection it carries an event stream.
    pub fn streaming(&self) -> Arc<AtomicBool> {
        self.streaming.clone()
    }

    /// Passes a write's outcome on, failing it once it was pending too long.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took nothing of what was written for limits.write_stall_secs",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalling<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsFd> Stalling<T> {
    fn bound(&mut self) {
        if !self.bounded && self.streaming.load(Ordering::Acquire) {
            self.bounded = true;
            let _ = socket2::SockRef::from(&self.inner).set_send_buffer_size(STREAM_SEND_BUFFER);
        }
    }
}

impl<T: AsyncWrite + AsFd + Unpin> AsyncWrite for Stalling<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.bound();
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.bound();
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
