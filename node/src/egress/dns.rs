//! The DNS a jailed kernel speaks: the questions the node's server accepts and the answers it
//! gives. Sans-IO: bytes in, bytes out; the server in [`super::redirect`] does the waiting.
//!
//! Only what a Python kernel needs to connect by name is answered: one `A` or `AAAA` question
//! of class `IN` per query. An `A` question gets the name's synthetic address
//! ([`super::names`]) when the gateway says the name may be reached; `AAAA` gets an empty
//! answer for such a name (flows leave over IPv4 synthetic addresses; the gateway still
//! reaches IPv6 destinations). A name that does not exist, or that the gateway denies, gets
//! `NXDOMAIN` (the denial's reason goes into the cell); `SERVFAIL` means "not now": the gateway
//! could not be asked, or the kernel spent its budget of new names. Any other question is
//! answered `NOTIMP`, and bytes that are not a DNS query at all are answered `FORMERR` when
//! they carry an id to answer to, else dropped.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

/// How long the kernel may cache an answer. Short: the gateway's verdict can change with a
/// policy reload, and a synthetic address is only a handle.
const TTL_SECONDS: u32 = 30;

/// The largest query the server reads; a DNS query for one name is far smaller.
pub(crate) const MAX_QUERY: usize = 1232;

/// A question the node answers after asking the gateway about the name.
#[derive(Debug, Clone)]
pub(crate) struct Question {
    /// Lower case, without the trailing dot.
    pub(crate) name: String,
    pub(crate) wants_v4: bool,
    query: Message,
    question: Query,
}

/// What came in on the DNS socket.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Ask the gateway about [`Question::name`], then [`answer`].
    Ask(Box<Question>),
    /// Answer with these bytes at once.
    Reply(Vec<u8>),
    /// Not DNS: send nothing.
    Drop,
}

/// What the node learned about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The name exists; this is its synthetic address.
    Exists(Ipv4Addr),
    /// The name does not exist, or is denied.
    Missing,
    /// The gateway could not be asked, or could not resolve, or the kernel asked about too
    /// many new names: try again later.
    Failed,
}

/// Reads one datagram from the kernel.
pub(crate) fn read(bytes: &[u8]) -> Incoming {
    if bytes.len() > MAX_QUERY {
        return refuse_raw(bytes, ResponseCode::FormErr);
    }
    let Ok(query) = Message::from_vec(bytes) else {
        return refuse_raw(bytes, ResponseCode::FormErr);
    };
    if query.message_type() != MessageType::Query {
        return Incoming::Drop;
    }
    if query.op_code() != OpCode::Query || query.queries().len() != 1 {
        return Incoming::Reply(reply(&query, None, ResponseCode::NotImp, None));
    }
    let question = query.queries()[0].clone();
    let kind = question.query_type();
    if question.query_class() != DNSClass::IN || !matches!(kind, RecordType::A | RecordType::AAAA) {
        return Incoming::Reply(reply(&query, Some(&question), ResponseCode::NotImp, None));
    }
    let name = question.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_owned();
    if name.is_empty() {
        return Incoming::Reply(reply(&query, Some(&question), ResponseCode::NXDomain, None));
    }
    Incoming::Ask(Box::new(Question {
        name,
        wants_v4: kind == RecordType::A,
        query,
        question,
    }))
}

/// The answer to `question` given what the gateway said.
pub(crate) fn answer(question: &Question, verdict: Verdict) -> Vec<u8> {
    let (code, address) = match verdict {
        Verdict::Exists(addr) if question.wants_v4 => (ResponseCode::NoError, Some(addr)),
        Verdict::Exists(_) => (ResponseCode::NoError, None),
        Verdict::Missing => (ResponseCode::NXDomain, None),
        Verdict::Failed => (ResponseCode::ServFail, None),
    };
    reply(&question.query, Some(&question.question), code, address)
}

fn reply(
    query: &Message,
    question: Option<&Query>,
    code: ResponseCode,
    address: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    if let Some(question) = question {
        response.add_query(question.clone());
        if let Some(addr) = address {
            response.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL_SECONDS,
                RData::A(A(addr)),
            ));
        }
    }
    response.to_vec().unwrap_or_default()
}

/// A reply carrying only the id of bytes that did not parse (if they are long enough to have
/// one and are not themselves a response).
fn refuse_raw(bytes: &[u8], code: ResponseCode) -> Incoming {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Incoming::Drop;
    }
    let mut response = Message::new();
    response
        .set_id(u16::from_be_bytes([bytes[0], bytes[1]]))
        .set_message_type(MessageType::Response)
        .set_response_code(code);
    match response.to_vec() {
        Ok(bytes) => Incoming::Reply(bytes),
        Err(_) => Incoming::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), kind));
        message.to_vec().unwrap()
    }

    fn parse(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).unwrap()
    }

    #[test]
    fn an_existing_name_gets_its_synthetic_address() {
        let Incoming::Ask(question) = read(&query("Web.Example.", RecordType::A)) else {
            panic!("an A question is asked about");
        };
        assert_eq!(question.name, "web.example");
        let addr = Ipv4Addr::new(198, 18, 0, 7);
        let reply = parse(&answer(&question, Verdict::Exists(addr)));
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(reply.answers().len(), 1);
        assert_eq!(reply.answers()[0].data(), &RData::A(A(addr)));
        assert_eq!(reply.queries().len(), 1);
    }

    #[test]
    fn aaaa_of_an_existing_name_is_empty_and_a_missing_name_is_nxdomain() {
        let Incoming::Ask(question) = read(&query("web.example.", RecordType::AAAA)) else {
            panic!("an AAAA question is asked about");
        };
        let reply = parse(&answer(
            &question,
            Verdict::Exists(Ipv4Addr::new(198, 18, 0, 1)),
        ));
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.answers().is_empty());
        let reply = parse(&answer(&question, Verdict::Missing));
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        let reply = parse(&answer(&question, Verdict::Failed));
        assert_eq!(reply.response_code(), ResponseCode::ServFail);
    }

    #[test]
    fn other_questions_are_not_implemented() {
        for kind in [
            RecordType::MX,
            RecordType::TXT,
            RecordType::PTR,
            RecordType::ANY,
        ] {
            let Incoming::Reply(bytes) = read(&query("web.example.", kind)) else {
                panic!("{kind} is answered at once");
            };
            assert_eq!(parse(&bytes).response_code(), ResponseCode::NotImp);
        }
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let mut bytes = query("web.example.", RecordType::A);
        bytes.truncate(14);
        let Incoming::Reply(reply) = read(&bytes) else {
            panic!("a truncated query with an id is answered");
        };
        let reply = parse(&reply);
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
        assert!(matches!(read(&[1, 2, 3]), Incoming::Drop));
        assert!(matches!(
            read(&vec![0u8; MAX_QUERY + 1]),
            Incoming::Reply(_)
        ));
        // A response is never answered (no loops between resolvers).
        let mut response = parse(&query("web.example.", RecordType::A));
        response.set_message_type(MessageType::Response);
        assert!(matches!(read(&response.to_vec().unwrap()), Incoming::Drop));
    }
}
