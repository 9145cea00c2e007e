//! `QuicConfig`: the socket, flow control, stream limits, timeouts and congestion control
//! of a node's QUIC endpoint.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, VarInt};
use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Which congestion controller quinn runs on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// CUBIC (RFC 9438): the Linux TCP default; robust on shared datacenter links.
    #[default]
    Cubic,
    /// BBR (quinn's experimental BBRv1): paces at the measured bottleneck rate, better on
    /// long lossy paths (cross-region replication), less fair to loss-based flows.
    Bbr,
    /// NewReno (RFC 9002): the QUIC reference controller; the most conservative.
    NewReno,
}

impl CongestionControl {
    /// quinn's controller factory for this choice.
    pub fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        match self {
            CongestionControl::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            CongestionControl::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            CongestionControl::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
        }
    }
}

/// A [`QuicConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quic config: {0}")]
pub struct QuicConfigError(pub String);

/// Configuration of a node's QUIC endpoint.
///
/// The defaults are tuned for bulk transfer between hosts of one datacenter (RTT 0.1–2 ms,
/// 10–100 Gbit/s NICs) that still works across regions (RTT up to ~50 ms):
///
/// - **Socket buffers, 4 MiB each way.** The kernel default (~208 KiB) drops packets in
///   bursts: on loopback here quinn moved ~650 MB/s with it and ~1,050 MB/s with 4 MiB.
///   Linux caps the request at `net.core.{r,w}mem_max`; [`Endpoint::socket_buffers`](super::Endpoint::socket_buffers)
///   reports what was granted and a warning is logged when it is less.
/// - **Stream receive window, 8 MiB.** A stream needs a window of at least
///   rate × RTT to run at line rate: 8 MiB covers 10 Gbit/s up to ~6.7 ms RTT, and is at
///   least two 4 MiB pieces, so a piece never waits for a window update.
/// - **Connection receive window, 32 MiB** (and the same send window): four full streams in
///   flight, i.e. 25 Gbit/s at 10 ms RTT, when several pieces flow to one peer at once.
///   The cost is memory: a peer that is not read from can hold up to this much per
///   connection, so a node with 100 stalled peers could buffer 3.2 GiB. Lower it on
///   memory-tight agents.
/// - **256 concurrent unidirectional streams** (one per piece in flight: 256 × 4 MiB is
///   more than any window) and **128 bidirectional streams** (one per blob session or RPC).
/// - **Idle timeout 30 s, keep-alive 10 s**: idle connections stay up across quiet
///   periods (one connection per peer is reused for every blob), and a dead peer is noticed
///   within 30 s. **Connect timeout 5 s**: a live peer in the cluster answers in well
///   under a second; a dead one should not hold a dial for long.
/// - **Congestion control CUBIC**; **initial MTU 1200** (the QUIC minimum, always safe;
///   very large initial MTUs stalled handshakes here).
/// - **Path MTU discovery up to 8,952-byte UDP payloads**: a 9000-byte jumbo frame less
///   IPv6 and UDP headers (quinn's default stops at 1,452, a 1500-byte Ethernet path).
///   quinn's cost is mostly per packet: on loopback here one stream moved 1 GiB with 3.3
///   CPU-seconds in 1,452-byte packets, 1.2–1.6 in 6,500-byte ones and 1.0–1.5 in
///   8,952-byte ones. Datacenter networks with jumbo frames (AWS VPCs: 9001, GCP: up to
///   8896) carry such packets; on a 1500-byte path a few probes per connection are lost
///   and discovery settles where it would have anyway. quinn hands the kernel up to 10
///   datagrams per segmentation-offload send and Linux refuses sends over 65,507 bytes, so
///   the endpoint's socket splits larger batches in two (see `socket`). Memory: quinn sizes
///   an endpoint's receive buffer by it (payload × 64 GRO segments × 32 datagrams: 18 MB
///   at 8,952, 3 MB at 1,472), of which only what arriving packets fill is touched (a
///   leecher moving 4 GiB peaked at 43 MiB).
/// - **Segmentation offload (GSO) on**: quinn sends a batch of equal-sized datagrams with
///   one syscall where the kernel supports it and turns it off by itself where it does not;
///   it is most of quinn's bulk-transfer throughput. Turn it off only to debug with packet
///   capture tools that mishandle it.
/// - **Bind `0.0.0.0:0`**: the OS picks the port (tests, clients); a node's own config
///   names its listening port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// Local address of the UDP socket (listening and dialing).
    pub bind: SocketAddr,
    /// Requested `SO_SNDBUF` in bytes.
    pub socket_send_buffer: usize,
    /// Requested `SO_RCVBUF` in bytes.
    pub socket_recv_buffer: usize,
    /// Bytes a peer may send on one stream before we read them.
    pub stream_receive_window: u64,
    /// Bytes a peer may send on all streams of a connection before we read them.
    pub connection_receive_window: u64,
    /// Bytes we buffer for sending on a connection (written but not yet acknowledged).
    pub send_window: u64,
    /// Unidirectional streams (pieces) a peer may have open at once.
    pub max_concurrent_uni_streams: u32,
    /// Bidirectional streams (sessions, RPCs) a peer may have open at once.
    pub max_concurrent_bidi_streams: u32,
    /// Close a connection after this long without any packet from the peer.
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// Send a keep-alive this often when a connection is otherwise quiet; `None` lets idle
    /// connections time out.
    #[serde(with = "opt_secs")]
    pub keep_alive_interval: Option<Duration>,
    /// Give up a dial (or an incoming handshake) after this long.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Congestion controller of every connection.
    pub congestion: CongestionControl,
    /// UDP payload size of the first packets, before MTU discovery (1200..=1472).
    pub initial_mtu: u16,
    /// Largest UDP payload that path MTU discovery probes for and that peers may send us
    /// (`initial_mtu`..=8952). 1452 stops discovery where quinn's default does (a
    /// 1500-byte path with IPv6 headers).
    pub max_udp_payload: u16,
    /// Let quinn use generic segmentation offload when the OS supports it.
    pub segmentation_offload: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            socket_send_buffer: (4 * MIB) as usize,
            socket_recv_buffer: (4 * MIB) as usize,
            stream_receive_window: 8 * MIB,
            connection_receive_window: 32 * MIB,
            send_window: 32 * MIB,
            max_concurrent_uni_streams: 256,
            max_concurrent_bidi_streams: 128,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(5),
            congestion: CongestionControl::Cubic,
            initial_mtu: 1200,
            max_udp_payload: MAX_JUMBO_UDP_PAYLOAD,
            segmentation_offload: true,
        }
    }
}

/// Largest UDP payload quinn sends by default (Ethernet MTU 1500 − IPv4 and UDP headers).
const MAX_UDP_PAYLOAD: u16 = 1472;
/// Largest UDP payload of a 9000-byte jumbo frame (less IPv6 and UDP headers).
const MAX_JUMBO_UDP_PAYLOAD: u16 = 8952;
/// Sanity bound on socket buffers and windows: beyond this a typo is likelier than a need.
const MAX_BUFFER: u64 = 1 << 30;

impl QuicConfig {
    /// The default configuration bound to `bind`.
    pub fn bind_to(bind: SocketAddr) -> Self {
        QuicConfig {
            bind,
            ..QuicConfig::default()
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), QuicConfigError> {
        let bad = |m: String| Err(QuicConfigError(m));
        for (name, v) in [
            ("socket_send_buffer", self.socket_send_buffer as u64),
            ("socket_recv_buffer", self.socket_recv_buffer as u64),
        ] {
            if !(64 * KIB..=MAX_BUFFER).contains(&v) {
                return bad(format!("{name} must be between 64 KiB and 1 GiB, not {v}"));
            }
        }
        for (name, v) in [
            ("stream_receive_window", self.stream_receive_window),
            ("connection_receive_window", self.connection_receive_window),
            ("send_window", self.send_window),
        ] {
            if !(64 * KIB..=MAX_BUFFER).contains(&v) {
                return bad(format!("{name} must be between 64 KiB and 1 GiB, not {v}"));
            }
        }
        if self.stream_receive_window > self.connection_receive_window {
            return bad(format!(
                "stream_receive_window ({}) cannot exceed connection_receive_window ({})",
                self.stream_receive_window, self.connection_receive_window
            ));
        }
        if self.max_concurrent_uni_streams == 0 || self.max_concurrent_bidi_streams == 0 {
            return bad(
                "max_concurrent_uni_streams and max_concurrent_bidi_streams must be at least 1"
                    .into(),
            );
        }
        if self.idle_timeout.is_zero() || IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad(format!(
                "idle_timeout must be above 0 and representable, not {:?}",
                self.idle_timeout
            ));
        }
        if let Some(k) = self.keep_alive_interval
            && (k.is_zero() || k >= self.idle_timeout)
        {
            return bad(format!(
                "keep_alive_interval ({k:?}) must be above 0 and below idle_timeout ({:?})",
                self.idle_timeout
            ));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be above 0".into());
        }
        if !(1200..=MAX_UDP_PAYLOAD).contains(&self.initial_mtu) {
            return bad(format!(
                "initial_mtu must be within 1200..={MAX_UDP_PAYLOAD}, not {}",
                self.initial_mtu
            ));
        }
        if !(self.initial_mtu..=MAX_JUMBO_UDP_PAYLOAD).contains(&self.max_udp_payload) {
            return bad(format!(
                "max_udp_payload must be within initial_mtu ({})..={MAX_JUMBO_UDP_PAYLOAD}, \
                 not {}",
                self.initial_mtu, self.max_udp_payload
            ));
        }
        Ok(())
    }

    /// quinn's transport configuration for these settings. Call [`QuicConfig::validate`]
    /// first; out-of-range values are clamped, never a panic.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let varint = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(varint(self.stream_receive_window))
            .receive_window(varint(self.connection_receive_window))
            .send_window(self.send_window)
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_concurrent_uni_streams))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok())
            .keep_alive_interval(self.keep_alive_interval)
            .congestion_controller_factory(self.congestion.factory())
            .initial_mtu(self.initial_mtu)
            .enable_segmentation_offload(self.segmentation_offload);
        let mut discovery = quinn::MtuDiscoveryConfig::default();
        discovery.upper_bound(self.max_udp_payload);
        t.mtu_discovery_config(Some(discovery));
        t
    }

    /// quinn's endpoint configuration: the largest UDP payload peers may send us.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut e = quinn::EndpointConfig::default();
        // Out of quinn's range only if `validate` was skipped; quinn's default stays then.
        let _ = e.max_udp_payload_size(self.max_udp_payload);
        e
    }
}

/// A `Duration` as (fractional) seconds in config files.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// An optional `Duration` as (fractional) seconds in config files.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_nonsense_is_not() {
        QuicConfig::default().validate().unwrap();
        let cases: Vec<fn(&mut QuicConfig)> = vec![
            |c| c.socket_send_buffer = 0,
            |c| c.stream_receive_window = 64 * MIB,
            |c| c.connection_receive_window = 2 << 30,
            |c| c.max_concurrent_uni_streams = 0,
            |c| c.idle_timeout = Duration::ZERO,
            |c| c.keep_alive_interval = Some(Duration::from_secs(60)),
            |c| c.connect_timeout = Duration::ZERO,
            |c| c.initial_mtu = 9000,
            |c| c.initial_mtu = 576,
            |c| c.max_udp_payload = 9000,
            |c| c.max_udp_payload = 1199,
            |c| {
                c.initial_mtu = 1400;
                c.max_udp_payload = 1300;
            },
        ];
        for (i, f) in cases.into_iter().enumerate() {
            let mut c = QuicConfig::default();
            f(&mut c);
            assert!(c.validate().is_err(), "case {i} should be rejected");
        }
        // Every controller builds.
        for cc in [
            CongestionControl::Cubic,
            CongestionControl::Bbr,
            CongestionControl::NewReno,
        ] {
            let c = QuicConfig {
                congestion: cc,
                ..QuicConfig::default()
            };
            let _ = c.transport_config();
        }
    }
}
