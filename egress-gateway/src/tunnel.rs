//! The tunnel between nodes and the gateway: QUIC (ALPN `airlock-egress/1`), mutually
//! authenticated, one bidirectional stream per flow.
//!
//! The gateway presents its certificate; each node presents a client certificate signed by the
//! configured CA (`[tunnel] client_ca`), or the handshake fails. The node's name is a DNS name
//! in that certificate's subject alternative names (or its common name), looked up in the
//! `[[nodes]]` table, which says which tenants the node may open flows for. A flow's first frame
//! ([`crate::frame::FlowOpen`]) carries the tenant and document tags; the gateway accepts the
//! tenant only if the node's entry allows it. The node writes those tags from its own state
//! (which document it serves, for whom), never from anything the kernel could write; the kernel
//! can only choose the destination.
//!
//! A stream may instead carry a name lookup ([`crate::frame::NameLookup`]): the node asks
//! whether a document may use a DNS name, authenticated for the tenant exactly as a flow, and
//! gets a verdict ([`crate::lookup`]) in one [`crate::frame::LookupReply`].
//!
//! [`TunnelClient`] is the node's side, defined in `airlock-client` (the node builds no part of
//! the gateway) and re-exported here for the gateway's own tests and tools.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

pub use airlock_client::tunnel::{
    Destination, Identity, LookupAnswer, LookupError, OpenFlowError, StreamError, TunnelClient,
    TunnelClientConfig, TunnelError, TunnelFlow, read_certs,
};
use airlock_client::tunnel::{finish_frame, provider, transport};

use crate::config::TunnelSection;
use crate::flow::{FlowFailure, FlowRequest, FrontEnd, RequestedHost};
use crate::frame::{
    self, FlowOpen, FlowReply, HEADER_LEN, LookupReply, LookupStatus, NameLookup, ReplyStatus,
    RequestKind, StreamRequest, TargetHost,
};
use crate::gateway::Gateway;
use crate::lookup::{LookupRequest, LookupVerdict, count_lookup};
use crate::metrics as names;
use crate::policy::FlowTags;

/// The gateway's QUIC server configuration: its identity, and node certificates checked
/// against `client_ca`.
pub fn server_config(
    identity: &Identity,
    client_ca: &[CertificateDer<'static>],
) -> Result<quinn::ServerConfig, TunnelError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_ca {
        roots.add(ca.clone())?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![frame::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|error| TunnelError::Quic(error.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// Binds the tunnel listener from the config's `[tunnel]` files.
pub fn bind(addr: SocketAddr, section: &TunnelSection) -> Result<quinn::Endpoint, TunnelError> {
    let identity = Identity::from_pem_files(&section.cert, &section.key)?;
    let client_ca = read_certs(&section.client_ca)?;
    bind_with(addr, &identity, &client_ca)
}

/// Binds the tunnel listener with identities already in memory.
pub fn bind_with(
    addr: SocketAddr,
    identity: &Identity,
    client_ca: &[CertificateDer<'static>],
) -> Result<quinn::Endpoint, TunnelError> {
    let config = server_config(identity, client_ca)?;
    quinn::Endpoint::server(config, addr).map_err(|source| TunnelError::Bind { addr, source })
}

/// The names a node certificate carries: DNS subject alternative names, then the common name.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_owned());
        }
    }
    names
}

/// Accepts node connections until the endpoint closes.
pub async fn serve(gateway: Gateway, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve_node(gateway, connection).await,
                Err(error) => {
                    metrics::counter!(names::TUNNEL_REFUSED, "why" => "handshake").increment(1);
                    tracing::info!(%error, "tunnel handshake failed");
                }
            }
        });
    }
}

/// Serves one node connection: a flow per stream.
async fn serve_node(gateway: Gateway, connection: quinn::Connection) {
    let remote = connection.remote_address();
    let names = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|leaf| certificate_names(leaf)))
        .unwrap_or_default();
    let snapshot = gateway.snapshot();
    let Some(node) = names.into_iter().find(|name| snapshot.nodes.knows(name)) else {
        metrics::counter!(names::TUNNEL_REFUSED, "why" => "unknown_node").increment(1);
        tracing::warn!(%remote, "tunnel client certificate names no configured node");
        connection.close(quinn::VarInt::from_u32(1), b"unknown node");
        return;
    };
    drop(snapshot);
    tracing::info!(%remote, node, "node connected to the egress tunnel");
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                let gateway = gateway.clone();
                let node = node.clone();
                tokio::spawn(serve_stream(gateway, node, remote, send, recv));
            }
            Err(error) => {
                tracing::debug!(%remote, node, %error, "tunnel connection ended");
                return;
            }
        }
    }
}

/// Reads a stream's request; `kind` learns what it was meant to be as soon as the header says,
/// so that even a malformed request gets the matching reply frame.
async fn read_request(
    recv: &mut quinn::RecvStream,
    kind: &mut Option<RequestKind>,
) -> Result<StreamRequest, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    *kind = StreamRequest::kind_of(&header);
    finish_frame(recv, header, StreamRequest::decode).await
}

async fn reply(send: &mut quinn::SendStream, status: ReplyStatus, flow: u64, reason: String) {
    let bytes = FlowReply {
        status,
        flow,
        reason,
    }
    .encode();
    if send.write_all(&bytes).await.is_ok() && status != ReplyStatus::Connected {
        let _ = send.finish();
    }
}

/// Answers a lookup and ends the stream.
async fn lookup_reply(send: &mut quinn::SendStream, status: LookupStatus, reason: String) {
    let bytes = LookupReply { status, reason }.encode();
    if send.write_all(&bytes).await.is_ok() {
        let _ = send.finish();
    }
}

async fn serve_stream(
    gateway: Gateway,
    node: String,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let timeout = gateway.snapshot().config.handshake_timeout();
    let mut kind = None;
    let read = tokio::time::timeout(timeout, read_request(&mut recv, &mut kind)).await;
    let failure = match read {
        Ok(Ok(StreamRequest::Flow(open))) => {
            return serve_flow(gateway, node, remote, open, send, recv).await;
        }
        Ok(Ok(StreamRequest::Lookup(lookup))) => {
            return serve_lookup(gateway, node, lookup, send).await;
        }
        Ok(Err(error)) => Some(error),
        Err(_) => None,
    };
    match (kind, failure) {
        (Some(RequestKind::Lookup), failure) => {
            let reason = match failure {
                Some(error) => format!("bad lookup frame: {error}"),
                None => "no lookup frame in time".to_owned(),
            };
            metrics::counter!(names::LOOKUPS, "verdict" => "bad_request").increment(1);
            lookup_reply(&mut send, LookupStatus::BadRequest, reason).await;
        }
        (_, Some(error)) => {
            let reason = format!("bad flow frame: {error}");
            reply(&mut send, ReplyStatus::BadRequest, 0, reason).await;
        }
        (_, None) => {
            let reason = "no flow frame in time".to_owned();
            reply(&mut send, ReplyStatus::BadRequest, 0, reason).await;
        }
    }
}

async fn serve_flow(
    gateway: Gateway,
    node: String,
    remote: SocketAddr,
    open: FlowOpen,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    if !gateway.snapshot().nodes.may_serve(&node, &open.tenant) {
        metrics::counter!(names::TUNNEL_REFUSED, "why" => "tenant").increment(1);
        tracing::warn!(
            node,
            tenant = %crate::flow::for_log(&open.tenant),
            "node may not open flows for this tenant"
        );
        let reason = format!(
            "denied: node {node} may not open flows for tenant {}",
            open.tenant
        );
        reply(&mut send, ReplyStatus::Denied, 0, reason).await;
        return;
    }
    let host = match open.host {
        TargetHost::Ip(ip) => RequestedHost::Ip(ip),
        TargetHost::Name(name) => RequestedHost::Text(name),
    };
    let request = FlowRequest {
        front_end: FrontEnd::Tunnel,
        tags: FlowTags {
            tenant: open.tenant,
            document: open.document,
        },
        host,
        port: open.port,
        client: Some(remote),
        node: Some(node),
        origin: open.origin,
    };
    match gateway.open(request).await {
        Ok(flow) => {
            let id = flow.flow;
            reply(&mut send, ReplyStatus::Connected, id, String::new()).await;
            gateway.relay(flow, recv, send).await;
        }
        Err(refused) => {
            let status = match refused.failure {
                FlowFailure::Denied(_) => ReplyStatus::Denied,
                FlowFailure::Limited(_) => ReplyStatus::Limited,
                FlowFailure::Resolve(_) => ReplyStatus::ResolveFailed,
                FlowFailure::Connect(_) => ReplyStatus::ConnectFailed,
            };
            reply(&mut send, status, refused.flow, refused.failure.to_string()).await;
        }
    }
}

/// Decides a name lookup for a node that may speak for the tenant, and answers it.
async fn serve_lookup(
    gateway: Gateway,
    node: String,
    lookup: NameLookup,
    mut send: quinn::SendStream,
) {
    let verdict = if gateway.snapshot().nodes.may_serve(&node, &lookup.tenant) {
        gateway
            .lookup(LookupRequest {
                tags: FlowTags {
                    tenant: lookup.tenant,
                    document: lookup.document,
                },
                name: lookup.name,
                node: Some(node),
            })
            .await
    } else {
        metrics::counter!(names::TUNNEL_REFUSED, "why" => "tenant").increment(1);
        tracing::warn!(
            node,
            tenant = %crate::flow::for_log(&lookup.tenant),
            "node may not look up names for this tenant"
        );
        let verdict = LookupVerdict::TenantRefused {
            node,
            tenant: lookup.tenant,
        };
        count_lookup(&verdict);
        verdict
    };
    lookup_reply(&mut send, verdict.status(), verdict.to_string()).await;
}
