//! The tunnel's frames: what a node writes first on each QUIC stream, and the gateway's answer.
//!
//! A node opens one bidirectional stream per flow. Its first bytes are a [`FlowOpen`] naming the
//! destination and the document/tenant tags; the gateway answers with one [`FlowReply`]. After
//! a `Connected` reply both directions carry the flow's raw bytes until each side finishes its
//! half; after any other reply the gateway finishes the stream.
//!
//! A node may instead open a stream to ask for a verdict on a DNS name: a [`NameLookup`],
//! answered by one [`LookupReply`], after which both sides finish the stream. The two requests
//! share the header and differ in the kind byte; [`StreamRequest::decode`] reads either.
//!
//! ```text
//! FlowOpen (node → gateway)             FlowReply (gateway → node)
//!   u8  version = 1                       u8  version = 1
//!   u8  kind = 0x01                       u8  kind = 0x02
//!   u16 body length (≤ 700)               u16 body length (≤ 1100)
//!   body:                                 body:
//!     u8  address type                      u8  status (see ReplyStatus)
//!         0x01 IPv4: 4 bytes                u64 flow id (names the audit record)
//!         0x04 IPv6: 16 bytes               u16 reason length (≤ 1024)
//!         0x03 name: u8 length (1..=255)    reason, UTF-8
//!                    + bytes
//!     u16 port (non-zero)
//!     u8  tenant length (1..=64) + UTF-8
//!     u8  document length (1..=128) + UTF-8
//!     optional, only if bytes remain: the origin
//!     u8  section = 0x01 (origin)
//!     u8  cell length (1..=64) + UTF-8
//!     u64 run
//!     u8  user length (0..=128) + UTF-8
//!
//! NameLookup (node → gateway)           LookupReply (gateway → node)
//!   u8  version = 1                       u8  version = 1
//!   u8  kind = 0x03                       u8  kind = 0x04
//!   u16 body length (≤ 512)               u16 body length (≤ 1100)
//!   body:                                 body:
//!     u8  name length (1..=253) + UTF-8     u8  status (see LookupStatus)
//!     u8  tenant length (1..=64) + UTF-8    u16 reason length (≤ 1024)
//!     u8  document length (1..=128)         reason, UTF-8
//!         + UTF-8
//! ```
//!
//! The origin says which cell and run of the document were executing when the kernel opened the
//! connection, and who started that run (DESIGN §5: attribution per cell). It is optional so a
//! node that does not know (a connection between runs) sends none; a body with no bytes after
//! the document has no origin. A gateway older than the origin refuses it as trailing bytes.
//!
//! All integers are big-endian. A body must be consumed exactly. The address types are SOCKS5's.
//! Names are checked by the gateway as any client's host only after decoding: the frame
//! carries what the node was asked for. The gateway takes the tenant tag only if the node's
//! certificate is allowed to speak for that tenant (the gateway's `tunnel` module).
//!
//! The decoders are sans-IO and incremental: `Ok(None)` means "need more bytes". They are
//! fuzzed and property-tested with the gateway (`egress-gateway/fuzz/`,
//! `egress-gateway/tests/decoders.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The frame version this crate speaks.
pub const VERSION: u8 = 1;
/// The QUIC ALPN of the tunnel.
pub const ALPN: &[u8] = b"airlock-egress/1";
const KIND_OPEN: u8 = 0x01;
const KIND_REPLY: u8 = 0x02;
const KIND_LOOKUP: u8 = 0x03;
const KIND_LOOKUP_REPLY: u8 = 0x04;
/// Every frame starts with version, kind and a big-endian `u16` body length.
pub const HEADER_LEN: usize = 4;
/// Largest `FlowOpen` body: 1 + 1 + 255 + 2 + 1 + 64 + 1 + 128 = 453, plus the origin
/// 1 + 1 + 64 + 8 + 1 + 128 = 203: 656, rounded up.
pub const MAX_OPEN_BODY: usize = 700;
/// Largest `FlowReply` body: 1 + 8 + 2 + 1024 = 1035, rounded up.
pub const MAX_REPLY_BODY: usize = 1100;
pub const MAX_TENANT_LEN: usize = 64;
pub const MAX_DOCUMENT_LEN: usize = 128;
pub const MAX_REASON_LEN: usize = 1024;
/// The longest cell id an origin may carry (at least one byte).
pub const MAX_CELL_LEN: usize = 64;
/// The longest user an origin may carry (it may be empty: a run nobody in particular started).
pub const MAX_USER_LEN: usize = 128;
/// The section tag of a `FlowOpen`'s origin.
const SECTION_ORIGIN: u8 = 0x01;
/// The longest name a `NameLookup` may carry (a DNS name in presentation form).
pub const MAX_LOOKUP_NAME_LEN: usize = MAX_NAME_LEN;

/// Longest DNS name (RFC 1035 §2.3.4, without the trailing dot), the limit of every host a
/// frame or a proxy request may name.
pub const MAX_NAME_LEN: usize = 253;
/// Largest `NameLookup` body: 1 + 253 + 1 + 64 + 1 + 128 = 448, rounded up.
pub const MAX_LOOKUP_BODY: usize = 512;
/// Largest `LookupReply` body: 1 + 2 + 1024 = 1027, rounded up.
pub const MAX_LOOKUP_REPLY_BODY: usize = 1100;

/// Why bytes are not a frame. Any of these ends the stream with a `BadRequest` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame version {0} is not supported (this gateway speaks version {VERSION})")]
    Version(u8),
    #[error("frame kind {0:#04x} was not expected here")]
    Kind(u8),
    #[error("frame body of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("frame body ends early")]
    Truncated,
    #[error("frame body has {0} bytes left over")]
    TrailingBytes(usize),
    #[error("address type {0:#04x} is not IPv4 (1), name (3) or IPv6 (4)")]
    AddressType(u8),
    #[error("the destination name is empty")]
    EmptyName,
    #[error("port 0 is not a destination")]
    ZeroPort,
    #[error("the {0} is empty or too long")]
    FieldLength(&'static str),
    #[error("the {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("reply status {0} is unknown")]
    Status(u8),
    #[error("frame section {0:#04x} is unknown")]
    Section(u8),
}

/// A destination as the node names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    Ip(IpAddr),
    /// A host string, checked by the gateway's host parser.
    Name(String),
}

/// The first frame of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowOpen {
    pub host: TargetHost,
    pub port: u16,
    pub tenant: String,
    pub document: String,
    /// The cell, run and user that were executing when the connection was made, if the node
    /// knows; the gateway writes them into the flow's audit record.
    pub origin: Option<FlowOrigin>,
}

/// Who in a document opened a flow: the cell that was running, which run of it, and the user
/// who started that run. Written by the node from the document's state, never by the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowOrigin {
    /// The cell id (1..=64 bytes).
    pub cell: String,
    /// The run of that cell (the document's execution counter for it).
    pub run: u64,
    /// Who started the run (0..=128 bytes; empty when nobody in particular did).
    pub user: String,
}

/// How the gateway answered a [`FlowOpen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyStatus {
    Connected = 0,
    Denied = 1,
    Limited = 2,
    ResolveFailed = 3,
    ConnectFailed = 4,
    BadRequest = 5,
}

impl TryFrom<u8> for ReplyStatus {
    type Error = FrameError;
    fn try_from(value: u8) -> Result<Self, FrameError> {
        Ok(match value {
            0 => ReplyStatus::Connected,
            1 => ReplyStatus::Denied,
            2 => ReplyStatus::Limited,
            3 => ReplyStatus::ResolveFailed,
            4 => ReplyStatus::ConnectFailed,
            5 => ReplyStatus::BadRequest,
            other => return Err(FrameError::Status(other)),
        })
    }
}

/// The gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReply {
    pub status: ReplyStatus,
    pub flow: u64,
    /// Empty when connected; otherwise the sentence to show in the cell.
    pub reason: String,
}

/// The first frame of a lookup: may `tenant`'s `document` use `name`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameLookup {
    /// The name as the kernel asked for it, checked by the gateway with
    /// the gateway's host parser.
    pub name: String,
    pub tenant: String,
    pub document: String,
}

/// How the gateway answered a [`NameLookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LookupStatus {
    /// The name resolves and at least one of its addresses may be reached.
    Found = 0,
    /// The name does not exist or has no A/AAAA records.
    NotFound = 1,
    /// The policy refuses the name or every address it resolves to.
    Denied = 2,
    /// The gateway could not resolve the name (timeout, server failure).
    Failed = 3,
    /// The request was malformed, or named an address rather than a name.
    BadRequest = 4,
}

impl TryFrom<u8> for LookupStatus {
    type Error = FrameError;
    fn try_from(value: u8) -> Result<Self, FrameError> {
        Ok(match value {
            0 => LookupStatus::Found,
            1 => LookupStatus::NotFound,
            2 => LookupStatus::Denied,
            3 => LookupStatus::Failed,
            4 => LookupStatus::BadRequest,
            other => return Err(FrameError::Status(other)),
        })
    }
}

/// The gateway's answer to a [`NameLookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupReply {
    pub status: LookupStatus,
    /// Empty when found; otherwise the sentence to show in the cell.
    pub reason: String,
}

/// What a node asks for on a new stream, told apart by the frame kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Flow(FlowOpen),
    Lookup(NameLookup),
}

/// Which request a stream starts with, from its header alone: lets the gateway answer even a
/// malformed request with the matching reply frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Flow,
    Lookup,
}

/// A cursor over a frame body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn text(&mut self, len: usize, what: &'static str) -> Result<String, FrameError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::NotUtf8(what))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn short_text(&mut self, max: usize, what: &'static str) -> Result<String, FrameError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > max {
            return Err(FrameError::FieldLength(what));
        }
        self.text(len, what)
    }

    /// Like [`Body::short_text`], but the text may be empty.
    fn short_text_or_empty(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<String, FrameError> {
        let len = usize::from(self.u8()?);
        if len > max {
            return Err(FrameError::FieldLength(what));
        }
        self.text(len, what)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A `u16`-length reason of at most [`MAX_REASON_LEN`] bytes.
    fn reason(&mut self) -> Result<String, FrameError> {
        let len = usize::from(self.u16()?);
        if len > MAX_REASON_LEN {
            return Err(FrameError::FieldLength("reason"));
        }
        self.text(len, "reason")
    }

    fn finish(self) -> Result<(), FrameError> {
        match self.0.len() {
            0 => Ok(()),
            left => Err(FrameError::TrailingBytes(left)),
        }
    }
}

/// Splits off one frame of `kind`: `Ok(None)` until all of it is in `buf`.
fn split_frame(
    buf: &[u8],
    kind: u8,
    max_body: usize,
) -> Result<Option<(&[u8], usize)>, FrameError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(FrameError::Version(buf[0]));
    }
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] != kind {
        return Err(FrameError::Kind(buf[1]));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if len > max_body {
        return Err(FrameError::TooLong(len));
    }
    match buf.get(HEADER_LEN..HEADER_LEN + len) {
        Some(body) => Ok(Some((body, HEADER_LEN + len))),
        None => Ok(None),
    }
}

/// Appends `u8` length + text, refusing empty or over-`max` fields.
fn push_short_text(
    body: &mut Vec<u8>,
    text: &str,
    max: usize,
    what: &'static str,
) -> Result<(), FrameError> {
    if text.is_empty() || text.len() > max || text.len() > usize::from(u8::MAX) {
        return Err(FrameError::FieldLength(what));
    }
    body.push(text.len() as u8);
    body.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Appends `u16` length + reason, cut at a character boundary to [`MAX_REASON_LEN`].
fn push_reason(body: &mut Vec<u8>, reason: &str) {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    body.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    body.extend_from_slice(reason.as_bytes());
}

fn with_header(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.push(VERSION);
    frame.push(kind);
    // Bodies are bounded by construction (every field has a checked maximum).
    frame.extend_from_slice(&(body.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

impl FlowOpen {
    /// Decodes one `FlowOpen` from the start of `buf`; returns it and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(FlowOpen, usize)>, FrameError> {
        let Some((body, used)) = split_frame(buf, KIND_OPEN, MAX_OPEN_BODY)? else {
            return Ok(None);
        };
        let mut body = Body(body);
        let host = match body.u8()? {
            0x01 => {
                let b = body.take(4)?;
                TargetHost::Ip(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            }
            0x04 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(body.take(16)?);
                TargetHost::Ip(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            0x03 => {
                let len = usize::from(body.u8()?);
                if len == 0 {
                    return Err(FrameError::EmptyName);
                }
                TargetHost::Name(body.text(len, "destination name")?)
            }
            other => return Err(FrameError::AddressType(other)),
        };
        let port = body.u16()?;
        if port == 0 {
            return Err(FrameError::ZeroPort);
        }
        let tenant = body.short_text(MAX_TENANT_LEN, "tenant")?;
        let document = body.short_text(MAX_DOCUMENT_LEN, "document")?;
        let origin = if body.is_empty() {
            None
        } else {
            match body.u8()? {
                SECTION_ORIGIN => {
                    let cell = body.short_text(MAX_CELL_LEN, "cell")?;
                    let run = body.u64()?;
                    let user = body.short_text_or_empty(MAX_USER_LEN, "user")?;
                    Some(FlowOrigin { cell, run, user })
                }
                other => return Err(FrameError::Section(other)),
            }
        };
        body.finish()?;
        Ok(Some((
            FlowOpen {
                host,
                port,
                tenant,
                document,
                origin,
            },
            used,
        )))
    }

    /// Encodes the frame; fails if a field is empty or over its limit.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut body = Vec::with_capacity(64);
        match &self.host {
            TargetHost::Ip(IpAddr::V4(ip)) => {
                body.push(0x01);
                body.extend_from_slice(&ip.octets());
            }
            TargetHost::Ip(IpAddr::V6(ip)) => {
                body.push(0x04);
                body.extend_from_slice(&ip.octets());
            }
            TargetHost::Name(name) => {
                if name.is_empty() {
                    return Err(FrameError::EmptyName);
                }
                let len = u8::try_from(name.len())
                    .map_err(|_| FrameError::FieldLength("destination name"))?;
                body.push(0x03);
                body.push(len);
                body.extend_from_slice(name.as_bytes());
            }
        }
        if self.port == 0 {
            return Err(FrameError::ZeroPort);
        }
        body.extend_from_slice(&self.port.to_be_bytes());
        push_short_text(&mut body, &self.tenant, MAX_TENANT_LEN, "tenant")?;
        push_short_text(&mut body, &self.document, MAX_DOCUMENT_LEN, "document")?;
        if let Some(origin) = &self.origin {
            body.push(SECTION_ORIGIN);
            push_short_text(&mut body, &origin.cell, MAX_CELL_LEN, "cell")?;
            body.extend_from_slice(&origin.run.to_be_bytes());
            if origin.user.len() > MAX_USER_LEN {
                return Err(FrameError::FieldLength("user"));
            }
            body.push(origin.user.len() as u8);
            body.extend_from_slice(origin.user.as_bytes());
        }
        Ok(with_header(KIND_OPEN, body))
    }
}

impl FlowReply {
    /// Decodes one `FlowReply` from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Option<(FlowReply, usize)>, FrameError> {
        let Some((body, used)) = split_frame(buf, KIND_REPLY, MAX_REPLY_BODY)? else {
            return Ok(None);
        };
        let mut body = Body(body);
        let status = ReplyStatus::try_from(body.u8()?)?;
        let flow = body.u64()?;
        let reason = body.reason()?;
        body.finish()?;
        Ok(Some((
            FlowReply {
                status,
                flow,
                reason,
            },
            used,
        )))
    }

    /// Encodes the reply; a reason over the limit is cut at a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(11 + self.reason.len().min(MAX_REASON_LEN));
        body.push(self.status as u8);
        body.extend_from_slice(&self.flow.to_be_bytes());
        push_reason(&mut body, &self.reason);
        with_header(KIND_REPLY, body)
    }
}

impl NameLookup {
    /// Decodes one `NameLookup` from the start of `buf`; returns it and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(NameLookup, usize)>, FrameError> {
        let Some((body, used)) = split_frame(buf, KIND_LOOKUP, MAX_LOOKUP_BODY)? else {
            return Ok(None);
        };
        let mut body = Body(body);
        let len = usize::from(body.u8()?);
        if len == 0 {
            return Err(FrameError::EmptyName);
        }
        if len > MAX_LOOKUP_NAME_LEN {
            return Err(FrameError::FieldLength("name"));
        }
        let name = body.text(len, "name")?;
        let tenant = body.short_text(MAX_TENANT_LEN, "tenant")?;
        let document = body.short_text(MAX_DOCUMENT_LEN, "document")?;
        body.finish()?;
        Ok(Some((
            NameLookup {
                name,
                tenant,
                document,
            },
            used,
        )))
    }

    /// Encodes the frame; fails if a field is empty or over its limit.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        if self.name.is_empty() {
            return Err(FrameError::EmptyName);
        }
        let mut body = Vec::with_capacity(3 + self.name.len() + 64);
        push_short_text(&mut body, &self.name, MAX_LOOKUP_NAME_LEN, "name")?;
        push_short_text(&mut body, &self.tenant, MAX_TENANT_LEN, "tenant")?;
        push_short_text(&mut body, &self.document, MAX_DOCUMENT_LEN, "document")?;
        Ok(with_header(KIND_LOOKUP, body))
    }
}

impl LookupReply {
    /// Decodes one `LookupReply` from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Option<(LookupReply, usize)>, FrameError> {
        let Some((body, used)) = split_frame(buf, KIND_LOOKUP_REPLY, MAX_LOOKUP_REPLY_BODY)? else {
            return Ok(None);
        };
        let mut body = Body(body);
        let status = LookupStatus::try_from(body.u8()?)?;
        let reason = body.reason()?;
        body.finish()?;
        Ok(Some((LookupReply { status, reason }, used)))
    }

    /// Encodes the reply; a reason over the limit is cut at a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(3 + self.reason.len().min(MAX_REASON_LEN));
        body.push(self.status as u8);
        push_reason(&mut body, &self.reason);
        with_header(KIND_LOOKUP_REPLY, body)
    }
}

impl StreamRequest {
    /// Which request `buf` starts: `None` until the version and kind bytes are in and valid.
    pub fn kind_of(buf: &[u8]) -> Option<RequestKind> {
        match buf {
            [VERSION, KIND_OPEN, ..] => Some(RequestKind::Flow),
            [VERSION, KIND_LOOKUP, ..] => Some(RequestKind::Lookup),
            _ => None,
        }
    }

    /// Decodes whichever request starts `buf` (a reply kind is [`FrameError::Kind`]).
    pub fn decode(buf: &[u8]) -> Result<Option<(StreamRequest, usize)>, FrameError> {
        match buf {
            [] | [VERSION] => Ok(None),
            [VERSION, KIND_OPEN, ..] => {
                Ok(FlowOpen::decode(buf)?.map(|(open, used)| (StreamRequest::Flow(open), used)))
            }
            [VERSION, KIND_LOOKUP, ..] => Ok(NameLookup::decode(buf)?
                .map(|(lookup, used)| (StreamRequest::Lookup(lookup), used))),
            [VERSION, kind, ..] => Err(FrameError::Kind(*kind)),
            [version, ..] => Err(FrameError::Version(*version)),
        }
    }

    /// Encodes the request's frame.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        match self {
            StreamRequest::Flow(open) => open.encode(),
            StreamRequest::Lookup(lookup) => lookup.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn frames_round_trip_and_need_all_their_bytes() {
        let open = FlowOpen {
            host: TargetHost::Name("example.com".to_owned()),
            port: 443,
            tenant: "acme".to_owned(),
            document: "doc-1".to_owned(),
            origin: None,
        };
        let bytes = open.encode().unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(FlowOpen::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"payload");
        assert_eq!(FlowOpen::decode(&more), Ok(Some((open, bytes.len()))));

        let reply = FlowReply {
            status: ReplyStatus::Denied,
            flow: 7,
            reason: "denied: 10.0.0.5 is a private address (RFC 1918)".to_owned(),
        };
        let bytes = reply.encode();
        assert_eq!(FlowReply::decode(&bytes), Ok(Some((reply, bytes.len()))));
    }

    #[test]
    fn an_origin_rides_after_the_document_and_is_optional() {
        let without = FlowOpen {
            host: TargetHost::Ip(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))),
            port: 80,
            tenant: "acme".to_owned(),
            document: "doc-1".to_owned(),
            origin: None,
        };
        let with = FlowOpen {
            origin: Some(FlowOrigin {
                cell: "c-7f".to_owned(),
                run: 42,
                user: "ada@example.org".to_owned(),
            }),
            ..without.clone()
        };
        let short = without.encode().unwrap();
        let long = with.encode().unwrap();
        // The same frame, with the section appended and the length grown to match.
        assert_eq!(long[4..short.len()], short[4..]);
        assert_eq!(long[short.len()], SECTION_ORIGIN);
        for cut in 0..long.len() {
            assert_eq!(FlowOpen::decode(&long[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            FlowOpen::decode(&long),
            Ok(Some((with.clone(), long.len())))
        );
        assert_eq!(FlowOpen::decode(&short), Ok(Some((without, short.len()))));

        // An empty user is allowed; an empty cell, a long user or an unknown section are not.
        let anonymous = FlowOpen {
            origin: Some(FlowOrigin {
                user: String::new(),
                ..with.origin.clone().unwrap()
            }),
            ..with.clone()
        };
        let bytes = anonymous.encode().unwrap();
        assert_eq!(FlowOpen::decode(&bytes), Ok(Some((anonymous, bytes.len()))));
        let mut bad = with.clone();
        bad.origin.as_mut().unwrap().cell.clear();
        assert_eq!(bad.encode(), Err(FrameError::FieldLength("cell")));
        let mut bad = with.clone();
        bad.origin.as_mut().unwrap().user = "u".repeat(MAX_USER_LEN + 1);
        assert_eq!(bad.encode(), Err(FrameError::FieldLength("user")));
        let mut unknown = long.clone();
        unknown[short.len()] = 0x02;
        assert_eq!(FlowOpen::decode(&unknown), Err(FrameError::Section(2)));
        let mut extra = long.clone();
        extra.push(0);
        extra[3] += 1;
        assert_eq!(FlowOpen::decode(&extra), Err(FrameError::TrailingBytes(1)));

        // The largest possible frame fits the limit.
        let largest = FlowOpen {
            host: TargetHost::Name("a".repeat(255)),
            port: 1,
            tenant: "t".repeat(MAX_TENANT_LEN),
            document: "d".repeat(MAX_DOCUMENT_LEN),
            origin: Some(FlowOrigin {
                cell: "c".repeat(MAX_CELL_LEN),
                run: u64::MAX,
                user: "u".repeat(MAX_USER_LEN),
            }),
        };
        let bytes = largest.encode().unwrap();
        assert!(bytes.len() - HEADER_LEN <= MAX_OPEN_BODY);
        assert_eq!(FlowOpen::decode(&bytes), Ok(Some((largest, bytes.len()))));
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(FlowOpen::decode(&[2]), Err(FrameError::Version(2)));
        assert_eq!(FlowOpen::decode(&[1, 2]), Err(FrameError::Kind(2)));
        assert_eq!(
            FlowOpen::decode(&[1, 1, 0xff, 0xff]),
            Err(FrameError::TooLong(0xffff))
        );
        assert_eq!(
            FlowOpen::decode(&[1, 1, 0, 1, 9]),
            Err(FrameError::AddressType(9))
        );
        assert_eq!(
            FlowOpen::decode(&[1, 1, 0, 7, 1, 127, 0, 0, 1, 0, 0]),
            Err(FrameError::ZeroPort)
        );
        assert_eq!(
            FlowOpen::decode(&[1, 1, 0, 8, 1, 127, 0, 0, 1, 0, 80, 0]),
            Err(FrameError::FieldLength("tenant"))
        );
    }

    #[test]
    fn lookups_round_trip_and_are_told_apart_from_flows() {
        let lookup = NameLookup {
            name: "example.com".to_owned(),
            tenant: "acme".to_owned(),
            document: "doc-1".to_owned(),
        };
        let bytes = lookup.encode().unwrap();
        assert_eq!(&bytes[..2], &[VERSION, KIND_LOOKUP]);
        for cut in 0..bytes.len() {
            assert_eq!(NameLookup::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(
                StreamRequest::decode(&bytes[..cut]),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert_eq!(
            NameLookup::decode(&bytes),
            Ok(Some((lookup.clone(), bytes.len())))
        );
        assert_eq!(StreamRequest::kind_of(&bytes), Some(RequestKind::Lookup));
        assert_eq!(
            StreamRequest::decode(&bytes),
            Ok(Some((StreamRequest::Lookup(lookup), bytes.len())))
        );
        // Each decoder refuses the other's frame by its kind byte.
        assert_eq!(FlowOpen::decode(&bytes), Err(FrameError::Kind(KIND_LOOKUP)));

        let open = FlowOpen {
            host: TargetHost::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: 80,
            tenant: "acme".to_owned(),
            document: "doc-1".to_owned(),
            origin: None,
        };
        let bytes = open.encode().unwrap();
        assert_eq!(NameLookup::decode(&bytes), Err(FrameError::Kind(KIND_OPEN)));
        assert_eq!(StreamRequest::kind_of(&bytes), Some(RequestKind::Flow));
        assert_eq!(
            StreamRequest::decode(&bytes),
            Ok(Some((StreamRequest::Flow(open), bytes.len())))
        );

        for status in [
            LookupStatus::Found,
            LookupStatus::NotFound,
            LookupStatus::Denied,
            LookupStatus::Failed,
            LookupStatus::BadRequest,
        ] {
            let reply = LookupReply {
                status,
                reason: "denied: example.com matches the tenant's deny rule *.com".to_owned(),
            };
            let bytes = reply.encode();
            assert_eq!(LookupReply::decode(&bytes), Ok(Some((reply, bytes.len()))));
            assert_eq!(
                FlowReply::decode(&bytes),
                Err(FrameError::Kind(KIND_LOOKUP_REPLY))
            );
        }
    }

    #[test]
    fn bad_lookups_are_named() {
        let name = |name: &str| NameLookup {
            name: name.to_owned(),
            tenant: "t".to_owned(),
            document: "d".to_owned(),
        };
        assert_eq!(name("").encode(), Err(FrameError::EmptyName));
        assert_eq!(
            name(&"a".repeat(254)).encode(),
            Err(FrameError::FieldLength("name"))
        );
        assert!(name(&"a".repeat(253)).encode().is_ok());
        assert_eq!(
            NameLookup::decode(&[1, 3, 0, 1, 0]),
            Err(FrameError::EmptyName)
        );
        assert_eq!(
            NameLookup::decode(&[1, 3, 0, 1, 254]),
            Err(FrameError::FieldLength("name"))
        );
        assert_eq!(
            NameLookup::decode(&[1, 3, 0x02, 0x01]),
            Err(FrameError::TooLong(513))
        );
        assert_eq!(
            NameLookup::decode(&[1, 3, 0, 3, 1, b'a', 0]),
            Err(FrameError::FieldLength("tenant"))
        );
        assert_eq!(
            NameLookup::decode(&[1, 3, 0, 2, 1, 0xff]),
            Err(FrameError::NotUtf8("name"))
        );
        assert_eq!(StreamRequest::decode(&[1, 2]), Err(FrameError::Kind(2)));
        assert_eq!(StreamRequest::decode(&[1, 4]), Err(FrameError::Kind(4)));
        assert_eq!(StreamRequest::decode(&[9]), Err(FrameError::Version(9)));
        assert_eq!(StreamRequest::kind_of(&[1, 2, 0, 0]), None);
        assert_eq!(
            LookupReply::decode(&[1, 4, 0, 3, 5, 0, 0]),
            Err(FrameError::Status(5))
        );
    }
}
