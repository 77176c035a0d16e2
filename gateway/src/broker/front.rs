//! The authorising front of the embedded broker: one task per client connection, holding
//! the client's socket and its own connection to rumqttd's private port.
//!
//! - The first packet must be a CONNECT (MQTT 3.1.1), within [`CONNECT_TIMEOUT`] and at
//!   most [`MAX_CONNECT_BYTES`]; its credentials are checked ([`Access::identify`]), and so
//!   is its last will's topic. Refused: CONNACK with the reason, then close.
//! - Admitted: the CONNECT is forwarded with the password replaced by the broker's secret
//!   and the client id made unique in the identity's namespace (`{user}|{id}|{n}`), so no
//!   client can take over (and so disconnect) another's session.
//! - Client to broker: frames are parsed with rumqttc's codec only as far as needed. A
//!   PUBLISH outside the client's rights closes the connection; a SUBSCRIBE has its refused
//!   filters removed and answered with failure (0x80) in the SUBACK; everything else passes
//!   unchanged, as the bytes that came in.
//! - Broker to client: frames pass unchanged, except the SUBACK of a trimmed SUBSCRIBE.
//!
//! Buffers are bounded by the largest packet ([`MAX_PACKET_BYTES`]); an idle connection
//! holds about a kilobyte per direction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self, v4, FixedHeader, PacketType};
use rumqttc::{ConnectReturnCode, SubscribeReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use phr_schema::mqtt::MAX_PACKET_BYTES;
use phr_schema::Topics;

use super::{Access, Identity};
use crate::metrics::Metrics;

/// How long a new connection may take to send its CONNECT.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest CONNECT accepted (ids, credentials and a last will).
pub(super) const MAX_CONNECT_BYTES: usize = 16 * 1024;
/// Characters rumqttd refuses in a client id (`validate_clientid`).
const RUMQTTD_REFUSED_ID_CHARS: &str = "+$#/";
/// Bytes read at a time when no frame size is known yet.
const READ_CHUNK: usize = 1024;

pub(super) struct Front {
    access: Access,
    topics: Topics,
    private: SocketAddr,
    metrics: Arc<Metrics>,
    log: RefusalLog,
    /// Connections forwarded so far (makes each forwarded client id unique).
    connections: AtomicU64,
    /// With TLS configured, every connection starts with a TLS handshake.
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("private", &self.private)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a connection ended early (for the log; the client is told nothing more).
#[derive(Debug)]
enum End {
    Io,
    Protocol,
    Refused,
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> Self {
        Self::Io
    }
}

impl From<mqttbytes::Error> for End {
    fn from(_: mqttbytes::Error) -> Self {
        Self::Protocol
    }
}

/// What the client-side reader asks the broker-side writer to put in the client's stream.
#[derive(Debug)]
enum ToClient {
    /// A packet the front answers itself (the SUBACK of a wholly refused SUBSCRIBE).
    Packet(Bytes),
    /// The SUBSCRIBE with packet id `pkid` was forwarded without its refused filters: merge
    /// failures back into the broker's SUBACK, in the client's order (`true` = forwarded).
    Trimmed { pkid: u16, forwarded: Vec<bool> },
}

/// Accepts connections on `listener` until `shutdown`.
pub(super) async fn run(listener: TcpListener, front: Arc<Front>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, _peer)) => {
                let _ = socket.set_nodelay(true);
                let front = front.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        end = front.start(socket) => {
                            if let Err(e) = end {
                                tracing::debug!(reason = ?e, "MQTT connection ended");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "MQTT front could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Front {
    pub(super) fn new(
        access: Access,
        topics: Topics,
        private: SocketAddr,
        metrics: Arc<Metrics>,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        Self {
            access,
            topics,
            private,
            metrics,
            log: RefusalLog::default(),
            connections: AtomicU64::new(0),
            tls,
        }
    }

    /// Serves one connection, after a TLS handshake if TLS is configured.
    async fn start(&self, socket: TcpStream) -> Result<(), End> {
        let Some(tls) = &self.tls else {
            return self.serve(socket).await;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, tls.accept(socket)).await {
            Ok(Ok(stream)) => self.serve(stream).await,
            _ => {
                self.refuse("connect", "-", "no TLS handshake");
                Err(End::Refused)
            }
        }
    }

    async fn serve<S>(&self, mut client: S) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut from_client = Frames::new(BytesMut::new(), MAX_CONNECT_BYTES);
        let first = tokio::time::timeout(CONNECT_TIMEOUT, from_client.next(&mut client)).await;
        let Ok(Ok(Some((header, frame)))) = first else {
            // Silence, garbage or a hang-up before CONNECT.
            self.refuse("connect", "-", "no CONNECT");
            return Err(End::Refused);
        };
        if header.packet_type()? != PacketType::Connect {
            self.refuse("connect", "-", "first packet is not CONNECT");
            return Err(End::Protocol);
        }
        let mut connect = match v4::Connect::read(header, frame) {
            Ok(c) if c.protocol == mqttbytes::Protocol::V4 => c,
            _ => {
                self.refuse("connect", "-", "not MQTT 3.1.1");
                connack(&mut client, ConnectReturnCode::RefusedProtocolVersion).await;
                return Err(End::Refused);
            }
        };
        if RUMQTTD_REFUSED_ID_CHARS
            .chars()
            .any(|c| connect.client_id.contains(c))
        {
            self.refuse("connect", "-", "client id with + $ # or /");
            connack(&mut client, ConnectReturnCode::BadClientId).await;
            return Err(End::Refused);
        }
        let Some(login) = connect.login.take() else {
            self.refuse("connect", "-", "anonymous");
            connack(&mut client, ConnectReturnCode::NotAuthorized).await;
            return Err(End::Refused);
        };
        let user = login.username.clone();
        let identity = {
            let access = self.access.clone();
            let client_id = connect.client_id.clone();
            tokio::task::spawn_blocking(move || {
                access.identify(&client_id, &login.username, &login.password)
            })
            .await
            .ok()
            .flatten()
        };
        let Some(identity) = identity else {
            self.refuse("connect", &user, "bad credentials");
            connack(&mut client, ConnectReturnCode::BadUserNamePassword).await;
            return Err(End::Refused);
        };
        if let Some(will) = &connect.last_will {
            if !identity.may_publish(&self.topics, &will.topic) {
                self.refuse(
                    "connect",
                    &user,
                    &format!("last will on {}", clip(&will.topic)),
                );
                connack(&mut client, ConnectReturnCode::NotAuthorized).await;
                return Err(End::Refused);
            }
        }

        let Ok(mut broker) = TcpStream::connect(self.private).await else {
            tracing::error!("the embedded broker's private port does not answer");
            connack(&mut client, ConnectReturnCode::ServiceUnavailable).await;
            return Err(End::Io);
        };
        let _ = broker.set_nodelay(true);
        // Unique per connection and in the identity's namespace: no client can take over
        // (and so disconnect) another's session, and rumqttd never sees an id twice (it
        // panics, and then refuses everyone, when a client id whose link failed to start
        // connects again: `will_handlers` in rumqttd 0.20's `server/broker.rs`).
        connect.client_id = format!(
            "{user}|{}|{}",
            connect.client_id,
            self.connections.fetch_add(1, Relaxed)
        );
        connect.login = Some(v4::Login::new(
            user.clone(),
            self.access.gateway_secret.clone(),
        ));
        let mut out = BytesMut::new();
        connect.write(&mut out)?;
        broker.write_all(&out).await?;

        let (client_rd, client_wr) = tokio::io::split(client);
        let (broker_rd, broker_wr) = broker.into_split();
        let (to_client, from_front) = mpsc::channel(8);
        // Whatever the client sent after its CONNECT is still in `from_client`.
        from_client.max = MAX_PACKET_BYTES;
        let who = Who { identity, user };
        tokio::select! {
            r = self.upstream(&who, from_client, client_rd, broker_wr, to_client) => r,
            r = downstream(broker_rd, client_wr, from_front) => r,
        }
    }

    /// Client to broker: checks every PUBLISH and SUBSCRIBE, forwards what is allowed.
    async fn upstream(
        &self,
        who: &Who,
        mut frames: Frames,
        mut client: impl AsyncRead + Unpin,
        mut broker: impl AsyncWrite + Unpin,
        to_client: mpsc::Sender<ToClient>,
    ) -> Result<(), End> {
        let mut out = Outgoing::default();
        loop {
            let Some((header, frame)) = frames.next_buffered()? else {
                out.flush(&mut broker).await?;
                if !frames.fill(&mut client).await? {
                    return Ok(());
                }
                continue;
            };
            match header.packet_type()? {
                PacketType::Publish => {
                    let publish = v4::Publish::read(header, frame.clone())?;
                    if !who.identity.may_publish(&self.topics, &publish.topic) {
                        self.refuse("publish", &who.user, &clip(&publish.topic));
                        return Err(End::Refused);
                    }
                    out.push(frame);
                }
                PacketType::Subscribe => {
                    let subscribe = v4::Subscribe::read(header, frame.clone())?;
                    let forwarded: Vec<bool> = subscribe
                        .filters
                        .iter()
                        .map(|f| who.identity.may_subscribe(&self.topics, &f.path))
                        .collect();
                    if forwarded.iter().all(|ok| *ok) {
                        out.push(frame);
                        continue;
                    }
                    for f in subscribe
                        .filters
                        .iter()
                        .filter(|f| !who.identity.may_subscribe(&self.topics, &f.path))
                    {
                        self.refuse("subscribe", &who.user, &clip(&f.path));
                    }
                    let allowed: Vec<v4::SubscribeFilter> = subscribe
                        .filters
                        .into_iter()
                        .zip(&forwarded)
                        .filter_map(|(f, ok)| ok.then_some(f))
                        .collect();
                    let pkid = subscribe.pkid;
                    if allowed.is_empty() {
                        let suback = v4::SubAck::new(
                            pkid,
                            vec![SubscribeReasonCode::Failure; forwarded.len()],
                        );
                        let mut bytes = BytesMut::new();
                        suback.write(&mut bytes)?;
                        // Sent before anything later from this client is forwarded.
                        out.flush(&mut broker).await?;
                        to_client
                            .send(ToClient::Packet(bytes.freeze()))
                            .await
                            .map_err(|_| End::Io)?;
                    } else {
                        // The writer learns of the trim before the broker can answer.
                        to_client
                            .send(ToClient::Trimmed { pkid, forwarded })
                            .await
                            .map_err(|_| End::Io)?;
                        let trimmed = v4::Subscribe {
                            pkid,
                            filters: allowed,
                        };
                        let mut bytes = BytesMut::new();
                        trimmed.write(&mut bytes)?;
                        out.push(bytes.freeze());
                    }
                }
                PacketType::Connect => return Err(End::Protocol),
                _ => out.push(frame),
            }
        }
    }

    /// Counts a refusal and logs it (at most one line a second; no payloads).
    fn refuse(&self, what: &'static str, user: &str, detail: &str) {
        self.metrics.mqtt_refused(what);
        if let Some(suppressed) = self.log.admit() {
            tracing::warn!(
                what,
                user = %clip(user),
                detail,
                suppressed,
                "MQTT front refused a {what}"
            );
        }
    }
}

/// The client an upstream task serves.
#[derive(Debug)]
struct Who {
    identity: Identity,
    /// Its user name, for the log.
    user: String,
}

/// Broker to client: frames pass unchanged, except SUBACKs of trimmed subscriptions; the
/// front's own answers are put in between whole frames.
async fn downstream(
    mut broker: impl AsyncRead + Unpin,
    mut client: impl AsyncWrite + Unpin,
    mut from_front: mpsc::Receiver<ToClient>,
) -> Result<(), End> {
    let mut frames = Frames::new(BytesMut::new(), MAX_PACKET_BYTES);
    let mut trimmed: Vec<(u16, Vec<bool>)> = Vec::new();
    let mut out = Outgoing::default();
    loop {
        // Everything the front has to say first, so a trim is known before its SUBACK.
        while let Ok(m) = from_front.try_recv() {
            match m {
                ToClient::Packet(p) => out.push(p),
                ToClient::Trimmed { pkid, forwarded } => trimmed.push((pkid, forwarded)),
            }
        }
        let Some((header, frame)) = frames.next_buffered()? else {
            out.flush(&mut client).await?;
            tokio::select! {
                biased;
                m = from_front.recv() => match m {
                    Some(ToClient::Packet(p)) => out.push(p),
                    Some(ToClient::Trimmed { pkid, forwarded }) => trimmed.push((pkid, forwarded)),
                    None => return Ok(()),
                },
                more = frames.fill(&mut broker) => if !more? { return Ok(()) },
            }
            continue;
        };
        if header.packet_type()? == PacketType::SubAck && !trimmed.is_empty() {
            let suback = v4::SubAck::read(header, frame.clone())?;
            if let Some(i) = trimmed.iter().position(|(pkid, _)| *pkid == suback.pkid) {
                let (_, forwarded) = trimmed.swap_remove(i);
                let mut granted = suback.return_codes.into_iter();
                let codes = forwarded
                    .iter()
                    .map(|ok| {
                        if *ok {
                            granted.next().unwrap_or(SubscribeReasonCode::Failure)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                let mut bytes = BytesMut::new();
                v4::SubAck::new(suback.pkid, codes).write(&mut bytes)?;
                out.push(bytes.freeze());
                continue;
            }
        }
        out.push(frame);
    }
}

/// MQTT frames read from one direction of a connection.
#[derive(Debug)]
struct Frames {
    buf: BytesMut,
    /// Largest frame accepted.
    max: usize,
    /// Bytes still missing from the frame at the front of `buf`.
    want: usize,
}

impl Frames {
    fn new(buf: BytesMut, max: usize) -> Self {
        Self { buf, max, want: 2 }
    }

    /// The next whole frame already read, if any: its header and all its bytes.
    fn next_buffered(&mut self) -> Result<Option<(FixedHeader, Bytes)>, End> {
        match mqttbytes::check(self.buf.iter(), self.max) {
            Ok(header) => {
                let frame = self.buf.split_to(header.frame_length()).freeze();
                self.want = 2;
                Ok(Some((header, frame)))
            }
            Err(mqttbytes::Error::InsufficientBytes(n)) => {
                self.want = n;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads more; `false` at the end of the stream.
    async fn fill(&mut self, from: &mut (impl AsyncRead + Unpin)) -> Result<bool, End> {
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            // Give back what a large packet needed, so idle connections stay small.
            self.buf = BytesMut::new();
        }
        self.buf.reserve(self.want.max(READ_CHUNK));
        Ok(from.read_buf(&mut self.buf).await? > 0)
    }

    /// Reads until one whole frame is there (`None`: the stream ended first).
    async fn next(
        &mut self,
        from: &mut (impl AsyncRead + Unpin),
    ) -> Result<Option<(FixedHeader, Bytes)>, End> {
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(Some(f));
            }
            if !self.fill(from).await? {
                return Ok(None);
            }
        }
    }
}

/// Frames waiting to be written: one frame is written as it is, several are gathered into
/// one write.
#[derive(Debug, Default)]
struct Outgoing {
    frames: Vec<Bytes>,
}

impl Outgoing {
    fn push(&mut self, frame: Bytes) {
        self.frames.push(frame);
    }

    async fn flush(&mut self, to: &mut (impl AsyncWrite + Unpin)) -> Result<(), End> {
        match self.frames.len() {
            0 => return Ok(()),
            1 => to.write_all(&self.frames[0]).await?,
            _ => {
                let mut all = BytesMut::with_capacity(self.frames.iter().map(Bytes::len).sum());
                for f in &self.frames {
                    all.extend_from_slice(f);
                }
                to.write_all(&all).await?;
            }
        }
        self.frames.clear();
        Ok(())
    }
}

/// Answers a CONNECT with `code` (best effort: the connection closes next anyway).
async fn connack(client: &mut (impl AsyncWrite + Unpin), code: ConnectReturnCode) {
    let mut bytes = BytesMut::new();
    if v4::ConnAck::new(code, false).write(&mut bytes).is_ok() {
        let _ = client.write_all(&bytes).await;
        let _ = client.shutdown().await;
    }
}

/// At most 128 characters of a client-chosen string, for the log.
fn clip(s: &str) -> String {
    s.chars().take(128).collect()
}

/// Lets one refusal line a second into the log and counts the rest.
#[derive(Debug, Default)]
struct RefusalLog {
    /// The second (since the epoch) of the last line logged.
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RefusalLog {
    /// `Some(lines suppressed since the last one)` if this one may be logged.
    fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Relaxed);
        if now > last
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let log = RefusalLog::default();
        assert_eq!(log.admit(), Some(0));
        // The same second (unless the clock ticks over right here, then one more line).
        let admitted = (0..100).filter(|_| log.admit().is_some()).count();
        assert!(admitted <= 1, "{admitted} lines in a second");
    }
}
