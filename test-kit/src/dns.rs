//! A fake DNS server for tests: real DNS messages over UDP (hickory's codec), answers decided
//! by the test.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

/// What the server says of one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No such name (NXDOMAIN).
    NoSuchName,
    /// These addresses with this TTL (seconds); only those of the asked type are sent, so a
    /// known name asked for another type gets NOERROR with no answer.
    Addresses { ips: Vec<IpAddr>, ttl: u32 },
}

/// Serves DNS on `socket` until it fails: each query's first question goes to `answer` with the
/// name in lower case with its trailing dot (`example.com.`) and the record type asked.
pub fn serve(
    socket: tokio::net::UdpSocket,
    mut answer: impl FnMut(&str, RecordType) -> Answer + Send + 'static,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = respond(&buf[..n], &mut answer) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
}

/// The reply to the query in `bytes`, or `None` if it is not a query with a question.
pub fn respond(
    bytes: &[u8],
    answer: &mut impl FnMut(&str, RecordType) -> Answer,
) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    let question = query.queries().first()?.clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    let qtype = question.query_type();
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(question.clone());
    match answer(&name, qtype) {
        Answer::NoSuchName => {
            response.set_response_code(ResponseCode::NXDomain);
        }
        Answer::Addresses { ips, ttl } => {
            for ip in ips {
                let rdata = match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(question.name().clone(), ttl, rdata));
            }
            response.set_response_code(ResponseCode::NoError);
        }
    }
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(7)
            .add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        message.to_vec().unwrap()
    }

    #[test]
    fn answers_only_the_asked_type_and_refuses_unknown_names() {
        let mut table = |name: &str, _: RecordType| match name {
            "example.test." => Answer::Addresses {
                ips: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
                ttl: 60,
            },
            _ => Answer::NoSuchName,
        };
        let a = Message::from_vec(
            &respond(&query("Example.TEST.", RecordType::A), &mut table).unwrap(),
        )
        .unwrap();
        assert_eq!(a.id(), 7);
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert_eq!(a.answers().len(), 1);
        let aaaa = Message::from_vec(
            &respond(&query("example.test.", RecordType::AAAA), &mut table).unwrap(),
        )
        .unwrap();
        assert_eq!(aaaa.answers().len(), 1);
        let missing =
            Message::from_vec(&respond(&query("other.test.", RecordType::A), &mut table).unwrap())
                .unwrap();
        assert_eq!(missing.response_code(), ResponseCode::NXDomain);
        assert!(respond(b"not dns", &mut table).is_none());
    }
}
