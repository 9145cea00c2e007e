//! The endpoint's UDP socket as quinn sees it: tokio's socket, except that a batched send
//! (GSO) larger than Linux accepts goes out as several.
//!
//! quinn hands the kernel up to 10 equal datagrams in one send, and Linux refuses a send of
//! more than 65,507 bytes of UDP payload: datagrams over 6,500 bytes would fail every full
//! batch (seen here: losses, then quinn's black-hole detection dropped the path to 1,200
//! bytes). Splitting such a batch at datagram boundaries lets path MTU discovery go up to
//! jumbo-frame sizes, which cut quinn's per-packet work, while paths with smaller packets
//! keep batches of 10 (capping the batch instead would cost them syscalls: the socket is
//! shared by connections whose packet sizes differ).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Most UDP payload bytes Linux accepts in one segmentation-offload send (one IPv4
/// datagram's worth).
const MAX_GSO_BYTES: usize = 65_507;

/// The wrapped socket, with batched sends split to fit [`MAX_GSO_BYTES`].
#[derive(Debug)]
pub(super) struct GsoSplitting {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl GsoSplitting {
    pub(super) fn wrap(inner: Arc<dyn AsyncUdpSocket>) -> Arc<Self> {
        Arc::new(GsoSplitting { inner })
    }
}

/// The sends `transmit` must go out as: itself, or consecutive runs of whole datagrams
/// that each fit one send.
fn split<'a>(transmit: &Transmit<'a>) -> impl Iterator<Item = Transmit<'a>> {
    let per_send = match transmit.segment_size {
        Some(size) if size > 0 && transmit.contents.len() > MAX_GSO_BYTES => {
            (MAX_GSO_BYTES / size).max(1) * size
        }
        _ => transmit.contents.len().max(1),
    };
    let template = Transmit { ..*transmit };
    transmit
        .contents
        .chunks(per_send)
        .map(move |contents| Transmit {
            contents,
            // One datagram needs no segmentation; quinn sends it that way too.
            segment_size: template.segment_size.filter(|size| contents.len() > *size),
            ..template
        })
}

impl AsyncUdpSocket for GsoSplitting {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    /// A part that would block makes the whole transmit block: quinn retries all of it
    /// later, and the receiver drops the datagrams it already has as duplicates.
    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if transmit.contents.len() <= MAX_GSO_BYTES {
            return self.inner.try_send(transmit);
        }
        split(transmit).try_for_each(|part| self.inner.try_send(&part))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn transmit(contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit {
            destination: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn a_batch_over_the_limit_goes_out_in_whole_datagrams_that_fit() {
        // 10 datagrams of 8,952 bytes, the last one short.
        let bytes: Vec<u8> = (0..9 * 8952 + 100).map(|i| i as u8).collect();
        let parts: Vec<Transmit<'_>> = split(&transmit(&bytes, Some(8952))).collect();
        let sizes: Vec<usize> = parts.iter().map(|p| p.contents.len()).collect();
        assert_eq!(sizes, [7 * 8952, 2 * 8952 + 100]);
        assert!(parts.iter().all(|p| p.segment_size == Some(8952)));
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.contents.to_vec()).collect();
        assert_eq!(joined, bytes);

        // A lone datagram left over is sent without segmentation.
        let bytes = vec![0u8; 7 * 8952 + 3000];
        let parts: Vec<Transmit<'_>> = split(&transmit(&bytes, Some(8952))).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].contents.len(), 3000);
        assert_eq!(parts[1].segment_size, None);
    }

    #[test]
    fn a_batch_within_the_limit_is_left_whole() {
        for (len, segment_size) in [
            (10 * 6500, Some(6500)),
            (10 * 1452, Some(1452)),
            (1200, None),
        ] {
            let bytes = vec![1u8; len];
            let parts: Vec<Transmit<'_>> = split(&transmit(&bytes, segment_size)).collect();
            assert_eq!(parts.len(), 1);
            assert_eq!(parts[0].contents.len(), len);
            assert_eq!(parts[0].segment_size, segment_size);
        }
    }
}
