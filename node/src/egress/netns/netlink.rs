//! The one way the node talks netlink: send a list of requests in one datagram, each that
//! matters asking for an acknowledgement, and read until every one is acknowledged or one is
//! refused. Blocking, on the namespace's set-up thread; a receive timeout keeps a kernel that
//! never answers from hanging the node.

use std::time::Duration;

use netlink_packet_core::{
    ErrorBuffer, ErrorMessage, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer,
    NetlinkMessage, NetlinkSerializable, Parseable,
};
use netlink_sys::{Socket, SocketAddr};

use super::{NetworkError, Step};

/// How long Linux may take to answer a request (it answers in microseconds; module loading
/// for a first nf_tables rule can take a few milliseconds).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One request: what it is for (said in errors; `None` for a message that is not
/// acknowledged, such as an nf_tables batch marker) and the message.
pub(super) struct Request<T> {
    pub(super) step: Option<Step>,
    pub(super) message: NetlinkMessage<T>,
}

impl<T> Request<T>
where
    T: NetlinkSerializable,
{
    /// A request acknowledged as `step`, with `flags` besides `NLM_F_REQUEST | NLM_F_ACK`.
    pub(super) fn acked(step: Step, inner: impl Into<NetlinkMessage<T>>, flags: u16) -> Self {
        let mut message = inner.into();
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        Request {
            step: Some(step),
            message,
        }
    }

    /// A request Linux does not acknowledge.
    pub(super) fn silent(inner: impl Into<NetlinkMessage<T>>) -> Self {
        let mut message = inner.into();
        message.header.flags = NLM_F_REQUEST;
        Request {
            step: None,
            message,
        }
    }
}

/// An open netlink socket of one family (`NETLINK_ROUTE`, `NETLINK_NETFILTER`).
pub(super) struct Netlink {
    socket: Socket,
}

impl Netlink {
    pub(super) fn open(protocol: isize, family: &'static str) -> Result<Netlink, NetworkError> {
        let error = |source| NetworkError::Netlink { family, source };
        let mut socket = Socket::new(protocol).map_err(error)?;
        socket.bind_auto().map_err(error)?;
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ANSWER_WITHIN.as_secs() as _, 0),
        )
        .map_err(|errno| error(errno.into()))?;
        Ok(Netlink { socket })
    }

    /// Sends `requests` and waits for each acknowledged one's answer; the first refusal (in
    /// the order sent) is the error.
    pub(super) fn request<T>(&mut self, requests: Vec<Request<T>>) -> Result<(), NetworkError>
    where
        T: NetlinkSerializable,
    {
        let mut datagram = Vec::new();
        // Sequence numbers are the requests' indexes plus one.
        let mut waiting: Vec<Option<Step>> = Vec::with_capacity(requests.len());
        for (index, mut request) in requests.into_iter().enumerate() {
            request.message.header.sequence_number = index as u32 + 1;
            request.message.finalize();
            let start = datagram.len();
            datagram.resize(start + request.message.buffer_len(), 0);
            request.message.serialize(&mut datagram[start..]);
            // Every message starts on a 4-byte boundary (NLMSG_ALIGN).
            datagram.resize(datagram.len().next_multiple_of(4), 0);
            waiting.push(request.step);
        }
        let first_step = waiting
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(Step::Batch);
        self.socket
            .send_to(&datagram, &SocketAddr::new(0, 0), 0)
            .map_err(|source| NetworkError::Refused {
                step: first_step,
                source,
            })?;
        while waiting.iter().any(Option::is_some) {
            let (answer, _) = self.socket.recv_from_full().map_err(|source| {
                // A timeout names the first step still unanswered.
                let step = waiting
                    .iter()
                    .flatten()
                    .next()
                    .copied()
                    .unwrap_or(first_step);
                NetworkError::Refused { step, source }
            })?;
            for (sequence, outcome) in answers(&answer) {
                let step = (sequence as usize)
                    .checked_sub(1)
                    .and_then(|index| waiting.get_mut(index))
                    .and_then(Option::take);
                // Linux answers in the order it was asked, so the first refusal is the cause:
                // an nf_tables batch is then undone whole, and later route requests depend on
                // earlier ones.
                if let Err(source) = outcome {
                    return Err(NetworkError::Refused {
                        step: step.unwrap_or(Step::Batch),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The acknowledgements and refusals in one datagram from Linux: `(sequence, outcome)`.
fn answers(datagram: &[u8]) -> Vec<(u32, Result<(), std::io::Error>)> {
    let mut found = Vec::new();
    let mut rest = datagram;
    while let Ok(message) = NetlinkBuffer::new_checked(rest) {
        let length = (message.length() as usize).next_multiple_of(4);
        let payload = message.payload();
        if message.message_type() == NLMSG_ERROR
            && let Ok(buffer) = ErrorBuffer::new_checked(&payload)
            && let Ok(error) = ErrorMessage::parse(&buffer)
        {
            let outcome = match error.code {
                None => Ok(()),
                Some(_) => Err(error.to_io()),
            };
            found.push((message.sequence_number(), outcome));
        }
        if length == 0 || length >= rest.len() {
            break;
        }
        rest = &rest[length..];
    }
    found
}
