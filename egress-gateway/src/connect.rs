//! The HTTP CONNECT front end (RFC 9110 §9.3.6) for deployments that cannot redirect.
//!
//! The client authenticates with `Proxy-Authorization: Basic` (username and password from the
//! `[[credentials]]` table, which names the tenant and document). Only `CONNECT host:port` is
//! served; plain-HTTP proxying is not (it would need the gateway to parse and re-check every
//! request inside the connection). Answers:
//!
//! | outcome | status | |
//! |---|---|---|
//! | connected | 200 | `Airlock-Egress-Flow: <n>` names the audit record |
//! | no or bad credentials | 407 | `Proxy-Authenticate: Basic realm="airlock-egress"` |
//! | denied by policy | 403 | `Airlock-Egress-Reason: <sentence>`; the body repeats it |
//! | limit reached | 429 | same |
//! | DNS failure, connect failure | 502 (504 on timeouts) | same |
//! | not CONNECT | 405 | |
//! | malformed head | 400 | |
//!
//! Bytes the client sends after its head (a TLS ClientHello sent eagerly) are kept and relayed.

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::dial::DialError;
use crate::flow::{FlowFailure, FlowRequest, FrontEnd, RequestedHost};
use crate::gateway::Gateway;
use crate::host;
use crate::resolve::ResolveError;

/// The largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// The header carrying the reason of a refusal.
pub const REASON_HEADER: &str = "Airlock-Egress-Reason";
/// The header naming the flow's audit record.
pub const FLOW_HEADER: &str = "Airlock-Egress-Flow";

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// The value of `Proxy-Authorization`, if any.
    pub proxy_authorization: Option<String>,
}

/// Why bytes are not a request head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(String),
}

/// Decodes a request head from the start of `buf`: `Ok(None)` until the blank line arrives.
pub fn decode_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let status = request
        .parse(buf)
        .map_err(|error| HeadError::Malformed(error.to_string()))?;
    let used = match status {
        httparse::Status::Complete(used) => used,
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    if used > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default().to_owned();
    let proxy_authorization = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("proxy-authorization"))
        .and_then(|header| std::str::from_utf8(header.value).ok())
        .map(str::to_owned);
    Ok(Some((
        RequestHead {
            method,
            target,
            proxy_authorization,
        },
        used,
    )))
}

/// `Basic dXNlcjpwYXNz` → ("user", "pass").
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// A header value that cannot break the response: printable ASCII only.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn response(status: u16, phrase: &str, extra: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {phrase}\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {}\r\n", header_safe(value)));
    }
    head.push_str(&format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    head.into_bytes()
}

/// The status line for a refused flow.
pub fn status_of(failure: &FlowFailure) -> (u16, &'static str) {
    match failure {
        FlowFailure::Denied(_) => (403, "Forbidden"),
        FlowFailure::Limited(_) => (429, "Too Many Requests"),
        FlowFailure::Resolve(ResolveError::Timeout { .. })
        | FlowFailure::Connect(DialError::Timeout { .. }) => (504, "Gateway Timeout"),
        FlowFailure::Resolve(_) | FlowFailure::Connect(_) => (502, "Bad Gateway"),
    }
}

/// Why a CONNECT session ended before relaying.
#[derive(Debug, thiserror::Error)]
pub enum ConnectSessionError {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("the client did not send its request head in time")]
    Timeout,
    #[error("the client went away")]
    Closed,
    #[error("method {0} is not served (CONNECT only)")]
    Method(String),
    #[error("missing or bad proxy credentials")]
    Credentials,
    #[error("bad CONNECT target: {0}")]
    Target(#[from] host::HostError),
    #[error("flow {flow} refused: {reason}")]
    Refused { flow: u64, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serves one CONNECT client connection to its end.
pub async fn serve(gateway: Gateway, mut stream: TcpStream) -> Result<(), ConnectSessionError> {
    let client = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let timeout = gateway.snapshot().config.handshake_timeout();
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        loop {
            if let Some((head, used)) = decode_head(&buf)? {
                buf.drain(..used);
                return Ok(head);
            }
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ConnectSessionError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let head = match tokio::time::timeout(timeout, read_head).await {
        Err(_) => return Err(ConnectSessionError::Timeout),
        Ok(Err(ConnectSessionError::Head(error))) => {
            let body = format!("{error}\n");
            stream
                .write_all(&response(400, "Bad Request", &[], &body))
                .await?;
            return Err(error.into());
        }
        Ok(result) => result?,
    };
    if !head.method.eq_ignore_ascii_case("CONNECT") {
        let body = "this proxy serves CONNECT only\n";
        let allow = [("Allow", "CONNECT".to_owned())];
        stream
            .write_all(&response(405, "Method Not Allowed", &allow, body))
            .await?;
        return Err(ConnectSessionError::Method(head.method));
    }
    let tags = head
        .proxy_authorization
        .as_deref()
        .and_then(basic_credentials)
        .and_then(|(user, pass)| gateway.snapshot().credentials.check(&user, &pass));
    let Some(tags) = tags else {
        let challenge = [(
            "Proxy-Authenticate",
            "Basic realm=\"airlock-egress\"".to_owned(),
        )];
        let body = "proxy credentials are required (tenant and document come from them)\n";
        stream
            .write_all(&response(
                407,
                "Proxy Authentication Required",
                &challenge,
                body,
            ))
            .await?;
        return Err(ConnectSessionError::Credentials);
    };
    // The authority is split here; the host goes through the flow's own checks (and audit).
    let (host, port) = match split_target(&head.target) {
        Ok(split) => split,
        Err(error) => {
            let reason = format!("denied: {error}");
            let headers = [(REASON_HEADER, reason.clone())];
            stream
                .write_all(&response(
                    400,
                    "Bad Request",
                    &headers,
                    &format!("{reason}\n"),
                ))
                .await?;
            return Err(error.into());
        }
    };
    let flow = gateway
        .open(FlowRequest::from_proxy_client(
            FrontEnd::Connect,
            tags,
            RequestedHost::Text(host),
            port,
            client,
        ))
        .await;
    match flow {
        Ok(open) => {
            let established = format!(
                "HTTP/1.1 200 Connection Established\r\n{FLOW_HEADER}: {}\r\n\r\n",
                open.flow
            );
            stream.write_all(established.as_bytes()).await?;
            // Bytes the client sent early (after its request) are still in `buf`.
            gateway.relay_tcp(open, stream, buf).await;
            Ok(())
        }
        Err(refused) => {
            let reason = refused.failure.to_string();
            let (status, phrase) = status_of(&refused.failure);
            let headers = [
                (REASON_HEADER, reason.clone()),
                (FLOW_HEADER, refused.flow.to_string()),
            ];
            stream
                .write_all(&response(status, phrase, &headers, &format!("{reason}\n")))
                .await?;
            let _ = stream.shutdown().await;
            Err(ConnectSessionError::Refused {
                flow: refused.flow,
                reason,
            })
        }
    }
}

/// Splits `host:port`, checking the port; the host stays text for the flow to check.
fn split_target(target: &str) -> Result<(String, u16), host::HostError> {
    let (host, port) = if target.starts_with('[') {
        let end = target.rfind("]:").ok_or(host::HostError::MissingPort)?;
        (&target[..=end], &target[end + 2..])
    } else {
        match target.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(host::HostError::UnbracketedIpv6 {
                    input: target.to_owned(),
                });
            }
            Some(split) => split,
            None => return Err(host::HostError::MissingPort),
        }
    };
    Ok((host.to_owned(), host::parse_port(port)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn heads_parse_with_credentials() {
        let head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic dTpw\r\n\r\nhello";
        let (parsed, used) = decode_head(head).unwrap().unwrap();
        assert_eq!(parsed.method, "CONNECT");
        assert_eq!(parsed.target, "example.com:443");
        assert_eq!(&head[used..], b"hello");
        assert_eq!(
            basic_credentials(parsed.proxy_authorization.as_deref().unwrap()),
            Some(("u".to_owned(), "p".to_owned()))
        );
        assert_eq!(
            decode_head(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Ok(None)
        );
        let huge = [b'a'; MAX_HEAD + 1];
        assert!(decode_head(&huge).is_err());
    }

    #[test]
    fn targets_split_like_authorities() {
        assert_eq!(
            split_target("a.com:443").unwrap(),
            ("a.com".to_owned(), 443)
        );
        assert_eq!(split_target("[::1]:80").unwrap(), ("[::1]".to_owned(), 80));
        assert!(split_target("a.com").is_err());
        assert!(split_target("::1:80").is_err());
        assert!(split_target("a.com:0443").is_err());
    }
}
