//! SOCKS5 messages (RFC 1928) and username/password authentication (RFC 1929), as sans-IO
//! decoders and encoders. Incremental: `Ok(None)` means "need more bytes". Fuzzed and
//! property-tested like every decoder of untrusted bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const VERSION: u8 = 5;
pub const AUTH_VERSION: u8 = 1;
pub const METHOD_USERPASS: u8 = 0x02;
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
pub const COMMAND_CONNECT: u8 = 0x01;

/// Reply codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// Why bytes are not a SOCKS5 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    #[error("not SOCKS version 5 (got {0})")]
    Version(u8),
    #[error("the client offered no authentication methods")]
    NoMethods,
    #[error("username/password sub-negotiation version {0} is not 1")]
    AuthVersion(u8),
    #[error("empty username")]
    EmptyUsername,
    #[error("the {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("reserved byte is {0:#04x}, not 0")]
    Reserved(u8),
    #[error("address type {0:#04x} is not supported")]
    AddressType(u8),
    #[error("the domain name is empty")]
    EmptyDomain,
}

/// A CONNECT (or other) request's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksHost {
    Ip(IpAddr),
    /// ATYP 3: resolved by the gateway, never by the client.
    Domain(String),
}

/// A request (RFC 1928 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    pub command: u8,
    pub host: SocksHost,
    pub port: u16,
}

/// The method-selection message: the methods offered.
pub fn decode_greeting(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, SocksError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(SocksError::Version(version));
    }
    let Some(&count) = buf.get(1) else {
        return Ok(None);
    };
    if count == 0 {
        return Err(SocksError::NoMethods);
    }
    let end = 2 + usize::from(count);
    Ok(buf.get(2..end).map(|methods| (methods.to_vec(), end)))
}

/// Credentials of the username/password sub-negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPass {
    pub username: String,
    pub password: String,
}

/// The username/password request.
pub fn decode_userpass(buf: &[u8]) -> Result<Option<(UserPass, usize)>, SocksError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != AUTH_VERSION {
        return Err(SocksError::AuthVersion(version));
    }
    let Some(&user_len) = buf.get(1) else {
        return Ok(None);
    };
    if user_len == 0 {
        return Err(SocksError::EmptyUsername);
    }
    let user_end = 2 + usize::from(user_len);
    let Some(user) = buf.get(2..user_end) else {
        return Ok(None);
    };
    let Some(&pass_len) = buf.get(user_end) else {
        return Ok(None);
    };
    let end = user_end + 1 + usize::from(pass_len);
    let Some(pass) = buf.get(user_end + 1..end) else {
        return Ok(None);
    };
    let user = std::str::from_utf8(user).map_err(|_| SocksError::NotUtf8("username"))?;
    let pass = std::str::from_utf8(pass).map_err(|_| SocksError::NotUtf8("password"))?;
    let credentials = UserPass {
        username: user.to_owned(),
        password: pass.to_owned(),
    };
    Ok(Some((credentials, end)))
}

/// The request after authentication.
pub fn decode_request(buf: &[u8]) -> Result<Option<(SocksRequest, usize)>, SocksError> {
    if buf.len() < 4 {
        if let Some(&version) = buf.first().filter(|&&v| v != VERSION) {
            return Err(SocksError::Version(version));
        }
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(SocksError::Version(buf[0]));
    }
    if buf[2] != 0 {
        return Err(SocksError::Reserved(buf[2]));
    }
    let command = buf[1];
    let (host, port_at) = match buf[3] {
        0x01 => match buf.get(4..8) {
            Some(b) => (
                SocksHost::Ip(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
                8,
            ),
            None => return Ok(None),
        },
        0x04 => match buf.get(4..20) {
            Some(b) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(b);
                (SocksHost::Ip(IpAddr::V6(Ipv6Addr::from(octets))), 20)
            }
            None => return Ok(None),
        },
        0x03 => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            if len == 0 {
                return Err(SocksError::EmptyDomain);
            }
            let end = 5 + usize::from(len);
            match buf.get(5..end) {
                Some(name) => {
                    let name = std::str::from_utf8(name)
                        .map_err(|_| SocksError::NotUtf8("domain name"))?;
                    (SocksHost::Domain(name.to_owned()), end)
                }
                None => return Ok(None),
            }
        }
        other => return Err(SocksError::AddressType(other)),
    };
    let Some(port) = buf.get(port_at..port_at + 2) else {
        return Ok(None);
    };
    Ok(Some((
        SocksRequest {
            command,
            host,
            port: u16::from_be_bytes([port[0], port[1]]),
        },
        port_at + 2,
    )))
}

/// The method-selection reply.
pub fn encode_method(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// The username/password reply: 0 = success.
pub fn encode_auth_status(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0 } else { 1 }]
}

/// A reply to a request, naming the bound (source) address.
pub fn encode_reply(code: ReplyCode, bound: SocketAddr) -> Vec<u8> {
    let mut reply = vec![VERSION, code as u8, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            reply.push(0x01);
            reply.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            reply.push(0x04);
            reply.extend_from_slice(&ip.octets());
        }
    }
    reply.extend_from_slice(&bound.port().to_be_bytes());
    reply
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn messages_decode_whole_or_not_at_all() {
        let request = [
            5, 1, 0, 3, 11, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm', 1,
            187,
        ];
        for cut in 0..request.len() {
            assert_eq!(decode_request(&request[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(
            decode_request(&request),
            Ok(Some((
                SocksRequest {
                    command: 1,
                    host: SocksHost::Domain("example.com".to_owned()),
                    port: 443
                },
                request.len()
            )))
        );
        assert_eq!(decode_greeting(&[5, 0]), Err(SocksError::NoMethods));
        assert_eq!(decode_greeting(&[4, 1, 0]), Err(SocksError::Version(4)));
        assert_eq!(
            decode_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(SocksError::EmptyDomain)
        );
        assert_eq!(
            decode_request(&[5, 1, 0, 9, 0, 0, 80]),
            Err(SocksError::AddressType(9))
        );
        let auth = [1, 1, b'u', 2, b'p', b'w'];
        assert_eq!(
            decode_userpass(&auth),
            Ok(Some((
                UserPass {
                    username: "u".to_owned(),
                    password: "pw".to_owned()
                },
                auth.len()
            )))
        );
    }
}
